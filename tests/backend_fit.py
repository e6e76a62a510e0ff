"""One small `model.fit` with SNGM, run as its own process under the backend that
KERAS_BACKEND names (tests/test_backends.py compares the processes):

    python tests/backend_fit.py OUT fit                 # 2 epochs
    python tests/backend_fit.py OUT dp                  # the same under JAX DataParallel
    python tests/backend_fit.py OUT lossscale           # the same inside LossScaleOptimizer
    python tests/backend_fit.py OUT accum               # micro-batches of 8, 2 accumulated
    python tests/backend_fit.py OUT save                # 1 epoch, save OUT/model.keras, 1 more
    python tests/backend_fit.py OUT load MODEL.keras    # load (any backend's file), 1 epoch

Writes OUT/result.npz: the weights, the momenta and the calls of the list-level hook.
The weights start from a fixed NumPy draw and the data is fixed and unshuffled, so every
backend runs the same computation.
"""

import os
import sys

import numpy as np

import keras

import keras_sngm


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int32") + (x[:, 2] > 1).astype("int32")
    return x, y


def build(mode="fit"):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu", name="hidden"),
                              keras.layers.Dense(3, name="out")])
    rng = np.random.default_rng(1)
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32") for w in model.get_weights()])
    opt = keras_sngm.SNGM(learning_rate=0.1, momentum=0.9, weight_decay=1e-3, diagnostics_every=1,
                          gradient_accumulation_steps=2 if mode == "accum" else None)
    if mode == "lossscale":  # the loss is scaled by 2^15, the gradients unscaled before SNGM sees them
        opt = keras.optimizers.LossScaleOptimizer(opt)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def count_hook_calls():
    """Counts the calls of the hook Keras must take with all gradients at once."""
    cls = keras_sngm.SNGM
    name = "_distributed_tf_update_step" if keras.backend.backend() == "tensorflow" else "_backend_update_step"
    original = getattr(cls, name)
    calls = []

    def spy(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    setattr(cls, name, spy)
    return calls


def main(out, mode, model_path=None):
    calls = count_hook_calls()
    x, y = data()
    devices = 1
    if mode == "dp":
        import jax

        devices = len(jax.devices())
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
    if mode == "load":
        model = keras.saving.load_model(model_path)
        epochs = 1
    else:
        model = build(mode)
        epochs = 1 if mode == "save" else 2
    if mode == "save":
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        model.save(os.path.join(out, "model.keras"))
    model.fit(x, y, batch_size=8 if mode == "accum" else 16, epochs=epochs, shuffle=False, verbose=0)
    opt = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    np.savez(os.path.join(out, "result.npz"), *[np.asarray(w) for w in model.get_weights()],
             momenta=np.concatenate([keras.ops.convert_to_numpy(m.value).ravel() for m in opt.momentums]),
             hook_calls=len(calls), iterations=int(opt.iterations), devices=devices,
             grad_norm=opt.diagnostics()["grad_norm"])


if __name__ == "__main__":
    main(*sys.argv[1:])
