"""`sngm-train launch -np N COMMAND ...`: N processes of the JAX engine on this host, as
`horovodrun -np N` starts the Horovod engine's.

Each process gets Keras' distribution variables: the coordinator's address
(`KERAS_DISTRIBUTION_JOB_ADDRESSES`, this host and a free port, or `--port`), the number
of processes and its own id; `KERAS_BACKEND=jax` unless set. Their output goes to the
launcher's. SIGTERM and SIGINT to the launcher are passed on to every process (which then
stop together after the same update, with a checkpoint); the launcher then waits for all
of them. When a process fails on its own, the others get `--grace` seconds to end, then
SIGTERM, then SIGKILL. The launcher's exit status is the first failing process's (128 + N
for one ended by signal N), else 0.

On several hosts, run one process per host with the same variables (or under SLURM's
`srun`, which the engine reads), as docs/trainers.md shows.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import time


def parser():
    p = argparse.ArgumentParser(prog="sngm-train launch", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-np", "--processes", type=int, required=True, help="processes to start on this host")
    p.add_argument("--port", type=int, default=0, help="the coordinator's port on this host (default: a free one)")
    p.add_argument("--grace", type=float, default=30.0,
                   help="seconds the others get to end after one process fails on its own, before SIGTERM and then "
                        "SIGKILL (default: 30)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command every process runs, e.g. sngm-train resnet ...")
    return p


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(code):
    """An exit status as a shell reports it: 128 + N for a process ended by signal N."""
    return 128 - code if code < 0 else code


def main(argv=None):
    args = parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.processes < 1:
        print(f"sngm-train launch: error: -np must be >= 1. Received: {args.processes}", file=sys.stderr)
        return 2
    if not command:
        print("sngm-train launch: error: no command to run (sngm-train launch -np 2 sngm-train resnet ...)",
              file=sys.stderr)
        return 2
    if not 0 <= args.port < 65536:
        print(f"sngm-train launch: error: --port must be in 0..65535. Received: {args.port}", file=sys.stderr)
        return 2
    port = args.port or free_port()
    procs = []
    for i in range(args.processes):
        env = dict(os.environ, KERAS_DISTRIBUTION_JOB_ADDRESSES=f"127.0.0.1:{port}",
                   KERAS_DISTRIBUTION_NUM_PROCESSES=str(args.processes), KERAS_DISTRIBUTION_PROCESS_ID=str(i))
        env.setdefault("KERAS_BACKEND", "jax")
        try:
            # Their own session: a terminal's Ctrl-C reaches the launcher only, which passes it on once.
            procs.append(subprocess.Popen(command, env=env, start_new_session=True))
        except OSError as e:
            print(f"sngm-train launch: error: cannot start {command[0]!r}: {e.strerror or e}", file=sys.stderr)
            _end(procs, 0)
            return 127 if isinstance(e, FileNotFoundError) else 126
    forwarded = []

    def forward(signum, frame):
        forwarded.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        first_failure = None
        while [p.poll() for p in procs].count(None):  # (every process polled: its returncode set)
            failed = [p for p in procs if p.returncode not in (None, 0)]
            if failed and first_failure is None:
                first_failure = failed[0]
                if not forwarded:  # failed on its own: the others would wait on it in their next collective
                    _end([p for p in procs if p.poll() is None], args.grace)
            time.sleep(0.1)
        failed = [p for p in procs if p.returncode != 0]
        first_failure = first_failure or (failed[0] if failed else None)
        return status(first_failure.returncode) if first_failure is not None else 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _end(procs, grace):
    """Waits `grace` seconds for `procs`, then SIGTERM, then (10 s on) SIGKILL."""
    for sig, wait in ((None, grace), (signal.SIGTERM, 10.0), (signal.SIGKILL, 0.0)):
        alive = [p for p in procs if p.poll() is None]
        if not alive:
            return
        for p in alive:
            if sig is not None:
                p.send_signal(sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(p.poll() is None for p in alive):
            time.sleep(0.1)
    for p in procs:
        p.wait()


if __name__ == "__main__":
    sys.exit(main())
