"""Run under horovodrun: each rank reads one training epoch and its share of the
validation split of an ImageNet layout (argv: out dir, data dir) through the trainer's
own task, unaugmented, and writes a hash of every image it saw."""

import dataclasses
import hashlib
import json
import sys

import numpy as np

from keras_sngm_trainers import config, distributed, tasks

out, data_dir = sys.argv[1], sys.argv[2]
distributed.init()
rank, size = distributed.rank(), distributed.size()
cfg = dataclasses.replace(config.defaults("resnet"), dataset="imagenet", data_dir=data_dir, image_size=16, depth=18,
                          micro_batch=2, batch_size=4, augment=False, epochs=1, eval_batch=5, verbose=False)
task = tasks.ResNetTask(cfg)
updates = task.updates_per_epoch(cfg.batch_size, cfg.micro_batch, size)
task.micro_steps_per_epoch = updates * cfg.batch_size // (cfg.micro_batch * size)


def hashes(ds):
    return [hashlib.sha1(np.round(x, 3).tobytes()).hexdigest() for x, _ in ds.unbatch().as_numpy_iterator()]


with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump({"rank": rank, "size": size, "kind": type(task).__name__, "updates": updates,
               "train": hashes(task.train_dataset(0, rank, size, cfg.micro_batch).take(task.micro_steps_per_epoch)),
               "validation": hashes(task.eval_dataset())}, f)
