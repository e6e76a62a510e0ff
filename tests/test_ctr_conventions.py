"""DeepCTR-Torch's conventions in `sngm-train deepfm`: the summed loss (`--loss-reduction
sum`), the min-max dense transform, and their bad input."""

import json
import os

import numpy as np
import pytest

from helpers import BIN, sngm_train, weights_of

from keras_sngm_trainers.data import planted_ctr


def _raw_dense(path):
    """The 13 dense columns of a raw Criteo TSV, NaN where missing (NumPy, not our parser)."""
    rows = [line.rstrip("\n").split("\t") for line in open(path)]
    return np.array([[float(v) if v != "" else np.nan for v in (r + [""] * 40)[1:14]] for r in rows])


def test_minmax_transform_equals_numpy(tmp_path):
    """Fitted on a planted file made here: min and max over the training rows with missing
    values as 0 (DeepCTR's fillna(0) before MinMaxScaler), then (x - min) / (max - min) on
    another file, as the parser delivers it."""
    from keras_sngm_trainers.data import criteo

    planted_ctr.generate(str(tmp_path), 3000, 500, seed=4)
    train, test = _raw_dense(tmp_path / "train.tsv"), _raw_dense(tmp_path / "test.tsv")
    assert np.isnan(train).any(0).all()  # every field misses values somewhere: the fill matters
    spec = criteo.fit_minmax([str(tmp_path / "train.tsv")])
    filled = np.nan_to_num(train, nan=0.0)
    np.testing.assert_array_equal(spec["min"], filled.min(0))
    np.testing.assert_array_equal(spec["max"], filled.max(0))
    assert spec["fitted_on_rows"] == 3000
    got = np.concatenate([x["dense"].numpy() for x, _ in criteo.dataset(
        [str(tmp_path / "test.tsv")], 128, 1024, drop_remainder=False, dense=spec)])
    want = (np.nan_to_num(test, nan=0.0) - filled.min(0)) / (filled.max(0) - filled.min(0))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert got.max() > 0.3


@pytest.mark.slow
def test_summed_loss_step_is_b_times_the_mean_step(tmp_path):
    """One momentum-SGD update (no weight decay): with --loss-reduction sum at lr e the
    weights move as with the mean at lr B*e, since the gradient is B times the mean's;
    in one process (4 micro-batches accumulated) and under horovodrun -np 2 (2 each, the
    averaging over workers included)."""
    planted_ctr.generate(str(tmp_path / "ctr"), 2048, 256, seed=2)
    flags = ["deepfm", "--data", str(tmp_path / "ctr" / "train.tsv"), "--test-data", str(tmp_path / "ctr" / "test.tsv"),
             "--batch-size", "512", "--micro-batch", "128", "--hash-space", "4096", "--embedding-dim", "4",
             "--hidden", "16", "--shuffle-buffer", "0", "--optimizer", "msgd", "--weight-decay", "0", "--momentum", "0.9",
             "--schedule", "constant", "--epochs", "1", "--steps-per-epoch", "1", "--no-verbose", "--diagnostics-every",
             "0", "--deterministic"]
    runs, losses = {}, {}
    # (two workers with the mean follow from the three: sum = mean in one process, one = two with sum)
    for where, reduction, lr in (("one", "sum", "0.0001"), ("one", "mean", str(0.0001 * 512)), ("two", "sum", "0.0001")):
        run = tmp_path / f"{where}-{reduction}"
        args = flags + ["--loss-reduction", reduction, "--lr", lr, "--logdir", str(run)]
        if where == "one":
            proc = sngm_train(args)
        else:
            from test_horovod import horovodrun

            proc = horovodrun([os.path.join(BIN, "sngm-train"), *args])
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        runs[where, reduction] = {k: v for k, v in weights_of(run / "ckpt-00001") if not k.startswith("optimizer")}
        losses[where, reduction] = json.load(open(run / "history.json"))["history"]["loss"][0]
    np.testing.assert_allclose(losses["one", "sum"], 512 * losses["one", "mean"], rtol=1e-5)  # the batch's sum
    np.testing.assert_allclose(losses["two", "sum"], losses["one", "sum"], rtol=1e-5)  # summed over workers too
    s, m = runs["one", "sum"], runs["one", "mean"]
    assert s.keys() == m.keys() and len(s) >= 6
    for name in s:
        np.testing.assert_allclose(s[name], m[name], rtol=1e-4, atol=1e-6, err_msg=f"one: {name}")
    for name in s:  # and one process equals two workers
        np.testing.assert_allclose(s[name], runs["two", "sum"][name], rtol=1e-4, atol=1e-6, err_msg=f"two: {name}")


def _bad(tmp_path, *flags):
    proc = sngm_train(["deepfm", "--logdir", str(tmp_path / "run"), *flags])
    assert proc.returncode == 2, proc.stderr[-2000:]
    return proc.stderr.strip()


def test_bad_input_is_named(tmp_path):
    planted_ctr.generate(str(tmp_path / "ctr"), 600, 100, seed=1)
    train = str(tmp_path / "ctr" / "train.tsv")
    # a training file whose field I3 holds no value at all
    rows = [line.rstrip("\n").split("\t") for line in open(train)]
    for r in rows:
        r[3] = ""
    (tmp_path / "empty-i3.tsv").write_text("".join("\t".join(r) + "\n" for r in rows))
    err = _bad(tmp_path, "--data", str(tmp_path / "empty-i3.tsv"), "--dense-transform", "minmax", "--batch-size", "128",
               "--micro-batch", "64")
    assert "--dense-transform minmax: dense field I3 has no value in any of the 600 training rows" in err, err
    # a prepared folder whose transform differs from the flags
    prep = sngm_train(["prep-criteo", "--data", train, "--out", str(tmp_path / "prep"), "--hash-space", "4096"])
    assert prep.returncode == 0, prep.stderr
    assert json.load(open(tmp_path / "prep" / "meta.json"))["dense_transform"] == {"dense_transform": "log1p"}
    err = _bad(tmp_path, "--data", str(tmp_path / "prep"), "--hash-space", "4096", "--dense-transform", "minmax",
               "--batch-size", "128", "--micro-batch", "64")
    assert "was prepared with --dense-transform log1p; the dense values differ with --dense-transform minmax" in err
    # a test folder prepared with its own fit, not the training data's
    for name, data in (("train-mm", train), ("test-mm", str(tmp_path / "ctr" / "test.tsv"))):
        proc = sngm_train(["prep-criteo", "--data", data, "--out", str(tmp_path / name), "--hash-space", "4096",
                           "--dense-transform", "minmax"])
        assert proc.returncode == 0, proc.stderr
    err = _bad(tmp_path, "--data", str(tmp_path / "train-mm"), "--test-data", str(tmp_path / "test-mm"), "--hash-space",
               "4096", "--dense-transform", "minmax", "--batch-size", "128", "--micro-batch", "64")
    assert "was prepared with another min-max fit than the training data's" in err, err
    # sum with the options whose meaning it would silently change
    err = _bad(tmp_path, "--data", train, "--loss-reduction", "sum", "--scale-lr")
    assert err == ("sngm-train: error: --loss-reduction sum cannot be combined with --scale-lr: the summed gradient "
                   "already grows with the batch, and the lr would grow with the workers on top. Received: 'sum'")
    err = _bad(tmp_path, "--data", train, "--loss-reduction", "sum", "--batch-size", "auto", "--batch-min", "2048",
               "--batch-max", "8192")
    assert "--loss-reduction sum cannot be combined with --batch-size auto" in err, err
    err = _bad(tmp_path, "--data", "synthetic", "--dense-transform", "minmax")
    assert "--dense-transform minmax is fitted on data files; --data synthetic has none" in err, err
    # the same test folder prepared with the training fit is accepted
    proc = sngm_train(["prep-criteo", "--data", str(tmp_path / "ctr" / "test.tsv"), "--out", str(tmp_path / "test-mm"),
                       "--hash-space", "4096", "--dense-transform", "minmax", "--fit-data", train])
    assert proc.returncode == 0, proc.stderr
    assert json.load(open(tmp_path / "test-mm" / "meta.json"))["dense_transform"]["min"] == json.load(
        open(tmp_path / "train-mm" / "meta.json"))["dense_transform"]["min"]
