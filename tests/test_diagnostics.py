"""Diagnostics: optimizer state, TensorBoard logging, gradient noise scale."""

import numpy as np
import pytest
import keras
import tensorflow as tf

import reference as ref
from keras_sngm import SNGM, noise_scale
from keras_sngm_trainers.callbacks import DiagnosticsLogger
from keras_sngm_trainers.distributed import DistributedOptimizer


def _vars(seed=0):
    rng = np.random.default_rng(seed)
    with keras.name_scope("dense"):
        k = keras.Variable(rng.normal(size=(4, 3)).astype("float32"), name="kernel")
        b = keras.Variable(rng.normal(size=(3,)).astype("float32"), name="bias")
    return [k, b]


def test_diagnostics_every_zero_skips_momentum_norm():
    variables = _vars()
    opt = SNGM(learning_rate=0.1, diagnostics_every=0)
    opt.apply([tf.ones((4, 3)), tf.ones(3)], variables)
    d = opt.diagnostics()  # no in-step refresh; ||u|| is read from the momentum when asked
    assert d["update_norm"] == 0.0 and d["grad_norm"] == pytest.approx(np.sqrt(15))
    assert d["momentum_norm"] == pytest.approx(1.0)  # u = g / ||g||
    with pytest.raises(ValueError, match="diagnostics_every=-1"):
        SNGM(diagnostics_every=-1)


def _read_scalars(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    acc.Reload()
    return {tag: {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)}
            for tag in acc.Tags()["tensors"] if tag.startswith("diagnostics/") and "norms" not in tag and "ratios" not in tag}


def test_logged_values_equal_independent_replay(tmp_path):
    """Linear regression trained by fit; NumPy replays the same micro-batches and
    recomputes every logged quantity from its own gradients."""
    d, b, k, steps, lr, beta, ema = 5, 8, 2, 6, 0.05, 0.9, 0.5
    rng = np.random.default_rng(0)
    x = rng.normal(size=(b * k * steps, d)).astype("float32")
    y = (x @ rng.normal(size=(d, 1)) + rng.normal(size=(len(x), 1))).astype("float32")
    w0 = rng.normal(size=(d, 1)).astype("float32")
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(1, use_bias=False)])
    model.layers[0].kernel.assign(w0)
    opt = DistributedOptimizer(SNGM(lr, momentum=beta, diagnostics_every=1), accumulation_steps=k, micro_batch_size=b,
                               noise_ema=ema)
    model.compile(optimizer=opt, loss="mse", jit_compile=False)
    model.fit(x, y, batch_size=b, epochs=1, shuffle=False, verbose=0,
              callbacks=[DiagnosticsLogger(str(tmp_path), b * k, every=1)])
    logged = _read_scalars(tmp_path / "train")

    w, u = [w0.astype("float64")], [np.zeros((d, 1))]
    g2e = tre = wt = 0.0
    for t in range(steps):
        micro = []
        for j in range(k):
            xb, yb = x[(t * k + j) * b:(t * k + j + 1) * b].astype("float64"), y[(t * k + j) * b:(t * k + j + 1) * b]
            micro.append(2.0 / b * xb.T @ (xb @ w[0] - yb))  # d/dw mean((xw - y)^2)
        g = sum(micro) / k
        small, big = np.mean([np.sum(m * m) for m in micro]), np.sum(g * g)
        g2 = (b * k * big - b * small) / (b * k - b)
        tr = (small - big) / (1 / b - 1 / (b * k))
        g2e, tre, wt = ema * g2e + (1 - ema) * g2, ema * tre + (1 - ema) * tr, ema * wt + (1 - ema)
        w_prev = w
        w, u = ref.sngm_step(w, u, [g], lr, beta)
        s = t + 1
        np.testing.assert_allclose(logged["diagnostics/grad_norm"][s], np.linalg.norm(g), rtol=1e-4)
        np.testing.assert_allclose(logged["diagnostics/momentum_norm"][s], np.linalg.norm(u[0]), rtol=1e-4)
        np.testing.assert_allclose(logged["diagnostics/update_norm"][s], np.linalg.norm(w[0] - w_prev[0]), rtol=1e-4)
        np.testing.assert_allclose(logged["diagnostics/noise_g2"][s], g2e / wt, rtol=1e-3)
        np.testing.assert_allclose(logged["diagnostics/noise_trace_sigma"][s], tre / wt, rtol=1e-3)
        np.testing.assert_allclose(logged["diagnostics/noise_scale"][s], tre / g2e, rtol=1e-3)
        assert logged["diagnostics/momentum_norm_bound"][s] == pytest.approx(1 / (1 - beta))
    assert sorted(logged["diagnostics/grad_norm"]) == list(range(1, steps + 1))


def test_msgd_effective_learning_rate_and_temperature(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=DistributedOptimizer(keras.optimizers.SGD(0.2, momentum=0.9)), loss="mse")
    model.fit(np.ones((8, 3)), np.ones((8, 1)), batch_size=8, verbose=0, callbacks=[DiagnosticsLogger(str(tmp_path), 8, every=1)])
    logged = _read_scalars(tmp_path / "train")
    assert logged["diagnostics/effective_lr"][1] == pytest.approx(0.2 / 0.1)
    assert logged["diagnostics/temperature"][1] == pytest.approx(0.2 / (8 * 0.1))


def test_noise_scale_recovers_truth_on_gaussian_linear_regression():
    """x ~ N(0, I_d), y = x.w* + eps, eps ~ N(0, s^2), loss mean((x.w - y)^2) at fixed w:
    per-example gradient 2 x (x.r - eps) with r = w - w*, so |G|^2 = 4|r|^2 and
    tr(Sigma) = 4((d + 1)|r|^2 + d s^2) (Isserlis). Weights stay fixed (lr = 0)."""
    d, s, b, k, updates = 10, 1.0, 16, 8, 400
    rng = np.random.default_rng(0)
    w_star = rng.normal(size=(d, 1))
    r = rng.normal(size=(d, 1))
    r /= np.linalg.norm(r)  # |r| = 1
    true_g2, true_tr = 4.0, 4.0 * ((d + 1) + d * s * s)
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(1, use_bias=False)])
    model.layers[0].kernel.assign((w_star + r).astype("float32"))
    opt = DistributedOptimizer(keras.optimizers.SGD(0.0), accumulation_steps=k, micro_batch_size=b, noise_ema=0.995)
    model.compile(optimizer=opt, loss="mse", jit_compile=False)
    n = b * k * updates
    x = rng.normal(size=(n, d)).astype("float32")
    y = (x @ w_star + s * rng.normal(size=(n, 1))).astype("float32")
    model.fit(x, y, batch_size=b, epochs=1, shuffle=False, verbose=0)
    est = opt.noise_scale()
    assert est["batch"] == b * k
    assert est["g2"] == pytest.approx(true_g2, rel=0.15)
    assert est["trace"] == pytest.approx(true_tr, rel=0.15)
    assert est["b_simple"] == pytest.approx(true_tr / true_g2, rel=0.2)  # critical batch 21
    assert est["diversity_bound"] == pytest.approx(1 + est["b_simple"])


def test_unbiased_estimators_closed_form():
    g2, tr = noise_scale.unbiased_estimates(tf.constant(4.0 + 84.0 / 16), tf.constant(4.0 + 84.0 / 128), 16, 128)
    assert float(g2) == pytest.approx(4.0) and float(tr) == pytest.approx(84.0)


def test_logger_reads_the_optimizers_own_period_it_does_not_set_it(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=SNGM(0.1, diagnostics_every=5), loss="mse")
    with pytest.raises(ValueError, match="build the optimizer with diagnostics_every=2"):
        model.fit(np.ones((8, 3)), np.ones((8, 1)), verbose=0, callbacks=[DiagnosticsLogger(str(tmp_path), 8, every=2)])
    assert model.optimizer.diagnostics_every == 5


def _regression(seed=0, n=640, d=5):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    y = (x @ rng.normal(size=(d, 1))).astype("float32")
    keras.utils.set_random_seed(seed)
    return x, y, keras.Sequential([keras.Input((d,)), keras.layers.Dense(1)])


class _WeightsPerUpdate(keras.callbacks.Callback):
    """The weights after every update (every `k` micro-batches), read independently."""

    def __init__(self, k):
        super().__init__()
        self.k, self.after = k, []

    def on_train_begin(self, logs=None):
        self.after = [[w.numpy().copy() for w in self.model.trainable_weights]]

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.k == 0:
            self.after.append([w.numpy().copy() for w in self.model.trainable_weights])


def test_diagnostics_say_which_update_they_are_from():
    """Default interval: after 40 updates the update norm is update 1's, and says so."""
    x, y, model = _regression()
    weights = _WeightsPerUpdate(1)
    model.compile(optimizer=SNGM(0.05), loss="mse")  # diagnostics_every=100
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[weights])
    d = model.optimizer.diagnostics()
    assert int(model.optimizer.iterations) == 40 and d["refreshed_at_update"] == 1
    first = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(weights.after[1], weights.after[0])))
    assert d["update_norm"] == pytest.approx(first, rel=1e-5)


def test_diagnostics_count_updates_under_gradient_accumulation():
    """gradient_accumulation_steps=4, refreshed every update: each update's norm is that
    update's weight change (it was 0.0 when the refresh counted micro-batches)."""
    x, y, model = _regression(1)
    k, seen = 4, []
    weights = _WeightsPerUpdate(k)

    class Read(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if (batch + 1) % k == 0:
                seen.append(model.optimizer.diagnostics())

    model.compile(optimizer=SNGM(0.05, diagnostics_every=3, gradient_accumulation_steps=k), loss="mse")
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[weights, Read()])
    assert int(model.optimizer.iterations) == 10
    for n, d in enumerate(seen, start=1):
        at = 1 + 3 * ((n - 1) // 3)  # updates 1, 4, 7, 10
        assert d["refreshed_at_update"] == at, (n, d["refreshed_at_update"])
        change = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(weights.after[at], weights.after[at - 1])))
        assert d["update_norm"] == pytest.approx(change, rel=1e-5) and change > 0


def test_diagnostics_through_keras_loss_scale_optimizer():
    import keras_sngm

    x, y, model = _regression(2)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        _, _, model = _regression(2)
        model.compile(optimizer=SNGM(0.05, diagnostics_every=1), loss="mse")
        model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    d = keras_sngm.diagnostics(model.optimizer)
    assert d == pytest.approx(model.optimizer.inner_optimizer.diagnostics())
    # (the loss scale's first overflowed steps are skipped, not counted as updates)
    assert d["refreshed_at_update"] == int(model.optimizer.iterations) >= 5
    with pytest.raises(TypeError, match="holds no keras_sngm optimizer"):
        keras_sngm.diagnostics(keras.optimizers.SGD())
