import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# JAX's own persistent compilation cache, shared by every JAX process the suite starts (both pytest workers
# and their subprocesses inherit it): the same train step, compiled in many processes (a run and its resume,
# 1 process against 2, each precision's rerun), is compiled once. A hit is the same executable, so every
# number is what a fresh compile gives. Measured: a JAX-engine run 24 s fresh, 10 s from the cache. Every
# program is kept, the small ones too (they are most of the compiles of a short run).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), ".pytest-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402

if os.environ["KERAS_BACKEND"] == "tensorflow":
    import tensorflow as tf

    # Two logical CPU devices, for the tf.distribute.MirroredStrategy tests. This must
    # happen before TensorFlow initializes its devices, hence here, at import time.
    _cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.fixture
def shared_data():
    """Path to ../shared/data (never copied into the project); skips when absent."""
    path = os.path.abspath(SHARED_DATA)
    if not os.path.isdir(path):
        pytest.skip(f"real data not found at {path} (the project's ../shared/data); skipping")
    return path


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    import keras

    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")
