"""Run under horovodrun: each rank reads one epoch of Criteo files (argv: out dir, then
the files) with its rank and size and writes the row identities it saw (I1 of each row)."""

import json
import sys

import numpy as np

from keras_sngm_trainers import distributed
from keras_sngm_trainers.data import criteo, sharding

out, files = sys.argv[1], sys.argv[2:]
distributed.init()
rank, size = distributed.rank(), distributed.size()
ds = criteo.dataset(files, 32, 1000, rank, size, shuffle_buffer=64, seed=2, epoch=1, drop_remainder=False)
ids = np.concatenate([np.round(np.expm1(x["dense"].numpy()[:, 0])) for x, _ in ds]).astype(int).tolist()
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump({"rank": rank, "size": size, "ids": ids, "by": sharding.shard_files(files, rank, size)[1]}, f)
