"""`--batch-size auto`: the decision rule, the lr that follows examples, the gains, the
mechanism (variable accumulation, noise estimates at a changing batch), exact resume,
records, and bad input through the CLI."""

import json
import math
import os
import time

import numpy as np
import pytest

from helpers import sngm_train

from keras_sngm_trainers import batch_adapter

# A small run whose batch grows: synthetic images have B_simple ~ 5, so a factor of 30
# makes the target ~150 and the batch doubles at the first trusted decisions.
AUTO = ["resnet", "--dataset", "synthetic", "--arch", "twoconv", "--train-subset", "512", "--num-classes", "4",
        "--micro-batch", "16", "--lr", "0.1", "--seed", "2", "--no-verbose", "--log-every", "1",
        "--batch-size", "auto", "--batch-min", "32", "--batch-max", "128", "--adapt-every", "5",
        "--adapt-factor", "30", "--epochs", "3"]


def noise(b_simple, g2=1.0, estimates=25):
    return {"b_simple": b_simple, "g2": g2, "estimates": estimates}


def test_decision_rule_against_a_hand_computed_table():
    a = batch_adapter.BatchAdapter(64, 1024, 32, every=5, factor=1.0, rounds_per_epoch=100)
    table = [  # (estimate, batch after the decision, why)
        (noise(500, estimates=19), 64, "too young: 19 updates in the averages"),
        (noise(500, g2=-0.2), 64, "unresolved: |G|^2 <= 0"),
        (noise(math.inf), 64, "unresolved: no finite B_simple"),
        (noise(70), 64, "70 < 1.1 x 64 = 70.4: within the hysteresis"),
        (noise(71), 64, "71 rounds down to 64"),
        (noise(100), 96, "100 rounds down to 96 (a multiple of 32)"),
        (noise(500), 192, "at most doubling: 2 x 96"),
        (noise(150), 192, "never shrinks"),
        (noise(211), 192, "211 < 1.1 x 192 = 211.2"),
        (noise(212), 192, "212 rounds down to 192"),
        (noise(5000), 384, "doubling"),
        (noise(5000), 768, "doubling"),
        (noise(5000), 1024, "1536 clipped to --batch-max"),
        (noise(1e9), 1024, "at the maximum"),
    ]
    for i, (estimate, want, why) in enumerate(table):
        assert a.decide(5 * (i + 1), 0, estimate) == want, why
    assert [d["batch_size"] for d in a.decisions] == [96, 192, 384, 768, 1024]
    assert [d["update"] for d in a.decisions] == [30, 35, 55, 60, 65]
    half = batch_adapter.BatchAdapter(64, 1024, 32, every=5, factor=0.5, rounds_per_epoch=100)
    assert half.decide(5, 0, noise(300)) == 128  # target 150: doubling cap 128
    assert half.decide(10, 0, noise(300)) == 128  # target 150 >= 1.1 x 128, but rounds down to 128


def test_plan_ends_every_epoch_at_the_same_micro_batch():
    """The segments cover every epoch's micro-batches exactly; decisions fall every
    `every` updates; the epoch's last update takes what is left."""
    a = batch_adapter.BatchAdapter(32, 128, 16, every=5, factor=30.0, rounds_per_epoch=14)
    segs = []

    def run(seg):
        segs.append(seg)
        return sum(n * b for _, n, b, _ in a.runs) + seg.steps * 16

    a.plan(0, 0, 0, 3, 0, run, lambda: noise(100))
    for e in range(3):
        mine = [s for s in segs if s.epoch == e]
        assert sum(s.steps for s in mine) == 14 and mine[-1].closes and not any(s.closes for s in mine[:-1])
        assert [s.start for s in mine] == list(np.cumsum([0] + [s.steps for s in mine[:-1]]))
    # (epoch, first micro-batch, k, updates, closes), by hand: 14 micro-batches an epoch.
    # Epoch 1: 5 updates of k=2, the decision at update 5 doubles the batch (k=4), which
    # fits once in the 4 left. Epoch 2: 3 updates of 4 stop at 12; the 2 left make a last,
    # short update (update 10: the batch doubles again). Epoch 3: one of 8, then the 6 left.
    assert [(s.epoch, s.start, s.k, s.steps // s.k, s.closes) for s in segs] == [
        (0, 0, 2, 5, False), (0, 10, 4, 1, True), (1, 0, 4, 3, False), (1, 12, 2, 1, True),
        (2, 0, 8, 1, False), (2, 8, 6, 1, True)]
    assert segs[-1].last and not any(s.last for s in segs[:-1])
    assert [(d["update"], d["batch_size"]) for d in a.decisions] == [(5, 64), (10, 128)]
    assert a.runs == [[0, 5, 32, 0], [5, 4, 64, 160], [9, 1, 32, 416], [10, 1, 128, 448], [11, 1, 96, 576]]


def test_adascale_gain_against_numpy():
    import tensorflow as tf  # noqa: F401

    from keras_sngm_trainers import lr_scaling

    rng = np.random.default_rng(0)
    for _ in range(20):
        g2, trace, s, ref = rng.uniform(0.01, 5), rng.uniform(0.01, 500), rng.uniform(1, 16), 64
        var = trace / ref
        want = (var + g2) / (var / s + g2)
        got = float(lr_scaling.gain("adascale", "msgd", s, g2, trace, ref))
        assert got == pytest.approx(want, rel=1e-5)
        assert 1 <= got <= s + 1e-5
        assert float(lr_scaling.gain("adascale", "adam", s, g2, trace, ref)) == pytest.approx(math.sqrt(want), rel=1e-5)
        assert float(lr_scaling.gain("linear", "msgd", s)) == pytest.approx(s, rel=1e-6)
        assert float(lr_scaling.gain("sqrt", "lamb", s)) == pytest.approx(math.sqrt(s), rel=1e-6)
    assert float(lr_scaling.gain("adascale", "msgd", 4.0, -1.0, 10.0, 64)) == pytest.approx(4.0)  # pure noise: S
    assert float(lr_scaling.gain("adascale", "msgd", 4.0, 0.0, 0.0, 64)) == 1.0  # no estimate yet


def test_variable_accumulation_and_noise_estimates_match_numpy():
    """DistributedOptimizer(adaptive=True): 2 then 3 micro-batches per update, one traced
    apply; the updates are SNGM's on the mean gradient, the noise EMAs fold each update's
    unbiased estimate at its own batch, and `examples` counts every example."""
    import keras
    import tensorflow as tf

    from keras_sngm import SNGM
    from keras_sngm_trainers import distributed

    rng = np.random.default_rng(1)
    w0 = rng.normal(size=5).astype("float32")
    v = keras.Variable(w0.copy())
    opt = distributed.DistributedOptimizer(SNGM(learning_rate=0.1, momentum=0.0), accumulation_steps=2,
                                           micro_batch_size=4, noise_ema=0.5, adaptive=True)
    opt.build([v])
    step = tf.function(lambda g: opt.apply([g], [v]))
    w, g2_ema, tr_ema, weight = w0.astype(np.float64), 0.0, 0.0, 0.0
    for k, updates in ((2, 2), (3, 2)):
        opt.set_accumulation_steps(k)
        for _ in range(updates):
            micro = rng.normal(size=(k, 5)).astype("float32")
            for g in micro:
                step(tf.constant(g))
            mean = micro.astype(np.float64).mean(0)
            w = w - 0.1 * mean / np.linalg.norm(mean)
            small, big, bs, bb = np.mean(np.sum(micro.astype(np.float64) ** 2, 1)), np.sum(mean ** 2), 4, 4 * k
            g2 = (bb * big - bs * small) / (bb - bs)
            tr = (small - big) / (1 / bs - 1 / bb)
            g2_ema, tr_ema, weight = 0.5 * g2_ema + 0.5 * g2, 0.5 * tr_ema + 0.5 * tr, 0.5 * weight + 0.5
    np.testing.assert_allclose(v.numpy(), w, rtol=1e-5)
    got = opt.noise_scale()
    assert got["g2"] == pytest.approx(g2_ema / weight, rel=1e-4)
    assert got["trace"] == pytest.approx(tr_ema / weight, rel=1e-4)
    assert got["batch"] == 12 and int(opt.examples.numpy()) == 2 * 8 + 2 * 12 and got["estimates"] == 4
    step(tf.constant(np.ones(5, "float32")))
    with pytest.raises(ValueError, match="inside an update"):
        opt.set_accumulation_steps(2)


def _scalars(logdir):
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["tensors"]:
        events = acc.Tensors(tag)
        if events and events[0].tensor_proto.dtype != 7:  # not a string (the layout)
            out[tag] = {e.step: float(np.asarray(tf.make_ndarray(e.tensor_proto))) for e in events}
    return out, acc


@pytest.mark.parametrize("schedule", [["--schedule", "poly", "--power", "2", "--warmup-epochs", "1"],
                                      ["--schedule", "step", "--step-epochs", "1", "2", "--lr-per-epoch"]],
                         ids=["poly-warmup", "step-per-epoch"])
def test_lr_at_every_epoch_start_equals_the_fixed_batch_run(tmp_path, schedule):
    auto = sngm_train(AUTO + schedule + ["--logdir", str(tmp_path / "auto")])
    assert auto.returncode == 0, auto.stderr[-2000:]
    fixed_flags = [f for f in AUTO if f not in ("auto",)]
    i = fixed_flags.index("--batch-size")
    fixed_flags = fixed_flags[:i] + ["--batch-size", "32"] + [f for f in fixed_flags[i + 1:]]
    for name in ("--batch-min", "--batch-max", "--adapt-every", "--adapt-factor"):
        j = fixed_flags.index(name)
        del fixed_flags[j:j + 2]
    fixed = sngm_train(fixed_flags + schedule + ["--logdir", str(tmp_path / "fixed")])
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    a, _ = _scalars(tmp_path / "auto" / "train")
    f, _ = _scalars(tmp_path / "fixed" / "train")
    assert len(set(a["step/batch_size"].values())) > 1  # the batch did change
    epoch_examples = 512
    before = {n: a["step/examples"][n] - a["step/batch_size"][n] for n in a["step/examples"]}
    for e in range(3):
        first = [n for n, x in before.items() if x == e * epoch_examples]
        assert len(first) == 1, e  # an update starts exactly at each epoch's first example
        assert a["step/learning_rate"][first[0]] == pytest.approx(f["step/learning_rate"][e * 16 + 1], rel=1e-6), e
    ends = sorted(n for n, x in a["step/examples"].items() if x % epoch_examples == 0)
    assert [a["step/examples"][n] for n in ends] == [512, 1024, 1536]
    # SNGM keeps its lr (no gain): every update's rate is the fixed run's at the same examples
    for n, x in before.items():
        assert a["step/learning_rate"][n] == pytest.approx(f["step/learning_rate"][x // 32 + 1], rel=1e-6), n
    hist = json.load(open(tmp_path / "auto" / "history.json"))
    assert hist["batch_runs"][0][:3] == [0, 20, 32] and max(r[2] for r in hist["batch_runs"]) > 32
    final = json.load(open(tmp_path / "auto" / "final.json"))
    assert final["examples"] == 1536 and final["updates"] == sum(r[1] for r in hist["batch_runs"]) < 48


def test_resume_across_a_batch_change_is_bit_identical(tmp_path):
    """Killed (--stop-after-updates) 3 updates after the first change, mid-epoch 2, and again
    after the second: the resumed run ends with the weights, optimizer state, logs and
    batch trajectory of the uninterrupted one."""
    from helpers import weights_of

    flags = AUTO + ["--deterministic", "--ckpt-every-steps", "4"]
    straight = sngm_train(flags + ["--logdir", str(tmp_path / "a")])
    assert straight.returncode == 0, straight.stderr[-2000:]
    b = str(tmp_path / "b")
    part = sngm_train(flags + ["--logdir", b, "--stop-after-updates", "23"])
    assert part.returncode == 0, part.stderr[-2000:]
    assert json.load(open(os.path.join(b, "final.json")))["stopped_at"] == {"epoch": 2, "update_in_epoch": 7}
    again = sngm_train(flags + ["--logdir", b, "--resume", "--stop-after-updates", "3"])
    assert again.returncode == 0, again.stderr[-2000:]
    rest = sngm_train(flags + ["--logdir", b, "--resume"])
    assert rest.returncode == 0, rest.stderr[-2000:]
    wa, wb = weights_of(tmp_path / "a" / "ckpt-00003"), weights_of(tmp_path / "b" / "ckpt-00003")
    assert len(wa) > 3
    for (name, x), (_, y) in zip(wa, wb):
        np.testing.assert_array_equal(x, y, err_msg=name)
    with np.load(tmp_path / "a" / "ckpt-00003" / "optimizer.npz") as oa, \
            np.load(tmp_path / "b" / "ckpt-00003" / "optimizer.npz") as ob:
        for key in oa.files:
            np.testing.assert_array_equal(oa[key], ob[key])
    ha, hb = (json.load(open(tmp_path / d / "history.json")) for d in "ab")
    for h in (ha, hb):
        del h["history"]["examples_per_sec"], h["resumed_at"]
    assert ha == hb
    fa, fb = (json.load(open(tmp_path / d / "final.json")) for d in "ab")
    assert fa == fb and [d["update"] for d in fa["batch_trajectory"]][:2] == [20, 25]  # both stops came after one


def test_diagnostics_guard_and_layout_with_auto(tmp_path):
    run = tmp_path / "run"
    proc = sngm_train(AUTO + ["--diagnostics-every", "1", "--logdir", str(run)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    scalars, acc = _scalars(run / "train")
    for tag in ("diagnostics/noise_scale", "diagnostics/momentum_norm", "step/batch_size", "step/examples"):
        assert tag in scalars, sorted(scalars)
    assert "diagnostics/batch_size" not in scalars  # the batch is logged once, as step/batch_size
    # the batch of every update, and the examples after it, on the update axis
    batches, examples = scalars["step/batch_size"], scalars["step/examples"]
    assert sorted(batches) == sorted(examples) == list(range(1, len(batches) + 1))
    assert all(examples[n] == examples.get(n - 1, 0) + batches[n] for n in batches)
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    import tensorflow as tf

    (event,) = acc.Tensors(metadata.CONFIG_SUMMARY_TAG)
    layout = layout_pb2.Layout.FromString(tf.make_ndarray(event.tensor_proto).item())
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    assert ["^diagnostics/noise_scale$", "^step/batch_size$"] in charts.values()
    assert ["^diagnostics/momentum_norm$", "^diagnostics/momentum_norm_bound$"] in charts.values()
    # The divergence guard still stops a run that blows up, with the batch adapting.
    bad = [f if f != "0.1" else "1e6" for f in AUTO]
    i = bad.index("--arch")
    diverged = sngm_train(bad[:i] + ["--optimizer", "msgd", "--lr-scaling", "linear"] + bad[i:] +
                          ["--logdir", str(tmp_path / "bad")])
    assert diverged.returncode == 3, diverged.stderr[-2000:]
    assert "training diverged" in diverged.stderr
    assert json.load(open(tmp_path / "bad" / "final.json"))["diverged"]


BAD = [  # (flags after AUTO's, the flag named, a fragment of the rule)
    (["--batch-min", "256", "--batch-max", "128"], "--batch-min 256", "above --batch-max 128"),
    (["--batch-min", "16"], "--batch-min 16", "fewer than two micro-batch gradients"),
    (["--batch-min", "40"], "--batch-min 40", "not a multiple of workers x micro-batch = 1 x 16 = 16"),
    (["--batch-max", "100"], "--batch-max 100", "not a multiple of workers x micro-batch = 1 x 16 = 16"),
    (["--adapt-factor", "0"], "--adapt-factor", "must be a positive number"),
    (["--adapt-factor", "nan"], "--adapt-factor", "must be a positive number"),
    (["--adapt-every", "0"], "--adapt-every", "must be >= 1"),
    (["--elastic"], "--elastic", "cannot be combined with --batch-size auto"),
    (["--steps-per-epoch", "3"], "--steps-per-epoch", "cannot be combined with --batch-size auto"),
    (["--steps-per-execution", "2"], "--steps-per-execution", "cannot be combined with --batch-size auto"),
    (["--lr-scaling", "linear"], "--lr-scaling linear", "sngm keeps its learning rate"),
    (["--batch-size", "64"], "--batch-min", "is used only with --batch-size auto"),
    (["--batch-size", "64", "--batch-min", "0", "--batch-max", "0", "--lr-scaling", "sqrt"], "--lr-scaling",
     "is used only with --batch-size auto"),
    (["--batch-min", "0"], "--batch-min", "is required with --batch-size auto"),
]


@pytest.mark.parametrize("extra,name,rule", BAD, ids=[b[1] + " " + b[2][:20] for b in BAD])
def test_bad_adaptive_flags_fail_fast_naming_the_flag(tmp_path, extra, name, rule):
    t0 = time.perf_counter()
    proc = sngm_train(AUTO + extra + ["--logdir", str(tmp_path / "r")])
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("sngm-train: error: ") and name in proc.stderr and rule in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and elapsed < 5  # before TensorFlow is imported


def test_batch_size_that_is_neither_a_number_nor_auto():
    proc = sngm_train(["resnet", "--batch-size", "big"])
    assert proc.returncode == 2 and "--batch-size: must be a positive integer or 'auto'. Received: 'big'" in proc.stderr
