"""keras_sngm.callbacks.SNGMDiagnostics in a user's own `model.fit`, on TensorFlow, JAX and
PyTorch: what it writes, read back with TensorBoard's reader, against the optimizer's own
diagnostics at the same update, and its noise scale against a NumPy replay of the same
micro-batches and the exact B_simple of a least-squares problem."""

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import keras

import keras_sngm
from keras_sngm.callbacks import SNGMDiagnostics

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import callback_fit  # noqa: E402

K = callback_fit.K


def read_events(logdir):
    """{tag: {step: value}} for scalars, {tag: {step: buckets}} for histograms, and the
    custom-scalars layout's charts {title: tags}, by TensorBoard's own reader."""
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    acc = EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    acc.Reload()
    scalars, hists, charts = {}, {}, {}
    for tag in acc.Tags()["tensors"]:
        for e in acc.Tensors(tag):
            value = tf.make_ndarray(e.tensor_proto)
            if tag == metadata.CONFIG_SUMMARY_TAG:
                layout = layout_pb2.Layout.FromString(value.item())
                charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
            elif value.ndim == 2:  # a histogram: (left edge, right edge, count) per bucket
                hists.setdefault(tag, {})[e.step] = value
            else:
                scalars.setdefault(tag, {})[e.step] = float(value)
    return scalars, hists, charts


@pytest.fixture(scope="module", params=["tensorflow", "jax", "torch"])
def fitted(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"callback-{request.param}")
    env = {**os.environ, "KERAS_BACKEND": request.param, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, os.path.join(HERE, "callback_fit.py"), str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


BOUNDS = {"SNGM": 10.0, "BlockSNGM": 2 * 10.0}  # 1/(1-0.9); sqrt(4 variables)/(1-0.9)


@pytest.mark.parametrize("name", ["SNGM", "BlockSNGM", "LARS", "MSGD"])
def test_scalars_equal_the_optimizers_diagnostics_at_the_same_update(fitted, name):
    records = json.loads((fitted / "records.json").read_text())[name]
    scalars, hists, charts = read_events(fitted / name / "train")
    steps = sorted(int(s) for s in records["records"])
    assert steps == list(range(1, 21, callback_fit.EVERY)), steps  # 2 epochs of 10 updates
    for step in steps:
        d = records["records"][str(step)]
        for tag in ("grad_norm", "momentum_norm", "skipped_steps") + (("momentum_norm_bound",) if name in BOUNDS else ()):
            assert scalars[f"diagnostics/{tag}"][step] == pytest.approx(d[tag], rel=1e-6), (tag, step)
        # the step length at the update the optimizer measured it (here: the same one)
        assert d["refreshed_at_update"] == step
        assert scalars["diagnostics/update_norm"][step] == pytest.approx(d["update_norm"], rel=1e-6)
        assert scalars["step/batch_size"][step] == callback_fit.BATCH * K
    assert scalars["step/learning_rate"][1] == pytest.approx(0.05)
    assert min(scalars["diagnostics/grad_norm"].values()) > 0
    bound = 1 / (1 - 0.9)
    if name in BOUNDS:  # Lemma 2: 1/(1-beta); per block for BlockSNGM, so sqrt(S)/(1-beta) over its 4 variables
        assert all(v == pytest.approx(BOUNDS[name]) for v in scalars["diagnostics/momentum_norm_bound"].values())
        assert max(scalars["diagnostics/momentum_norm"].values()) <= BOUNDS[name] * (1 + 1e-6)
    else:  # LARS and MSGD have no bound, and none is written
        assert "diagnostics/momentum_norm_bound" not in scalars and records["records"]["1"]["momentum_norm_bound"] is None
    if name != "MSGD":
        assert "diagnostics/effective_lr" not in scalars
    else:
        assert scalars["diagnostics/effective_lr"][1] == pytest.approx(0.05 * bound)
        assert scalars["diagnostics/temperature"][1] == pytest.approx(0.05 * bound / (callback_fit.BATCH * K))
    per_variable = {"BlockSNGM": ["block_grad_norms"], "LARS": ["block_grad_norms", "trust_ratios"]}.get(name, [])
    assert sorted(t for t in hists) == [f"diagnostics/{t}" for t in per_variable]
    for tag in per_variable:
        for step in steps:
            values, buckets = np.asarray(records["records"][str(step)][tag]), hists[f"diagnostics/{tag}"][step]
            assert buckets[:, 2].sum() == len(values) == 4  # one value per trainable variable
            assert buckets[0, 0] == pytest.approx(values.min(), rel=1e-6)
            assert buckets[-1, 1] == pytest.approx(values.max(), rel=1e-6)
    # k = 4 micro-batches of 8: the noise scale is there (its values: the least-squares test)
    assert len(scalars["diagnostics/noise_scale"]) == len(steps) and not records["warnings"]
    # the layout pairs what is read together
    assert charts["||u|| and its bound (SNGM: Lemma 2, 1/(1-beta))"] == ["^diagnostics/momentum_norm$",
                                                                 "^diagnostics/momentum_norm_bound$"]
    assert ["^diagnostics/noise_scale$", "^step/batch_size$"] in charts.values()
    assert ["^step/learning_rate$", "^diagnostics/update_norm$", "^diagnostics/effective_lr$"] in charts.values()


def _replay(weights, ema):
    """NumPy: per update t, the first K-1 micro-batch gradients of the least-squares loss at
    the weights update t started from, the unbiased |G|^2 and tr(Sigma) of B_s against
    (K-1) B_s, their bias-corrected moving averages and B_simple; and the gradients."""
    x, y, _ = callback_fit.least_squares()
    b_s, b_b = callback_fit.NOISE_BATCH, callback_fit.NOISE_BATCH * (K - 1)
    g2_ema = tr_ema = weight = 0.0
    b_simple, micro_grads = [], []
    for t, w in enumerate(weights):
        grads = []
        for j in range(K - 1):
            lo = (t * K + j) * b_s
            xb, yb = x[lo:lo + b_s].astype(np.float64), y[lo:lo + b_s, 0].astype(np.float64)
            grads.append(2.0 * ((xb @ w - yb)[:, None] * xb).mean(axis=0))   # d/dw mean (x.w - y)^2
        micro_grads.append(grads)
        small = np.mean([g @ g for g in grads])
        big = np.mean(grads, axis=0) @ np.mean(grads, axis=0)
        g2 = (b_b * big - b_s * small) / (b_b - b_s)
        tr = (small - big) / (1 / b_s - 1 / b_b)
        g2_ema, tr_ema, weight = ema * g2_ema + (1 - ema) * g2, ema * tr_ema + (1 - ema) * tr, ema * weight + (1 - ema)
        b_simple.append(tr_ema / g2_ema)
    return np.array(b_simple), micro_grads


def _exact_b_simple(w):
    """tr(Sigma)/|G|^2 over the whole data set's per-example gradients at w."""
    x, y, _ = callback_fit.least_squares()
    x, y = x.astype(np.float64), y[:, 0].astype(np.float64)
    per_example = 2.0 * (x @ w - y)[:, None] * x
    mean = per_example.mean(axis=0)
    return ((per_example - mean) ** 2).sum(axis=1).mean() / (mean @ mean)


def test_noise_scale_equals_a_replay_and_the_trainers_estimator_and_the_exact_value(fitted):
    import tensorflow as tf

    from keras_sngm.noise_scale import NoiseScaleEstimator

    weights = np.load(fitted / "noise_weights.npy").astype(np.float64)
    scalars, _, _ = read_events(fitted / "noise" / "train")
    logged = scalars["diagnostics/noise_scale"]
    updates = callback_fit.NOISE_EXAMPLES // (callback_fit.NOISE_BATCH * K)
    assert sorted(logged) == list(range(1, updates + 1)) and len(weights) == updates
    replay, micro_grads = _replay(weights, callback_fit.NOISE_EMA)
    np.testing.assert_allclose([logged[s] for s in sorted(logged)], replay, rtol=2e-3)
    # The trainers' estimator (the class DistributedOptimizer holds), fed the same gradients.
    est = NoiseScaleEstimator(callback_fit.NOISE_BATCH, K - 1,
                              lambda shape, dtype, name: tf.Variable(tf.zeros(shape, dtype), name=name),
                              ema=callback_fit.NOISE_EMA)
    estimated = []
    for grads in micro_grads:
        for g in grads:
            est.add_micro([tf.constant(g, tf.float32)])
        est.update(est.local_mean(K - 1), [tf.constant(np.mean(grads, axis=0), tf.float32)])
        estimated.append(est.result()["b_simple"])
    np.testing.assert_allclose([logged[s] for s in sorted(logged)], estimated, rtol=2e-3)
    # The exact critical batch of the problem (the weights barely move: lr 1e-7).
    exact = _exact_b_simple(weights[-1])
    assert abs(np.linalg.norm(weights[-1] - weights[0])) < 1e-3 * np.linalg.norm(weights[0])
    assert logged[updates] == pytest.approx(exact, rel=0.10), (logged[updates], exact)
    assert scalars["diagnostics/gradient_diversity_bound"][updates] == pytest.approx(1 + logged[updates], rel=1e-6)
    assert scalars["step/batch_size"][updates] == callback_fit.NOISE_BATCH * K


def test_noise_scale_from_two_replicas_equals_a_replay_and_the_exact_value(tmp_path):
    """MirroredStrategy over two logical CPUs, no accumulation: SNGM keeps each replica's
    gradient norm before the sum, the callback compares B/2 with B."""
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, os.path.join(HERE, "callback_fit.py"), str(tmp_path), "replicas"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no gradient noise scale" not in proc.stderr
    weights = np.load(tmp_path / "replicas_weights.npy").astype(np.float64)
    scalars, _, _ = read_events(tmp_path / "replicas" / "train")
    logged = scalars["diagnostics/noise_scale"]
    b, r, ema = callback_fit.NOISE_BATCH, callback_fit.REPLICAS, callback_fit.NOISE_EMA
    x, y, _ = callback_fit.least_squares()
    g2_ema = tr_ema = 0.0
    replay = []
    for t, w in enumerate(weights):  # replica i gets the i-th contiguous slice of the global batch
        grads = []
        for i in range(r):
            lo = (t * r + i) * b
            xb, yb = x[lo:lo + b].astype(np.float64), y[lo:lo + b, 0].astype(np.float64)
            grads.append(2.0 * ((xb @ w - yb)[:, None] * xb).mean(axis=0))
        small, mean = np.mean([g @ g for g in grads]), np.mean(grads, axis=0)
        g2 = (r * b * (mean @ mean) - b * small) / (r * b - b)
        tr = (small - mean @ mean) / (1 / b - 1 / (r * b))
        g2_ema, tr_ema = ema * g2_ema + (1 - ema) * g2, ema * tr_ema + (1 - ema) * tr
        replay.append(tr_ema / g2_ema)
    assert sorted(logged) == list(range(1, len(weights) + 1))
    np.testing.assert_allclose([logged[s] for s in sorted(logged)], replay, rtol=2e-3)
    assert logged[len(weights)] == pytest.approx(_exact_b_simple(weights[-1]), rel=0.10)
    assert scalars["step/batch_size"][1] == b * r


def _small_fit(callback, optimizer, batch_size=8, epochs=1):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=optimizer, loss="mse")
    x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        model.fit(x, x.sum(axis=1, keepdims=True), batch_size=batch_size, epochs=epochs, verbose=0,
                  callbacks=[callback])
    return [str(w.message) for w in said if str(w.message).startswith("SNGMDiagnostics")]


def test_a_keras_optimizer_gets_the_noise_scale_and_is_told_what_is_missing(tmp_path):
    cb = SNGMDiagnostics(tmp_path / "logs", update_freq=1, batch_size=8)
    schedule = keras.optimizers.schedules.PolynomialDecay(0.01, 32, end_learning_rate=0.0)  # in train steps
    said = _small_fit(cb, keras.optimizers.SGD(schedule, momentum=0.5, gradient_accumulation_steps=4), epochs=2)
    assert len(said) == 1 and "SGD is not a keras_sngm optimizer" in said[0] and "grad_norm" in said[0]
    scalars, _, _ = read_events(tmp_path / "logs" / "train")
    assert "diagnostics/grad_norm" not in scalars and "diagnostics/momentum_norm" not in scalars
    assert sorted(scalars["diagnostics/noise_scale"]) == list(range(1, 5))
    # update s ends with train step 4s: Keras evaluated the schedule at step 4s - 1 for it
    for step in range(1, 5):
        lr = 0.01 * (1 - (4 * step - 1) / 32)
        assert scalars["step/learning_rate"][step] == pytest.approx(lr, rel=1e-6), step
        assert scalars["diagnostics/effective_lr"][step] == pytest.approx(lr / 0.5, rel=1e-6)


def test_without_accumulation_it_says_so_once_and_writes_the_rest(tmp_path):
    cb = SNGMDiagnostics(tmp_path / "logs", update_freq=2, batch_size=8)
    schedule = keras.optimizers.schedules.PolynomialDecay(0.1, 16, end_learning_rate=0.0)
    said = _small_fit(cb, keras_sngm.SNGM(schedule, diagnostics_every=2), epochs=2)
    assert len(said) == 1 and "no gradient noise scale" in said[0] and "gradient_accumulation_steps=k, k >= 3" in said[0]
    scalars, _, _ = read_events(tmp_path / "logs" / "train")
    assert "diagnostics/noise_scale" not in scalars
    assert sorted(scalars["diagnostics/momentum_norm"]) == list(range(1, 17, 2))
    # the rate each logged update used: the schedule at the update count before it
    for step, lr in scalars["step/learning_rate"].items():
        assert lr == pytest.approx(0.1 * (1 - (step - 1) / 16), rel=1e-6), step
    said = _small_fit(SNGMDiagnostics(tmp_path / "b", batch_size=None), keras_sngm.SNGM(gradient_accumulation_steps=3))
    assert len(said) == 1 and "pass the fit's batch_size" in said[0]


@pytest.mark.parametrize("bad, message", [
    ({"update_freq": 0}, "update_freq=0"), ({"update_freq": -3}, "update_freq=-3"),
    ({"update_freq": "epoch"}, "update_freq='epoch'"), ({"batch_size": 0}, "batch_size=0"),
    ({"noise_ema": 1.0}, "noise_ema=1.0")])
def test_bad_arguments_raise_naming_the_value(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        SNGMDiagnostics(tmp_path, **bad)


def test_an_unwritable_log_dir_raises_naming_it(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ValueError, match=f"log_dir='{blocker / 'x'}'"):
        SNGMDiagnostics(str(blocker / "x"))


def test_the_layout_renders_in_headless_chromium(tmp_path):
    """tools/tensorboard_screenshot.py (the README's screenshot): TensorBoard serves the
    callback's event files and Chromium draws the Custom Scalars tab."""
    import shutil

    if not shutil.which("chromium"):
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from PIL import Image

    _small_fit(SNGMDiagnostics(tmp_path / "logs", update_freq=1, batch_size=8),
               keras_sngm.SNGM(0.1, gradient_accumulation_steps=4, diagnostics_every=1), epochs=4)
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    proc = subprocess.run([sys.executable, os.path.join(HERE, "..", "tools", "tensorboard_screenshot.py"),
                           str(tmp_path / "shot.png"), "--logdir", str(tmp_path / "logs"), "--size", "1000,900"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    image = Image.open(tmp_path / "shot.png").convert("RGB")
    assert image.size == (1000, 900)
    assert image.getpixel((500, 20)) == (245, 124, 0)  # TensorBoard's orange bar: the page was drawn
    assert len(image.getcolors(maxcolors=1 << 20)) > 200  # charts, not a blank page
