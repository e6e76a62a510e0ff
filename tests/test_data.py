"""Loaders on fixtures written here in the real formats, and on ../shared/data when present."""

import csv
import os
import pickle
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from trainers.data import criteo, images, planted_ctr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SNGM_DATA_CACHE", str(tmp_path / "cache"))


def fake_cifar(n, classes, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, classes, n)


def to_rows(x):  # CIFAR's on-disk layout: 3072 bytes = R plane, G plane, B plane
    return x.transpose(0, 3, 1, 2).reshape(len(x), -1)


def test_cifar10_python_pickle(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    parts = [fake_cifar(6, 10, i) for i in range(6)]
    for i, (x, y) in enumerate(parts):
        name = f"data_batch_{i + 1}" if i < 5 else "test_batch"
        with open(d / name, "wb") as f:
            pickle.dump({b"data": to_rows(x), b"labels": list(map(int, y))}, f)
    (xtr, ytr), (xte, yte), classes, source = images.load(data_dir=str(tmp_path))
    assert classes == 10 and "cifar10-pickle" in source
    np.testing.assert_array_equal(xtr, np.concatenate([p[0] for p in parts[:5]]))
    np.testing.assert_array_equal(ytr, np.concatenate([p[1] for p in parts[:5]]))
    np.testing.assert_array_equal(xte, parts[5][0])


def test_cifar100_python_pickle(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    (x, y), (xt, yt) = fake_cifar(8, 100, 0), fake_cifar(4, 100, 1)
    for name, a, b in (("train", x, y), ("test", xt, yt)):
        with open(d / name, "wb") as f:
            pickle.dump({b"data": to_rows(a), b"fine_labels": list(map(int, b)), b"coarse_labels": [0] * len(b)}, f)
    (xtr, ytr), (xte, yte), classes, _ = images.load("cifar100", data_dir=str(tmp_path))
    assert classes == 100
    np.testing.assert_array_equal(xtr, x)
    np.testing.assert_array_equal(yte, yt)


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_binary(tmp_path, classes):
    d = tmp_path / ("cifar-10-batches-bin" if classes == 10 else "cifar-100-binary")
    d.mkdir()
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"] if classes == 10 else ["train.bin", "test.bin"]
    parts = []
    for i, name in enumerate(names):
        x, y = fake_cifar(5, classes, i)
        labels = y[:, None] if classes == 10 else np.stack([y // 5, y], 1)  # CIFAR-100: coarse, fine
        np.concatenate([labels.astype(np.uint8), to_rows(x)], 1).tofile(d / name)
        parts.append((x, y))
    (xtr, ytr), (xte, yte), c, _ = images.load(data_dir=str(tmp_path))
    assert c == classes
    np.testing.assert_array_equal(xtr, np.concatenate([p[0] for p in parts[:-1]]))
    np.testing.assert_array_equal(ytr, np.concatenate([p[1] for p in parts[:-1]]))
    np.testing.assert_array_equal(yte, parts[-1][1])


def test_cifar_binary_truncated_file_is_an_error(tmp_path):
    d = tmp_path / "cifar-10-batches-bin"
    d.mkdir()
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        np.zeros(3073 * 2 - 7, np.uint8).tofile(d / name)
    with pytest.raises(ValueError, match="not a multiple of the 3073-byte CIFAR record"):
        images.load(data_dir=str(tmp_path))


def write_image_folder(root, per_class=3, classes=("cat", "dog")):
    truth = {}
    for split in ("train", "test"):
        xs, ys = [], []
        for ci, c in enumerate(classes):
            os.makedirs(root / split / c)
            for i in range(per_class):
                img = np.random.default_rng(hash((split, c, i)) & 0xFFFF).integers(0, 256, (32, 32, 3), dtype=np.uint8)
                tf.io.write_file(str(root / split / c / f"{i:04d}.png"), tf.io.encode_png(img))
                xs.append(img)
                ys.append(ci)
        truth[split] = (np.stack(xs), np.array(ys))
    return truth


@pytest.mark.parametrize("as_tar", [False, True])
def test_image_folder_and_tar(tmp_path, as_tar):
    truth = write_image_folder(tmp_path / "src" / "mydata")
    data_dir = tmp_path / "src"
    if as_tar:
        with tarfile.open(tmp_path / "d.tar", "w") as t:
            t.add(tmp_path / "src" / "mydata", arcname="mydata")
        data_dir = tmp_path / "d.tar"
    (xtr, ytr), (xte, yte), classes, source = images.load(data_dir=str(data_dir))
    assert classes == 2 and "image folder" in source
    np.testing.assert_array_equal(xtr, truth["train"][0])  # PNG is lossless
    np.testing.assert_array_equal(ytr, truth["train"][1])
    np.testing.assert_array_equal(yte, truth["test"][1])
    again = images.load(data_dir=str(data_dir))  # from the decoded cache
    np.testing.assert_array_equal(again[0][0], xtr)


def test_augmentation_pipeline_shapes_and_determinism():
    x, y = fake_cifar(64, 10, 0)
    a = list(images.train_dataset(x, y, 10, 8, seed=1, first_epoch=0, micro_steps=8).take(9))
    b = list(images.train_dataset(x, y, 10, 8, seed=1, first_epoch=0, micro_steps=8).take(9))
    c = list(images.train_dataset(x, y, 10, 8, seed=1, first_epoch=1, micro_steps=8).take(1))
    assert a[0][0].shape == (8, 32, 32, 3)
    np.testing.assert_array_equal(a[8][0], c[0][0])  # epoch 1 starts after 8 micro-batches
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u[0], v[0])
    # per-channel normalization: roughly zero mean over the epoch
    assert abs(float(np.mean(np.concatenate([u[0] for u in a[:8]])))) < 0.3
    seen = np.sort(np.concatenate([u[1] for u in a[:8]]))
    np.testing.assert_array_equal(seen, np.sort(y))  # each example once per epoch


def test_real_cifar10_jpeg_tar(shared_data):
    (xtr, ytr), (xte, yte), classes, _ = images.load(data_dir=os.path.join(shared_data, "cifar10-jpeg.tar"))
    assert xtr.shape == (50000, 32, 32, 3) and xte.shape == (10000, 32, 32, 3) and classes == 10
    np.testing.assert_array_equal(np.bincount(ytr), [5000] * 10)
    np.testing.assert_array_equal(np.bincount(yte), [1000] * 10)


# ------------------------------------------------------------------ Criteo
TSV_ROWS = [
    "1\t5\t\t-2\t" + "\t".join(["0"] * 10) + "\tabc\t\tdef",  # short row: 17 fields, missing values
    "0\t" + "\t".join(str(i) for i in range(13)) + "\t" + "\t".join(f"c{i}" for i in range(26)),
]


def rows_of(path, **kw):
    ds = criteo.dataset(str(path), 1, 1000, drop_remainder=False, **kw)
    return [(x["dense"].numpy()[0], x["categorical"].numpy()[0], float(y.numpy()[0, 0])) for x, y in ds]


def test_criteo_tsv_short_rows_and_missing_values(tmp_path):
    p = tmp_path / "d.tsv"
    p.write_text("\n".join(TSV_ROWS) + "\n")
    (d0, c0, y0), (d1, c1, y1) = rows_of(p)
    assert (y0, y1) == (1.0, 0.0)
    np.testing.assert_allclose(d0[:3], [np.log1p(5), 0.0, 0.0])  # missing -> 0, negative -> log1p(0)
    np.testing.assert_allclose(d1, np.log1p(np.arange(13)), rtol=1e-6)
    h = lambda s: int(tf.strings.to_hash_bucket_fast(s, 1000))  # noqa: E731
    assert c0[0] == h("C1=abc") and c0[1] == h("C2=") and c0[2] == h("C3=def") and c0[25] == h("C26=")
    assert c1[4] == h("C5=c4")


def test_criteo_csv_with_header(tmp_path):
    p = tmp_path / "d.csv"
    header = ",".join(["label"] + criteo.DENSE + criteo.CATEGORICAL)
    row = ",".join(["1", "260.0", ""] + ["1.0"] * 11 + ["x"] * 26)
    p.write_text(header + "\n" + row + "\n")
    ((d, c, y),) = rows_of(p)
    assert y == 1.0
    np.testing.assert_allclose(d[:2], [np.log1p(260.0), 0.0], rtol=1e-6)


def test_criteo_malformed_row_error_names_file_and_line(tmp_path):
    p = tmp_path / "bad.tsv"
    p.write_text("\n".join(TSV_ROWS + ["0\tnot_a_number"] + TSV_ROWS) + "\n")
    with pytest.raises(tf.errors.InvalidArgumentError) as e:
        rows_of(p)
    assert "bad.tsv" in str(e.value) and "line" in str(e.value) and "3" in str(e.value)
    counter = criteo.BadRowCounter()
    assert len(rows_of(p, skip_bad_rows=True, counter=counter)) == 4
    assert counter.count == 1
    rows_of(p, skip_bad_rows=True, counter=counter)  # a second epoch over the same file
    assert counter.count == 1, "a row read twice is one malformed row"
    p2 = tmp_path / "bad2.tsv"
    p2.write_text("2\t1\n" + "\t".join(["0"] * 41) + "\n")
    counter = criteo.BadRowCounter()
    assert rows_of(p2, skip_bad_rows=True, counter=counter) == [] and counter.count == 2


def test_cli_malformed_row_and_skip_flag(tmp_path):
    data = tmp_path / "ctr"
    planted_ctr.generate(str(data), 300, 50, seed=0)
    lines = open(data / "train.tsv").read().splitlines()
    lines[6] = "1\tx\ty"
    open(data / "train.tsv", "w").write("\n".join(lines) + "\n")
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    base = [os.path.join(os.path.dirname(sys.executable), "sngm-train"), "deepfm", "--data", str(data / "train.tsv"),
            "--batch-size", "64", "--micro-batch", "64", "--epochs", "1", "--hash-space", "256", "--hidden", "8",
            "--shuffle-buffer", "0", "--no-verbose", "--logdir", str(tmp_path / "run")]
    proc = subprocess.run(base, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-1500:]
    assert f"malformed Criteo row in {data / 'train.tsv'}, line 7: an integer field (I1..I13) is not a number" in proc.stderr
    proc = subprocess.run(base + ["--skip-bad-rows"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert "skipped 1 malformed rows" in proc.stdout


def test_real_criteo_samples(shared_data):
    tsv = os.path.join(shared_data, "criteo", "criteo_1k.tsv")
    rows = rows_of(tsv)
    labels = [int(line.split("\t")[0]) for line in open(tsv)]
    assert len(rows) == len(labels) == 1000 and sum(r[2] for r in rows) == sum(labels) == 205
    first = open(tsv).readline().rstrip("\n").split("\t")
    want = [np.log1p(max(float(v), 0)) if v else 0.0 for v in first[1:14]]
    np.testing.assert_allclose(rows[0][0], want, rtol=1e-6)
    path = os.path.join(shared_data, "criteo", "criteo_sample.csv")
    ref = list(csv.DictReader(open(path)))
    rows = rows_of(path)
    assert len(rows) == len(ref) == 200
    assert sum(r[2] for r in rows) == sum(float(r["label"]) for r in ref)
    want = [np.log1p(max(float(ref[0][k]), 0)) if ref[0][k] else 0.0 for k in criteo.DENSE]
    np.testing.assert_allclose(rows[0][0], want, rtol=1e-6)


def test_planted_generator_truth(tmp_path):
    truth = planted_ctr.generate(str(tmp_path), 2000, 4000, seed=3)
    assert 0.2 < truth["test_positive_rate"] < 0.3
    assert 0.75 < truth["best_test_auc"] < 0.95  # informative but not trivial
    assert len(rows_of(tmp_path / "test.tsv")) == 4000
    # auc() against an independent O(n^2) count
    rng = np.random.default_rng(0)
    s, y = rng.random(300).round(2), rng.integers(0, 2, 300)
    pairs = [(a > b) + 0.5 * (a == b) for a, ya in zip(s, y) if ya for b, yb in zip(s, y) if not yb]
    assert planted_ctr.auc(s, y) == pytest.approx(np.mean(pairs))
