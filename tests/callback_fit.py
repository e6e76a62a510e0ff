"""`model.fit` with `keras_sngm.callbacks.SNGMDiagnostics`, run as its own process under the
backend KERAS_BACKEND names (tests/test_callback.py reads what it wrote):

    python tests/callback_fit.py OUT

1. For each of SNGM, BlockSNGM, LARS and MSGD (gradient_accumulation_steps=4, the norms
   refreshed every 3 updates), a small classifier with the callback at update_freq=3;
   another callback after it records `keras_sngm.diagnostics()` at every update the first
   one writes. Events in OUT/<optimizer>/train, the records in OUT/records.json.
2. Least squares whose weights barely move (SNGM, lr 1e-7), k=4 micro-batches of 16, the
   noise scale written every update; a callback records the weights before each update.
   Events in OUT/noise/train, the weights in OUT/noise_weights.npy; the data is rebuilt by
   `least_squares()`.

    python tests/callback_fit.py OUT replicas          # TensorFlow only

3. The same least squares under MirroredStrategy over two logical CPUs, no accumulation:
   OUT/replicas/train and OUT/replicas_weights.npy.
"""

import json
import os
import sys
import warnings

import numpy as np

import keras

import keras_sngm
from keras_sngm.callbacks import SNGMDiagnostics

K, EVERY, BATCH = 4, 3, 8
NOISE_BATCH, NOISE_EXAMPLES, NOISE_EMA = 16, 16384, 0.99


def least_squares():
    """y = x w* + noise (sigma 2, 8 features); the start w0 = w* + one unit along e_0."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(NOISE_EXAMPLES, 8)).astype("float32")
    w_star = rng.normal(size=(8, 1)).astype("float32")
    y = (x @ w_star + 2.0 * rng.normal(size=(NOISE_EXAMPLES, 1))).astype("float32")
    w0 = w_star + np.eye(8, 1, dtype="float32")
    return x, y, w0


class Recorder(keras.callbacks.Callback):
    """After each update whose number the diagnostics callback writes (1, 1 + EVERY, ...):
    the optimizer's own diagnostics at that moment."""

    def __init__(self):
        super().__init__()
        self.records, self.micro = {}, 0

    def on_train_batch_end(self, batch, logs=None):
        self.micro += 1
        if self.micro % K == 0 and (self.micro // K - 1) % EVERY == 0:
            d = keras_sngm.diagnostics(self.model.optimizer)
            self.records[self.micro // K] = {k: np.asarray(v).tolist() for k, v in d.items()}


class WeightsBefore(keras.callbacks.Callback):
    """The weights each update starts from (read after its first micro-batch)."""

    def __init__(self):
        super().__init__()
        self.weights, self.micro = [], 0

    def on_train_batch_end(self, batch, logs=None):
        self.micro += 1
        if self.micro % K == 1:
            self.weights.append(self.model.get_weights()[0][:, 0].copy())


def diagnostics_runs(out):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH * K * 10, 6)).astype("float32")
    y = (x[:, 0] > x[:, 1]).astype("int32")
    records = {}
    for name in ("SNGM", "BlockSNGM", "LARS", "MSGD"):
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="tanh"), keras.layers.Dense(2)])
        model.set_weights([np.random.default_rng(1).normal(scale=0.5, size=w.shape).astype("float32")
                           for w in model.get_weights()])
        opt = getattr(keras_sngm, name)(learning_rate=0.05, momentum=0.9, weight_decay=1e-3, diagnostics_every=EVERY,
                                        gradient_accumulation_steps=K,
                                        **({"trust_coefficient": 0.02} if name == "LARS" else {}))
        model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        recorder = Recorder()
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0,
                      callbacks=[SNGMDiagnostics(os.path.join(out, name), update_freq=EVERY, batch_size=BATCH),
                                 recorder])
        records[name] = {"records": recorder.records,
                         "warnings": [str(w.message) for w in said if str(w.message).startswith("SNGMDiagnostics")]}
    with open(os.path.join(out, "records.json"), "w") as f:
        json.dump(records, f)


def noise_run(out):
    x, y, w0 = least_squares()
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1, use_bias=False)])
    model.set_weights([w0])
    model.compile(optimizer=keras_sngm.SNGM(1e-7, gradient_accumulation_steps=K), loss="mse")
    before = WeightsBefore()
    model.fit(x, y, batch_size=NOISE_BATCH, epochs=1, shuffle=False, verbose=0,
              callbacks=[before, SNGMDiagnostics(os.path.join(out, "noise"), update_freq=1, batch_size=NOISE_BATCH,
                                                 noise_ema=NOISE_EMA)])
    np.save(os.path.join(out, "noise_weights.npy"), np.array(before.weights))


class WeightsAtStart(keras.callbacks.Callback):
    """The weights each train step starts from."""

    def __init__(self):
        super().__init__()
        self.weights = []

    def on_train_batch_begin(self, batch, logs=None):
        self.weights.append(self.model.get_weights()[0][:, 0].copy())


def replicas_run(out):
    """The least squares again, under tf.distribute.MirroredStrategy over two logical CPUs:
    no accumulation, a global batch of 2 x NOISE_BATCH; the noise scale from each replica's
    gradient against their sum."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS)
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(REPLICAS)])
    x, y, w0 = least_squares()
    with strategy.scope():
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1, use_bias=False)])
        model.set_weights([w0])
        model.compile(optimizer=keras_sngm.SNGM(1e-7), loss="mse")
    start = WeightsAtStart()
    model.fit(x, y, batch_size=NOISE_BATCH * REPLICAS, epochs=1, shuffle=False, verbose=0,
              callbacks=[start, SNGMDiagnostics(os.path.join(out, "replicas"), update_freq=1,
                                                batch_size=NOISE_BATCH * REPLICAS, noise_ema=NOISE_EMA)])
    np.save(os.path.join(out, "replicas_weights.npy"), np.array(start.weights))


REPLICAS = 2

if __name__ == "__main__":
    if sys.argv[2:] == ["replicas"]:
        replicas_run(sys.argv[1])
    else:
        diagnostics_runs(sys.argv[1])
        noise_run(sys.argv[1])
