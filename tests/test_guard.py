"""The divergence guard: a run that goes NaN/Inf stops with a clear message and exit
status 3, saves nothing non-finite, and keeps its newest finite checkpoint."""

import json
import os

import keras
import numpy as np
import pytest

from helpers import sngm_train
import tensorflow as tf

from keras_sngm_trainers import checkpoint, distributed

REPRO = ["resnet", "--dataset", "synthetic", "--train-subset", "512", "--depth", "8", "--batch-size", "128",
         "--micro-batch", "128", "--epochs", "3", "--no-verbose"]


def all_finite(ckpt):
    import h5py

    bad = []
    with h5py.File(os.path.join(ckpt, "model.weights.h5")) as f:
        f.visititems(lambda n, o: bad.append(n) if hasattr(o, "shape") and not np.all(np.isfinite(o[()])) else None)
    with np.load(os.path.join(ckpt, "optimizer.npz")) as d:
        bad += [k for k in d.files if not np.all(np.isfinite(d[k]))]
    return not bad


# Adam's step is about lr per weight whatever the gradient (its L2 is in the gradient, as
# torch.optim.Adam's): it takes a far larger lr than MSGD to overflow float32.
@pytest.mark.parametrize("optimizer, lr", [("msgd", "1e6"), ("adam", "1e30")])
def test_the_reported_divergence_stops_and_saves_nothing(tmp_path, optimizer, lr):
    run = tmp_path / "run"
    proc = sngm_train(REPRO + ["--optimizer", optimizer, "--lr", lr, "--logdir", str(run)])
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "sngm-train: error: training diverged:" in proc.stderr and "epoch 1" in proc.stderr
    assert "no checkpoint was written" in proc.stderr
    assert checkpoint.list_checkpoints(run) == []
    final = json.load(open(run / "final.json"))
    assert final["diverged"] is True and final["epochs_done"] == 0 and "epoch 1" in final["reason"]


def test_newest_finite_checkpoint_survives_a_later_divergence(tmp_path):
    run = tmp_path / "run"
    good = sngm_train(REPRO + ["--optimizer", "msgd", "--lr", "0.01", "--keep", "1", "--stop-after", "2",
                               "--logdir", str(run)])
    assert good.returncode == 0, good.stderr[-2000:]
    # The same run resumed with an absurd lr. --resume refuses a --lr that differs from the
    # run's, so the run's own config.json is edited (its schedule is rebuilt from it).
    saved = json.load(open(run / "config.json"))
    (run / "config.json").write_text(json.dumps({**saved, "lr": 1e6}))
    bad = sngm_train(REPRO + ["--optimizer", "msgd", "--keep", "1", "--logdir", str(run), "--resume"])
    assert bad.returncode == 3, bad.stderr[-2000:]
    assert "after epoch 3" in bad.stderr and f"the newest checkpoint is {run / 'ckpt-00002'}" in bad.stderr
    assert [os.path.basename(p) for p in checkpoint.list_checkpoints(run)] == ["ckpt-00002"]
    assert all_finite(run / "ckpt-00002")
    history = json.load(open(run / "history.json"))["history"]
    assert len(history["loss"]) == 2 and np.all(np.isfinite(history["loss"]))  # the two good epochs
    assert json.load(open(run / "final.json"))["diverged"] is True


def test_checkpoint_save_refuses_non_finite_values(tmp_path):
    m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    m.compile(optimizer="sgd", loss="mse")
    m.optimizer.build(m.trainable_variables)
    checkpoint.save(str(tmp_path), m, m.optimizer, 1, keep=1)
    m.layers[0].bias.assign([np.nan, 0.0])
    with pytest.raises(ValueError, match=r"not saving checkpoint 2 .* 1 tensors hold NaN or Inf \(first: sequential\w*/dense\w*/bias\)"):
        checkpoint.save(str(tmp_path), m, m.optimizer, 2, keep=1)
    assert [os.path.basename(p) for p in checkpoint.list_checkpoints(tmp_path)] == ["ckpt-00001"]


@pytest.mark.parametrize("skip", [True, False])
def test_keras_baseline_non_finite_gradient_skip_or_apply(skip):
    w = keras.Variable(np.ones((2, 2), "float32"))
    opt = distributed.DistributedOptimizer(keras.optimizers.Adam(0.1), skip_nonfinite=skip)
    opt.apply([tf.constant([[1.0, np.nan], [0.0, 1.0]])], [w])
    if skip:
        np.testing.assert_array_equal(w.numpy(), np.ones((2, 2)))
        assert int(opt.skipped_steps) == 1 and int(opt.iterations) == 0
    else:
        assert np.isnan(w.numpy()).any() and int(opt.skipped_steps) == 0
    opt.apply([tf.ones((2, 2))], [w])  # a finite gradient is applied either way
    assert int(opt.iterations) == (1 if skip else 2)
