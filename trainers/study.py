"""`sngm-train study`: a preset's arms (an optimizer at a batch size; see
trainers/presets.py), each with its own learning-rate sweep, through the trainers; CSV,
per-epoch curves, a markdown table beside the paper's published one, and PNG plots.

Tuning honesty: every arm gets the same sweep, its centre x `--lr-factors`, extended by
up to `--extend-edges` steps past an end of the sweep that holds the best value (so no
optimizer is judged at the edge of a bad range), trained on the training set minus a
fixed validation split and judged on the validation metric (mean over the sweep seeds;
a diverged run ranks last). Seeds beyond the preset's `sweep_seeds` then run at the
chosen lr only, for the spread. The test set is evaluated once per run, after training,
and only reported. Each run is a fresh `sngm-train` process (under
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

from keras_sngm_trainers import study_cost
from keras_sngm_trainers.config import paper_micro_batch
from keras_sngm_trainers.presets import PRESETS, arm, base_lr


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


def _metric(spec):
    return "accuracy" if spec["task"] == "resnet" else "auc"


def sweep_seeds(spec):
    """The seeds the sweep runs at every lr; the others run only at the chosen lr."""
    return spec["seeds"][:spec.get("sweep_seeds") or len(spec["seeds"])]


def arms(spec):
    """The preset's arms, narrowed by `optimizers` / `batch_sizes` when given. A named
    batch size the preset lacks is added for the named optimizers, centred on `base_lr`."""
    have = spec["arms"]
    labels = spec.get("optimizers") or list(dict.fromkeys(a["label"] for a in have))
    batches = spec.get("batch_sizes") or list(dict.fromkeys(a["batch"] for a in have))
    out = []
    for label in labels:
        for b in batches:
            match = [a for a in have if a["label"] == label and a["batch"] == b]
            if not match and spec.get("batch_sizes"):
                match = [arm(label, b, base_lr(label, b, spec["task"]))]
            out += match
    return out


def sweep(spec, out, a, run_missing=None):
    """The learning rates swept for arm `a`, the same procedure for every arm: its centre
    x `lr_factors`, then up to `extend_edges` steps past the end that holds the best
    validation metric (mean over the sweep seeds). With `run_missing`, unfinished runs
    are trained (`run_missing(lr, seed)`); without, the sweep stops at the first
    unfinished one (for reports of a grid still running)."""
    metric = _metric(spec)
    lrs = [round(a["lr"] * f, 6) for f in spec["lr_factors"]]  # (the same factors for every arm)
    for extension in range(spec.get("extend_edges", 0) + 1):
        scores = {}
        for lr in lrs:
            per_seed = []
            for seed in sweep_seeds(spec):
                run_dir = os.path.join(out, "runs", cell_name(a["label"], a["batch"], lr, seed))
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


def chosen(spec, out, a):
    """The lr with the best mean validation metric over the sweep seeds (ties to the
    smaller lr; diverged = -inf), or None while the sweep is unfinished."""
    metric = _metric(spec)
    scores = {}
    for lr in sweep(spec, out, a):
        per_seed = [_score(os.path.join(out, "runs", cell_name(a["label"], a["batch"], lr, s)), metric)
                    for s in sweep_seeds(spec)]
        if None in per_seed:
            return None
        scores[lr] = sum(per_seed) / len(per_seed)
    return max(sorted(scores), key=lambda lr: scores[lr])


def run_flags(spec, a, extra=()):
    """The flags of every run of arm `a`: the preset's, the arm's, then the user's."""
    workers = spec.get("np") or spec.get("workers", 1)
    batch = ["--batch-size", "auto", "--batch-min", str(a["batch"]), "--batch-max", str(a["batch_max"])] \
        if a.get("batch_max") else ["--batch-size", str(a["batch"])]
    return [*spec["flags"], "--micro-batch", str(paper_micro_batch(a["batch"], workers, spec.get("micro_batch", 128))),
            *a["flags"], *extra, "--optimizer", a["optimizer"], *batch]


def run(spec, out, np_=1, extra=()):
    os.makedirs(os.path.join(out, "runs"), exist_ok=True)
    extra = list(extra)
    if spec["task"] == "deepfm" and spec.get("data_rows"):
        data = os.path.join(out, "data")
        if not os.path.isfile(os.path.join(data, "truth.json")):
            from keras_sngm_trainers.data import planted_ctr

            tr, va, te = spec["data_rows"]
            planted_ctr.generate(data, tr, te, seed=0, val_rows=va)
        extra += ["--data", os.path.join(data, "train.tsv"), "--val-data", os.path.join(data, "val.tsv"),
                  "--test-data", os.path.join(data, "test.tsv")]
    for a in arms(spec):
        def train(lr, s, a=a):
            name = cell_name(a["label"], a["batch"], lr, s)
            print(f"{name}: running", flush=True)
            run_cell(spec["task"], run_flags(spec, a, extra) + ["--lr", str(lr), "--seed", str(s)],
                     os.path.join(out, "runs", name), np_, os.path.join(out, "study.log"))

        lrs = sweep(spec, out, a, run_missing=train)
        best = chosen(spec, out, a)
        for s in spec["seeds"]:
            if s not in sweep_seeds(spec):
                d = os.path.join(out, "runs", cell_name(a["label"], a["batch"], best, s))
                if _score(d, _metric(spec)) is None:
                    train(best, s)
        print(f"{a['label']} B={a['batch']}: swept lr {', '.join(f'{lr:.4g}' for lr in sorted(lrs))}; chose {best:.4g}",
              flush=True)
    return report(spec, out)


def report(spec, out):
    """results.csv, curves.csv, results.md and plots from the finished runs."""
    metric = _metric(spec)
    rows, curves = [], []
    for a in arms(spec):
        best = chosen(spec, out, a)
        for lr in sweep(spec, out, a):
            for s in spec["seeds"]:
                d = os.path.join(out, "runs", cell_name(a["label"], a["batch"], lr, s))
                if not os.path.isfile(os.path.join(d, "final.json")):
                    continue
                final = json.load(open(os.path.join(d, "final.json")))
                hist = json.load(open(os.path.join(d, "history.json")))["history"]
                wall = float(open(os.path.join(d, "wall_seconds.txt")).read()) \
                    if os.path.isfile(os.path.join(d, "wall_seconds.txt")) else float("nan")
                rows.append({"optimizer": a["label"], "batch_size": a["batch"], "lr": lr, "seed": s,
                             f"val_{metric}": final.get(f"val_{metric}"), f"test_{metric}": final.get(f"test_{metric}"),
                             "test_loss": final.get("test_loss"), "final_train_loss": hist["loss"][-1],
                             "diverged": _score(d, metric) == -math.inf, "wall_seconds": wall,
                             "sweep": s in sweep_seeds(spec), "selected": lr == best,
                             "updates": final.get("updates"), "examples": final.get("examples"),
                             "batch_max": a.get("batch_max")})
                for e, loss in enumerate(hist["loss"]):
                    curves.append({"optimizer": a["label"], "batch_size": a["batch"], "lr": lr, "seed": s, "epoch": e + 1,
                                   "train_loss": loss, f"val_{metric}": hist.get(f"val_{metric}", [None] * (e + 1))[e],
                                   "noise_scale": hist.get("noise_scale", [None] * (e + 1))[e]})
    _write_csv(os.path.join(out, "results.csv"), rows)
    _write_csv(os.path.join(out, "curves.csv"), curves)
    truth = os.path.join(out, "data", "truth.json")
    best_auc = json.load(open(truth))["best_test_auc"] if os.path.isfile(truth) else None
    table = _markdown(spec, rows, curves, metric, best_auc)
    if any(a.get("batch_max") for a in arms(spec)):  # the adaptive batch: what it cost, how it moved
        head, sep, tail = table.partition("\nEvery run")
        table = head.rstrip("\n") + "\n" + "\n".join(study_cost.lines(rows, metric)) + "\n" + sep + tail
        study_cost.trajectory_plot(out, rows, lambda r: os.path.join(
            out, "runs", cell_name(r["optimizer"], r["batch_size"], r["lr"], r["seed"])))
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


def _labels(spec):
    return list(dict.fromkeys(a["label"] for a in arms(spec)))


def _published(paper):
    """The paper's table, in its layout, cited by its source."""
    batches = sorted({b for r in paper["rows"].values() for b in r})
    lines = [f"Published ({paper['source']}), {paper['metric']}:", "",
             "| method | " + " | ".join(f"B={b}" for b in batches) + " |", "| --- |" + " ---: |" * len(batches)]
    for m, r in paper["rows"].items():
        lines.append(f"| {m} | " + " | ".join(f"{r[b]:g}" if b in r else "-" for b in batches) + " |")
    return lines


def _noise_lines(rows, curves):
    """B_simple, the gradient noise scale the diagnostics estimate (from the micro-batch
    gradients of runs with several micro-batches per update), in the first and last epoch
    of the chosen runs: the theory's critical batch, to set beside where MSGD loses."""
    out = []
    for r in rows:
        if not r["selected"]:
            continue
        c = [x["noise_scale"] for x in curves if (x["optimizer"], x["batch_size"], x["lr"], x["seed"]) ==
             (r["optimizer"], r["batch_size"], r["lr"], r["seed"]) and x["noise_scale"] not in (None, "")]
        # An estimate <= 0 means the unbiased |G|^2 estimate was <= 0: the gradient is below what the
        # micro-batch noise resolves, so B_simple is beyond measurement (it ranks as infinite).
        c = [v if v > 0 else math.inf for v in c if not math.isnan(v)]
        if c:
            out.append((r["optimizer"], r["batch_size"], r["seed"], c[0], sorted(c)[len(c) // 2], c[-1]))
    if not out:
        return []

    def show(v):
        return f"{v:.0f}" if math.isfinite(v) else "unresolved†"

    lines = ["", "Gradient noise scale B_simple = tr(Σ)/|G|² measured during the chosen runs (epoch 1, the median "
             "over epochs, the last epoch; it needs several micro-batches per update, so the smallest batch has none):",
             "", "| optimizer | B | seed | B_simple, epoch 1 | median | last epoch |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {o} | {b} | {s} | {show(first)} | {show(mid)} | {show(last)} |" for o, b, s, first, mid, last in out]
    if any(not math.isfinite(v) for row in out for v in row[3:]):
        lines += ["", "† the unbiased estimate of |G|² came out ≤ 0: the mean gradient is below what the "
                      "micro-batch noise resolves, so B_simple is larger than this run can measure."]
    return lines


def _chosen_means(spec, rows, metric, scale):
    """{(optimizer, B): mean test metric over the seeds at the chosen lr}; diverged runs
    count as the metric's floor (0.5 AUC, 0 accuracy)."""
    floor = 0.5 if metric == "auc" else 0.0
    out = {}
    for o in _labels(spec):
        for b in {r["batch_size"] for r in rows}:
            sel = [r for r in rows if r["optimizer"] == o and r["batch_size"] == b and r["selected"]]
            if sel:
                out[(o, b)] = scale * sum(floor if r["diverged"] else r[f"test_{metric}"] for r in sel) / len(sel)
    return out


def _gaps(spec, rows, metric, batches, scale):
    """SNGM's lead over each optimizer at each batch, and each optimizer's change from the
    smallest to the largest batch: the two numbers the paper's claims are about."""
    means = _chosen_means(spec, rows, metric, scale)
    if len(batches) < 1 or not any(o == "sngm" for o, _ in means):
        return []
    unit = "points" if scale == 100 else metric
    change = f" and each optimizer's change from B={batches[0]} to B={batches[-1]}" if len(batches) > 1 else ""
    lines = ["", f"SNGM's lead (SNGM minus the optimizer, mean test {metric} in {unit}; diverged = chance){change}:", "",
             "| optimizer | " + " | ".join(f"B={b}" for b in batches)
             + (f" | B={batches[0]} → {batches[-1]} |" if len(batches) > 1 else " |"),
             "| --- |" + " ---: |" * (len(batches) + (len(batches) > 1))]
    fmt = "{:+.2f}" if scale == 100 else "{:+.4f}"
    for o in _labels(spec):
        cells = [fmt.format(means[("sngm", b)] - means[(o, b)]) if ("sngm", b) in means and (o, b) in means else "-"
                 for b in batches]
        first, last = means.get((o, batches[0])), means.get((o, batches[-1]))
        change = fmt.format(last - first) if first is not None and last is not None else "-"
        lines.append(f"| {o} | " + " | ".join(cells) + (f" | {change} |" if len(batches) > 1 else " |"))
    return lines


def _markdown(spec, rows, curves, metric, best_auc):
    batches = sorted({r["batch_size"] for r in rows})
    paper = spec.get("paper")
    scale = 100 if metric == "accuracy" or (paper and "%" in paper["metric"]) else 1
    n_sweep = len(sweep_seeds(spec))
    lines = [f"Test {metric} (mean ± sd over {len(spec['seeds'])} seed(s)) at the learning rate chosen on the "
             f"validation split ({'seed ' + ', '.join(map(str, sweep_seeds(spec))) if n_sweep < len(spec['seeds']) else 'all seeds'}: "
             f"centre x {spec['lr_factors']}, extended up to {spec.get('extend_edges', 0)} step(s) past an end that "
             f"held the best); lr in parentheses, with 'edge' where the chosen lr is still the smallest or largest "
             f"tried after the extensions (the sweep did not bracket the best)."
             + (f" Best achievable test AUC (planted truth): {best_auc:.4f}." if best_auc else "")
             + (f" The paper's number ({paper['source']}) follows where it has the same cell." if paper and
                spec.get("paper_inline") else ""), "",
             "| optimizer | " + " | ".join(f"B={b}" for b in batches) + " |", "| --- |" + " ---: |" * len(batches)]
    for o in _labels(spec):
        cells = []
        for b in batches:
            sel = [r for r in rows if r["optimizer"] == o and r["batch_size"] == b and r["selected"]]
            published = paper["rows"].get(o, {}).get(b) if paper and spec.get("paper_inline") else None
            tail = f"; paper {published:g}" if published is not None else ""
            if not sel:
                cells.append("-" + tail)
            elif all(r["diverged"] for r in sel):
                cells.append(f"diverged at every lr (best tried {sel[0]['lr']:.3g}){tail}")
            else:
                finite = [r[f"test_{metric}"] * scale for r in sel if not r["diverged"]]
                m, sd = _mean_std(finite)
                nd = sum(r["diverged"] for r in sel)
                digits = 2 if scale == 100 else 4
                # one run has no spread to show
                cells.append(f"{m:.{digits}f} ± {sd:.{digits}f}" if len(finite) > 1 else f"{m:.{digits}f}")
                swept = {r["lr"] for r in rows if r["optimizer"] == o and r["batch_size"] == b}
                # a single lr tried is both ends of its sweep: the best is not bracketed either
                edge = ", edge" if sel[0]["lr"] in (min(swept), max(swept)) else ""
                cells[-1] += f" ({sel[0]['lr']:.3g}{edge}, n={len(sel)}{f', {nd} diverged' if nd else ''}){tail}"
        lines.append(f"| {o} | " + " | ".join(cells) + " |")
    lines += _gaps(spec, rows, metric, batches, scale)
    if paper:
        lines += ["", *_published(paper)]
    lines += _noise_lines(rows, curves)
    lines += ["", "Every run (validation metric used for the choice; seeds outside the sweep run only at the chosen lr):",
              "", f"| optimizer | B | lr | seed | val {metric} | test {metric} | final train loss | minutes | chosen |",
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
    for o in _labels(spec):
        picked = [r for r in rows if r["optimizer"] == o and r["selected"]]
        by_batch = {}
        for r in picked:
            if not r["diverged"]:
                by_batch.setdefault(r["batch_size"], []).append(r[f"test_{metric}"])
        pts = [(b, *_mean_std(v)) for b, v in sorted(by_batch.items())]  # mean and sd over seeds
        lost = sorted({r["batch_size"] for r in picked} - set(by_batch))
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
    colors = {o: f"C{i}" for i, o in enumerate(_labels(spec))}
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
    parser.add_argument("--np", type=int, help="processes per run (horovodrun --gloo on this host); default: the "
                        "preset's workers (8 for the paper presets, as the paper's 8 GPUs); sets --micro-batch "
                        "min(128, B/np)")
    parser.add_argument("--optimizers", nargs="+", help="only these arms of the preset (optimizer names or labels)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", help="only these batch sizes; one the preset lacks is "
                        "added for each optimizer, centred on the project's base lr")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the preset's seeds")
    parser.add_argument("--lr-factors", type=float, nargs="+", help="override the preset's sweep around the base lr")
    parser.add_argument("--extend-edges", type=int, help="override how many steps the sweep may go past its ends")
    parser.add_argument("--data-dir", default="", help="the data of the resnet presets: CIFAR, or ImageNet (TFRecord shards, "
                        "an image folder, or the ILSVRC tars) for the paper-imagenet presets")
    parser.add_argument("--report-only", action="store_true", help="rebuild the tables and plots from finished runs")
    args, extra = parser.parse_known_args(argv)
    spec = dict(PRESETS[args.preset])
    for k in ("optimizers", "batch_sizes", "seeds", "lr_factors", "extend_edges"):
        if getattr(args, k) is not None:
            spec[k] = getattr(args, k)
    if args.data_dir:
        extra = ["--data-dir", args.data_dir, *extra]
    args.np = spec["np"] = args.np if args.np is not None else spec.get("workers", 1)
    if args.np < 1:
        parser.error(f"--np must be >= 1, got {args.np}")
    if spec["extend_edges"] < 0:
        parser.error(f"--extend-edges must be >= 0, got {spec['extend_edges']}")
    if not all(f > 0 for f in spec["lr_factors"]):
        parser.error(f"--lr-factors must all be > 0, got {spec['lr_factors']}")
    if not arms(spec):
        parser.error(f"--optimizers {spec.get('optimizers')} / --batch-sizes {spec.get('batch_sizes')} select no arm "
                     f"of --preset {args.preset} (it has {sorted({(a['label'], a['batch']) for a in spec['arms']})})")
    if args.np > 1 and shutil.which("horovodrun", path=os.path.dirname(sys.executable)) is None:
        parser.error("--np > 1 needs Horovod (horovodrun); run `make install`")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "study.json"), "w") as f:
        json.dump({"preset": args.preset, **spec, "arms": arms(spec), "extra_flags": list(extra)}, f, indent=1)
    rows = report(spec, args.out) if args.report_only else run(spec, args.out, args.np, extra)
    print(open(os.path.join(args.out, "results.md")).read() if rows else "no finished runs")
    return 0
