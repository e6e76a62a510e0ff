"""Milliseconds per optimizer update on the PyTorch backend, and the bytes each optimizer
holds: Keras SGD(momentum=0.9), SNGM, BlockSNGM, LARS and MSGD through `optimizer.apply` with
the gradients as `model.fit` passes them on PyTorch (each variable's own `.grad`, eager), on
the ResNet-50-like variables of bench/optimizer_step.py, beside SNGM given tensors the caller
still owns (which it copies) and PyTorch's own `torch.optim.SGD(momentum=0.9)` with
`foreach=True` and with `fused=True`. Measured round-robin in one run; prints each one's
ratio to Keras SGD, in time and in memory held (variables, momentum and any buffers).

    KERAS_BACKEND=torch .venv/bin/python bench/optimizer_step_torch.py [--repeats 15] [--device cuda]
"""

import argparse
import os

os.environ["KERAS_BACKEND"] = "torch"

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from _common import FLOATS_PER_PARAM, resnet50_like_shapes, round_robin  # noqa: E402

from keras_sngm import LARS, MSGD, SNGM, BlockSNGM  # noqa: E402

KERAS = {"Keras SGD": lambda: keras.optimizers.SGD(0.1, momentum=0.9), "SNGM": lambda: SNGM(0.1),
         "BlockSNGM": lambda: BlockSNGM(0.1), "LARS": lambda: LARS(0.1), "MSGD": lambda: MSGD(0.1),
         "SNGM, caller's tensors": lambda: SNGM(0.1)}
TORCH = {"torch.optim.SGD foreach": {"foreach": True}, "torch.optim.SGD fused": {"fused": True}}
BYTES = {"Keras SGD": "SGD", "SNGM": "SNGM", "SNGM, caller's tensors": "SNGM", "BlockSNGM": "BlockSNGM", "LARS": "LARS", "MSGD": "SGD",
         "torch.optim.SGD foreach": "SGD", "torch.optim.SGD fused": "SGD"}


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def held_bytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def keras_cell(name, shapes, grads, device):
    """(run, bytes held). Unless the caller keeps them, the gradients are the variables' own
    `.grad` tensors, as Keras' PyTorch train step passes them."""
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=s).astype("float32")) for s in shapes]
    opt = KERAS[name]()
    if "caller" not in name:
        for v, g in zip(variables, grads):
            v.value.grad = g.clone()
        grads = [v.value.grad for v in variables]

    def run():
        opt.apply(grads, variables)
        sync(device)

    for _ in range(3):
        run()
    buffers = [t for store in getattr(opt, "_torch_buffers", {}).values()
               for t in (store.values() if isinstance(store, dict) else [store])]
    return run, held_bytes([v.value for v in opt.variables] + buffers)


def torch_cell(name, shapes, grads, device):
    rng = np.random.default_rng(0)
    params = [torch.nn.Parameter(torch.as_tensor(rng.normal(size=s).astype("float32"), device=device)) for s in shapes]
    for p, g in zip(params, grads):
        p.grad = g
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, **TORCH[name])

    def run():
        opt.step()
        sync(device)

    for _ in range(3):
        run()
    return run, held_bytes([t for state in opt.state.values() for t in state.values()])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds (median reported)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU host")
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            parser.error(f"--device {args.device}: this PyTorch sees no GPU (torch {torch.__version__})")
        torch.set_default_device(args.device)
    shapes = resnet50_like_shapes()
    n_params = sum(int(np.prod(s)) for s in shapes)
    rng = np.random.default_rng(1)
    grads = [torch.as_tensor(rng.normal(size=s).astype("float32"), device=args.device) for s in shapes]
    print(f"PyTorch {torch.__version__} on {args.device}, Keras {keras.__version__}: {len(shapes)} variables, "
          f"{n_params / 1e6:.1f}M parameters, {torch.get_num_threads()} threads")
    made = {name: keras_cell(name, shapes, grads, args.device) for name in KERAS}
    made.update({name: torch_cell(name, shapes, grads, args.device) for name in TORCH})
    times = round_robin({name: run for name, (run, _) in made.items()}, args.repeats)
    base, base_bytes = 1e3 * float(np.median(times["Keras SGD"])), made["Keras SGD"][1]
    print("| optimizer (PyTorch, eager) | ms / update | ratio to Keras SGD | effective GB/s | MB held | "
          "held vs Keras SGD |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, (_, held) in made.items():
        ms = 1e3 * float(np.median(times[name]))
        gbs = FLOATS_PER_PARAM[BYTES[name]] * 4 * n_params / (ms * 1e-3) / 1e9
        print(f"| {name} | {ms:.1f} | {ms / base:.2f} | {gbs:.1f} | {held / 1e6:.2f} | {held / base_bytes:.4f} |")


if __name__ == "__main__":
    main()
