"""A stand-in for `sngm-train` under `sngm-train launch` (tests/test_launch.py): each process
does what `<logdir>/plan.json` says for its attempt, so the launcher's restart rules are
tested with real processes, statuses and signals in a second, not a training run.

plan.json: {"attempts": [{"0": ACTION, "1": ACTION, "checkpoint": [epoch, step] or null,
"progress": N or null}, ...]}; ACTION: an exit status, "kill" (SIGKILL to itself), "stop"
(wait for a signal: SIGTERM exits 143) or "ok" (exit 0). Process 0 first writes the
attempt's checkpoint (a real one: the files `checkpoint.problem` reads back) and
progress.json, as rank 0 of a run would. Each process records its attempt and argv.
"""

import json
import os
import signal
import sys
import time


def main():
    run_dir = sys.argv[sys.argv.index("--logdir") + 1]
    rank = os.environ["KERAS_DISTRIBUTION_PROCESS_ID"]
    attempt = len([n for n in os.listdir(run_dir) if n.startswith(f"started-{rank}-")])
    with open(os.path.join(run_dir, f"started-{rank}-{attempt}"), "w") as f:
        json.dump(sys.argv[1:], f)
    plan = json.load(open(os.path.join(run_dir, "plan.json")))["attempts"][attempt]
    if rank == "0":
        if plan.get("checkpoint"):
            write_checkpoint(run_dir, *plan["checkpoint"])
        if plan.get("progress") is not None:
            with open(os.path.join(run_dir, "progress.json"), "w") as f:
                json.dump({"update": plan["progress"]}, f)
        open(os.path.join(run_dir, f"ready-{attempt}"), "w").close()
    else:
        while not os.path.exists(os.path.join(run_dir, f"ready-{attempt}")):
            time.sleep(0.02)
    action = plan[rank]
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "stop":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        while True:
            time.sleep(0.05)
    time.sleep(0.3 if action == "ok" else 0)  # (a failing peer goes first)
    sys.exit(0 if action == "ok" else int(action))


def write_checkpoint(run_dir, epoch, step):
    import h5py
    import numpy as np

    name = os.path.join(run_dir, f"ckpt-{epoch:05d}" + (f"-{step:07d}" if step else ""))
    os.makedirs(name, exist_ok=True)
    with h5py.File(os.path.join(name, "model.weights.h5"), "w") as f:
        f["w"] = np.arange(4.0)
    np.savez(os.path.join(name, "optimizer.npz"), **{"0": np.zeros(2)})
    with open(os.path.join(name, "state.json"), "w") as f:
        json.dump({"epoch": epoch, "step_in_epoch": step}, f)


if __name__ == "__main__":
    main()
