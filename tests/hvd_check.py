"""Run under `horovodrun --gloo -np 2`: checks of the Horovod layer from inside the
workers. Each rank writes what it saw to <out>/rank<r>.json for the test to compare.

    horovodrun --gloo -np 2 -H localhost:2 python tests/hvd_check.py OUT
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_sngm import SNGM  # noqa: E402
from keras_sngm_trainers import distributed  # noqa: E402


def main(out):
    distributed.init()
    rank, size = distributed.rank(), distributed.size()
    result = {"rank": rank, "size": size}

    # 1. Broadcast: each rank initializes differently; after the callback all equal rank 0.
    keras.utils.set_random_seed(100 + rank)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.BatchNormalization(), keras.layers.Dense(1)])
    opt = distributed.DistributedOptimizer(SNGM(learning_rate=0.1), accumulation_steps=2)
    model.compile(optimizer=opt, loss="mse", jit_compile=False)
    result["before_broadcast"] = float(sum(np.sum(w) for w in model.get_weights()))
    cb = distributed.BroadcastCallback()
    cb.set_model(model)
    cb.on_train_begin()
    result["after_broadcast"] = [w.tolist() for w in model.get_weights()]

    # 2. One allreduce per update with accumulation: count executed reductions.
    calls = tf.Variable(0, dtype=tf.int64)
    original = distributed.allreduce_gradients

    def counted(*a, **k):
        calls.assign_add(1)
        return original(*a, **k)

    distributed.allreduce_gradients = counted
    rng = np.random.default_rng(rank)  # different data per rank
    x = rng.normal(size=(48, 4)).astype("float32")
    y = rng.normal(size=(48, 1)).astype("float32")
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)  # 6 micro-batches = 3 updates
    distributed.allreduce_gradients = original
    result["allreduce_calls"] = int(calls.numpy())
    result["updates"] = int(opt.iterations)
    result["trainable_after_fit"] = [w.numpy().tolist() for w in model.trainable_weights]

    # 3. Sparse and dense gradients together (separate groups), averaged exactly.
    dense = tf.constant(np.full((2, 2), rank + 1.0, np.float32))
    sparse = tf.IndexedSlices(tf.constant([[float(rank + 1)] * 2]), tf.constant([rank]), tf.constant([3, 2]))
    reduced = distributed.allreduce_gradients([dense, sparse, None])
    result["dense_mean"] = reduced[0].numpy().tolist()
    result["sparse_mean_dense"] = tf.convert_to_tensor(reduced[1]).numpy().tolist()
    result["none_kept"] = reduced[2] is None

    # 4. Metric averaging.
    logs = {"loss": float(rank + 1), "accuracy": 0.5 * rank}
    distributed.MetricAverageCallback().on_epoch_end(0, logs)
    result["averaged_logs"] = logs

    # 5. float16 loss scaling: rank 1 alone overflows at the second update; every rank
    #    skips it, halves the scale and keeps identical weights.
    v = keras.Variable(np.array([1.0, -2.0, 3.0], "float32"))
    lso = distributed.DistributedOptimizer(SNGM(learning_rate=0.1), dynamic_loss_scale=True, initial_scale=8.0,
                                           growth_interval=2)
    lso.build([v])
    seen = []
    for step in range(4):
        g = np.array([rank + 1.0, 0.5, -1.0], "float32") * 8.0  # gradients of the scaled loss
        if step == 1 and rank == 1:
            g[0] = np.inf
        lso.apply([tf.constant(g)], [v])
        seen.append({"w": v.numpy().tolist(), "scale": float(lso.loss_scale.numpy()),
                     "skipped": int(lso.skipped_steps.numpy()), "iterations": int(lso.iterations)})
    result["loss_scale_steps"] = seen

    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
