"""Faults of a real two-process JAX-engine run under `sngm-train launch` (Gloo on loopback, no
mocks): a SIGKILLed peer is one line on the survivor, with status 5; with `--max-restarts`
the group is restarted from its newest checkpoint after a SIGKILL and after a SIGSTOP that
`--hang-timeout` finds, and ends with the weights of an uninterrupted run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import BIN, ROOT, weights_of

pytest.importorskip("jax")

ENV = {"KERAS_BACKEND": "jax", "SNGM_CONNECT_TIMEOUT": "60", "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
# A BN-free net, 5 updates an epoch of 2 micro-batches of 16 per process, checkpoints every 3 updates.
FLAGS = ["resnet", "--engine", "jax", "--dataset", "synthetic", "--arch", "twoconv", "--image-size", "16",
         "--num-classes", "4", "--train-subset", "320", "--batch-size", "64", "--micro-batch", "16", "--lr", "0.05",
         "--seed", "2", "--no-verbose", "--epochs", "2", "--ckpt-every-steps", "3", "--keep", "0", "--deterministic",
         "--hang-timeout", "8"]
# Process 1 of each attempt, as the plan in `<logdir>/faults.json` says: once the checkpoint named there
# is complete, it sends itself the signal named there ("KILL": a host gone; "STOP": a frozen host).
FAULT = r'''
import json, os, signal, sys, threading, time
run_dir = sys.argv[sys.argv.index("--logdir") + 1]
if os.environ["KERAS_DISTRIBUTION_PROCESS_ID"] == "1":
    attempt = len([n for n in os.listdir(run_dir) if n.startswith("attempt-")]) if os.path.isdir(run_dir) else 0
    os.makedirs(run_dir, exist_ok=True)
    open(os.path.join(run_dir, f"attempt-{attempt}"), "w").close()
    plan = json.load(open(os.path.join(os.path.dirname(run_dir), "faults.json")))
    if attempt < len(plan):
        ckpt, sig = plan[attempt]
        def watch():
            while not os.path.exists(os.path.join(run_dir, ckpt, "state.json")):
                time.sleep(0.01)
            os.kill(os.getpid(), getattr(signal, "SIG" + sig))
        threading.Thread(target=watch, daemon=True).start()
from keras_sngm_trainers.cli import main
sys.exit(main(sys.argv[1:]))
'''


def launch(tmp_path, name, faults, *flags):
    (tmp_path / "faults.json").write_text(json.dumps(faults))
    command = [os.path.join(BIN, "sngm-train"), "launch", "-np", "2", *flags, sys.executable, "-c", FAULT, *FLAGS,
               "--logdir", str(tmp_path / name)]
    return subprocess.run(command, cwd=ROOT, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=600)


def test_a_lost_peer_is_one_line_and_restarts_survive_sigkill_and_sigstop(tmp_path):
    straight = launch(tmp_path, "straight", [])
    assert straight.returncode == 0, straight.stderr[-3000:]

    # Without --max-restarts (today's behaviour): the survivor says what happened in one line, status 5.
    lost = launch(tmp_path, "lost", [["ckpt-00000-0000003", "KILL"]])
    assert lost.returncode == 137, lost.stderr[-3000:]
    said = [line for line in lost.stderr.splitlines() if "a peer process is gone" in line]
    assert len(said) == 1 and said[0].startswith("sngm-train: error: a peer process is gone: a collective failed in "
                                                 "update "), lost.stderr[-3000:]
    assert "The run can continue with --resume from ckpt-00000-0000003; exiting with status 5." in said[0]
    assert "Traceback" not in lost.stderr

    # --max-restarts: a SIGKILL after update 3's checkpoint, then a SIGSTOP after update 8's, found by the
    # watchdog of the process left waiting in its collective; the third attempt finishes.
    restarted = launch(tmp_path, "restarted", [["ckpt-00000-0000003", "KILL"], ["ckpt-00001-0000003", "STOP"]],
                       "--max-restarts", "3")
    assert restarted.returncode == 0, restarted.stderr[-4000:]
    lines = [line for line in restarted.stderr.splitlines() if line.startswith("sngm-train launch:")]
    assert len(lines) == 2, restarted.stderr[-4000:]
    assert lines[0].startswith("sngm-train launch: process 1 ended by SIGKILL (status 137); restart 1 of 3, from "
                               "update 3 (ckpt-00000-0000003), ") and lines[0].endswith(" updates lost"), lines
    assert lines[1].startswith("sngm-train launch: process 0 exited with status 6; restart 2 of 3, from update 8 "
                               "(ckpt-00001-0000003), "), lines
    hung = [line for line in restarted.stderr.splitlines() if "no update has finished for" in line]
    assert hung and "(--hang-timeout 8)" in hung[0], restarted.stderr[-4000:]
    for (name, x), (_, y) in zip(weights_of(tmp_path / "straight" / "ckpt-00002"),
                                 weights_of(tmp_path / "restarted" / "ckpt-00002")):
        np.testing.assert_array_equal(x, y, err_msg=name)
    history = [json.load(open(tmp_path / r / "history.json"))["history"] for r in ("straight", "restarted")]
    for h in history:
        h.pop("examples_per_sec")
    assert history[0] == history[1]
