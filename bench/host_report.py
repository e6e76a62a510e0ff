"""docs/benchmarks-gpu-jax.md and -torch.md from what bench/host_bench.py measured: the
host, one table per section with its native anchor, the published figures and the targets.
With no host (`--empty`) the same tables, every cell a dash."""

from gpu_report import DASH, _f, _missing, _table, write  # noqa: F401 - write: host_bench's

KERAS = {"jax": ("SGD", "SNGM", "BlockSNGM", "LARS"), "torch": ("Keras SGD", "SNGM", "BlockSNGM", "LARS", "MSGD")}
ANCHORS = {"jax": ("optax.sgd", "optax SNGM chain"), "torch": ("torch.optim.SGD foreach", "torch.optim.SGD fused")}
SGD = {"jax": "SGD", "torch": "Keras SGD"}
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
TARGET_UPDATE, TARGET_OVERHEAD = 1.1, 0.03
# NVIDIA DeepLearningExamples, PyTorch/Classification/ConvNets/resnet50v1.5, "Training performance
# results", 1 GPU, batch 256: the figures the issue asked to quote.
NVIDIA = ("NVIDIA DeepLearningExamples, PyTorch ResNet-50 v1.5, 1x A100 80GB, batch 256: 2,470 images/s with AMP, "
          "938 with TF32. They publish no H100 or H200 figure for it: A100 80GB is the nearest class.")


def host_lines(backend, facts, command):
    if facts is None:
        return ["**No GPU has run this yet.** Run the command on a GPU host with its own "
                f"{'JAX' if backend == 'jax' else 'PyTorch'} and commit the page it writes; until then every cell is "
                "a dash.", "", f"Command: `{command}`"]
    smi = facts.get("nvidia_smi") or []
    gpu = f"{len(smi)} x {smi[0]['name']}, {smi[0]['memory']}" if smi else ", ".join(facts["devices"])
    lines = []
    if facts.get("mode") == "smoke":
        lines += ["**SMOKE run: toy sizes on the CPU.** It proves every code path and table; its numbers say "
                  "nothing about a GPU.", ""]
    return lines + [f"Command: `{command}`", ""] + _table(["host", facts["host"]], [
        ["GPUs", gpu], ["NVIDIA driver", facts.get("driver") or DASH], ["CUDA", facts.get("cuda") or DASH],
        ["framework / Keras", f"{facts['framework']} / {facts['keras']}"], ["anchor", facts.get("anchor", DASH)],
        ["CPU", f"{facts.get('cpus')} x {facts.get('cpu')}"]])


def _ms(res):
    return {} if _missing(res) else {r["optimizer"]: r["ms"] for r in res["rows"]}


def optimizer_lines(backend, res):
    where = ("inside `jax.jit` (`stateless_apply`, as `model.fit` runs it), donated buffers" if backend == "jax" else
             "eager `optimizer.apply` (as `model.fit` runs it on PyTorch)")
    lines = ["## 1. Optimizer update", "", f"ms per update on ResNet-50's variables (float32), {where}, "
             "round-robin in one process; ratios to Keras SGD(momentum=0.9) and to the native anchor "
             f"({' and '.join(ANCHORS[backend])}) timed beside it.", ""]
    missing = _missing(res)
    if missing and res is not None:
        lines += [f"*{missing}*", ""]
    elif res is not None:
        lines += [f"{res['variables']} variables, {res['parameters'] / 1e6:.1f}M parameters.", ""]
    ms, anchor = _ms(res), ANCHORS[backend][-1]
    sgd = ms.get(SGD[backend])
    rows = [[name, _f(ms.get(name), "{:.2f}"), _f(ms[name] / sgd if name in ms and sgd else None, "{:.2f}"),
             _f(ms[name] / ms[anchor] if name in ms and anchor in ms else None, "{:.2f}")]
            for name in KERAS[backend] + ANCHORS[backend]]
    return lines + _table(["optimizer", "ms / update", "ratio to Keras SGD", f"ratio to {anchor}"], rows)


def resnet50_lines(backend, res, size):
    lines = ["## 2. ResNet-50 per GPU", "",
             f"ResNet-{size['depth']} at {size['image']} px"
             f"{'' if size['depth'] == 50 else ' (a toy in place of ResNet-50)'}, "
             f"synthetic data already on the device, batch {size['batch']}, `model.train_on_batch`"
             f"{' (XLA: the whole step)' if backend == 'jax' else ' (eager PyTorch)'}.", ""]
    missing = _missing(res)
    if missing and res is not None:
        lines += [f"*{missing}*", ""]
    got = {} if missing else {(r["precision"], r["optimizer"]): r for r in res["rows"]}
    if not missing and res.get("left_out"):
        lines += [f"*Not measured within the time limit: {', '.join(res['left_out'])}.*", ""]
    rows = []
    for p in PRECISIONS:
        sgd, sngm = (got.get((p, o), {}).get("images_per_s") for o in ("SGD", "SNGM"))
        rows.append([p, _f(sgd), _f(sngm), _f(sngm / sgd if sgd and sngm else None, "{:.2f}")])
    lines += _table(["precision", "SGD images/s", "SNGM images/s", "SNGM / SGD"], rows)
    if backend == "torch":
        anchor = {} if missing or not res.get("anchor") else {r["mode"]: r for r in res["anchor"]}
        modes = list(anchor) or ["AMP float16", "TF32"]
        lines += ["", "The anchor in the same process: torchvision's ResNet-50, `torch.optim.SGD(momentum=0.9, "
                  "foreach=True)`, channels_last.", ""]
        lines += _table(["torchvision ResNet-50", "images/s"], [[m, _f(anchor.get(m, {}).get("images_per_s"))]
                                                                for m in modes])
    return lines + ["", f"Published: {NVIDIA}"]


def trainers_lines(backend, res, size):
    lines = ["## 3. The trainer on the GPU", ""]
    if backend != "jax":
        return lines + ["The trainers run on `--engine jax` (JAX) or `--engine horovod` (TensorFlow), not on "
                        "PyTorch: `make bench-gpu BACKEND=jax` measures this section."]
    lines += [f"`sngm-train resnet --engine jax --dataset synthetic`, ResNet-{size['depth']} at {size['image']} px, "
              f"batch {size['batch']}, SNGM, {size['precision']} (the trainer's timing.json: its median update), "
              "against a plain `model.fit` of the same model on in-memory arrays with no distribution.", ""]
    missing = _missing(res)
    if missing and res is not None:
        lines += [f"*{missing}*", ""]
    trainer, plain = (None, None) if missing else (res["trainer"]["images_per_s"], res["plain_fit"]["images_per_s"])
    short = 1 - trainer / plain if trainer and plain else None
    return lines + _table(["one GPU", "images/s"], [["plain Keras model.fit", _f(plain)],
                                                    ["sngm-train --engine jax", _f(trainer)],
                                                    ["the trainer's overhead", _f(short, "{:.1%}")]])


def targets_lines(backend, results):
    ms = _ms(results.get("optimizer"))
    sgd, sngm, anchor = ms.get(SGD[backend]), ms.get("SNGM"), ms.get(ANCHORS[backend][-1])
    vs_sgd = sngm / sgd if sngm and sgd else None
    vs_anchor = sngm / anchor if sngm and anchor else None
    tr = results.get("trainers")
    short = None
    if backend == "jax" and not _missing(tr):
        short = 1 - tr["trainer"]["images_per_s"] / tr["plain_fit"]["images_per_s"]

    def verdict(value, ok):
        return DASH if value is None else ("met" if ok else "missed")

    rows = [["SNGM's update within 1.1x Keras SGD's", _f(vs_sgd, "{:.2f}x"),
             verdict(vs_sgd, vs_sgd is not None and vs_sgd <= TARGET_UPDATE)]]
    if backend == "jax":
        rows += [["SNGM's update within 1.1x optax's SNGM chain", _f(vs_anchor, "{:.2f}x"),
                  verdict(vs_anchor, vs_anchor is not None and vs_anchor <= TARGET_UPDATE)],
                 ["the trainer within 3% of a plain model.fit", _f(short, "{:.1%}"),
                  verdict(short, short is not None and short <= TARGET_OVERHEAD)]]
    return ["## Targets", "", "Numbers for the docs, never test asserts.", ""] + _table(["target", "measured",
                                                                                          "verdict"], rows)


def render(backend, facts, results, size, command):
    name = "JAX" if backend == "jax" else "PyTorch"
    parts = [[f"# GPU benchmarks on the host's own {name}", "",
              f"What `make bench-gpu BACKEND={backend}` measures on a GPU host that has {name} and no TensorFlow, "
              "with nothing installed and no network. Written by `bench/host_bench.py`; the raw numbers are in the "
              "JSON beside this page.", ""],
             host_lines(backend, facts, command), optimizer_lines(backend, results.get("optimizer")),
             resnet50_lines(backend, results.get("resnet50"), size["resnet50"]),
             trainers_lines(backend, results.get("trainers"), size["trainers"]), targets_lines(backend, results)]
    return "\n\n".join("\n".join(p) for p in parts) + "\n"
