"""Criteo Display Advertising data for DeepFM, streamed from text files with tf.data.

Formats:
  - raw TSV: `label, I1..I13, C1..C26`, tab separated, no header; rows whose trailing
    fields are empty may be cut short (they are padded to 40 fields);
  - CSV with a header `label,I1,...,C26` (integers may be written as floats, `260.0`).
Empty fields are missing. Dense features: log(1 + max(x, 0)), 0 when missing.
Categoricals: "C<i>=<value>" hashed into one shared space of `hash_space` buckets
(a missing value hashes as its own token "C<i>=").
A malformed row (more than 40 fields, a label other than 0/1, a non-numeric integer
field) stops with an error naming the file and line, or, with `skip_bad_rows`, is
dropped and counted.
"""

import glob
import os

import tensorflow as tf

NUM_FIELDS = 40
DENSE = [f"I{i}" for i in range(1, 14)]
CATEGORICAL = [f"C{i}" for i in range(1, 27)]
_NUMBER = r"-?[0-9]+(\.0*)?"


class BadRowCounter:
    """Counts the distinct malformed rows dropped by `skip_bad_rows`.

    Rows are keyed by (file, line), so a bad row read again (the next epoch, the
    look-ahead past the last epoch, a second evaluation) is counted once.
    """

    def __init__(self):
        self.table = tf.lookup.experimental.MutableHashTable(tf.string, tf.int64, default_value=0)

    def add(self, path, lineno):
        key = tf.strings.join([path, tf.strings.as_string(lineno)], ":")
        return self.table.insert(tf.reshape(key, [1]), tf.ones([1], tf.int64))

    @property
    def count(self):
        return int(self.table.size().numpy())


def resolve_files(pattern):
    """A file, a directory of .tsv/.csv/.txt files, or a glob; sorted, non-empty."""
    if os.path.isdir(pattern):
        files = [f for ext in ("tsv", "csv", "txt") for f in glob.glob(os.path.join(pattern, f"*.{ext}"))]
    else:
        files = glob.glob(pattern)
    files = sorted(f for f in files if os.path.isfile(f))
    if not files:
        raise FileNotFoundError(
            f"No Criteo files found at {pattern!r}: pass a .tsv (raw Criteo, tab separated) or .csv (with a "
            "header) file, a directory of them, or a glob; or generate data with `sngm-train gen-criteo`.")
    return files


def _is_csv(path):
    with open(path, "r", errors="replace") as f:
        head = f.readline()
    return head.startswith("label,")


def _lines(path):
    """(file, line number, text) for each data line of one file."""
    csv = _is_csv(path)
    ds = tf.data.TextLineDataset(path).enumerate(start=1)
    if csv:
        ds = ds.skip(1)
    sep = "," if csv else "\t"
    return ds.map(lambda i, line: (tf.constant(path), i, line, sep))


def _parse(path, lineno, line, sep, hash_space):
    fields = tf.strings.split(line, sep)
    n = tf.size(fields)
    fields = tf.concat([fields, tf.fill([tf.maximum(NUM_FIELDS - n, 0)], "")], 0)[:NUM_FIELDS]
    label, ints, cats = fields[0], fields[1:14], fields[14:]
    ints_ok = tf.reduce_all(tf.strings.regex_full_match(ints, _NUMBER) | tf.equal(ints, ""))
    label_ok = tf.strings.regex_full_match(label, "[01](\\.0*)?")
    reason = tf.case([
        (n > NUM_FIELDS, lambda: tf.strings.format("{} fields, at most 40 expected", n)),
        (tf.logical_not(label_ok), lambda: tf.strings.format("label {} is not 0 or 1", label)),
        (tf.logical_not(ints_ok), lambda: tf.constant("an integer field (I1..I13) is not a number")),
    ], default=lambda: tf.constant(""))
    safe_ints = tf.where(tf.strings.regex_full_match(ints, _NUMBER), ints, "0")
    values = tf.strings.to_number(safe_ints, tf.float32)
    dense = tf.where(tf.equal(ints, ""), 0.0, tf.math.log1p(tf.maximum(values, 0.0)))
    tokens = tf.strings.join([tf.constant([f"{c}=" for c in CATEGORICAL]), cats])
    cat = tf.strings.to_hash_bucket_fast(tokens, hash_space)
    y = tf.strings.to_number(tf.where(label_ok, tf.strings.substr(label, 0, 1), "0"), tf.float32)
    return {"dense": dense, "categorical": cat}, tf.reshape(y, [1]), reason, path, lineno


def dataset(files, batch_size, hash_space, rank=0, size=1, skip_bad_rows=False, counter=None,
            shuffle_buffer=0, seed=0, epoch=0, repeat=False, drop_remainder=True):
    """Batches of ({"dense": [b, 13], "categorical": [b, 26]}, label [b, 1]).

    Micro-batches are dealt to workers in turn (batch t to rank t % size), so the
    workers' batches of one update are exactly one process's global batch. With
    `shuffle_buffer`, rows are shuffled in a window seeded by (seed, epoch).
    """
    files = [files] if isinstance(files, str) else list(files)
    lines = tf.data.Dataset.from_tensor_slices(files[:1]).flat_map(lambda _: _lines(files[0]))
    for f in files[1:]:
        lines = lines.concatenate(_lines(f))
    rows = lines.map(lambda p, i, line, sep: _parse(p, i, line, sep, hash_space), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    if skip_bad_rows:
        counter = counter or BadRowCounter()

        def keep(x, y, reason, path, lineno):
            ok = tf.equal(reason, "")
            with tf.control_dependencies([tf.cond(ok, tf.no_op, lambda: counter.add(path, lineno))]):
                return tf.identity(ok)

        rows = rows.filter(keep)
    else:
        def check(x, y, reason, path, lineno):
            tf.debugging.Assert(tf.equal(reason, ""), ["Malformed Criteo row:", path, "line", lineno, ":", reason,
                                                        "(pass --skip-bad-rows to drop and count such rows)"])
            return x, y, reason, path, lineno

        rows = rows.map(check)
    rows = rows.map(lambda x, y, reason, path, lineno: (x, y))
    if shuffle_buffer:
        rows = rows.shuffle(shuffle_buffer, seed=seed * 7919 + epoch, reshuffle_each_iteration=False)
    batches = rows.batch(batch_size, drop_remainder=drop_remainder).shard(size, rank)
    if repeat:
        batches = batches.repeat()
    return batches.prefetch(tf.data.AUTOTUNE)


def count_rows(files):
    """Data lines in the files (headers excluded), by streaming them once."""
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            total += sum(1 for line in fh if line.strip())
        total -= 1 if _is_csv(f) else 0
    return total
