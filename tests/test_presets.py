"""Each study preset resolves, through the trainers' own flag parser, to the paper's
protocol (the values below are typed from the paper's text, table by table), and the
schedules they name step as the paper's PyTorch schedulers did."""

import argparse
import dataclasses
import math

import numpy as np
import pytest

from keras_sngm_trainers import config, presets
from keras_sngm_trainers import study as st


def resolved(name, np_=None):
    """(arm, Config) for every arm of preset `name`, as `sngm-train study` would launch it."""
    spec = dict(presets.PRESETS[name])
    spec["np"] = np_ or spec.get("workers", 1)
    out = []
    for a in st.arms(spec):
        parser = argparse.ArgumentParser()
        config.add_flags(parser, spec["task"])
        flags = st.run_flags(spec, a) + ["--lr", str(a["lr"])]
        out.append((a, config.from_args(parser.parse_args(flags), spec["task"])))
    return spec, out


# journal Table 2 / sec. 5: what every CIFAR run of the journal used
JOURNAL_CIFAR = dict(epochs=160, schedule="cosine", lr_per_epoch=True, warmup_epochs=0.0, weight_decay=1e-4,
                     momentum=0.9, depth=20, arch="resnet", dataset="cifar10")


def test_paper_cifar_is_journal_table_2():
    spec, runs = resolved("paper-cifar")
    assert spec["workers"] == 8 and spec["paper"]["source"] == "journal Table 2"
    assert {(a["label"], a["batch"]) for a, _ in runs} == {
        (o, b) for o in ("msgd", "lars", "sngm", "block_sngm") for b in (128, 1024, 2048, 4096, 8192)}
    for a, cfg in runs:
        for k, v in JOURNAL_CIFAR.items():
            assert getattr(cfg, k) == v, (a, k)
        # 8 GPUs x B/8 examples, accumulated in micro-batches of 128 beyond that
        assert cfg.micro_batch == min(128, cfg.batch_size // 8) and cfg.optimizer == a["optimizer"]
    assert spec["paper"]["rows"]["sngm"][8192] == 89.23 and spec["paper"]["rows"]["msgd"][8192] == 83.93


V1 = {  # v1 Table 2: (label, B) -> (initial lr, schedule, power, warm-up epochs, warm-up start, test acc. ResNet-20 / -56)
    ("msgd", 128): ((0.1, 0.1), "step", None, 0, 0, (91.63, 93.11)),
    ("msgd", 4096): ((0.4, 0.3), "poly", 1.1, 0, 0, (89.25, 88.55)),
    ("lars", 4096): ((0.8, 0.64), "poly", 1.1, 0, 0, (90.66, 92.46)),
    ("lars-warmup", 4096): ((2.4, 2.8), "poly", 2.0, 5, 0.1, (90.80, 92.98)),
    ("sngm", 4096): ((1.6, 1.3), "poly", 1.1, 0, 0, (91.42, 93.12)),
}


@pytest.mark.parametrize("name, depth, col", [("paper-cifar-v1", 20, 0), ("paper-cifar-v1-resnet56", 56, 1)])
def test_paper_cifar_v1_is_v1_table_2(name, depth, col):
    spec, runs = resolved(name)
    assert {(a["label"], a["batch"]) for a, _ in runs} == set(V1)
    for a, cfg in runs:
        lr, sched, power, warm, start, acc = V1[(a["label"], a["batch"])]
        assert cfg.lr == lr[col] and cfg.schedule == sched and cfg.warmup_epochs == warm and cfg.warmup_start == start
        assert power is None or cfg.power == power
        assert (cfg.depth, cfg.epochs, cfg.weight_decay, cfg.momentum) == (depth, 160, 1e-4, 0.9)
        assert spec["paper"]["rows"][a["label"]][a["batch"]] == acc[col]
    step = [cfg for a, cfg in runs if cfg.schedule == "step"][0]
    assert step.lr_per_epoch  # He et al.: /10 after epochs 80 and 120, stepped per epoch


@pytest.mark.parametrize("name", ["paper-ctr", "cpu-ctr"])
def test_paper_ctr_is_journal_table_8(name):
    spec, runs = resolved(name)
    assert {(a["label"], a["batch"]) for a, _ in runs} == {
        (o, b) for o in ("msgd", "adam", "lars", "lamb", "sngm") for b in (1024, 8192)}
    for a, cfg in runs:
        assert (cfg.epochs, cfg.weight_decay, cfg.momentum, cfg.schedule, cfg.warmup_epochs) == (10, 1e-3, 0.9, "constant", 0)
        # the lr is chosen from {0.001, 0.01, 0.1}, the first sweep of every arm
        assert sorted(round(a["lr"] * f, 6) for f in spec["lr_factors"]) == [0.001, 0.01, 0.1]
    assert spec["paper"]["rows"]["sngm"] == {1024: 0.7489, 8192: 0.7514} and spec["paper"]["rows"]["msgd"][8192] == 0.5
    assert spec["paper_inline"] == (name == "paper-ctr")  # planted data: the paper's AUCs are not in our cells
    conditions = {(cfg.deepfm_variant, cfg.loss_reduction, cfg.dense_transform, cfg.embedding_dim, tuple(cfg.hidden))
                  for _, cfg in runs}
    if name == "cpu-ctr":
        train, val, test = spec["data_rows"]
        assert train >= 200_000 and len(spec["seeds"]) == 3
        assert math.isclose(test / (train + val + test), 0.2) and math.isclose(train / val, 4.0)  # 20% test, 4:1
        assert conditions == {("native", "mean", "log1p", 4, (256, 128))}  # what docs/results.md measured first
    else:  # the paper's code: DeepCTR-Torch's DeepFM at its defaults, its summed loss, min-max dense features
        assert conditions == {("deepctr", "sum", "minmax", 4, (256, 128))}


def test_cpu_ctr_paper_is_cpu_ctr_under_the_papers_conditions():
    spec, runs = resolved("cpu-ctr-paper")
    _, base = resolved("cpu-ctr")
    assert {(a["label"], a["batch"]) for a, _ in runs} == {
        (o, b) for o in ("msgd", "sngm", "msgd-mean", "sngm-mean") for b in (1024, 8192)}
    for a, cfg in runs:
        assert (cfg.deepfm_variant, cfg.dense_transform, cfg.hash_space) == ("deepctr", "minmax", 16384)
        assert cfg.loss_reduction == ("mean" if a["label"].endswith("-mean") else "sum")
        same = {f: getattr(cfg, f) for f in ("epochs", "weight_decay", "momentum", "schedule", "embedding_dim", "hidden")}
        assert same == {f: getattr(base[0][1], f) for f in same}
        assert sorted(round(a["lr"] * f, 6) for f in spec["lr_factors"]) == [0.001, 0.01, 0.1]
    assert spec["data_rows"] == presets.PRESETS["cpu-ctr"]["data_rows"] and spec["seeds"] == [0, 1, 2]


def test_results_page_holds_every_published_table_the_presets_cite():
    """docs/results.md's `published` block is what tools/results_page.py makes from the
    presets now (so it cannot go stale), with v1 Table 2's SNGM 91.42 and journal Table 4's
    SNGM 76.16 among its cells."""
    import os
    import re
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.join(root, "tools"))
    import results_page

    page = open(os.path.join(root, "docs", "results.md")).read()
    block = re.search(r"<!-- generated: published -->\n(.*?)<!-- end: published -->", page, re.S).group(1)
    assert block == results_page.published()
    for name in ("paper-cifar", "paper-cifar-v1", "paper-cifar-v1-resnet56", "paper-ctr", "paper-imagenet",
                 "paper-imagenet-resnet18", "paper-imagenet-32k"):
        assert f"`--preset {name}`" in block, name
    assert "| sngm | 4096 | 91.42 | not run here (needs 8 GPUs) |" in block
    assert "| sngm | 32768 | 76.16 | not run here (needs 8 GPUs) |" in block


def test_cpu_cifar_gives_the_largest_batch_8_percent_and_400_updates():
    spec, runs = resolved("cpu-cifar")
    assert len(spec["seeds"]) >= 2 and {a["label"] for a, _ in runs} == {"msgd", "lars", "sngm", "block_sngm"}
    big = max(cfg.batch_size for _, cfg in runs)
    for a, cfg in runs:
        train = cfg.train_subset - round(cfg.train_subset * cfg.validation_split)
        assert (cfg.schedule, cfg.lr_per_epoch, cfg.warmup_epochs) == ("cosine", True, 0.0)
        if cfg.batch_size == big:
            assert cfg.batch_size >= 0.08 * train and (train // cfg.batch_size) * cfg.epochs >= 400
    assert ("block_sngm", big) in {(a["label"], cfg.batch_size) for a, cfg in runs}


def lrs(schedule, n):
    return np.array([float(schedule(i)) for i in range(n)])


def test_per_epoch_cosine_is_the_journals_formula():
    from keras_sngm_trainers import recipes

    upe, epochs, lr0 = 7, 160, 0.8
    got = lrs(recipes.schedule("cosine", lr0, upe * epochs, updates_per_epoch=upe), upe * epochs)
    want = np.repeat([lr0 * 0.5 * (1 + math.cos(math.pi * m / epochs)) for m in range(epochs)], upe)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_step_schedule_divides_by_10_after_epochs_80_and_120():
    from keras_sngm_trainers import recipes

    upe = 5
    got = lrs(recipes.schedule("step", 0.1, upe * 160, updates_per_epoch=upe), upe * 160)
    want = np.repeat([0.1] * 80 + [0.01] * 40 + [0.001] * 40, upe)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_warmup_ramps_from_its_start_to_the_peak():
    from keras_sngm_trainers import recipes

    s = recipes.schedule("poly", 2.4, 100, power=2, warmup_updates=10, warmup_start=0.1)
    got = lrs(s, 100)
    np.testing.assert_allclose(got[:10], 0.1 + (2.4 - 0.1) * np.arange(1, 11) / 10, rtol=1e-6)
    np.testing.assert_allclose(got[10:], 2.4 * (1 - np.arange(90) / 90) ** 2, rtol=1e-5, atol=1e-7)


# v1 Table 3 (ResNet-18 / ResNet-50 top-1 %) and He et al.'s MSGD recipe, typed from the paper.
V1_IMAGENET = {("msgd", 256): (0.1, "step", None, (69.71, 75.70)), ("sngm", 8192): (0.8, "poly", 2.0, (69.65, 75.42))}


@pytest.mark.parametrize("name, depth, col", [("paper-imagenet-resnet18", 18, 0), ("paper-imagenet", 50, 1)])
def test_paper_imagenet_is_v1_table_3(name, depth, col):
    spec, runs = resolved(name)
    assert {(a["label"], a["batch"]) for a, _ in runs} == set(V1_IMAGENET) and spec["lr_factors"] == [1.0]
    for a, cfg in runs:
        lr, sched, power, acc = V1_IMAGENET[(a["label"], a["batch"])]
        assert (cfg.lr, cfg.schedule, cfg.warmup_epochs) == (lr, sched, 0.0)
        assert power is None or cfg.power == power
        assert (cfg.dataset, cfg.depth, cfg.image_size, cfg.epochs, cfg.weight_decay, cfg.momentum) == \
            ("imagenet", depth, 224, 90, 1e-4, 0.9)
        assert cfg.micro_batch == min(128, cfg.batch_size // 8)  # B=8192 on 8 workers: 8 micro-batches of 128
        assert spec["paper"]["rows"][a["label"]][a["batch"]] == acc[col]
    msgd = [cfg for a, cfg in runs if a["label"] == "msgd"][0]
    assert msgd.step_epochs == [30, 60] and msgd.lr_per_epoch  # He et al.: /10 after epochs 30 and 60


def test_paper_imagenet_32k_is_journal_table_4():
    spec, runs = resolved("paper-imagenet-32k")
    assert {(a["label"], a["batch"]) for a, _ in runs} == {(o, b) for o in ("lars", "sngm") for b in (1024, 32768)}
    for a, cfg in runs:
        assert (cfg.schedule, cfg.warmup_epochs, cfg.epochs, cfg.depth, cfg.dataset) == ("poly", 5, 90, 50, "imagenet")
        assert cfg.micro_batch == 128  # 32768 / 8 workers = 4096 each: 32 micro-batches
    assert spec["paper"]["rows"] == {"lars": {1024: 76.77, 32768: 75.77}, "sngm": {1024: 76.72, 32768: 76.16}}


def test_step_epochs_divide_the_lr_after_those_epochs():
    """He et al.'s ImageNet steps, per epoch: lr 0.1 for epochs 0-29, 0.01 for 30-59, 0.001 after."""
    from keras_sngm_trainers import recipes

    upe, epochs = 7, 90
    s = recipes.schedule("step", 0.1, upe * epochs, step_boundaries=[30 / 90, 60 / 90], updates_per_epoch=upe)
    got = np.array([float(s(n)) for n in range(upe * epochs)])
    want = np.array([0.1 * 0.1 ** ((n // upe >= 30) + (n // upe >= 60)) for n in range(upe * epochs)])
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_cpu_cifar_adaptive_is_cpu_cifar_with_the_five_arms_of_the_adaptive_study():
    import csv
    import os

    spec, runs = resolved("cpu-cifar-adaptive")
    _, base = resolved("cpu-cifar")
    ref = base[0][1]
    arms = {(a["label"], cfg.batch_size, cfg.batch_min, cfg.batch_max): cfg for a, cfg in runs}
    assert set(arms) == {("sngm", 128, 0, 0), ("sngm", 512, 0, 0), ("sngm-auto", "auto", 128, 1024),
                         ("msgd", 128, 0, 0), ("msgd-auto", "auto", 128, 1024)}
    for cfg in arms.values():  # the same net, data, epochs and schedule as cpu-cifar
        for name in ("arch", "dataset", "train_subset", "test_subset", "validation_split", "epochs", "schedule",
                     "lr_per_epoch", "momentum", "weight_decay"):
            assert getattr(cfg, name) == getattr(ref, name), name
        assert cfg.micro_batch == 64 and cfg.lr_scaling == "default" and cfg.adapt_factor == 1.0
        config.validate(cfg, "resnet")
    assert spec["seeds"] == [0, 1] and spec["lr_factors"] == [0.5, 1.0, 2.0] and spec["extend_edges"] == 4
    # the sweep centres are the lrs cpu-cifar chose (its generated results.csv)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "docs", "results", "cpu-cifar", "results.csv")) as f:
        chosen = {(r["optimizer"], int(r["batch_size"])): float(r["lr"]) for r in csv.DictReader(f)
                  if r["selected"] == "True"}
    for a, cfg in runs:
        assert a["lr"] == pytest.approx(chosen[(a["optimizer"], a["batch"])], rel=5e-3), a["label"]  # to 3 figures


def test_cpu_ctr_adaptive_is_cpu_ctr_with_the_adaptive_arms():
    spec, runs = resolved("cpu-ctr-adaptive")
    _, base = resolved("cpu-ctr")
    ref = base[0][1]
    arms = {(a["label"], cfg.batch_size, cfg.batch_min, cfg.batch_max) for a, cfg in runs}
    assert arms == {("sngm", 1024, 0, 0), ("sngm", 8192, 0, 0), ("sngm-auto", "auto", 1024, 8192),
                    ("msgd", 1024, 0, 0), ("msgd-auto", "auto", 1024, 8192)}
    for a, cfg in runs:
        for name in ("epochs", "schedule", "momentum", "weight_decay", "embedding_dim", "hidden", "hash_space"):
            assert getattr(cfg, name) == getattr(ref, name), name
        assert cfg.micro_batch == 512 and a["lr"] == 0.01
        config.validate(dataclasses.replace(cfg, data="synthetic"), "deepfm")  # (the study passes its data)
    assert spec["data_rows"] == presets.PRESETS["cpu-ctr"]["data_rows"] and spec["lr_factors"] == [0.1, 1.0, 10.0]
