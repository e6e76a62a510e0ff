"""Shared by the tests: the command line as a user drives it (a subprocess), and named Keras
variables for the optimizer tests."""

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


def keras_variables(shapes, seed=0):
    """Keras variables of normal values for {"layer/name": shape, ...}, each with that `path`."""
    import keras
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for path, shape in shapes.items():
        layer, name = path.split("/")
        with keras.name_scope(layer):
            out.append(keras.Variable(rng.normal(size=shape).astype("float32"), name=name))
    assert [v.path for v in out] == list(shapes)
    return out
