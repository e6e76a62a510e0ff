"""`sngm-train plan`: which batch, and how many workers, reach the target fastest or cheapest.

    sngm-train plan --run runs/ref --target val_accuracy=0.58 --workers 1,8,64 \\
        --batch-sizes 256,1024,8192 --bandwidth 12.5 --latency 10 --json plan.json --plot plan.png
    horovodrun -np 2 -H localhost:2 sngm-train plan --measure-allreduce --out allreduce.json

The first --run is the reference: its update times, gradient bytes and noise-scale
trajectory; every --run at a fixed batch that reached the target enters the fit of S_min.
--check runs are predicted, not fitted: their measured update times and updates to the
target are printed against the model's, with the errors. The equations are in
trainers/planning/model.py and docs/planning.md.
"""

import argparse
import json
import math
import os

from keras_sngm_trainers.planning import measured, model
from keras_sngm_trainers.planning.measured import PlanError

# Optimizers whose step length does not depend on B (lr * ||u|| <= lr / (1 - beta)): the same
# lr serves a larger batch, so updates to the target extrapolate past the measured batches.
# The others need their lr retuned per batch: beyond the largest measured batch, unsupported.
EXTRAPOLATES = ("sngm", "block_sngm")


def build_parser():
    p = argparse.ArgumentParser(prog="sngm-train plan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", default=[], metavar="DIR",
                   help="a finished run directory (repeat for more); the first is the reference")
    p.add_argument("--check", action="append", default=[], metavar="DIR",
                   help="a run to predict and compare with, not fitted (any batch, workers, or --batch-size auto)")
    goal = p.add_mutually_exclusive_group()
    goal.add_argument("--target", metavar="METRIC=VALUE", help="a per-epoch metric of the runs' history, e.g. "
                      "val_accuracy=0.58 (reached: at least the value; for a loss, at most)")
    goal.add_argument("--target-epochs", type=int, metavar="N", help="the reference's state after N epochs")
    goal.add_argument("--updates-to-target", metavar="S@B", help="assumed instead of a run's history: S updates at "
                      "global batch B reach the target (a published recipe)")
    p.add_argument("--workers", default="1,8,64", help="worker counts to plan for (default: 1,8,64)")
    p.add_argument("--batch-sizes", default="256,1024,8192", help="global batches to plan for (default: 256,1024,8192)")
    p.add_argument("--micro-batch", type=int, default=0, help="examples per worker per pass; 0 = the reference's "
                   "(another value scales its time per micro-batch linearly)")
    p.add_argument("--worker-throughput", type=float, default=0.0, metavar="EX/S",
                   help="examples/s one worker computes (forward + backward) at --micro-batch, measured on the "
                        "hardware you plan for; replaces the reference's micro-batch and step times")
    p.add_argument("--gradient-bytes", type=float, default=0.0, help="bytes each update allreduces per worker; "
                   "0 = the reference's (its trainable parameters x 4, or x 2 with --compression fp16)")
    p.add_argument("--noise-scale", type=float, default=0.0, metavar="B_NOISE", help="assumed B_noise (inf: "
                   "perfect scaling); 0 = the reference's progress-weighted B_simple")
    p.add_argument("--allreduce", default="", metavar="FILE", help="the fit --measure-allreduce wrote (alpha, busbw)")
    p.add_argument("--bandwidth", type=float, default=0.0, metavar="GB/S", help="bus bandwidth busbw in GB/s "
                   "(NCCL-tests' convention; about the link speed for a ring across nodes: 100 Gb/s = 12.5)")
    p.add_argument("--latency", type=float, default=-1.0, metavar="US", help="alpha, microseconds per ring step")
    p.add_argument("--overlap", type=float, default=0.0, help="fraction of the last micro-batch's pass the allreduce "
                   "hides behind, in [0, 1] (0: this project's trainers reduce after it)")
    p.add_argument("--max-workers", type=int, default=0, help="the fastest plan uses at most this many (0: any listed)")
    p.add_argument("--max-hours", type=float, default=math.inf, help="the cheapest plan finishes within this")
    p.add_argument("--json", default="", metavar="FILE", help="write the rows and the inputs as JSON")
    p.add_argument("--plot", default="", metavar="FILE.png", help="wall time against workers, one line per batch")
    p.add_argument("--measure-allreduce", action="store_true", help="under horovodrun: time Horovod's allreduce "
                   "from 1 KiB to --max-bytes and write the alpha/busbw fit to --out")
    p.add_argument("--out", default="allreduce.json", help="with --measure-allreduce, the fit's file")
    p.add_argument("--max-bytes", type=int, default=256 << 20, help="with --measure-allreduce, the largest message")
    p.add_argument("--repeats", type=int, default=10, help="with --measure-allreduce, timed reductions per size")
    return p


def _ints(text, flag):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise PlanError(f"{flag} must be a comma-separated list of positive integers. Received: {text!r}")
    return sorted(set(values))


def check_flags(a):
    """Every flag error, before any run is read."""
    def need(ok, flag, rule, value):
        if not ok:
            raise PlanError(f"{flag} {rule}. Received: {value!r}")

    finite = math.isfinite
    need(finite(a.bandwidth) and a.bandwidth >= 0, "--bandwidth", "must be a positive number of GB/s", a.bandwidth)
    need(finite(a.latency) and (a.latency >= 0 or a.latency == -1), "--latency", "must be >= 0 microseconds",
         a.latency)
    need(finite(a.overlap) and 0 <= a.overlap <= 1, "--overlap", "must be in [0, 1]", a.overlap)
    need(finite(a.worker_throughput) and a.worker_throughput >= 0, "--worker-throughput",
         "must be a positive number of examples/s", a.worker_throughput)
    need(finite(a.gradient_bytes) and a.gradient_bytes >= 0, "--gradient-bytes", "must be >= 0", a.gradient_bytes)
    need(a.noise_scale >= 0 and not math.isnan(a.noise_scale), "--noise-scale", "must be positive (or inf)",
         a.noise_scale)
    need(a.micro_batch >= 0, "--micro-batch", "must be >= 1", a.micro_batch)
    need(a.max_workers >= 0, "--max-workers", "must be >= 1", a.max_workers)
    need(a.max_hours > 0 and not math.isnan(a.max_hours), "--max-hours", "must be a positive number", a.max_hours)
    need(a.target_epochs is None or a.target_epochs >= 1, "--target-epochs", "must be >= 1", a.target_epochs)
    a.workers_list, a.batch_list = _ints(a.workers, "--workers"), _ints(a.batch_sizes, "--batch-sizes")
    a.target_pair = a.assumed = None
    if a.target is not None:
        metric, _, value = a.target.partition("=")
        try:
            a.target_pair = (metric.strip(), float(value))
        except ValueError:
            a.target_pair = None
        need(a.target_pair and a.target_pair[0] and finite(a.target_pair[1]), "--target",
             "must be METRIC=VALUE, e.g. val_accuracy=0.58", a.target)
    if a.updates_to_target is not None:
        s, _, b = a.updates_to_target.partition("@")
        try:
            a.assumed = (float(s), int(b))
        except ValueError:
            a.assumed = None
        need(a.assumed and a.assumed[0] > 0 and a.assumed[1] > 0, "--updates-to-target",
             "must be S@B with S updates and B a global batch, e.g. 14075@8192", a.updates_to_target)
    need(a.target_pair or a.target_epochs or a.assumed, "--target", "(or --target-epochs or --updates-to-target) is "
         "required: the accuracy to reach", None)
    need(a.run or a.assumed, "--run", "is required (a measured run directory) unless --updates-to-target is given",
         a.run)
    if a.allreduce:
        need(os.path.isfile(a.allreduce), "--allreduce", "must be a file written by --measure-allreduce", a.allreduce)
    elif max(a.workers_list) > 1 and not (a.bandwidth and a.latency >= 0):
        raise PlanError("--bandwidth and --latency (or --allreduce FILE) are needed to plan for more than one "
                        f"worker. Received: --workers {a.workers}")


def network(a):
    """(alpha s, busbw bytes/s, where they came from)."""
    alpha, busbw, source = 0.0, math.inf, "one worker only: no allreduce"
    if a.allreduce:
        try:
            with open(a.allreduce) as f:
                fit = json.load(f)
            alpha, busbw = float(fit["alpha_seconds"]), float(fit["busbw_bytes_per_second"])
        except (OSError, ValueError, KeyError) as e:
            raise PlanError(f"--allreduce {a.allreduce} is not a --measure-allreduce fit: {e!r}") from None
        source = f"fitted by --measure-allreduce ({fit.get('workers')} workers, {fit.get('backend')}), {a.allreduce}"
    if a.bandwidth:
        busbw, source = a.bandwidth * 1e9, "--bandwidth" + (", " + source if a.allreduce else "")
    if a.latency >= 0:
        alpha, source = a.latency * 1e-6, source if a.allreduce and not a.bandwidth else "--bandwidth, --latency"
    return alpha, busbw, source


class Plan:
    """Every input of the model, each with where it came from."""

    def __init__(self, a):
        self.a = a
        self.alpha, self.busbw, net = network(a)
        self.runs = [measured.load(p) for p in a.run]
        self.inputs = {"network": net}
        ref = self.runs[0] if self.runs else None
        if ref is not None:
            for r in self.runs[1:]:
                if (r.config.get("task"), r.optimizer) != (ref.config.get("task"), ref.optimizer):
                    raise PlanError(f"--run {r.path} is {r.config.get('task')} with {r.optimizer}, the reference "
                                    f"{ref.path} {ref.config.get('task')} with {ref.optimizer}: plan one at a time")
            for r in self.runs:
                if r.adaptive:
                    raise PlanError(f"--run {r.path} has an adaptive batch: pass it as --check (the fit of S_min "
                                    f"takes fixed-batch runs)")
        self.ref, self.optimizer = ref, ref.optimizer if ref else "sngm"
        self._compute(a, ref)
        self._bytes(a, ref)
        self._updates(a, ref)

    def _compute(self, a, ref):
        self.m = a.micro_batch or (int(ref.config["micro_batch"]) if ref else 0)
        if not self.m:
            raise PlanError("--micro-batch is needed without a --run")
        if a.worker_throughput:
            self.t_micro, self.t_step = self.m / a.worker_throughput, 0.0
            self.inputs["compute"] = (f"--worker-throughput {a.worker_throughput:g} examples/s: "
                                      f"{self.t_micro * 1e3:.4g} ms per micro-batch of {self.m}")
            return
        if ref is None:
            raise PlanError("--worker-throughput is needed without a --run")
        t = ref.need_timing()
        n_ref, m_ref = int(t["workers"]), int(t["micro_batch"])
        comm = model.allreduce_seconds(ref.config.get("allreduce_bytes", 0), n_ref, self.busbw, self.alpha)
        if t["micro_seconds"] is not None:
            t_micro, t_step = t["micro_seconds"], max(t["step_seconds"] - comm, 0.0)
            how = "median micro-batch; step = closing micro-batch minus it"
        else:  # one micro-batch per update: its own work cannot be told apart
            t_micro, t_step = max(t["last_micro_seconds"] - comm, 0.0), 0.0
            how = "one micro-batch per update: the step's own work is counted in it"
        self.t_micro, self.t_step = t_micro * self.m / m_ref, t_step
        self.inputs["compute"] = (f"measured in {ref.path} ({_workers(n_ref)}, {t['threads_per_worker']} thread(s) "
                                  f"each, {t['updates_timed']} updates): {t_micro * 1e3:.4g} ms per micro-batch of "
                                  f"{m_ref}, {t_step * 1e3:.3g} ms per update besides ({how})"
                                  + (f"; scaled to {self.m} examples" if self.m != m_ref else ""))

    def _bytes(self, a, ref):
        if a.gradient_bytes:
            self.nbytes, self.inputs["gradient_bytes"] = a.gradient_bytes, f"--gradient-bytes {a.gradient_bytes:g}"
        elif ref is not None and "allreduce_bytes" in ref.config:
            self.nbytes = ref.config["allreduce_bytes"]
            self.inputs["gradient_bytes"] = (f"{self.nbytes:,} from {ref.path} ({ref.config['trainable_parameters']:,}"
                                             f" trainable parameters, --compression {ref.config['compression']})")
        else:
            raise PlanError(f"{ref.path if ref else 'no --run'}: the gradient bytes are not recorded (config.json "
                            f"has no allreduce_bytes): pass --gradient-bytes, or train the run again")

    def _updates(self, a, ref):
        """S_min, B_noise and the largest supported batch."""
        self.points = []  # (updates, batch) reaching the target
        if a.assumed:
            s, b = a.assumed
            self.points.append((s, b))
            self.target = f"{s:g} updates at B={b} (--updates-to-target)"
        for r in self.runs if not a.assumed else []:
            self.points.append((self.reached(r)[0], r.batch))
        if a.target_pair:
            self.target = f"{a.target_pair[0]} >= {a.target_pair[1]:g}".replace(">=", "<=" if "loss" in
                                                                                a.target_pair[0] else ">=")
        elif a.target_epochs:
            self.target = f"the state of {ref.path} after {a.target_epochs} epochs"
        self.trajectory = None
        if a.noise_scale:
            self.b_noise, self.inputs["noise_scale"] = a.noise_scale, f"--noise-scale {a.noise_scale:g} (assumed)"
        else:
            if ref is None:
                raise PlanError("--noise-scale is needed without a --run")
            s_ref = self.points[0][0]
            points = ref.noise_trajectory()
            import numpy as np

            u = np.arange(int(math.ceil(s_ref)))
            b_simple = np.interp(u, [p[0] for p in points], [p[1] for p in points])
            w = model.progress_weights(b_simple, ref.batch)
            self.b_noise = model.effective_noise_scale(b_simple, ref.batch)
            self.trajectory = (np.concatenate([[0.0], np.cumsum(w)[:-1]]), b_simple)
            self.inputs["noise_scale"] = (f"{self.b_noise:.4g}: progress-weighted mean of {len(points)} B_simple "
                                          f"values of {ref.path} over its {s_ref:.0f} updates to the target "
                                          f"(median {float(np.median(b_simple)):.4g}, last {b_simple[-1]:.4g})")
        self.s_min, self.e_min = model.fit_scaling([p[0] for p in self.points], [p[1] for p in self.points],
                                                   self.b_noise)
        self.inputs["s_min"] = (f"S_min {self.s_min:.5g} updates, E_min {self.e_min:.5g} examples: least squares of "
                                f"S = S_min + E_min/B (E_min = S_min B_noise) over "
                                + ", ".join(f"{s:.0f} updates at B={b}" for s, b in self.points))
        if len({b for _, b in self.points}) >= 2:
            s_min2, b_noise2 = model.fit_s_min_and_noise([p[0] for p in self.points], [p[1] for p in self.points])
            self.inputs["two_parameter_fit"] = (f"S_min {s_min2:.5g}, B_noise {b_noise2:.4g} from the updates alone "
                                                f"(a check on the trajectory's B_noise)")
        self.largest = math.inf if self.optimizer in EXTRAPOLATES else max(b for _, b in self.points)
        if self.largest < math.inf:
            self.inputs["supported"] = (f"{self.optimizer} needs its lr retuned per batch: batches above the largest "
                                        f"measured, {self.largest}, are unsupported (not extrapolated)")

    def reached(self, run):
        a = self.a
        if a.target_pair:
            return measured.reached(run, *a.target_pair)
        return measured.after_epochs(run, a.target_epochs)

    def update_seconds(self, batch, workers, m=None, t_micro=None):
        m = m or self.m
        t_micro = self.t_micro * m / self.m if t_micro is None else t_micro
        return model.update_seconds(batch, workers, m, t_micro, self.t_step, self.nbytes, self.busbw, self.alpha,
                                    self.a.overlap)

    def row(self, workers, batch):
        row = {"workers": workers, "batch_size": batch, "micro_batches": math.ceil(batch / workers / self.m),
               "update_seconds": None, "updates": None, "examples": None, "hours": None, "worker_hours": None,
               "efficiency": None, "note": ""}
        if batch % workers:
            row["note"] = f"{batch} examples do not split over {workers} workers"
            return row
        row["update_seconds"] = t = self.update_seconds(batch, workers)
        if batch > self.largest:
            row["note"] = f"unsupported: {self.optimizer} measured up to B={self.largest}"
            return row
        row["updates"] = s = model.updates_to_target(self.s_min, self.e_min, batch)
        row["examples"] = s * batch
        row["hours"] = t * s / 3600
        row["worker_hours"] = row["hours"] * workers
        row["efficiency"] = self.update_seconds(batch, 1) / (workers * t)
        return row


def checks(plan, paths):
    """Each --check run: measured update times and updates to the target against the model."""
    out = []
    for path in paths:
        run = measured.load(path)
        t = run.need_timing()
        n, m = int(t["workers"]), int(t["micro_batch"])
        for k, v in t["by_micro_batches"].items():
            if v["update_seconds"] is None or v["updates"] < 3:
                continue
            batch = int(k) * n * m
            check = {"run": path, "what": f"update seconds, B={batch}, N={n}, threads {t['threads_per_worker']}",
                     "measured": v["update_seconds"], "predicted": plan.update_seconds(batch, n, m)}
            if t["micro_seconds"] is not None:  # the model's structure alone: the run's own pass time in (1)
                own = plan.update_seconds(batch, n, m, t_micro=t["micro_seconds"])
                check["error_with_own_t_micro"] = own / v["update_seconds"] - 1
            out.append(check)
        if plan.a.target_pair:
            try:
                updates, _ = plan.reached(run)
            except PlanError as e:
                out.append({"run": path, "what": "updates to the target", "measured": None, "predicted": None,
                            "note": str(e)})
                continue
            if run.adaptive:
                if plan.trajectory is None:
                    predicted = None
                else:
                    predicted = model.trajectory_updates(plan.s_min, *plan.trajectory, run.batch_of_update)
                what = f"updates to the target, adaptive B from {run.batch}"
            else:
                predicted, what = model.updates_to_target(plan.s_min, plan.e_min, run.batch), \
                    f"updates to the target, B={run.batch}"
            out.append({"run": path, "what": what, "measured": updates, "predicted": predicted})
    for c in out:
        if c.get("measured") and c.get("predicted") is not None:
            c["error"] = c["predicted"] / c["measured"] - 1
    return out


def checks_table(checked):
    lines = ["| run | prediction | measured | predicted | error | error with its own t_micro |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for c in checked:
        err = f"{c['error']:+.1%}" if "error" in c else c.get("note", "-")
        own = f"{c['error_with_own_t_micro']:+.1%}" if "error_with_own_t_micro" in c else "-"
        lines.append(f"| {os.path.basename(c['run'].rstrip('/'))} | {c['what']} | {_fmt(c['measured'])} | "
                     f"{_fmt(c['predicted'])} | {err} | {own} |")
    return "\n".join(lines)


def _fmt(v, digits=4):
    if v is None:
        return "-"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def report(plan, rows, found, checked):
    lines = [f"Target: {plan.target}; optimizer {plan.optimizer}.", "", "Inputs:"]
    lines += [f"- {k}: {v}" for k, v in plan.inputs.items()]
    if checked:
        lines += ["", "Checks (runs not fitted; the last column puts the run's own median micro-batch time in (1), "
                      "leaving only the model's structure to err):", "", checks_table(checked)]
    lines += ["", "| workers | batch | micro-batches/worker | update s | updates | hours | worker-hours | "
              "efficiency | note |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        eff = f"{r['efficiency']:.0%}" if r["efficiency"] is not None else "-"
        lines.append(f"| {r['workers']} | {r['batch_size']} | {r['micro_batches']} | {_fmt(r['update_seconds'])} | "
                     f"{_fmt(r['updates'], 5)} | {_fmt(r['hours'])} | {_fmt(r['worker_hours'])} | {eff} | "
                     f"{r['note']} |")
    lines.append("")
    for what, r in found.items():
        lines.append(f"{what}: " + (f"{_workers(r['workers'])} at B={r['batch_size']}, {r['hours']:.4g} h, "
                                    f"{r['worker_hours']:.4g} worker-hours" if r else "none of the rows"))
    return "\n".join(lines)


def _workers(n):
    return f"{n} worker" + ("s" if n != 1 else "")


def best(rows, max_workers, max_hours):
    ok = [r for r in rows if r["hours"] is not None]
    fast = [r for r in ok if not max_workers or r["workers"] <= max_workers]
    cheap = [r for r in ok if r["hours"] <= max_hours]
    limit = f" (at most {max_workers} workers)" if max_workers else ""
    within = f" within {max_hours:g} h" if math.isfinite(max_hours) else ""
    return {f"fastest{limit}": min(fast, key=lambda r: r["hours"]) if fast else None,
            f"cheapest{within}": min(cheap, key=lambda r: r["worker_hours"]) if cheap else None}


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for b in sorted({r["batch_size"] for r in rows}):
        pts = [(r["workers"], r["hours"]) for r in rows if r["batch_size"] == b and r["hours"] is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=f"B={b}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("workers")
    ax.set_ylabel("predicted hours to the target")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv):
    a = build_parser().parse_args(argv)
    try:
        if a.measure_allreduce:
            return _measure(a)
        check_flags(a)
        plan = Plan(a)
        rows = [plan.row(n, b) for b in a.batch_list for n in a.workers_list]
        checked = checks(plan, a.check)
    except PlanError as e:
        from keras_sngm_trainers.errors import print_error  # once under horovodrun (--measure-allreduce)

        print_error(f"sngm-train: error: {e}")
        return 2
    found = best(rows, a.max_workers, a.max_hours)
    print(report(plan, rows, found, checked), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"target": plan.target, "optimizer": plan.optimizer, "inputs": plan.inputs,
                       "model": {"t_micro": plan.t_micro, "t_step": plan.t_step, "micro_batch": plan.m,
                                 "gradient_bytes": plan.nbytes, "alpha": plan.alpha, "busbw": plan.busbw,
                                 "overlap": a.overlap, "s_min": plan.s_min, "e_min": plan.e_min,
                                 "b_noise": plan.b_noise if math.isfinite(plan.b_noise) else "inf"},
                       "rows": rows, "best": found, "checks": checked}, f, indent=1, default=str)
    if a.plot:
        plot(rows, a.plot)
    return 0


def _measure(a):
    from keras_sngm_trainers import config

    if a.max_bytes < 1024 or a.repeats < 1:
        raise PlanError(f"--max-bytes must be >= 1024 and --repeats >= 1. Received: {a.max_bytes}, {a.repeats}")
    if config.workers_from_env() < 2:  # before TensorFlow is imported
        raise PlanError("--measure-allreduce needs at least 2 workers: run it under "
                        "`horovodrun -np N sngm-train plan --measure-allreduce`. Received: 1 worker")
    from keras_sngm_trainers.planning import allreduce

    return allreduce.measure(a.out, a.max_bytes, a.repeats)
