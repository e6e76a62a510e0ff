"""`sngm-train study`: the learning-rate sweep procedure on hand-made run directories,
and end to end on a tiny grid; a re-run skips finished cells."""

import csv
import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from keras_sngm_trainers import presets
from keras_sngm_trainers import study as st

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_next_lr_steps_past_the_end_holding_the_best():
    f = [0.3, 1.0, 3.0]
    assert st.next_lr({0.3: 0.7, 1.0: 0.8, 3.0: 0.75}, f) is None  # best inside
    assert st.next_lr({0.3: 0.7, 1.0: 0.8, 3.0: 0.85}, f) == 9.0  # best at the top: x3
    assert st.next_lr({0.3: 0.9, 1.0: 0.8, 3.0: -math.inf}, f) == 0.09  # best at the bottom: / (1/0.3)
    assert st.next_lr({0.3: 0.8, 1.0: 0.8, 3.0: 0.8}, f) == 0.09  # ties go to the smaller lr
    assert st.next_lr({0.3: -math.inf, 1.0: -math.inf, 3.0: -math.inf}, f) == 0.09  # all diverged: go lower


def _fake_run(out, o, b, lr, val, loss=0.5, seed=0):
    d = out / "runs" / st.cell_name(o, b, lr, seed)
    d.mkdir(parents=True)
    (d / "final.json").write_text(json.dumps({"val_auc": val, "test_auc": val - 0.01, "test_loss": loss}))
    (d / "history.json").write_text(json.dumps({"history": {"loss": [loss]}}))


def _spec(**kw):
    return dict(task="deepfm", arms=presets.grid(["msgd", "sngm"], [1024], "deepfm"), seeds=[0],
                lr_factors=[0.5, 1.0, 2.0], extend_edges=2, flags=[], **kw)


def test_sweep_extends_the_same_way_for_every_optimizer_and_report_marks_divergence(tmp_path):
    spec = _spec()
    arm = {a["label"]: a for a in st.arms(spec)}
    base = {o: st.base_lr(o, 1024, "deepfm") for o in arm}
    # msgd: the top two diverge, the best is at the bottom -> the sweep goes down, twice, and stops
    for f, val, loss in [(0.5, 0.70, 0.5), (1.0, math.nan, math.nan), (2.0, 0.0, math.nan), (0.25, 0.72, 0.5),
                         (0.125, 0.71, 0.5)]:
        _fake_run(tmp_path, "msgd", 1024, round(base["msgd"] * f, 6), val, loss)
    # sngm: best inside -> no extension
    for f, val in [(0.5, 0.70), (1.0, 0.78), (2.0, 0.74)]:
        _fake_run(tmp_path, "sngm", 1024, round(base["sngm"] * f, 6), val)
    trained = []
    lrs = st.sweep(spec, str(tmp_path), arm["msgd"], run_missing=lambda lr, s: trained.append(lr))
    assert sorted(lrs) == sorted(round(base["msgd"] * f, 6) for f in (0.125, 0.25, 0.5, 1.0, 2.0)) and trained == []
    assert sorted(st.sweep(spec, str(tmp_path), arm["sngm"])) == sorted(round(base["sngm"] * f, 6) for f in (0.5, 1, 2))
    # a missing extension is trained when running; a report stops the sweep there
    low = round(base["msgd"] * 0.125, 6)
    shutil.rmtree(tmp_path / "runs" / st.cell_name("msgd", 1024, low, 0))
    asked = []
    st.sweep(spec, str(tmp_path), arm["msgd"], run_missing=lambda lr, s: asked.append(lr))
    assert asked == [low]
    assert len(st.report(spec, str(tmp_path))) == 7
    _fake_run(tmp_path, "msgd", 1024, low, 0.71)
    rows = st.report(spec, str(tmp_path))
    chosen = {r["optimizer"]: r for r in rows if r["selected"]}
    assert chosen["msgd"]["lr"] == round(base["msgd"] * 0.25, 6) and chosen["sngm"]["lr"] == round(base["sngm"], 6)
    assert [r["diverged"] for r in rows if r["optimizer"] == "msgd"].count(True) == 2
    table = (tmp_path / "results.md").read_text()
    assert table.count("| diverged | diverged |") == 2 and "extended up to 2 step(s)" in table


def test_extra_seeds_run_only_at_the_lr_chosen_on_the_sweep_seed(tmp_path, monkeypatch):
    """seeds [0, 1, 2] with sweep_seeds=1: the sweep and the choice use seed 0 only; seeds 1
    and 2 then run at the chosen lr, and the table reports the mean and sd over all three."""
    spec = _spec(sweep_seeds=1, optimizers=["sngm"])
    spec["seeds"] = [0, 1, 2]
    a = st.arms(spec)[0]
    lrs = [round(a["lr"] * f, 6) for f in (0.5, 1.0, 2.0)]
    for lr, val in zip(lrs, (0.70, 0.78, 0.74)):
        _fake_run(tmp_path, "sngm", 1024, lr, val)
    assert st.chosen(spec, str(tmp_path), a) == lrs[1]
    trained = []
    monkeypatch.setattr(st, "run_cell", lambda task, flags, run_dir, np_, log: trained.append(
        (flags[flags.index("--lr") + 1], flags[flags.index("--seed") + 1])))
    st.run(spec, str(tmp_path))
    assert trained == [(str(lrs[1]), "1"), (str(lrs[1]), "2")]
    _fake_run(tmp_path, "sngm", 1024, lrs[1], 0.80, seed=1)
    _fake_run(tmp_path, "sngm", 1024, lrs[1], 0.76, seed=2)
    _fake_run(tmp_path, "sngm", 1024, lrs[0], 0.99, seed=1)  # not a sweep seed: cannot change the choice
    rows = st.report(spec, str(tmp_path))
    assert st.chosen(spec, str(tmp_path), a) == lrs[1]
    picked = [r for r in rows if r["selected"]]
    assert sorted(r["seed"] for r in picked) == [0, 1, 2]
    tests = [0.77, 0.79, 0.75]  # test = val - 0.01
    m, sd = sum(tests) / 3, math.sqrt(sum((t - sum(tests) / 3) ** 2 for t in tests) / 2)
    assert f"{m:.4f} ± {sd:.4f} ({lrs[1]:.3g}, n=3)" in (tmp_path / "results.md").read_text()
    spec["extend_edges"] = 0  # the best at the top of a sweep that may not extend: flagged
    shutil.rmtree(tmp_path / "runs" / st.cell_name("sngm", 1024, lrs[2], 0))
    _fake_run(tmp_path, "sngm", 1024, lrs[2], 0.90)
    st.report(spec, str(tmp_path))
    assert f"({lrs[2]:.3g}, edge, n=1)" in (tmp_path / "results.md").read_text()


def test_report_sets_the_papers_numbers_beside_ours_and_the_noise_scale(tmp_path):
    spec = _spec(optimizers=["sngm"], paper=presets.JOURNAL_T8, paper_inline=True)
    a = st.arms(spec)[0]
    for f, val in [(0.5, 0.70), (1.0, 0.78), (2.0, 0.74)]:
        _fake_run(tmp_path, "sngm", 1024, round(a["lr"] * f, 6), val)
    hist = tmp_path / "runs" / st.cell_name("sngm", 1024, round(a["lr"], 6), 0) / "history.json"
    hist.write_text(json.dumps({"history": {"loss": [0.6, 0.5], "noise_scale": [812.4, 2400.6], "val_auc": [0.7, 0.78]}}))
    st.report(spec, str(tmp_path))
    table = (tmp_path / "results.md").read_text()
    assert "0.7700 (0.5, n=1); paper 0.7489 |" in table  # one seed: no "± 0.0000"
    assert "Published (journal Table 8), test AUC:" in table and "| lamb | 0.7066 | 0.6811 |" in table
    assert "| sngm | 1024 | 0 | 812 | 2401 | 2401 |" in table
    # an estimate <= 0 (|G|^2 estimated <= 0) is a B_simple too large to measure: ranked as infinite, not as -50
    hist.write_text(json.dumps({"history": {"loss": [0.6, 0.5, 0.4], "noise_scale": [812.4, 2400.6, -50.0],
                                            "val_auc": [0.7, 0.75, 0.78]}}))
    st.report(spec, str(tmp_path))
    table = (tmp_path / "results.md").read_text()
    assert "| sngm | 1024 | 0 | 812 | 2401 | unresolved† |" in table and "† the unbiased estimate of |G|²" in table
    spec["paper_inline"] = False  # another setup (the CPU studies): the published table only, below ours
    st.report(spec, str(tmp_path))
    table = (tmp_path / "results.md").read_text()
    assert "0.7700 (0.5, n=1) |" in table and "| lamb | 0.7066 | 0.6811 |" in table


def test_report_of_one_lr_one_batch_and_seeds(tmp_path):
    """One lr factor: the chosen lr is both ends of its sweep, so 'edge'; one batch: no
    change column; two seeds: mean ± sd."""
    spec = {**_spec(), "lr_factors": [1.0], "extend_edges": 0, "seeds": [0, 1],
            "arms": presets.grid(["msgd", "sngm"], [512], "deepfm")}
    for o in ("msgd", "sngm"):
        lr = round(next(a for a in st.arms(spec) if a["optimizer"] == o)["lr"], 6)
        for seed, val in ((0, 0.78), (1, 0.76)):
            _fake_run(tmp_path, o, 512, lr, val, seed=seed)
    st.report(spec, str(tmp_path))
    table = (tmp_path / "results.md").read_text()
    assert "| sngm | 0.7600 ± 0.0141 (0.354, edge, n=2) |" in table, table
    assert "→" not in table and "SNGM's lead (SNGM minus the optimizer, mean test auc in auc; diverged = chance):" in table
    assert "| msgd | +0.0000 |" in table


def study(out, *extra):
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [os.path.join(os.path.dirname(sys.executable), "sngm-train"), "study", "--preset", "cpu-cifar", "--out", str(out),
           "--optimizers", "msgd", "sngm", "--batch-sizes", "32", "--lr-factors", "1", "2", "--extend-edges", "0", "--seeds", "0",
           "--dataset", "synthetic", "--num-classes", "4", "--train-subset", "320", "--epochs", "1", "--micro-batch", "16", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + open(out / "study.log").read()[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_tiny_grid_end_to_end_and_resume(tmp_path):
    out = tmp_path / "study"
    first = study(out)  # (the report of several batch sizes is tested above, on runs made up)
    assert first.count(": running") == 4
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert sorted((r["optimizer"], int(r["batch_size"])) for r in rows) == sorted(
        [(o, 32) for o in ("msgd", "sngm")] * 2)
    for r in rows:
        assert 0.0 <= float(r["test_accuracy"]) <= 1.0 and 0.0 <= float(r["val_accuracy"]) <= 1.0
    # exactly one lr chosen per (optimizer, batch), the one with the best validation accuracy
    for o in ("msgd", "sngm"):
        group = [r for r in rows if r["optimizer"] == o]
        chosen = [r for r in group if r["selected"] == "True"]
        assert len(group) == 2 and len(chosen) == 1
        assert float(chosen[0]["val_accuracy"]) == max(float(r["val_accuracy"]) for r in group)
    curves = list(csv.DictReader(open(out / "curves.csv")))
    assert len(curves) == 4 and {c["epoch"] for c in curves} == {"1"}
    table = open(out / "results.md").read()
    assert "| msgd |" in table and "| sngm |" in table and "B=32" in table
    for png in ("accuracy_vs_batch.png", "loss_curves_b32.png"):
        assert (out / png).stat().st_size > 1000
        assert open(out / png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"

    stamps = {p: os.path.getmtime(out / "runs" / p / "final.json") for p in os.listdir(out / "runs")}
    victim = sorted(stamps)[0]
    shutil.rmtree(out / "runs" / victim)
    second = study(out)
    assert second.count(": running") == 1 and f"{victim}: running" in second
    for p, t in stamps.items():
        if p != victim:
            assert os.path.getmtime(out / "runs" / p / "final.json") == t  # untouched
    assert (out / "runs" / victim / "final.json").exists()


@pytest.mark.parametrize("flag, value, message", [("--extend-edges", "-1", "--extend-edges must be >= 0, got -1"),
                                                  ("--lr-factors", "0", "--lr-factors must all be > 0, got [0.0]")])
def test_bad_sweep_flags_are_refused(tmp_path, capsys, flag, value, message):
    with pytest.raises(SystemExit) as e:
        st.main(["--preset", "cpu-cifar", "--out", str(tmp_path / "s"), flag, value])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()



def test_report_of_adaptive_arms_gives_updates_examples_and_the_claim(tmp_path):
    """The cost table and the claim line, from hand-made runs: sngm-auto at 0.5 points below
    fixed-128 SNGM with 40% of its updates meets the claim; msgd-auto, 2 points below, not."""
    spec = dict(task="resnet", seeds=[0], lr_factors=[1.0], extend_edges=0, flags=[],
                arms=[presets.arm("sngm", 128, 0.07), presets.arm("sngm", 128, 0.07, label="sngm-auto", adaptive_to=1024),
                      presets.arm("msgd", 128, 0.01), presets.arm("msgd", 128, 0.01, label="msgd-auto", adaptive_to=1024)])
    cells = {"sngm": (0.620, 1702, None), "sngm-auto": (0.615, 681, [(150, 256), (400, 512)]),
             "msgd": (0.580, 1702, None), "msgd-auto": (0.560, 700, [(300, 256)])}
    for label, (acc, updates, changes) in cells.items():
        d = tmp_path / "runs" / st.cell_name(label, 128, 0.07 if "sngm" in label else 0.01, 0)
        d.mkdir(parents=True)
        final = {"val_accuracy": acc, "test_accuracy": acc, "test_loss": 1.0, "updates": updates,
                 "examples": 128 * 1702, "epochs_done": 2}
        if changes:
            final["batch_trajectory"] = [{"update": u, "examples": u * 128, "batch_size": b} for u, b in changes]
        (d / "final.json").write_text(json.dumps(final))
        (d / "history.json").write_text(json.dumps({"history": {"loss": [1.2, 1.0], "noise_scale": [90.0, 700.0]}}))
        (d / "wall_seconds.txt").write_text("120\n")
    st.report(spec, str(tmp_path))
    table = (tmp_path / "results.md").read_text()
    assert "| sngm-auto | auto 128 → 1024 | 61.50 (1 seed) | 681 | 217856 | 2.0 | 0.07 |" in table
    assert "| sngm | 128 | 62.00 (1 seed) | 1702 | 217856 | 2.0 | 0.07 |" in table
    assert ("**sngm-auto against sngm at fixed B=128**: -0.50 points with 0.40x the updates (681 against 1702). "
            "The claim \"within 0.5 points (0.005 AUC) with at most half the updates\" is met here.") in table
    assert "**msgd-auto against msgd at fixed B=128**: -2.00 points with 0.41x the updates" in table
    assert "is not met (points) here." in table
    assert (tmp_path / "batch_vs_noise_scale.png").stat().st_size > 10_000
