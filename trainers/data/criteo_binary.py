"""Criteo rows prepared once as fixed-length binary records, so epochs skip parsing.

`sngm-train prep-criteo --data 'day_*.gz' --out prepared/ --hash-space 262144` runs the
text pipeline (`keras_sngm_trainers.data.criteo`) once and writes shards `part-NNNNN.bin` of
160-byte records: label, the 13 transformed dense features (float32) and the 26
hashed ids (int32), little-endian, then `meta.json` (written last: a folder without
it is incomplete). Training reads them with `FixedLengthRecordDataset` and one
`decode_raw` per block: the same features, bit for bit, at memory speed. The ids
depend on the hash space and the dense values on their transform
(`keras_sngm_trainers.data.dense_transform`: log1p, or min-max with its fitted bounds), so both
are recorded and checked against the training flags.
"""

import json
import os

import numpy as np

from keras_sngm_trainers.data import criteo, dense_transform, sharding

FORMAT = "sngm-criteo-binary-v1"
FIELDS = 1 + 13 + 26
RECORD_BYTES = 4 * FIELDS
_BLOCK = 4096


def is_prepared(path):
    return os.path.isfile(os.path.join(path, "meta.json"))


def load_meta(path, hash_space=None, transform=None):
    """The folder's meta.json; checks the format and (when given) the hash space and the
    dense transform's kind (`transform`: "log1p" or "minmax")."""
    with open(os.path.join(path, "meta.json")) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise criteo.CriteoFormatError(f"{path}/meta.json: format {meta.get('format')!r}, expected {FORMAT!r}")
    if hash_space is not None and meta["hash_space"] != hash_space:
        raise criteo.CriteoFormatError(
            f"{path} was prepared with --hash-space {meta['hash_space']}; the ids differ with "
            f"--hash-space {hash_space}: pass --hash-space {meta['hash_space']} or prepare again")
    kind = meta.get("dense_transform", dense_transform.LOG1P)["dense_transform"]
    if transform is not None and kind != transform:
        raise criteo.CriteoFormatError(
            f"{path} was prepared with --dense-transform {kind}; the dense values differ with --dense-transform "
            f"{transform}: pass --dense-transform {kind} or prepare again")
    return meta


def shards(path):
    return [os.path.join(path, s["file"]) for s in load_meta(path)["shards"]]


def prepare(files, out, hash_space, rows_per_shard=1 << 20, skip_bad_rows=False, log=print, dense=None):
    """Parses `files` once and writes `out/part-*.bin` + `out/meta.json`; returns the meta.
    `dense` is the dense transform (None: log1p), recorded in the meta."""
    if rows_per_shard < 1:
        raise ValueError(f"--rows-per-shard must be >= 1. Received: {rows_per_shard}")
    if hash_space >= 2**31:
        raise ValueError(f"--hash-space must be < 2^31 for int32 ids. Received: {hash_space}")
    os.makedirs(out, exist_ok=True)
    if is_prepared(out):
        os.remove(os.path.join(out, "meta.json"))  # the folder is incomplete until rewritten
    counter = criteo.BadRowCounter() if skip_bad_rows else None
    rows = criteo.dataset(files, _BLOCK, hash_space, skip_bad_rows=skip_bad_rows, counter=counter,
                          drop_remainder=False, dense=dense)
    shard_list, handle, in_shard, total = [], None, 0, 0

    def close():
        handle.close()
        os.replace(handle.name, handle.name[:-len(".tmp")])

    for x, y in rows:
        record = np.empty((len(y), FIELDS), np.float32)
        record[:, 0] = y.numpy()[:, 0]
        record[:, 1:14] = x["dense"].numpy()
        record[:, 14:] = x["categorical"].numpy().astype(np.int32).view(np.float32)
        start = 0
        while start < len(record):
            if handle is None:
                name = f"part-{len(shard_list):05d}.bin"
                handle, in_shard = open(os.path.join(out, name + ".tmp"), "wb"), 0
                shard_list.append({"file": name, "rows": 0})
            take = min(len(record) - start, rows_per_shard - in_shard)
            handle.write(record[start:start + take].astype("<f4").tobytes())
            in_shard += take
            shard_list[-1]["rows"] += take
            start += take
            total += take
            if in_shard == rows_per_shard:
                close()
                handle = None
        if total and total % (10 * rows_per_shard) < len(y):
            log(f"prepared {total} rows", flush=True)
    if handle is not None:
        close()
    if not total:
        raise criteo.CriteoFormatError(f"no rows to prepare from {list(files)}")
    meta = {"format": FORMAT, "hash_space": hash_space, "dense_transform": dense or dense_transform.LOG1P,
            "rows": total, "shards": shard_list, "sources": list(files),
            "bad_rows_skipped": counter.count if counter else 0}
    with open(os.path.join(out, "meta.json.tmp"), "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(os.path.join(out, "meta.json.tmp"), os.path.join(out, "meta.json"))
    return meta


def _blocks(path, batch_size, rank, size, by):
    import tensorflow as tf

    records = tf.data.FixedLengthRecordDataset(path, RECORD_BYTES, buffer_size=1 << 20).batch(_BLOCK).enumerate()

    def decode(b, raw):
        index = b * _BLOCK + tf.range(tf.shape(raw, out_type=tf.int64)[0])
        raw = tf.boolean_mask(raw, sharding.my_lines(index, batch_size, rank, size, by))
        values = tf.reshape(tf.io.decode_raw(raw, tf.float32, little_endian=True), [-1, FIELDS])
        ids = tf.bitcast(values[:, 14:], tf.int32)
        return {"dense": values[:, 1:14], "categorical": tf.cast(ids, tf.int64)}, values[:, :1]

    return records.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def dataset(path, batch_size, rank=0, size=1, shuffle_buffer=0, seed=0, epoch=0, repeat=False, drop_remainder=True):
    """As `criteo.dataset`, from a prepared folder (same sharding and shuffle rules)."""
    return criteo.assemble(shards(path), lambda f, by: _blocks(f, batch_size, rank, size, by), batch_size, rank, size,
                           shuffle_buffer, seed, epoch, repeat, drop_remainder)
