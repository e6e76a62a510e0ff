"""The row-at-a-time Criteo parser that `keras_sngm_trainers.data.criteo` replaced (one `map` call
per row), kept as the reference the vectorized parser must agree with."""

import tensorflow as tf

from keras_sngm_trainers.data.criteo import CATEGORICAL, NUM_FIELDS

_NUMBER = r"-?[0-9]+(\.0*)?"


def parse_row(line, sep, hash_space):
    """(dense [13], ids [26], label, ok) of one line."""
    fields = tf.strings.split(line, sep)
    n = tf.size(fields)
    fields = tf.concat([fields, tf.fill([tf.maximum(NUM_FIELDS - n, 0)], "")], 0)[:NUM_FIELDS]
    label, ints, cats = fields[0], fields[1:14], fields[14:]
    ints_ok = tf.reduce_all(tf.strings.regex_full_match(ints, _NUMBER) | tf.equal(ints, ""))
    label_ok = tf.strings.regex_full_match(label, "[01](\\.0*)?")
    safe_ints = tf.where(tf.strings.regex_full_match(ints, _NUMBER), ints, "0")
    values = tf.strings.to_number(safe_ints, tf.float32)
    dense = tf.where(tf.equal(ints, ""), 0.0, tf.math.log1p(tf.maximum(values, 0.0)))
    tokens = tf.strings.join([tf.constant([f"{c}=" for c in CATEGORICAL]), cats])
    cat = tf.strings.to_hash_bucket_fast(tokens, hash_space)
    y = tf.strings.to_number(tf.where(label_ok, tf.strings.substr(label, 0, 1), "0"), tf.float32)
    return dense, cat, y, (n <= NUM_FIELDS) & label_ok & ints_ok


def parse_file(path, hash_space, csv=False):
    """Every line of a file through `parse_row`: lists of (dense, ids, label, ok)."""
    ds = tf.data.TextLineDataset(path).skip(1 if csv else 0)
    ds = ds.map(lambda line: parse_row(line, "," if csv else "\t", hash_space))
    return [tuple(t.numpy() for t in row) for row in ds]
