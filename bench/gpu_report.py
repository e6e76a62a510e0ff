"""docs/benchmarks-gpu.md from what bench/gpu_bench.py measured: the host, one table per
section, and the targets. With no host (`--empty`) the same tables, every cell a dash."""

import os

import gpu_host

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
OPTIMIZERS = ("SGD", "SNGM", "BlockSNGM", "LARS")
SETTINGS = ("XLA off", "own XLA update", "whole step in XLA")
SMALL = (("resnet20", "ResNet-20, CIFAR 32x32"), ("deepfm", "DeepFM, Criteo (39 fields)"))
DASH = "–"
TARGETS = {"update": 1.1, "resnet50": 0.9, "overhead": 0.03}


def _f(x, fmt="{:,.0f}"):
    return DASH if x is None else fmt.format(x)


def _missing(result):
    if result is None:
        return "not measured yet"
    return f"not measured: {result['error']}" if "error" in result else None


def _table(head, rows):
    out = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" if i == 0 else "---:" for i in range(len(head))) + " |"]
    return out + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def host_lines(facts, command):
    if facts is None:
        return ["**No GPU has run these yet.** Run the command on a GPU host and commit the page it writes; "
                "until then every cell is a dash.", "", f"Command: `{command}`"]
    g = facts["gpus"]
    smi = facts.get("nvidia_smi") or []
    gpu = f"{len(g)} x {g[0]['name']}" if g else "none (the CPU)"
    if smi:
        gpu += f", {smi[0]['memory']}"
    lines = []
    if facts.get("mode") == "smoke":
        lines += ["**SMOKE run: toy sizes on the CPU.** It proves every code path and table; its numbers say "
                  "nothing about a GPU.", ""]
    lines += [f"Command: `{command}`", ""] + _table(["host", facts["host"]], [
        ["GPUs", gpu], ["NVIDIA driver", facts.get("driver") or DASH],
        ["CUDA / cuDNN (TensorFlow's build)", f"{facts.get('tf_cuda') or DASH} / {facts.get('tf_cudnn') or DASH}"],
        ["TensorFlow / Keras", f"{facts['tensorflow']} / {facts['keras']}"],
        ["Horovod (operations built)", f"{facts.get('horovod')} ({', '.join(facts.get('horovod_ops') or []) or DASH})"],
        ["CPU", f"{facts.get('cpus')} x {facts.get('cpu')}"], ["processes used", facts.get("processes")]])
    return lines


def optimizer_lines(res, size):
    lines = ["## 1. Optimizer update", "",
             "ms per update on ResNet-50-like variables (float32), round-robin in one process; ratio to Keras "
             "SGD(momentum=0.9) at the same XLA setting. Target: SNGM at most 1.1x SGD.", ""]
    missing = _missing(res)
    got = {} if missing else {(r["setting"], r["optimizer"]): r for r in res["rows"]}
    if not missing:
        lines += [f"{res['variables']} variables, {res['parameters'] / 1e6:.1f}M parameters.", ""]
    elif res is not None:
        lines += [f"*{missing}*", ""]
    rows = [[s, o, _f(got.get((s, o), {}).get("ms"), "{:.2f}"), _f(got.get((s, o), {}).get("ratio"), "{:.2f}")]
            for s in SETTINGS for o in OPTIMIZERS]
    return lines + _table(["setting", "optimizer", "ms / update", "ratio to SGD"], rows)


def resnet50_lines(res, size):
    lines = ["## 2. ResNet-50 per GPU", "",
             f"ResNet-{size['depth']} at {size['image']} px{'' if size['depth'] == 50 else ' (a toy in place of ResNet-50)'}, synthetic data "
             f"already on the GPU, batch {size['batch']} per GPU, SNGM, "
             "`model.train_on_batch`; `--xla` compiles the forward and backward pass as `sngm-train --xla` does.", ""]
    missing = _missing(res)
    got = {} if missing else {(r["precision"], r["xla"]): r for r in res["rows"]}
    if missing and res is not None:
        lines += [f"*{missing}*", ""]
    rows = [[p, "on" if x else "off", _f(got.get((p, x), {}).get("images_per_s")), _f(got.get((p, x), {}).get("ms"),
                                                                                      "{:.1f}")]
            for p in PRECISIONS for x in (False, True)]
    return lines + _table(["precision", "--xla", "images/s", "ms / step"], rows)


def small_lines(res, size):
    lines = ["## 3. ResNet-20 and DeepFM", "",
             f"Examples/s of one training step (SNGM), round-robin per model; batch {size['resnet20']['batch']} "
             f"(ResNet-20), {size['deepfm']['batch']} (DeepFM).", ""]
    missing = _missing(res)
    if missing and res is not None:
        lines += [f"*{missing}*", ""]
    rows = []
    for key, label in SMALL:
        got = {} if missing else {(r["precision"], r["xla"]): r for r in res[key]["rows"]}
        rows += [[label, p, "on" if x else "off", _f(got.get((p, x), {}).get("examples_per_s"))]
                 for p in PRECISIONS for x in (False, True)]
    return lines + _table(["model", "precision", "--xla", "examples/s"], rows)


def best_resnet50(results):
    """The highest images/s of section 2 with mixed precision and XLA, and its precision."""
    res = results.get("resnet50")
    if _missing(res):
        return None, None
    cells = [r for r in res["rows"] if r["xla"] and r["precision"] != "float32"]
    top = max(cells, key=lambda r: r["images_per_s"])
    return top["images_per_s"], top["precision"]


def input_lines(res, results):
    lines = ["## 4. ImageNet input pipeline against one GPU", "",
             "The training pipeline (read, fused decode-and-crop, resize to 224, flip) on generated JPEGs of "
             "ImageNet's mean size, tf.data limited to the cores shown; against the images/s one GPU consumes "
             "(section 2's best mixed precision + XLA cell).", ""]
    missing = _missing(res)
    if missing and res is not None:
        lines += [f"*{missing}*", ""]
    got = [] if missing else res["rows"]
    per_core = got[0]["images_per_s"] if got else None
    rows = [[f"{r['cores']} core(s)", _f(r["images_per_s"]), _f(r["images_per_s"] / r["cores"])] for r in got] or [
        ["1 core", DASH, DASH], ["all cores", DASH, DASH]]
    consume, precision = best_resnet50(results)
    need = consume / per_core if consume and per_core else None
    lines += _table(["pipeline", "images/s", "images/s per core"], rows)
    return lines + ["", *_table(["one GPU consumes (ResNet-50)", "images/s", "cores it needs at that rate"], [
        [f"{precision or 'mixed precision'} + XLA", _f(consume), _f(need, "{:.1f}")]])]


def allreduce_lines(res):
    lines = ["## 5. Horovod allreduce over the local GPUs", "",
             "`sngm-train plan --measure-allreduce` under horovodrun: float32 tensors by size, median of the "
             "slowest worker; bus bandwidth = 2 (n-1)/n x bytes / time.", ""]
    missing = _missing(res)
    if missing:
        if res is not None:
            lines += [f"*{missing}*", ""]
        return lines + _table(["bytes", "ms", "bus GB/s"], [[DASH, DASH, DASH]])
    if not res["rows"]:
        return lines + [f"*{res['why']}.*"]
    lines += [f"{res['processes']} processes, {res['backend']} on {res['device']}; fit: bus bandwidth "
              f"{res['busbw_fit_gbs']:.2f} GB/s, {res['alpha_us']:.1f} us per ring step.", ""]
    return lines + _table(["bytes", "ms", "bus GB/s"], [[f"{r['bytes']:,}", f"{r['ms']:.3f}", f"{r['busbw_gbs']:.2f}"]
                                                       for r in res["rows"]])


def overhead(results):
    """(trainer's images/s on 1 GPU, plain model.fit's, the trainer's shortfall)."""
    res = results.get("scaling")
    if _missing(res) or not res["rows"]:
        return None, None, None
    trainer, plain = res["rows"][0]["images_per_s"], res["plain_fit"]["images_per_s"]
    return trainer, plain, 1 - trainer / plain


def scaling_lines(res, size):
    lines = ["## 6. Scaling over the local GPUs", "",
             f"`sngm-train resnet --dataset synthetic`, ResNet-{size['depth']} at {size['image']} px, "
             f"{size['batch']} images per GPU, {size['precision']}{', --xla' if size['xla'] else ''}, one process per "
             "GPU; the trainer's own timing.json (median update). Efficiency: images/s over GPUs x the 1-GPU images/s.",
             ""]
    missing = _missing(res)
    if missing and res is not None:
        lines += [f"*{missing}*", ""]
    rows = []
    if not missing:
        one = res["rows"][0]["images_per_s"]
        rows = [[r["gpus"], f"{r['global_batch']:,}", _f(r["images_per_s"]), f"{r['images_per_s'] / (r['gpus'] * one):.1%}"]
                for r in res["rows"]]
    lines += _table(["GPUs", "global batch", "images/s", "scaling efficiency"], rows or [[1, DASH, DASH, DASH],
                                                                                       ["N", DASH, DASH, DASH]])
    trainer, plain, short = overhead({"scaling": res} if res else {})
    return lines + ["", *_table(["one GPU", "images/s"], [["plain Keras model.fit", _f(plain)],
                                                          ["sngm-train (1 process)", _f(trainer)],
                                                          ["trainer's overhead", _f(short, "{:.1%}")]])]


def targets_lines(facts, results):
    opt = results.get("optimizer")
    ratios = {} if _missing(opt) else {r["setting"]: r["ratio"] for r in opt["rows"] if r["optimizer"] == "SNGM"}
    worst = max((ratios[s] for s in SETTINGS[1:] if s in ratios), default=None)
    best, precision = best_resnet50(results)
    ref = gpu_host.dle_reference(facts["gpus"][0]["name"]) if facts and facts["gpus"] else None
    share = best / ref[1] if best and ref else None
    _, _, short = overhead(results)

    def verdict(value, ok):
        return DASH if value is None else ("met" if ok else "missed")

    ref_text = (f"{ref[1]:,} images/s, {ref[0]}" + ("" if ref[2] else " (nearest class published)")) if ref else \
        "the GPU class's figure (A100 40GB: 2,375; V100 32GB: 1,300 images/s)"
    lines = ["## Targets", "", "Numbers for the docs, never test asserts.", ""]
    lines += _table(["target", "measured", "verdict"], [
        ["SNGM update at most 1.1x SGD's (own XLA update and whole step in XLA, the worse)", _f(worst, "{:.2f}x"),
         verdict(worst, worst is not None and worst <= TARGETS["update"])],
        [f"ResNet-50 mixed precision + XLA at 90% or more of {ref_text}", _f(share, "{:.0%}") +
         (f" ({precision}, {best:,.0f} images/s)" if share else ""),
         verdict(share, share is not None and share >= TARGETS["resnet50"])],
        ["the trainer within 3% of a plain model.fit on one GPU", _f(short, "{:.1%}"),
         verdict(short, short is not None and short <= TARGETS["overhead"])]])
    return lines + ["", f"Reference: {gpu_host.DLE_SOURCE}. They publish no TensorFlow 2 ResNet-50, and no H100 or "
                        "H200 figure; a newer GPU is compared with the newest class they publish."]


def render(facts, results, size, command):
    parts = [["# GPU benchmarks", "",
              "Every GPU number of the project, taken by one command on the host it names. Written by "
              "`bench/gpu_bench.py`; the raw numbers are in the JSON beside this page. On a host with its own JAX "
              "or PyTorch and no TensorFlow, `make bench-gpu BACKEND=jax|torch` writes "
              "[the JAX page](benchmarks-gpu-jax.md) or [the PyTorch page](benchmarks-gpu-torch.md).", ""],
             host_lines(facts, command), optimizer_lines(results.get("optimizer"), size["optimizer"]),
             resnet50_lines(results.get("resnet50"), size["resnet50"]), small_lines(results.get("small"), size["small"]),
             input_lines(results.get("input"), results), allreduce_lines(results.get("allreduce")),
             scaling_lines(results.get("scaling"), size["scaling"]), targets_lines(facts, results)]
    return "\n\n".join("\n".join(p) for p in parts) + "\n"


def write(path, text):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
