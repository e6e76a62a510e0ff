"""`sngm-train study`: optimizers x batch sizes x seeds, each with its own learning-rate
sweep, through the trainers; CSV, per-epoch curves, a markdown table and PNG plots.

Tuning honesty: every (optimizer, batch size) gets the same sweep, base lr x
`--lr-factors`, extended by up to `--extend-edges` steps past an end of the sweep
that holds the best value (so no optimizer is judged at the edge of a bad range),
trained on the training set minus a fixed validation split and judged on the
validation metric (mean over seeds; a diverged run ranks last). The test set is evaluated once per
run, after training, and only reported. Each run is a fresh `sngm-train` process (under
`horovodrun -np N` with `--np N`); a run with `final.json` is done and skipped when
the grid is run again, and a half-done run resumes from its checkpoint.
"""

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time

# Base learning rates, swept by --lr-factors. ResNet MSGD: the linear scaling rule from
# 0.1 at B=128 (Goyal et al.). DeepFM MSGD: square-root scaling, because the linear rule
# puts every B=8192 value of the sweep past divergence (measured: 0.12, 0.4 and 1.2 all
# gave NaN). SNGM/LARS/Adam: square-root scaling around the values below. They are this
# project's starting points, not numbers taken from the paper.
def base_lr(optimizer, batch, task):
    if task == "resnet":
        return {"msgd": 0.1 * batch / 128, "sngm": 1.6 * math.sqrt(batch / 4096), "block_sngm": 1.6 * math.sqrt(batch / 4096),
                "lars": 2.0 * math.sqrt(batch / 4096), "adam": 1e-3 * math.sqrt(batch / 128)}[optimizer]
    return {"msgd": 0.05, "sngm": 0.5, "block_sngm": 0.5, "lars": 5.0, "adam": 1e-3}[optimizer] * math.sqrt(batch / 1024)


PRESETS = {
    # The paper's ResNet-20 / CIFAR-10 setup, for GPU hosts (160 epochs, no warm-up).
    "paper-cifar": dict(task="resnet", optimizers=["msgd", "lars", "sngm"], batch_sizes=[128, 1024, 2048, 4096, 8192],
                        seeds=[0], lr_factors=[0.5, 1.0, 2.0], extend_edges=1,
                        flags=["--depth", "20", "--dataset", "cifar10", "--micro-batch", "128", "--epochs", "160",
                               "--momentum", "0.9", "--weight-decay", "1e-4", "--schedule", "poly", "--power", "1.1",
                               "--validation-split", "0.1"]),
    # A reduced CIFAR study that fits in about 40 minutes on a 2-core CPU: ResNet-8, a
    # fixed 12,000-image subset (10% of it for validation), 4,000 test images, 8 epochs,
    # B = 128 and 2048 (the largest batch is 1/5 of the data, as 8192 is 1/6 of CIFAR-10),
    # two seeds so the spread is measured.
    "cpu-cifar": dict(task="resnet", optimizers=["msgd", "sngm"], batch_sizes=[128, 2048], seeds=[0, 1],
                      lr_factors=[0.25, 0.5, 1.0, 2.0], extend_edges=2,
                      flags=["--depth", "8", "--dataset", "cifar10", "--train-subset", "12000", "--test-subset", "4000",
                             "--validation-split", "0.1", "--micro-batch", "128", "--epochs", "8", "--momentum", "0.9",
                             "--weight-decay", "1e-4", "--schedule", "poly", "--power", "1.1"]),
    # DeepFM on planted-truth Criteo-format data (generated into <out>/data), the paper's
    # Table 8 comparison scaled down: B = 1024 and 8192, MSGD, Adam, LARS and SNGM.
    "cpu-ctr": dict(task="deepfm", optimizers=["msgd", "adam", "lars", "sngm"], batch_sizes=[1024, 8192], seeds=[0],
                    lr_factors=[0.3, 1.0, 3.0], extend_edges=3, data_rows=(200_000, 20_000, 50_000),
                    flags=["--micro-batch", "1024", "--epochs", "3", "--hash-space", "131072", "--embedding-dim", "8",
                           "--hidden", "128", "128", "--weight-decay", "0", "--schedule", "cosine",
                           "--shuffle-buffer", "50000"]),
}


def cell_name(optimizer, batch, lr, seed):
    return f"{optimizer}-b{batch}-lr{lr:.4g}-s{seed}"


def run_cell(task, flags, run_dir, np_, log):
    """Runs (or resumes) one training run; returns True when it finished."""
    if os.path.isfile(os.path.join(run_dir, "final.json")):
        return True
    resume = ["--resume"] if os.path.isdir(run_dir) and any(n.startswith("ckpt-") for n in os.listdir(run_dir)) else []
    if not resume and os.path.isdir(run_dir):
        shutil.rmtree(run_dir)  # killed before its first checkpoint: start clean (no stale event files)
    exe = os.path.join(os.path.dirname(sys.executable), "sngm-train")
    cmd = [exe, task, *flags, "--logdir", run_dir, "--no-verbose", *resume]
    if np_ > 1:
        cmd = [os.path.join(os.path.dirname(sys.executable), "horovodrun"), "--gloo", "-np", str(np_), "-H", f"localhost:{np_}", *cmd]
    t0 = time.time()
    with open(log, "a") as f:
        f.write("+ " + " ".join(cmd) + "\n")
        f.flush()
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    if code == 3 and os.path.isfile(os.path.join(run_dir, "final.json")):
        code = 0  # diverged: stopped by the guard, recorded in final.json, ranked last
    if code != 0:
        raise RuntimeError(f"run failed ({code}): {' '.join(cmd)}; see {log}")
    with open(os.path.join(run_dir, "wall_seconds.txt"), "w") as f:
        f.write(f"{time.time() - t0:.1f}\n")
    return True


def next_lr(scores, factors):
    """Where the sweep goes next: one step past the end of the swept lrs that holds the
    best score (a step is the ratio of the two outermost factors at that end), or None
    when the best is inside. `scores` maps lr -> mean validation metric; a diverged run
    scores -inf, so a sweep whose top diverges never extends upward."""
    lrs = sorted(scores)
    best = max(lrs, key=lambda lr: scores[lr])  # ties go to the smaller lr
    if len(lrs) < 2 or lrs[0] < best < lrs[-1]:
        return None
    f = sorted(factors)
    return round(lrs[0] * f[0] / f[1], 6) if best == lrs[0] else round(lrs[-1] * f[-1] / f[-2], 6)


def _score(run_dir, metric):
    """The validation metric of a finished run, -inf when it diverged, None when unfinished."""
    path = os.path.join(run_dir, "final.json")
    if not os.path.isfile(path):
        return None
    final = json.load(open(path))
    if final.get("diverged"):
        return -math.inf
    loss = json.load(open(os.path.join(run_dir, "history.json")))["history"]["loss"][-1]
    v = final.get(f"val_{metric}")
    return v if v is not None and math.isfinite(v) and math.isfinite(loss) else -math.inf


def sweep(spec, out, optimizer, batch, run_missing=None):
    """The learning rates swept for (optimizer, batch), the same procedure for every
    optimizer: base lr x `lr_factors`, then up to `extend_edges` steps past the end that
    holds the best validation metric (mean over seeds). With `run_missing`, unfinished
    runs are trained (`run_missing(lr, seed)`); without, the sweep stops at the first
    unfinished one (for reports of a grid still running)."""
    metric = "accuracy" if spec["task"] == "resnet" else "auc"
    lrs = [round(base_lr(optimizer, batch, spec["task"]) * f, 6) for f in spec["lr_factors"]]
    for extension in range(spec.get("extend_edges", 0) + 1):
        scores = {}
        for lr in lrs:
            per_seed = []
            for seed in spec["seeds"]:
                run_dir = os.path.join(out, "runs", cell_name(optimizer, batch, lr, seed))
                if _score(run_dir, metric) is None and run_missing is not None:
                    run_missing(lr, seed)
                per_seed.append(_score(run_dir, metric))
            if None in per_seed:
                return lrs[:lrs.index(lr) + 1]
            scores[lr] = sum(per_seed) / len(per_seed)
        nxt = next_lr(scores, spec["lr_factors"]) if extension < spec.get("extend_edges", 0) else None
        if nxt is None or nxt in lrs:
            return lrs
        lrs.append(nxt)
    return lrs


def plan(spec, out):
    """(optimizer, batch, seed, lr) of every run the grid holds so far."""
    return [(o, b, s, lr) for o in spec["optimizers"] for b in spec["batch_sizes"]
            for lr in sweep(spec, out, o, b) for s in spec["seeds"]]


def run(spec, out, np_=1, extra=()):
    os.makedirs(os.path.join(out, "runs"), exist_ok=True)
    flags = list(spec["flags"]) + list(extra)
    if spec["task"] == "deepfm":
        data = os.path.join(out, "data")
        if not os.path.isfile(os.path.join(data, "truth.json")):
            from trainers.data import planted_ctr

            tr, va, te = spec["data_rows"]
            planted_ctr.generate(data, tr, te, seed=0, val_rows=va)
        flags += ["--data", os.path.join(data, "train.tsv"), "--val-data", os.path.join(data, "val.tsv"),
                  "--test-data", os.path.join(data, "test.tsv")]
    for o in spec["optimizers"]:
        for b in spec["batch_sizes"]:
            def train(lr, s, o=o, b=b):
                print(f"{cell_name(o, b, lr, s)}: running", flush=True)
                run_cell(spec["task"], flags + ["--optimizer", o, "--batch-size", str(b), "--lr", str(lr), "--seed", str(s)],
                         os.path.join(out, "runs", cell_name(o, b, lr, s)), np_, os.path.join(out, "study.log"))

            lrs = sweep(spec, out, o, b, run_missing=train)
            print(f"{o} B={b}: swept lr {', '.join(f'{lr:.4g}' for lr in sorted(lrs))}", flush=True)
    return report(spec, out)


def report(spec, out):
    """results.csv, curves.csv, results.md and plots from the finished runs."""
    metric = "accuracy" if spec["task"] == "resnet" else "auc"
    rows, curves = [], []
    for o, b, s, lr in plan(spec, out):
        d = os.path.join(out, "runs", cell_name(o, b, lr, s))
        if not os.path.isfile(os.path.join(d, "final.json")):
            continue
        final = json.load(open(os.path.join(d, "final.json")))
        hist = json.load(open(os.path.join(d, "history.json")))["history"]
        wall = float(open(os.path.join(d, "wall_seconds.txt")).read()) if os.path.isfile(os.path.join(d, "wall_seconds.txt")) else float("nan")
        rows.append({"optimizer": o, "batch_size": b, "lr": lr, "seed": s, f"val_{metric}": final.get(f"val_{metric}"),
                     f"test_{metric}": final.get(f"test_{metric}"), "test_loss": final.get("test_loss"),
                     "final_train_loss": hist["loss"][-1], "diverged": _score(d, metric) == -math.inf,
                     "wall_seconds": wall, "selected": False})
        for e, loss in enumerate(hist["loss"]):
            curves.append({"optimizer": o, "batch_size": b, "lr": lr, "seed": s, "epoch": e + 1, "train_loss": loss,
                           f"val_{metric}": hist.get(f"val_{metric}", [None] * (e + 1))[e],
                           "noise_scale": hist.get("noise_scale", [None] * (e + 1))[e]})
    # Select, per (optimizer, batch), the lr with the best mean validation metric over seeds.
    best = {}
    for key in {(r["optimizer"], r["batch_size"]) for r in rows}:
        by_lr = {}
        for r in rows:
            if (r["optimizer"], r["batch_size"]) == key:
                by_lr.setdefault(r["lr"], []).append(-math.inf if r["diverged"] else r[f"val_{metric}"])
        best[key] = max(by_lr, key=lambda lr: sum(by_lr[lr]) / len(by_lr[lr]))
    for r in rows:
        r["selected"] = best.get((r["optimizer"], r["batch_size"])) == r["lr"]
    _write_csv(os.path.join(out, "results.csv"), rows)
    _write_csv(os.path.join(out, "curves.csv"), curves)
    truth = os.path.join(out, "data", "truth.json")
    best_auc = json.load(open(truth))["best_test_auc"] if os.path.isfile(truth) else None
    table = _markdown(spec, rows, metric, best_auc)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table)
    _plots(spec, out, rows, curves, metric, best_auc)
    return rows


def _write_csv(path, rows):
    if not rows:
        open(path, "w").close()
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _mean_std(values):
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, sd


def _markdown(spec, rows, metric, best_auc):
    batches = sorted({r["batch_size"] for r in rows})
    lines = [f"Test {metric} (mean ± sd over seeds) at the learning rate chosen on the validation split "
             f"(base lr x {spec['lr_factors']}, extended up to {spec.get('extend_edges', 0)} step(s) past an end that "
             f"held the best); lr in parentheses." + (f" Best achievable test AUC (planted truth): {best_auc:.4f}." if best_auc else ""), "",
             "| optimizer | " + " | ".join(f"B={b}" for b in batches) + " |", "| --- |" + " ---: |" * len(batches)]
    for o in spec["optimizers"]:
        cells = []
        for b in batches:
            sel = [r for r in rows if r["optimizer"] == o and r["batch_size"] == b and r["selected"]]
            if not sel:
                cells.append("-")
                continue
            if all(r["diverged"] for r in sel):
                cells.append(f"diverged at every lr (best tried {sel[0]['lr']:.3g})")
                continue
            m, sd = _mean_std([r[f"test_{metric}"] for r in sel])
            cells.append(f"{m:.4f} ± {sd:.4f} ({sel[0]['lr']:.3g})")
        lines.append(f"| {o} | " + " | ".join(cells) + " |")
    lines += ["", "Every run (validation metric used for the choice):", "",
              f"| optimizer | B | lr | seed | val {metric} | test {metric} | final train loss | minutes | chosen |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |"]
    for r in rows:
        val, test = ("diverged", "diverged") if r["diverged"] else (f"{r[f'val_{metric}']:.4f}", f"{r[f'test_{metric}']:.4f}")
        lines.append(f"| {r['optimizer']} | {r['batch_size']} | {r['lr']:.4g} | {r['seed']} | {val} | "
                     f"{test} | {r['final_train_loss']:.4f} | {r['wall_seconds'] / 60:.1f} | "
                     f"{'yes' if r['selected'] else ''} |")
    return "\n".join(lines) + "\n"


def _plots(spec, out, rows, curves, metric, best_auc):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for o in spec["optimizers"]:
        chosen = [r for r in rows if r["optimizer"] == o and r["selected"]]
        by_batch = {}
        for r in chosen:
            if not r["diverged"]:
                by_batch.setdefault(r["batch_size"], []).append(r[f"test_{metric}"])
        pts = [(b, *_mean_std(v)) for b, v in sorted(by_batch.items())]  # mean and sd over seeds
        lost = sorted({r["batch_size"] for r in chosen if r["diverged"]})
        line = ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], fmt="o-", capsize=3,
                           label=o).lines[0] if pts else None
        if lost:  # diverged at every lr of the sweep: an x on the axis
            ax.plot(lost, [0.0] * len(lost), "x", ms=9, color=line.get_color() if line else None,
                    label=f"{o}: diverged at every lr")
    if best_auc:
        ax.axhline(best_auc, color="k", ls=":", label="best achievable")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"test {metric} vs batch size (lr tuned on validation)")
    ax.legend(loc="lower left", fontsize="small")
    fig.tight_layout()
    fig.savefig(os.path.join(out, f"{metric}_vs_batch.png"), dpi=110)
    plt.close(fig)
    big = max(r["batch_size"] for r in rows) if rows else None
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    colors = {o: f"C{i}" for i, o in enumerate(spec["optimizers"])}
    labelled = set()
    for r in rows:
        if r["batch_size"] == big and r["selected"]:  # one line per seed, one colour per optimizer
            c = [x for x in curves if (x["optimizer"], x["batch_size"], x["lr"], x["seed"]) == (r["optimizer"], big, r["lr"], r["seed"])]
            label = None if r["optimizer"] in labelled else f"{r['optimizer']} (lr {r['lr']:.3g})"
            labelled.add(r["optimizer"])
            ax.plot([x["epoch"] for x in c], [x["train_loss"] for x in c], color=colors[r["optimizer"]], label=label)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("training loss (epoch mean)")
    ax.set_title(f"training loss at B={big}" + (f", {len(spec['seeds'])} seeds" if len(spec["seeds"]) > 1 else ""))
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, f"loss_curves_b{big}.png"), dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="sngm-train study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), required=True)
    parser.add_argument("--out", required=True, help="study directory (runs/, results.csv, results.md, plots)")
    parser.add_argument("--np", type=int, default=1, help="processes per run (horovodrun --gloo on this host)")
    parser.add_argument("--optimizers", nargs="+", help="override the preset's optimizers")
    parser.add_argument("--batch-sizes", type=int, nargs="+", help="override the preset's batch sizes")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the preset's seeds")
    parser.add_argument("--lr-factors", type=float, nargs="+", help="override the preset's sweep around the base lr")
    parser.add_argument("--extend-edges", type=int, help="override how many steps the sweep may go past its ends")
    parser.add_argument("--data-dir", default="", help="CIFAR location for the resnet presets")
    parser.add_argument("--report-only", action="store_true", help="rebuild the tables and plots from finished runs")
    args, extra = parser.parse_known_args(argv)
    spec = dict(PRESETS[args.preset])
    for k in ("optimizers", "batch_sizes", "seeds", "lr_factors", "extend_edges"):
        if getattr(args, k) is not None:
            spec[k] = getattr(args, k)
    if args.data_dir:
        extra = ["--data-dir", args.data_dir, *extra]
    if args.np < 1:
        parser.error(f"--np must be >= 1, got {args.np}")
    if spec["extend_edges"] < 0:
        parser.error(f"--extend-edges must be >= 0, got {spec['extend_edges']}")
    if not all(f > 0 for f in spec["lr_factors"]):
        parser.error(f"--lr-factors must all be > 0, got {spec['lr_factors']}")
    if args.np > 1 and shutil.which("horovodrun", path=os.path.dirname(sys.executable)) is None:
        parser.error("--np > 1 needs Horovod (horovodrun); run `make install`")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "study.json"), "w") as f:
        json.dump({"preset": args.preset, **spec, "extra_flags": list(extra), "np": args.np}, f, indent=1)
    rows = report(spec, args.out) if args.report_only else run(spec, args.out, args.np, extra)
    print(open(os.path.join(args.out, "results.md")).read() if rows else "no finished runs")
    return 0
