"""What each arm of a study cost, and how an adaptive batch moved: the per-arm table
(test metric, updates = allreduce rounds, examples, wall time), the adaptive batch's
claim against the fixed one it starts from, and the plot of the batch against B_simple.
`sngm-train study` adds them to the report of any preset with `--batch-size auto` arms."""

import json
import math
import os


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else math.nan


def _arms(rows):
    """{(label, batch, batch_max): selected rows} in the rows' order."""
    out = {}
    for r in rows:
        if r["selected"]:
            out.setdefault((r["optimizer"], r["batch_size"], r.get("batch_max")), []).append(r)
    return out


def lines(rows, metric):
    scale, unit = (100, "points") if metric == "accuracy" else (1, metric)
    arms = _arms(rows)
    out = ["", f"Per arm at its chosen lr (means over seeds): test {metric}, updates (allreduce rounds), examples "
               "and wall time:", "",
           f"| arm | batch | test {metric} | updates | examples | minutes | lr |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    summary = {}
    for (label, b, top), sel in arms.items():
        test = [scale * r[f"test_{metric}"] for r in sel if not r["diverged"]]
        m = _mean(test)
        sd = math.sqrt(sum((v - m) ** 2 for v in test) / (len(test) - 1)) if len(test) > 1 else None
        spread = f" ± {sd:.2f}" if sd is not None else " (1 seed)"
        summary[(label, b, top)] = (m, _mean([r["updates"] for r in sel]))
        fmt = "{:.2f}" if scale == 100 else "{:.4f}"
        out.append(f"| {label} | {f'auto {b} → {top}' if top else b} | {fmt.format(m)}{spread} | "
                   f"{_mean([r['updates'] for r in sel]):.0f} | {_mean([r['examples'] for r in sel]):.0f} | "
                   f"{_mean([r['wall_seconds'] for r in sel]) / 60:.1f} | {sel[0]['lr']:.3g} |")
    out += _claims(summary, unit, scale)
    return out


def _claims(summary, unit, scale):
    """Each adaptive arm against the fixed arm of the same optimizer at its starting batch."""
    out = []
    for (label, b, top), (m, updates) in summary.items():
        base = [(k, v) for k, v in summary.items() if not k[2] and k[1] == b and label.startswith(k[0] + "-")]
        if not top or not base:
            continue
        (fixed, _, _), (m0, u0) = base[0]
        diff, ratio = m - m0, updates / u0
        close = diff >= (-0.5 if scale == 100 else -0.005)  # 0.5 accuracy points, or 0.005 AUC
        verdict = "met" if close and ratio <= 0.5 else "not met (" + " and ".join(
            w for w, bad in ((f"{unit}", not close), ("updates", ratio > 0.5)) if bad) + ")"
        out += ["", f"**{label} against {fixed} at fixed B={b}**: {diff:+.2f} {unit} with {ratio:.2f}x the updates "
                    f"({updates:.0f} against {u0:.0f}). The claim \"within 0.5 points (0.005 AUC) with at most half "
                    f"the updates\" is {verdict} here."]
    return out


def trajectory_plot(out, rows, run_dir):
    """batch_vs_noise_scale.png: each adaptive run's batch (the adapter's decisions) and the
    B_simple it measured at every epoch's end, against epochs; the fixed arms' B_simple
    dashed. `run_dir(row)` is the run's directory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    colours = {}
    for r in rows:
        if not r["selected"] or r["diverged"]:
            continue
        d = run_dir(r)
        final = json.load(open(os.path.join(d, "final.json")))
        hist = json.load(open(os.path.join(d, "history.json")))["history"]
        per_epoch = final["examples"] / max(final["epochs_done"], 1)
        key = (r["optimizer"], r["batch_size"], r.get("batch_max"))
        colour = colours.setdefault(key, f"C{len(colours)}")
        first = colour not in [line.get_color() for line in ax.lines]
        noise = hist.get("noise_scale", [])
        epochs = list(range(1, len(noise) + 1))
        name = f"{key[0]} B={key[1]}" if not key[2] else f"{key[0]} auto {key[1]}→{key[2]}"
        ax.plot(epochs, [v if v > 0 else math.nan for v in noise], ":" if not key[2] else "o", ms=3, color=colour,
                label=f"B_simple, {name}" if first else None)
        if key[2]:
            xs, ys = [0.0], [key[1]]
            for change in final.get("batch_trajectory", []):
                xs += [change["examples"] / per_epoch] * 2
                ys += [ys[-1], change["batch_size"]]
            xs.append(final["epochs_done"])
            ys.append(ys[-1])
            ax.plot(xs, ys, "-", color=colour, lw=2, label=f"batch in use, {name}" if first else None)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("batch and B_simple (examples)")
    ax.set_title("the adaptive batch against the measured noise scale")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "batch_vs_noise_scale.png"), dpi=110)
    plt.close(fig)
