"""Shared by the tests that drive the command line as a user does: a subprocess."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def sngm_train(args, timeout=300, **env):
    """Runs `sngm-train ARGS` from the repository root; `env` adds environment variables."""
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2", **env}
    return subprocess.run([os.path.join(BIN, "sngm-train"), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def weights_of(ckpt):
    """[(name, array), ...] of a checkpoint's model.weights.h5, in file order."""
    import h5py

    out = []
    with h5py.File(os.path.join(ckpt, "model.weights.h5")) as f:
        f.visititems(lambda name, obj: out.append((name, obj[()])) if hasattr(obj, "shape") else None)
    return out
