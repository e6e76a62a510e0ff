"""The 13 dense Criteo fields as the model sees them (`--dense-transform`).

A transform is a small dict, recorded in config.json and in a prepared folder's
meta.json, and checked against the flags when a prepared folder is read:

- `{"dense_transform": "log1p"}`: log(1 + max(x, 0)), 0 when missing (the default);
- `{"dense_transform": "minmax", "min": [13], "max": [13]}`: (x - min) / (max - min) per
  field, with a missing value counted as 0 (as DeepCTR's Criteo example fills missing
  values with 0 before its MinMaxScaler), so min <= 0 <= max wherever a row misses the
  field; a field whose values are all one value maps to 0 (scikit-learn's choice). Not
  clipped: held-out values outside the training range fall outside [0, 1], as with the
  scaler. Fitted by `criteo.fit_minmax`, one streaming pass over the training files.
"""

import numpy as np

LOG1P = {"dense_transform": "log1p"}
RAW = {"dense_transform": "raw"}  # the values, NaN where missing: what `criteo.fit_minmax` reads


def apply(values, empty, spec):
    """The transformed dense block [n, 13] of float32 `values` (0 where `empty`)."""
    import tensorflow as tf

    kind = (spec or LOG1P)["dense_transform"]
    if kind == "log1p":
        return tf.where(empty, 0.0, tf.math.log1p(tf.maximum(values, 0.0)))
    if kind == "raw":
        return tf.where(empty, np.float32(np.nan), values)
    lo = tf.constant(spec["min"], tf.float32)
    span = tf.constant([h - l if h > l else 1.0 for l, h in zip(spec["min"], spec["max"])], tf.float32)
    return (tf.where(empty, 0.0, values) - lo) / span


def same(a, b):
    """Whether two transforms are the same (a record's `fitted_on_rows` aside)."""
    strip = lambda s: {k: v for k, v in (s or LOG1P).items() if k != "fitted_on_rows"}  # noqa: E731
    return strip(a) == strip(b)
