"""`sngm-train plan --measure-allreduce`, under horovodrun: times Horovod's allreduce by
message size and fits the planner's alpha and bus bandwidth (`model.fit_allreduce`).

Float32 tensors from 1 KiB to `--max-bytes` (x4 per size); each is reduced a few times
to warm up, then `repeats` times (fewer for the largest), and the median is kept. On a GPU
host each worker reduces on its local GPU (NCCL when Horovod was built with it), else on
the CPU (Gloo or MPI). Rank 0 prints the table and writes the fit to `--out`.
"""

import json
import os
import platform
import statistics
import sys
import time

from keras_sngm_trainers.planning import model
from keras_sngm_trainers.planning.measured import PlanError

KIB = 1024
WARMUP_CALLS = 50


def sizes(max_bytes):
    out, s = [], KIB
    while s <= max_bytes:
        out.append(s)
        s *= 4
    return out


def _backend(hvd, gpu):
    """The collective library Horovod uses for these tensors."""
    if gpu and hvd.nccl_built():
        return "nccl"
    if hvd.gloo_enabled():
        return "gloo"
    return "mpi" if hvd.mpi_enabled() else "unknown"


def measure(out, max_bytes, repeats):
    import horovod
    import horovod.tensorflow as hvd  # HVD
    import tensorflow as tf

    hvd.init()  # HVD
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:  # HVD: one GPU per local worker
        tf.config.set_visible_devices(gpus[hvd.local_rank() % len(gpus)], "GPU")
    workers = hvd.size()
    if workers < 2:
        print("sngm-train: error: --measure-allreduce needs at least 2 workers: run it under "
              "`horovodrun -np N sngm-train plan --measure-allreduce`. Received: 1 worker", file=sys.stderr)
        return 2
    device = "/GPU:0" if gpus else "/CPU:0"
    # Warm-up before any timing: the communicators (NCCL's are made at the first GPU
    # allreduce) and Horovod's background loop; a fixed count, so every worker makes the same calls.
    for _ in range(WARMUP_CALLS):
        hvd.allreduce(tf.constant(0.0), name="warmup")  # HVD
    rows = []
    for nbytes in sizes(max_bytes):
        with tf.device(device):
            x = tf.ones([nbytes // 4], tf.float32)
        reps = max(3, min(repeats, (64 << 20) * repeats // nbytes))
        times = []
        for i in range(2 + reps):
            hvd.allreduce(tf.constant(0.0), name="sync")  # HVD: all start together
            t0 = time.perf_counter()
            y = hvd.allreduce(x, op=hvd.Sum, name=f"bytes_{nbytes}")  # HVD
            _ = y.numpy()[:1]  # waits for the result
            if i >= 2:
                times.append(time.perf_counter() - t0)
        # every worker's median, and the slowest of them (the allreduce ends when all have it)
        median = float(hvd.allreduce(tf.constant(statistics.median(times), tf.float64), op=hvd.Max,  # HVD
                                     name=f"t_{nbytes}").numpy())
        rows.append({"bytes": nbytes, "seconds": median, "repeats": reps, "algbw_gbs": nbytes / median / 1e9,
                     "busbw_gbs": nbytes / median / 1e9 * 2 * (workers - 1) / workers})
    try:
        alpha, busbw, rms = model.fit_allreduce([r["bytes"] for r in rows], [r["seconds"] for r in rows], workers)
    except ValueError as e:  # e.g. noise larger than the transfer time of the largest message
        times = ", ".join(f"{r['bytes']:,} B {1e3 * r['seconds']:.3f} ms" for r in rows)
        raise PlanError(f"{e} (median times: {times}); measure larger messages (--max-bytes) or more "
                        "repeats (--repeats)") from None
    record = {"workers": workers, "backend": _backend(hvd, bool(gpus)), "device": "gpu" if gpus else "cpu",
              "host": platform.node(), "horovod": horovod.__version__,
              "alpha_seconds": alpha, "busbw_bytes_per_second": busbw, "rms_relative_error": rms, "sizes": rows}
    if hvd.rank() == 0:
        print(f"Horovod allreduce, {workers} workers, {record['backend']} on {record['device']}:")
        print("| bytes | seconds | algbw GB/s | busbw GB/s | fit seconds |")
        print("| ---: | ---: | ---: | ---: | ---: |")
        for r in rows:
            fit = model.allreduce_seconds(r["bytes"], workers, busbw, alpha)
            print(f"| {r['bytes']} | {r['seconds']:.3g} | {r['algbw_gbs']:.3g} | {r['busbw_gbs']:.3g} | {fit:.3g} |")
        print(f"fit: alpha {alpha * 1e6:.1f} us per ring step, busbw {busbw / 1e9:.3g} GB/s "
              f"(rms relative error {rms:.1%}); written to {out}")
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            json.dump(record, f, indent=1)
    return 0
