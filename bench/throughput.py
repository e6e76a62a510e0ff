"""Training throughput of ResNet-20 and DeepFM with 1 and 2 Horovod processes (synthetic
data, like Horovod's synthetic benchmark), and where the step time goes.

For each model x optimizer (Keras SGD-momentum, SNGM) x processes, the workers time,
side by side in one run:
  - the whole training step (forward, backward, allreduce, optimizer update);
  - the optimizer update alone (same gradients), and its share of the step;
  - the gradient allreduce alone, its share, and its bus bandwidth
    (2 (n-1)/n x gradient bytes / time, the ring-allreduce convention).

    .venv/bin/python bench/throughput.py [--steps 20] [--np 1 2]
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PER_WORKER_BATCH = {"resnet20": 128, "deepfm": 1024}


def worker(model_name, optimizer_name, steps):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, ROOT)
    from keras_sngm_trainers import distributed

    distributed.init()
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_sngm_trainers import recipes
    from keras_sngm_trainers.models import deepfm, resnet

    rank, size = distributed.rank(), distributed.size()
    b = PER_WORKER_BATCH[model_name]
    rng = np.random.default_rng(rank)
    keras.utils.set_random_seed(0)
    if model_name == "resnet20":
        model = resnet.cifar_resnet(20, 10)
        x = tf.constant(rng.normal(size=(b, 32, 32, 3)).astype("float32"))
        y = tf.constant(rng.integers(0, 10, b))
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    else:
        model = deepfm.deepfm(2**18, 16)
        x = {"dense": tf.constant(rng.random((b, 13)).astype("float32")),
             "categorical": tf.constant(rng.integers(0, 2**18, (b, 26)))}
        y = tf.constant(rng.integers(0, 2, (b, 1)).astype("float32"))
        loss_fn = keras.losses.BinaryCrossentropy(from_logits=True)
    inner = recipes.optimizer(optimizer_name, 0.01, weight_decay=1e-4)
    opt = distributed.DistributedOptimizer(inner)
    variables = model.trainable_variables
    opt.build(variables)
    distributed.broadcast_variables(model.variables + opt.variables)

    @tf.function
    def grads_fn():
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        return tape.gradient(loss, variables)

    @tf.function
    def train_step():
        opt.apply(grads_fn(), variables)

    fixed = grads_fn()
    apply_fn = tf.function(lambda g: inner.apply(g, variables))
    reduce_fn = tf.function(lambda g: distributed.allreduce_gradients(g))  # (Horovod needs graph tensors, not captures)
    update, reduce = (lambda: apply_fn(fixed)), (lambda: reduce_fn(fixed))

    def timed(fn):
        for _ in range(3):
            fn()
        out = []
        for _ in range(steps):
            t0 = time.perf_counter()
            r = fn()
            _ = variables[0].numpy().ravel()[0] if r is None else tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, r)
            out.append(time.perf_counter() - t0)
        return float(np.median(out))

    t_step, t_update = timed(train_step), timed(update)
    t_reduce = timed(reduce) if size > 1 else 0.0
    grad_bytes = sum(int(np.prod(g.shape)) * 4 for g in fixed if not isinstance(g, tf.IndexedSlices))
    sparse_bytes = sum(int(np.prod(g.values.shape)) * 4 for g in fixed if isinstance(g, tf.IndexedSlices))
    result = {"model": model_name, "optimizer": optimizer_name, "processes": size, "global_batch": b * size,
              "examples_per_sec": b * size / t_step, "step_ms": 1e3 * t_step, "update_ms": 1e3 * t_update,
              "allreduce_ms": 1e3 * t_reduce, "dense_grad_MB": grad_bytes / 1e6, "sparse_grad_MB": sparse_bytes / 1e6,
              "busbw_GBps": (2 * (size - 1) / size * (grad_bytes + sparse_bytes) / t_reduce / 1e9) if t_reduce else 0.0}
    if rank == 0:
        print("RESULT " + json.dumps(result), flush=True)


def run(model, optimizer, n, steps):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", model, optimizer, "--steps", str(steps)]
    if n > 1:
        cmd = [os.path.join(os.path.dirname(sys.executable), "horovodrun"), "--gloo", "-np", str(n), "-H", f"localhost:{n}"] + cmd
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in out.stdout.splitlines() if "RESULT " in ln]
    if out.returncode or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return json.loads(lines[0].split("RESULT ", 1)[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "OPTIMIZER"), help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement (median)")
    parser.add_argument("--np", type=int, nargs="+", default=[1, 2], help="process counts")
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker, args.steps)
    print(f"{os.cpu_count()} CPUs; per-worker batch {PER_WORKER_BATCH}; synthetic data; Gloo on loopback")
    print("| model | optimizer | processes | examples/s | step ms | update ms (share) | allreduce ms (share) | grads MB | bus GB/s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for model in ("resnet20", "deepfm"):
        for n in args.np:
            for optimizer in ("msgd", "sngm"):
                r = run(model, optimizer, n, args.steps)
                share = lambda t: f"{t:.1f} ({100 * t / r['step_ms']:.0f}%)"  # noqa: E731
                print(f"| {model} | {'Keras SGD' if optimizer == 'msgd' else 'SNGM'} | {n} | {r['examples_per_sec']:.0f} | "
                      f"{r['step_ms']:.1f} | {share(r['update_ms'])} | {share(r['allreduce_ms']) if n > 1 else '-'} | "
                      f"{r['dense_grad_MB'] + r['sparse_grad_MB']:.1f} | {r['busbw_GBps']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
