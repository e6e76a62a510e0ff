"""`sngm-train prep-criteo`: binary records that give the text pipeline's features bit
for bit, shard like text, and train to the same weights."""

import json

import numpy as np

from helpers import sngm_train
from test_data import edge_case_rows
from keras_sngm_trainers.data import criteo, criteo_binary, planted_ctr, sharding


def batches(ds):
    return [(x["dense"].numpy(), x["categorical"].numpy(), y.numpy()) for x, y in ds]


def test_prepared_records_equal_the_text_pipeline(tmp_path):
    text = tmp_path / "edge.tsv"
    text.write_text("\n".join(edge_case_rows(2500, seed=5)) + "\n")
    meta = criteo_binary.prepare([str(text)], str(tmp_path / "prep"), 4096, rows_per_shard=700, log=lambda *a, **k: None)
    assert meta["rows"] == 2500 and [s["rows"] for s in meta["shards"]] == [700, 700, 700, 400]
    for kw in ({}, {"shuffle_buffer": 1000, "seed": 3, "epoch": 2}):
        want = batches(criteo.dataset(str(text), 256, 4096, drop_remainder=False, **kw))
        got = batches(criteo_binary.dataset(str(tmp_path / "prep"), 256, drop_remainder=False, **kw))
        assert len(got) == len(want) == 10
        for g, w in zip(got, want):
            for a, b in zip(g, w):
                np.testing.assert_array_equal(a, b)  # bit for bit
                assert a.dtype == b.dtype


def test_prepared_shards_cover_every_row_once_per_worker_pair(tmp_path):
    text = tmp_path / "rows.tsv"
    text.write_text("".join(f"{i % 2}\t{i}" + "\t" * 38 + "\n" for i in range(1000)))
    for per_shard, by in ((125, "file"), (1000, "line")):
        out = tmp_path / f"prep{per_shard}"
        criteo_binary.prepare([str(text)], str(out), 512, rows_per_shard=per_shard, log=lambda *a, **k: None)
        seen = []
        for r in (0, 1):
            ds = criteo_binary.dataset(str(out), 32, r, 2, shuffle_buffer=64, seed=1, drop_remainder=False)
            seen.append(np.round(np.expm1(np.concatenate([x["dense"].numpy()[:, 0] for x, _ in ds]))).astype(int))
            assert len(seen[r]) == sharding.rows_of_worker([s["rows"] for s in criteo_binary.load_meta(str(out))["shards"]],
                                                         r, 2, 32)
        assert sharding.shard_files(criteo_binary.shards(str(out)), 0, 2)[1] == by
        assert not set(seen[0]) & set(seen[1])
        np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(1000))


def test_training_on_prepared_data_equals_training_on_text(tmp_path):
    data = tmp_path / "ctr"
    planted_ctr.generate(str(data), 1200, 400, seed=2)
    for split in ("train", "test"):
        proc = sngm_train(["prep-criteo", "--data", str(data / f"{split}.tsv"), "--out", str(tmp_path / f"{split}-bin"),
                           "--hash-space", "512", "--rows-per-shard", "500"])
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert "prepared 1200 rows in 3 part files" in sngm_train(
        ["prep-criteo", "--data", str(data / "train.tsv"), "--out", str(tmp_path / "again"), "--hash-space", "512",
         "--rows-per-shard", "500"]).stdout
    flags = ["deepfm", "--batch-size", "128", "--micro-batch", "64", "--epochs", "2", "--hash-space", "512",
             "--embedding-dim", "4", "--hidden", "16", "--lr", "0.05", "--shuffle-buffer", "300", "--no-verbose"]
    text = sngm_train(flags + ["--data", str(data / "train.tsv"), "--test-data", str(data / "test.tsv"),
                               "--logdir", str(tmp_path / "text")])
    assert text.returncode == 0, text.stderr[-2000:]
    binary = sngm_train(flags + ["--data", str(tmp_path / "train-bin"), "--test-data", str(tmp_path / "test-bin"),
                                 "--logdir", str(tmp_path / "bin")])
    assert binary.returncode == 0, binary.stderr[-2000:]
    a = json.load(open(tmp_path / "text" / "history.json"))["history"]
    b = json.load(open(tmp_path / "bin" / "history.json"))["history"]
    assert a["loss"] == b["loss"] and a["val_auc"] == b["val_auc"]  # the same rows in the same order
    wrong = sngm_train(flags[:-1] + ["--hash-space", "1024", "--data", str(tmp_path / "train-bin"),
                                     "--logdir", str(tmp_path / "x")])
    assert wrong.returncode == 2 and "was prepared with --hash-space 512" in wrong.stderr


def test_prep_criteo_bad_rows_stop_or_are_counted(tmp_path):
    p = tmp_path / "bad.tsv"
    p.write_text("1\t2\n0\tabc\n0\t3\n")
    proc = sngm_train(["prep-criteo", "--data", str(p), "--out", str(tmp_path / "o")])
    assert proc.returncode == 2 and f"malformed Criteo row in {p}, line 2: integer field I1 is not a number" in proc.stderr
    assert not criteo_binary.is_prepared(str(tmp_path / "o"))
    proc = sngm_train(["prep-criteo", "--data", str(p), "--out", str(tmp_path / "o"), "--skip-bad-rows"])
    assert proc.returncode == 0 and "prepared 2 rows in 1 part files" in proc.stdout and "skipped 1 malformed" in proc.stdout
    proc = sngm_train(["prep-criteo", "--data", str(p), "--out", str(tmp_path / "o"), "--rows-per-shard", "0"])
    assert proc.returncode == 2 and "--rows-per-shard must be >= 1. Received: 0" in proc.stderr
