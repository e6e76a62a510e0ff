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

from keras_sngm_trainers.data import criteo, images, planted_ctr, sharding

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
    ds = criteo.dataset(str(path), 1, 1000, drop_remainder=False, **kw)  # one row per batch
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


BAD_ROWS = {  # defect -> (row, the reason the error must give)
    "too many fields": ("\t".join(["0"] * 41), "41 fields, at most 40 expected"),
    "a 41st field that is empty": ("\t".join(["0"] * 40) + "\t", "41 fields, at most 40 expected"),
    "label not 0/1": ("2\t1\t2", "label '2' is not 0 or 1"),
    "empty label": ("\t1\t2", "label '' is not 0 or 1"),
    "non-numeric integer": ("0\t1\tabc\t3", "integer field I2 is not a number: 'abc'"),
    "exponent notation": ("1\t1e5", "integer field I1 is not a number: '1e5'"),
    "46-digit integer": ("0\t1\t2\t" + "9" * 46, "integer field I3 is out of the 64-bit integer range"),
}


@pytest.mark.parametrize("defect", sorted(BAD_ROWS))
def test_criteo_each_malformed_row_stops_with_file_line_and_reason(tmp_path, defect):
    row, reason = BAD_ROWS[defect]
    p = tmp_path / "bad.tsv"
    p.write_text("\n".join(TSV_ROWS + TSV_ROWS + [row] + TSV_ROWS) + "\n")  # the bad row is line 5
    with pytest.raises(tf.errors.InvalidArgumentError) as e:
        rows_of(p)
    msg = str(e.value)
    assert f"[{p}] [line] [5] [:]" in msg and reason.replace("'", "\\'") in msg, msg[:600]  # (C-escaped by tf.Assert)
    counter = criteo.BadRowCounter()
    assert len(rows_of(p, skip_bad_rows=True, counter=counter)) == 6
    assert counter.count == 1
    rows_of(p, skip_bad_rows=True, counter=counter)  # a second epoch over the same file
    assert counter.count == 1, "a row read twice is one malformed row"


def test_criteo_overflowing_integer_is_malformed_not_inf(tmp_path):
    p = tmp_path / "big.tsv"
    ok = "0\t" + "9" * 18 + "\t-" + "9" * 18  # within the 64-bit range: kept
    p.write_text(ok + "\n1\t" + "1" * 46 + "\n")
    counter = criteo.BadRowCounter()
    rows = rows_of(p, skip_bad_rows=True, counter=counter)
    assert counter.count == 1 and len(rows) == 1
    np.testing.assert_allclose(rows[0][0][:2], [np.log1p(1e18 - 1), 0.0], rtol=1e-6)
    assert np.all(np.isfinite(rows[0][0]))


def edge_case_rows(n=3000, seed=0):
    """Random rows with every legal oddity: short rows, empty fields, negatives, float
    integers ('260.0'), labels '1.0', 18-digit counts, odd category strings."""
    rng = np.random.default_rng(seed)
    cats = ["", "a", "68fd1e64", "ü", "x y", "0", "-1", "C1=", "#"]
    out = []
    for _ in range(n):
        label = rng.choice(["0", "1", "0.0", "1.00"])
        ints = [rng.choice(["", str(rng.integers(-5, 1000)), f"{rng.integers(0, 500)}.0",
                            str(rng.integers(0, 10**18)), "007"]) for _ in range(13)]
        row = [label] + ints + [rng.choice(cats) for _ in range(26)]
        out.append("\t".join(row[:rng.choice([40, 40, 40, 14, 27, 39, 1 + rng.integers(1, 40)])]))
    return out


def test_vectorized_parser_equals_rowwise_reference(tmp_path):
    from criteo_rowwise import parse_file

    p = tmp_path / "edge.tsv"
    p.write_text("\n".join(edge_case_rows()) + "\n")
    want = parse_file(str(p), 2**18)
    assert all(r[3] for r in want)
    got = criteo.dataset(str(p), 512, 2**18, drop_remainder=False)
    dense = np.concatenate([x["dense"].numpy() for x, _ in got])
    ids = np.concatenate([x["categorical"].numpy() for x, _ in got])
    labels = np.concatenate([y.numpy()[:, 0] for _, y in got])
    # log1p's vectorized and scalar kernels may differ in the last bits (measured: 2 ulp)
    np.testing.assert_array_max_ulp(dense, np.stack([r[0] for r in want]), maxulp=2)
    np.testing.assert_array_equal(ids, np.stack([r[1] for r in want]))
    np.testing.assert_array_equal(labels, [r[2] for r in want])


def test_vectorized_parser_equals_rowwise_on_real_samples(shared_data):
    from criteo_rowwise import parse_file

    for name, is_csv in (("criteo_1k.tsv", False), ("criteo_sample.csv", True)):
        path = os.path.join(shared_data, "criteo", name)
        want = parse_file(path, 2**18, csv=is_csv)
        got = list(criteo.dataset(path, 10_000, 2**18, drop_remainder=False))
        assert len(got) == 1 and len(want) == len(got[0][1])
        np.testing.assert_array_max_ulp(got[0][0]["dense"].numpy(), np.stack([r[0] for r in want]), maxulp=2)
        np.testing.assert_array_equal(got[0][0]["categorical"].numpy(), np.stack([r[1] for r in want]), err_msg=name)
        np.testing.assert_array_equal(got[0][1].numpy()[:, 0], [r[2] for r in want], err_msg=name)


def test_gzip_equals_plain_and_crlf_equals_lf(tmp_path):
    import gzip

    text = "\n".join(edge_case_rows(500, seed=1)) + "\n"
    (tmp_path / "plain.tsv").write_text(text)
    with gzip.open(tmp_path / "day_0.gz", "wt") as f:
        f.write(text)
    (tmp_path / "crlf.tsv").write_bytes(text.replace("\n", "\r\n").encode())
    a, b, c = ([(x["dense"].numpy(), x["categorical"].numpy(), y.numpy()) for x, y in
                criteo.dataset(str(tmp_path / f), 128, 1000, shuffle_buffer=256, seed=3, drop_remainder=False)]
               for f in ("plain.tsv", "day_0.gz", "crlf.tsv"))
    assert len(a) == 4
    for u, v, w in zip(a, b, c):
        for i in range(3):
            np.testing.assert_array_equal(u[i], v[i])
            np.testing.assert_array_equal(u[i], w[i])
    assert criteo.count_rows([str(tmp_path / "day_0.gz")]) == 500
    assert criteo.resolve_files(str(tmp_path)) == sorted(str(tmp_path / f) for f in ("crlf.tsv", "day_0.gz", "plain.tsv"))


def numbered_files(root, sizes):
    """Files whose row i of file f has I1 = f * 100000 + i: the row's identity."""
    paths = []
    for f, n in enumerate(sizes):
        path = root / f"part-{f}.tsv"
        path.write_text("".join(f"{i % 2}\t{f * 100000 + i}\t1" + "\t" * 12 + "x\n" for i in range(n)))
        paths.append(str(path))
    return paths


def ids_seen(files, rank, size, batch, **kw):
    ds = criteo.dataset(files, batch, 1000, rank, size, drop_remainder=False, **kw)
    return np.concatenate([np.round(np.expm1(x["dense"].numpy()[:, 0])).astype(np.int64) for x, _ in ds])


@pytest.mark.parametrize("sizes", [[1000], [300, 250], [120, 130, 90, 100]])
def test_shards_cover_every_row_once(tmp_path, sizes):
    files = numbered_files(tmp_path, sizes)
    everything = np.sort(ids_seen(files, 0, 1, 64))
    assert len(everything) == sum(sizes)
    seen = [ids_seen(files, r, 2, 64, shuffle_buffer=128, seed=1, epoch=2) for r in (0, 1)]
    assert not set(seen[0]) & set(seen[1])
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), everything)
    for r in (0, 1):  # the trainer's step count comes from this arithmetic
        assert len(seen[r]) == sharding.rows_of_worker(sizes, r, 2, 64)
    assert sharding.shard_files(files, 0, 2)[1] == ("file" if len(files) % 2 == 0 else "line")


def test_line_sharding_without_shuffle_deals_runs_of_one_batch(tmp_path):
    files = numbered_files(tmp_path, [512])
    one = list(criteo.dataset(files, 128, 1000))  # one process, batch 128
    two = [list(criteo.dataset(files, 64, 1000, r, 2)) for r in (0, 1)]  # two workers, 64 each
    for t, (x, _) in enumerate(one):
        both = np.concatenate([two[0][t][0]["dense"].numpy(), two[1][t][0]["dense"].numpy()])
        np.testing.assert_array_equal(both, x["dense"].numpy())


def test_shuffle_is_a_seeded_permutation_within_the_window(tmp_path):
    files = numbered_files(tmp_path, [1000])
    a = ids_seen(files, 0, 1, 100, shuffle_buffer=500, seed=1, epoch=0)
    b = ids_seen(files, 0, 1, 100, shuffle_buffer=500, seed=1, epoch=0)
    c = ids_seen(files, 0, 1, 100, shuffle_buffer=500, seed=1, epoch=1)
    np.testing.assert_array_equal(a, b)  # a pure function of (seed, epoch): resume is exact
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(np.sort(a[:500]), np.arange(500))  # the window bounds how far a row moves
    assert not np.array_equal(a[:500], np.arange(500))


def test_synthetic_ctr_rows_have_the_right_shapes_and_ranges():
    (x, y), (x2, _) = list(criteo.synthetic(256, 1000, seed=4).take(2))
    assert x["dense"].shape == (256, 13) and x["categorical"].shape == (256, 26) and y.shape == (256, 1)
    assert x["categorical"].dtype == tf.int64 and 0 <= int(tf.reduce_min(x["categorical"])) and int(tf.reduce_max(x["categorical"])) < 1000
    assert np.all(x["dense"].numpy() >= 0) and 0.15 < float(tf.reduce_mean(y)) < 0.35
    assert not np.array_equal(x["dense"], x2["dense"])
    again = next(iter(criteo.synthetic(256, 1000, seed=4)))
    np.testing.assert_array_equal(again[0]["categorical"], x["categorical"])


@pytest.mark.parametrize("content, message", [
    (b"label,I1,I2\n1,2,3\n", "CSV header 'label,I1,I2' is not Criteo's 40 columns"),
    (b"\x89PNG\r\n\x1a\n\0\0\0IHDR", "is a binary file, not Criteo text"),
    (b"\xff\xfe1\t2\n", "line 1 is not UTF-8 text"),
])
def test_criteo_file_that_is_not_criteo_text(tmp_path, content, message):
    p = tmp_path / "x.csv"
    p.write_bytes(content)
    with pytest.raises(criteo.CriteoFormatError, match=message):
        criteo.resolve_files(str(p))


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
    assert f"malformed Criteo row in {data / 'train.tsv'}, line 7: integer field I1 is not a number: 'x'" in proc.stderr
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
