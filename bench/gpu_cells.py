"""The measurements of `make bench-gpu`, each run in a fresh process by bench/gpu_bench.py:

    python bench/gpu_cells.py CELL 'JSON ARGS'   ->  prints `RESULT {...}`

Cells:
  optimizer  ms per update of Keras SGD(momentum) against SNGM, BlockSNGM and LARS on the
             same ResNet-50-like variables (bench/optimizer_step.py's steps), round-robin;
  resnet     a ResNet (ImageNet layout) training step at each given precision, with or
             without the trainers' XLA forward/backward (`--xla`), on synthetic data already
             on the device: images/s;
  small      ResNet-20 (CIFAR) or DeepFM at every precision, with and without XLA
             (bench/precision.py's steps), round-robin: examples/s;
  plain_fit  a plain Keras `model.fit` of the scaling run's model on one GPU, no trainer:
             what the trainer's overhead is measured against.
"""

import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def optimizer(a):
    import numpy as np
    import tensorflow as tf

    from _common import resnet50_like_shapes, round_robin
    from optimizer_step import NAMES, SETTINGS, make_step

    shapes = resnet50_like_shapes()[:a["variables"]] if a.get("variables") else resnet50_like_shapes()
    rng = np.random.default_rng(1)
    grads = [tf.constant(rng.normal(size=s).astype("float32")) for s in shapes]
    cells = {(label, name): make_step(name, own, outer, shapes, grads) for label, own, outer in SETTINGS for name in NAMES}
    times = round_robin(cells, a["repeats"])
    rows = []
    for label, _, _ in SETTINGS:
        base = statistics.median(times[(label, "SGD")])
        for name in NAMES:
            t = statistics.median(times[(label, name)])
            rows.append({"setting": label, "optimizer": name, "ms": 1e3 * t, "ratio": t / base})
    return {"parameters": int(sum(np.prod(s) for s in shapes)), "variables": len(shapes), "rows": rows}


def resnet(a):
    """Each of `a["cells"]` ([precision, xla] pairs) in turn, in this process."""
    import keras
    import tensorflow as tf

    from keras_sngm import SNGM
    from keras_sngm_trainers import distributed, xla_step
    from keras_sngm_trainers.models import resnet as models

    from _common import median_seconds

    distributed.pin_gpu()
    b = a["batch"]
    with tf.device("/GPU:0" if tf.config.list_logical_devices("GPU") else "/CPU:0"):  # synthetic, already on device
        x = tf.random.normal([b, a["image"], a["image"], 3])
        y = tf.random.uniform([b], 0, a["classes"], tf.int64)
    rows = []
    for precision, xla in a["cells"]:
        keras.mixed_precision.set_global_policy(precision)
        model = models.build(a["depth"], a["classes"], a["image"])
        model.compile(optimizer=SNGM(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=False)
        if xla:
            xla_step.compile_forward_backward(model)
        t = median_seconds(lambda: model.train_on_batch(x, y), a["warmup"], a["steps"])  # returns numpy: synced
        rows.append({"precision": precision, "xla": xla, "ms": 1e3 * t, "images_per_s": b / t})
        del model
    keras.mixed_precision.set_global_policy("float32")
    return {"rows": rows}


def small(a):
    import keras

    from _common import round_robin
    from precision import CELLS, deepfm_step, resnet_step

    from keras_sngm_trainers import distributed

    distributed.pin_gpu()
    if a["model"] == "resnet20":
        steps = {cell: resnet_step(*cell, batch=a["batch"], depth=a["depth"]) for cell in CELLS}
    else:
        steps = {cell: deepfm_step(*cell, batch=a["batch"], hash_space=a["hash_space"], hidden=tuple(a["hidden"]))
                 for cell in CELLS}
    for run in steps.values():
        for _ in range(a["warmup"]):
            run()
    times = round_robin(steps, a["steps"])
    keras.mixed_precision.set_global_policy("float32")
    return {"rows": [{"precision": p, "xla": xla, "ms": 1e3 * statistics.median(times[(p, xla)]),
                      "examples_per_s": a["batch"] / statistics.median(times[(p, xla)])} for p, xla in CELLS]}


def plain_fit(a):
    """The user's own script: Keras model.fit on one device, the trainer's model, precision,
    optimizer and in-memory synthetic data, compiled as model.compile compiles by default."""
    import keras
    import tensorflow as tf

    from keras_sngm import SNGM
    from keras_sngm_trainers import distributed
    from keras_sngm_trainers.data import images
    from keras_sngm_trainers.models import resnet as models

    distributed.pin_gpu()
    keras.mixed_precision.set_global_policy(a["precision"])
    x, y = images.synthetic(a["examples"], a["image"], a["classes"])
    ds = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(a["batch"], drop_remainder=True)
    ds = ds.map(lambda im, lab: (tf.cast(im, tf.float32) / 255.0, lab)).prefetch(tf.data.AUTOTUNE)
    model = models.build(a["depth"], a["classes"], a["image"])
    model.compile(optimizer=SNGM(0.1, momentum=0.9), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    from _common import step_timer

    timer = step_timer()
    model.fit(ds, steps_per_epoch=a["warmup"] + a["steps"], epochs=1, verbose=0, callbacks=[timer])
    t = statistics.median(timer.times[a["warmup"]:] or timer.times)
    return {"ms": 1e3 * t, "images_per_s": a["batch"] / t}


CELLS = {"optimizer": optimizer, "resnet": resnet, "small": small, "plain_fit": plain_fit}

if __name__ == "__main__":
    result = CELLS[sys.argv[1]](json.loads(sys.argv[2]))
    print("RESULT " + json.dumps(result), flush=True)
