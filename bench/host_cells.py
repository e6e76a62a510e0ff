"""The measurements of `make bench-gpu BACKEND=jax|torch`, each in a fresh process on the
host's own framework (no TensorFlow): `python host_cells.py CELL JSON` prints one
`RESULT {...}` line. KERAS_BACKEND is set by bench/host_bench.py.

    facts      the framework, Keras and the devices it sees
    optimizer  one update on ResNet-50-like variables: Keras SGD, SNGM, BlockSNGM, LARS (and
               MSGD on PyTorch) against the native anchors (JAX: optax.sgd and optax's SNGM
               chain inside jax.jit; PyTorch: torch.optim.SGD foreach and fused)
    resnet     ResNet images/s, data already on the device: SGD and SNGM per precision
    torchvision  PyTorch's anchor: torchvision's ResNet-50, torch.optim.SGD, AMP, channels_last
    plain_fit  a plain `model.fit` of the trainer's model (the user's own script), for the
               trainer's overhead
"""

import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import median_seconds, resnet50_like_shapes, round_robin, step_timer  # noqa: E402

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
BACKEND = os.environ.get("KERAS_BACKEND", "")


def facts(a):
    import keras

    out = {"backend": BACKEND, "keras": keras.__version__}
    if BACKEND == "jax":
        import jax

        devices = jax.devices()
        out.update(framework=f"JAX {jax.__version__}", platform=devices[0].platform,
                   devices=[d.device_kind for d in devices], cuda=_jax_cuda(jax))
        try:
            import optax

            out["anchor"] = f"optax {optax.__version__}"
        except ImportError:
            out["anchor"] = "optax not installed"
    else:
        import torch

        gpu = torch.cuda.is_available()
        out.update(framework=f"PyTorch {torch.__version__}", platform="gpu" if gpu else "cpu",
                   devices=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] or ["cpu"],
                   cuda=f"{torch.version.cuda} / cuDNN {torch.backends.cudnn.version()}" if gpu else "")
        try:
            import torchvision

            out["anchor"] = f"torchvision {torchvision.__version__}"
        except ImportError:
            out["anchor"] = "torchvision not installed"
    return out


def _jax_cuda(jax):
    try:
        return jax.extend.backend.get_backend().platform_version
    except Exception:  # noqa: BLE001 - a fact, not a requirement
        return ""


def _shapes(a):
    shapes = resnet50_like_shapes()
    return shapes[:a["variables"]] if a["variables"] else shapes


def optimizer(a):
    import numpy as np

    shapes = _shapes(a)
    rng = np.random.default_rng(1)
    host = [rng.normal(size=s).astype("float32") for s in shapes]
    cells = _jax_update_cells(shapes, host) if BACKEND == "jax" else _torch_update_cells(shapes, host)
    times = round_robin(cells, a["repeats"])
    return {"variables": len(shapes), "parameters": int(sum(np.prod(s) for s in shapes)),
            "rows": [{"optimizer": name, "ms": 1e3 * statistics.median(t)} for name, t in times.items()]}


def _jax_update_cells(shapes, host):
    import functools

    import jax
    import optax
    from optimizer_step_jax import make_step

    grads = [jax.numpy.asarray(g) for g in host]
    cells = {name: make_step(name, shapes, grads) for name in ("SGD", "SNGM", "BlockSNGM", "LARS")}

    def optax_cell(tx):
        state = [[jax.numpy.asarray(g * 0.5) for g in host]]
        state.append(tx.init(state[0]))

        @functools.partial(jax.jit, donate_argnums=(0, 1))
        def step(params, opt_state, g):
            updates, opt_state = tx.update(g, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        def run():
            state[0], state[1] = step(state[0], state[1], grads)
            jax.block_until_ready(state[0])

        for _ in range(3):
            run()
        return run

    cells["optax.sgd"] = optax_cell(optax.sgd(0.1, momentum=0.9))
    # SNGM in optax: the update divided by its global norm, then momentum SGD.
    cells["optax SNGM chain"] = optax_cell(optax.chain(optax.normalize_by_update_norm(), optax.sgd(0.1, momentum=0.9)))
    return cells


def _torch_update_cells(shapes, host):
    import torch
    from optimizer_step_torch import KERAS, TORCH, keras_cell, torch_cell

    device = "cuda" if torch.cuda.is_available() else "cpu"
    grads = [torch.as_tensor(g, device=device) for g in host]
    cells = {name: keras_cell(name, shapes, grads, device)[0] for name in KERAS}  # (each: its run, bytes held)
    cells.update({name: torch_cell(name, shapes, grads, device)[0] for name in TORCH})
    return cells


def resnet(a):
    """Each precision x (SGD, SNGM) in turn; `train_on_batch` returns host floats, so each
    timed step has finished on the device."""
    import keras

    from keras_sngm import SNGM
    from keras_sngm_trainers.models import resnet as models

    b = a["batch"]
    x = keras.random.normal((b, a["image"], a["image"], 3), seed=1)  # on the device already
    y = keras.random.randint((b,), 0, a["classes"], seed=2)
    rows = []
    for precision in a["precisions"]:
        for name in ("SGD", "SNGM"):
            keras.mixed_precision.set_global_policy(precision)
            model = models.build(a["depth"], a["classes"], a["image"])
            opt = SNGM(0.1, momentum=0.9) if name == "SNGM" else keras.optimizers.SGD(0.1, momentum=0.9)
            model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            t = median_seconds(lambda: model.train_on_batch(x, y), a["warmup"], a["steps"])
            rows.append({"precision": precision, "optimizer": name, "ms": 1e3 * t, "images_per_s": b / t})
            del model
    keras.mixed_precision.set_global_policy("float32")
    return {"rows": rows}


def torchvision(a):
    """torchvision's ResNet-50 with torch.optim.SGD(momentum=0.9), channels_last: AMP (float16
    on a GPU, bfloat16 on the CPU) and float32 (TF32 matmuls on a GPU, as NVIDIA's figure)."""
    import torch
    from torchvision.models import resnet50

    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    b = a["batch"]
    x = torch.randn(b, 3, a["image"], a["image"], device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, a["classes"], (b,), device=device)
    rows = []
    for mode in ("amp", "float32"):
        model = resnet50(num_classes=a["classes"]).to(device, memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, foreach=True)
        half = torch.float16 if gpu else torch.bfloat16
        scaler = torch.amp.GradScaler(device, enabled=mode == "amp" and gpu)

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device, dtype=half, enabled=mode == "amp"):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            if gpu:
                torch.cuda.synchronize()

        t = median_seconds(step, a["warmup"], a["steps"])
        label = ("AMP float16" if gpu else "AMP bfloat16 (CPU)") if mode == "amp" else ("TF32" if gpu else "float32")
        rows.append({"mode": label, "ms": 1e3 * t, "images_per_s": b / t})
        del model, opt
    return {"rows": rows}


def plain_fit(a):
    """`model.fit` on in-memory synthetic images of the trainer's model, SNGM, precision and
    batch, with no distribution: the median update after the warm-up."""
    import keras
    import numpy as np

    from keras_sngm import SNGM
    from keras_sngm_trainers.models import resnet as models

    keras.mixed_precision.set_global_policy(a["precision"])
    n = a["batch"] * a["steps_per_epoch"]
    rng = np.random.default_rng(0)
    x = rng.random((n, a["image"], a["image"], 3), dtype=np.float32)
    y = rng.integers(0, a["classes"], n)
    model = models.build(a["depth"], a["classes"], a["image"])
    model.compile(optimizer=SNGM(0.1, momentum=0.9), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    timer = step_timer()
    model.fit(x, y, batch_size=a["batch"], epochs=a["epochs"], shuffle=False, verbose=0, callbacks=[timer])
    t = statistics.median(timer.times[a["warmup"]:] or timer.times)
    return {"ms": 1e3 * t, "images_per_s": a["batch"] / t}


CELLS = {"facts": facts, "optimizer": optimizer, "resnet": resnet, "torchvision": torchvision,
         "plain_fit": plain_fit}

if __name__ == "__main__":
    sys.modules.setdefault("tensorflow", None)  # this path never uses TensorFlow, even where it is installed
    result = CELLS[sys.argv[1]](json.loads(sys.argv[2]))
    print("RESULT " + json.dumps(result), flush=True)
