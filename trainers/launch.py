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

With `--max-restarts N`, as torchrun's: when a process fails on its own, the others are
ended at once (a peer that is gone makes their next collective fail or hang: there is
nothing to wait for), and all of them are started again with `--resume`, from the run's
newest intact checkpoint. Each restart is one line: the process that failed and its
status or signal, the update the run resumes from and the updates lost (from `--logdir`'s
checkpoints and its `progress.json`). A status no restart can heal ends the launch, and
says so: 2 (bad flags or data), 3 (diverged), 4 (a checkpoint could not be written).
Everything else is restarted: crashes, signals, 5 (a peer is gone), 6 (a hung run,
`--hang-timeout`). It gives up, with the first failure's status, after N restarts or
after two restarts in a row that made no progress (the same checkpoint again). SIGTERM
or SIGINT to the launcher is a clean stop, never a restart.

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

NO_RESTART = {2: "bad flags or data", 3: "training diverged", 4: "a checkpoint could not be written"}


def parser():
    p = argparse.ArgumentParser(prog="sngm-train launch", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-np", "--processes", type=int, required=True, help="processes to start on this host")
    p.add_argument("--port", type=int, default=0, help="the coordinator's port on this host (default: a free one)")
    p.add_argument("--grace", type=float, default=30.0,
                   help="seconds the others get to end after one process fails on its own, before SIGTERM and then "
                        "SIGKILL (default: 30)")
    p.add_argument("--max-restarts", type=int, default=0,
                   help="restart all processes with --resume, from the newest checkpoint, after a failure, at most N "
                        "times (never after status 2, 3 or 4; given up after two restarts in a row that made no "
                        "progress); default 0: no restart")
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
    if args.max_restarts < 0:
        print(f"sngm-train launch: error: --max-restarts must be >= 0. Received: {args.max_restarts}", file=sys.stderr)
        return 2
    run_dir = logdir_of(command)
    first, restarts, stalled, resumed_from = None, 0, 0, None
    while True:
        code, failed, stopped = run_once(args, command, args.port or free_port(), at_once=args.max_restarts > 0)
        if code == 0 or stopped:  # finished, or told to stop (a clean stop's status, never a restart)
            return code
        first = first or (failed, code)
        said = f"sngm-train launch: process {failed} {describe(code)}"
        if code in NO_RESTART:
            if args.max_restarts:
                print(f"{said}: not restarted ({NO_RESTART[code]}: a restart cannot heal it)", file=sys.stderr,
                      flush=True)
            return first[1]
        if restarts >= args.max_restarts:
            if args.max_restarts:
                print(f"{said}: gave up after {restarts} restarts (--max-restarts {args.max_restarts}); the first "
                      f"failure: process {first[0]} {describe(first[1])}", file=sys.stderr, flush=True)
            return first[1]
        newest = newest_checkpoint(run_dir)
        stalled = stalled + 1 if restarts and newest == resumed_from else 0
        if stalled >= 2:
            print(f"{said}: gave up after two restarts in a row that made no progress (both resumed from "
                  f"{os.path.basename(newest) if newest else 'the start'}); the first failure: process {first[0]} "
                  f"{describe(first[1])}", file=sys.stderr, flush=True)
            return first[1]
        restarts, resumed_from = restarts + 1, newest
        print(f"{said}; restart {restarts} of {args.max_restarts}, {where(run_dir, newest)}", file=sys.stderr,
              flush=True)
        if "--resume" not in command:
            command = command + ["--resume"]


def describe(code):
    """A process's end as a person reads it."""
    if code > 128 and code - 128 in signal.valid_signals():
        return f"ended by {signal.Signals(code - 128).name} (status {code})"
    return f"exited with status {code}"


def logdir_of(command):
    """The run directory a `sngm-train` command names (`--logdir D` or `--logdir=D`), or None."""
    for i, token in enumerate(command):
        if token == "--logdir" and i + 1 < len(command):
            return command[i + 1]
        if token.startswith("--logdir="):
            return token.split("=", 1)[1]
    return None


def newest_checkpoint(run_dir):
    """The checkpoint `--resume` would take (the newest intact one), or None."""
    if not run_dir or not os.path.isdir(run_dir):
        return None
    os.environ.setdefault("KERAS_BACKEND", "jax")  # (the processes' own; Keras is imported for the checks only)
    from keras_sngm_trainers import checkpoint

    return checkpoint.newest_intact(run_dir, set_aside=False)[0]


def where(run_dir, newest):
    """'from update U (ckpt-...), L updates lost', as far as the run directory tells."""
    import json

    from keras_sngm_trainers import heartbeat

    reached = heartbeat.read_progress(run_dir) if run_dir else None
    if newest is None:
        return "from the start" + (f", {reached} updates lost" if reached is not None else "")
    update = None
    try:
        with open(os.path.join(newest, "state.json")) as f:
            state = json.load(f)
        with open(os.path.join(run_dir, "config.json")) as f:
            per_epoch = json.load(f)["updates_per_epoch"]
        update = int(state["epoch"]) * int(per_epoch) + int(state.get("step_in_epoch", 0))
    except (OSError, ValueError, KeyError, TypeError):
        pass  # (--batch-size auto: an epoch's updates vary)
    text = f"from {os.path.basename(newest)}" if update is None else f"from update {update} ({os.path.basename(newest)})"
    lost = reached - update if reached is not None and update is not None else None
    return text + (f", {lost} updates lost" if lost is not None else "")


def run_once(args, command, port, at_once):
    """Starts the processes and waits for them; (status, the first failing process, whether
    the launcher was told to stop)."""
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
            return (127 if isinstance(e, FileNotFoundError) else 126), None, True
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
                    _end([p for p in procs if p.poll() is None], 0 if at_once else args.grace,
                         kill=at_once)
            time.sleep(0.1)
        failed = [p for p in procs if p.returncode != 0]
        first_failure = first_failure or (failed[0] if failed else None)
        if first_failure is None:
            return 0, None, bool(forwarded)
        return status(first_failure.returncode), procs.index(first_failure), bool(forwarded)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _end(procs, grace, kill=False):
    """Waits `grace` seconds for `procs`, then SIGTERM, then (10 s on) SIGKILL; `kill`: SIGKILL
    at once (their checkpoints are written atomically: nothing is lost that a resume needs)."""
    steps = ((signal.SIGKILL, 0.0),) if kill else ((None, grace), (signal.SIGTERM, 10.0), (signal.SIGKILL, 0.0))
    for sig, wait in steps:
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
