"""Criteo Display Advertising data for DeepFM, streamed from text files with tf.data.

Formats (plain or gzip-compressed, e.g. the 1TB logs' `day_0.gz` ... `day_23.gz`):
  - raw TSV: `label, I1..I13, C1..C26`, tab separated, no header; rows whose trailing
    fields are empty may be cut short (they are padded to 40 fields);
  - CSV with the header `label,I1,...,I13,C1,...,C26` (integers may be written as
    floats, `260.0`).
Empty fields are missing. Dense features: log(1 + max(x, 0)), 0 when missing, or the
min-max transform of `--dense-transform minmax` (`keras_sngm_trainers.data.dense_transform`).
Categoricals: "C<i>=<value>" hashed into one shared space of `hash_space` buckets
(a missing value hashes as its own token "C<i>=").

Parsing is vectorized: lines are read in blocks and a whole block is split, padded,
converted and hashed by a handful of tensor ops (no per-row function). A malformed row
(more than 40 fields, a label other than 0/1, an integer field that is not a number or
lies outside the 64-bit integer range) stops the input with an error naming the file,
line and reason, or, with `skip_bad_rows`, is dropped by a per-block mask and counted
once per (file, line).

Sharding over workers: with many files each worker reads its own files (file i to
rank i % size); with few, every worker parses only its lines, dealt in runs of
`batch_size` lines (run t to rank t % size). Either way each row is used by exactly
one worker per epoch.
"""

import gzip
import os
import glob

import numpy as np

from keras_sngm_trainers.data import dense_transform
from keras_sngm_trainers.data.sharding import my_lines, shard_files

NUM_FIELDS = 40
DENSE = [f"I{i}" for i in range(1, 14)]
CATEGORICAL = [f"C{i}" for i in range(1, 27)]
CSV_HEADER = ",".join(["label"] + DENSE + CATEGORICAL)
SUFFIXES = ("tsv", "csv", "txt", "tsv.gz", "csv.gz", "txt.gz", "gz")
_NUMBER = r"-?[0-9]+(\.0*)?"
_INT_LIMIT = 2.0**63  # integer fields must fit a signed 64-bit integer
_BLOCK = 4096         # lines parsed per vectorized call (rounded to the dealing unit)
# Reason codes of a row, in the order they are checked.
OK, TOO_MANY_FIELDS, BAD_LABEL, NOT_A_NUMBER, OUT_OF_RANGE = range(5)


class CriteoFormatError(ValueError):
    """A Criteo file that cannot be read as Criteo data (raised before training)."""


class BadRowCounter:
    """Counts the distinct malformed rows dropped by `skip_bad_rows`.

    Rows are keyed by (file, line), so a bad row read again (the next epoch, the
    look-ahead past the last epoch, a second evaluation) is counted once.
    """

    def __init__(self):
        import tensorflow as tf

        self.table = tf.lookup.experimental.MutableHashTable(tf.string, tf.int64, default_value=0)

    def add(self, path, linenos):
        import tensorflow as tf

        keys = tf.strings.join([tf.fill(tf.shape(linenos), path), tf.strings.as_string(linenos)], ":")
        return self.add_keys(keys)

    def add_keys(self, keys):
        """Marks the records named by the strings `keys` (a vector) as dropped."""
        import tensorflow as tf

        return self.table.insert(keys, tf.ones(tf.shape(keys), tf.int64))

    @property
    def count(self):
        return int(self.table.size().numpy())


# ---------------------------------------------------------------- files
def resolve_files(pattern):
    """A file, a directory of Criteo files (.tsv/.csv/.txt, gzipped or not), or a glob;
    sorted, non-empty, each checked to be a readable Criteo text file."""
    if os.path.isdir(pattern):
        files = {f for ext in SUFFIXES for f in glob.glob(os.path.join(pattern, f"*.{ext}"))}
    else:
        files = glob.glob(pattern)
    files = sorted(f for f in files if os.path.isfile(f))
    if not files:
        raise FileNotFoundError(
            f"No Criteo files found at {pattern!r}: pass a .tsv (raw Criteo, tab separated) or .csv (with a "
            "header) file, gzipped or not, a directory of them, or a glob; or generate data with "
            "`sngm-train gen-criteo`.")
    for f in files:
        file_format(f)
    return files


def _open(path):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def file_format(path):
    """"csv" (header line first) or "tsv"; a file that is not Criteo text is an error."""
    try:
        with _open(path) as f:
            head = f.read(64 * 1024)
    except (OSError, EOFError) as e:  # a truncated or non-gzip .gz
        raise CriteoFormatError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None
    if b"\0" in head:
        raise CriteoFormatError(f"{path}: is a binary file, not Criteo text (tab-separated or CSV lines)")
    first = head.split(b"\n", 1)[0].rstrip(b"\r")
    try:
        first = first.decode("utf-8")
    except UnicodeDecodeError:
        raise CriteoFormatError(f"{path}: line 1 is not UTF-8 text; Criteo files are plain text") from None
    if first.startswith("label,"):
        if first.replace(" ", "") != CSV_HEADER:
            raise CriteoFormatError(
                f"{path}: CSV header {first[:120]!r} is not Criteo's 40 columns "
                f"'label,I1,...,I13,C1,...,C26'")
        return "csv"
    return "tsv"


def count_lines(path):
    """Data lines in one file as the reader sees them (the CSV header excluded)."""
    n, last = 0, b"\n"
    with _open(path) as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    n += last != b"\n"  # a last line without a newline
    return n - (file_format(path) == "csv")


def count_rows(files):
    """Data lines in all the files (headers excluded), by streaming them once."""
    return sum(count_lines(f) for f in files)


# ---------------------------------------------------------------- parsing
_MISSING = "\x1f"  # pads short rows; a field that is exactly this control character reads as missing


def parse_block(lines, sep, hash_space, dense=None):
    """Parses a vector of lines: (features, labels [n, 1], reason codes [n], details).

    Each line gets 40 padding fields of `_MISSING` and `tf.io.decode_csv` cuts the
    first 41 fields (measured 2x faster than a ragged split + pad); a 41st field that
    is not padding means more than 40 fields. `details` serve the error message only.
    """
    import tensorflow as tf

    padded = tf.strings.join([lines, (sep + _MISSING) * NUM_FIELDS])
    cols = tf.io.decode_csv(padded, [""] * (NUM_FIELDS + 1), field_delim=sep, use_quote_delim=False,
                            select_cols=list(range(NUM_FIELDS + 1)))
    too_many = tf.not_equal(cols[NUM_FIELDS], _MISSING)
    grid = tf.stack(cols[:NUM_FIELDS], axis=1)
    grid = tf.where(tf.equal(grid, _MISSING), "", grid)
    label, ints, cats = grid[:, 0], grid[:, 1:14], grid[:, 14:]
    label_ok = tf.equal(label, "0") | tf.equal(label, "1") | tf.strings.regex_full_match(label, r"[01]\.0*")
    empty = tf.equal(ints, "")
    numeric = tf.strings.regex_full_match(ints, _NUMBER)
    values = tf.strings.to_number(tf.where(numeric, ints, "0"), tf.float32)
    in_range = tf.abs(values) < _INT_LIMIT  # 46 digits would be inf in float32
    syntax_ok = numeric | empty
    code = tf.where(too_many, TOO_MANY_FIELDS,
                    tf.where(~label_ok, BAD_LABEL,
                             tf.where(~tf.reduce_all(syntax_ok, 1), NOT_A_NUMBER,
                                      tf.where(~tf.reduce_all(in_range, 1), OUT_OF_RANGE, OK))))
    bad_column = tf.argmax(tf.cast(~(syntax_ok & in_range), tf.int32), axis=1, output_type=tf.int32)
    features = dense_transform.apply(values, empty, dense)
    cat = tf.strings.to_hash_bucket_fast(tf.constant([f"{c}=" for c in CATEGORICAL]) + cats, hash_space)
    y = tf.cast(tf.strings.substr(label, 0, 1) == "1", tf.float32)[:, None]
    return {"dense": features, "categorical": cat}, y, code, (lines, label, bad_column, ints)


def _reason(code, line, sep, label, column, value):
    """The message for one bad row (built only when a row is bad)."""
    import tensorflow as tf

    field = tf.strings.join(["integer field I", tf.strings.as_string(column + 1)])
    return tf.switch_case(code - 1, [
        lambda: tf.strings.join([tf.strings.as_string(tf.size(tf.strings.split(line, sep))),
                                 " fields, at most 40 expected"]),
        lambda: tf.strings.join(["label '", label, "' is not 0 or 1"]),
        lambda: tf.strings.join([field, " is not a number: '", value, "'"]),
        lambda: tf.strings.join([field, " is out of the 64-bit integer range: '", value, "'"]),
    ])


def _file_blocks(path, batch_size, rank, size, by, hash_space, skip_bad_rows, counter, dense=None):
    """Parsed blocks of one file for this worker: (features, labels) with only good rows."""
    import tensorflow as tf

    fmt = file_format(path)
    sep = "," if fmt == "csv" else "\t"
    header = int(fmt == "csv")
    unit = batch_size * (size if by == "line" else 1)
    block = max(unit, _BLOCK // unit * unit)
    lines = tf.data.TextLineDataset(path, compression_type="GZIP" if path.endswith(".gz") else "", buffer_size=1 << 20)
    lines = lines.skip(header).batch(block).enumerate()

    def parse(b, text):
        index = b * block + tf.range(tf.shape(text, out_type=tf.int64)[0])  # 0-based data line
        if by == "line" and size > 1:
            mine = my_lines(index, batch_size, rank, size, by)
            text, index = tf.boolean_mask(text, mine), tf.boolean_mask(index, mine)
        lineno = index + 1 + header  # as an editor shows it
        text = tf.strings.regex_replace(text, "\r$", "")  # CRLF files
        x, y, code, (raw, label, col, ints) = parse_block(text, sep, hash_space, dense)
        good = tf.equal(code, OK)
        if skip_bad_rows:
            with tf.control_dependencies([counter.add(path, tf.boolean_mask(lineno, ~good))]):
                good = tf.identity(good)
        else:
            first = tf.argmin(tf.cast(good, tf.int32), output_type=tf.int32)
            all_good = tf.reduce_all(good)
            reason = tf.cond(all_good, lambda: tf.constant(""),
                             lambda: _reason(code[first], raw[first], sep, label[first], col[first],
                                             ints[first][col[first]]))
            check = tf.debugging.Assert(all_good, ["Malformed Criteo row:", path, "line", tf.gather(lineno, first), ":",
                                                   reason, "(pass --skip-bad-rows to drop and count such rows)"])
            with tf.control_dependencies([check]):
                good = tf.identity(good)
        return tf.nest.map_structure(lambda t: tf.boolean_mask(t, good), (x, y))

    return lines.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def dataset(files, batch_size, hash_space, rank=0, size=1, skip_bad_rows=False, counter=None,
            shuffle_buffer=0, seed=0, epoch=0, repeat=False, drop_remainder=True, dense=None):
    """Batches of ({"dense": [b, 13], "categorical": [b, 26]}, label [b, 1]) for one epoch
    on worker `rank` of `size`.

    Without shuffling, the workers' batches of one update (batch t on rank t % size) are
    exactly one process's consecutive rows when reading by line. `dense` is the dense
    fields' transform (`keras_sngm_trainers.data.dense_transform`; None: log1p). With
    `shuffle_buffer`, each worker permutes its rows in windows of
    `shuffle_buffer // size` rows (and, reading by file, its file order), seeded by
    (seed, epoch): memory is bounded by the window, not the file size.
    """
    files = [files] if isinstance(files, str) else list(files)
    if skip_bad_rows:
        counter = counter or BadRowCounter()
    return assemble(files, lambda f, by: _file_blocks(f, batch_size, rank, size, by, hash_space, skip_bad_rows, counter,
                                                      dense),
                    batch_size, rank, size, shuffle_buffer, seed, epoch, repeat, drop_remainder)


def assemble(files, blocks, batch_size, rank, size, shuffle_buffer, seed, epoch, repeat, drop_remainder):
    """This worker's batches from `blocks(file, "file" | "line")`, a dataset of row blocks
    of one file (text or prepared binary): sharding, shuffle windows and batching shared by
    both formats."""
    import tensorflow as tf

    own, by = shard_files(files, rank, size)
    if shuffle_buffer and by == "file":
        own = [own[i] for i in np.random.default_rng([seed, epoch]).permutation(len(own))]
    rows = blocks(own[0], by)
    for f in own[1:]:
        rows = rows.concatenate(blocks(f, by))
    if shuffle_buffer:
        window = max(batch_size, shuffle_buffer // size)

        def permute(w, xy):
            order = tf.random.experimental.stateless_shuffle(
                tf.range(tf.shape(xy[1], out_type=tf.int64)[0]), seed=tf.stack([seed * 7919 + epoch, w]))
            return tf.nest.map_structure(lambda t: tf.gather(t, order), xy)

        rows = rows.rebatch(window).enumerate().map(permute, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    batches = rows.rebatch(batch_size, drop_remainder=drop_remainder)
    if repeat:
        batches = batches.repeat()
    return batches.prefetch(tf.data.AUTOTUNE)


def synthetic(batch_size, hash_space, seed=0, rank=0):
    """An endless stream of random rows of the right shapes and ranges (benchmarks).

    Dense values are log1p of log-normal counts; ids are skewed towards small buckets
    as real categories are; labels are 1 with probability 0.25, independent of x.
    """
    import tensorflow as tf

    def make(i):
        s = tf.stack([tf.cast(seed * 1_000_003 + rank, tf.int64), i])
        counts = tf.floor(tf.exp(tf.random.stateless_normal([batch_size, 13], s, 1.5, 1.5)))
        u = tf.random.stateless_uniform([batch_size, 26], s + 1)
        ids = tf.cast(tf.floor(u * u * u * hash_space), tf.int64)
        y = tf.cast(tf.random.stateless_uniform([batch_size, 1], s + 2) < 0.25, tf.float32)
        return {"dense": tf.math.log1p(counts), "categorical": ids}, y

    return tf.data.Dataset.range(2**62).map(make, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def fit_minmax(files, skip_bad_rows=False):
    """The min-max transform of the training `files`, in one streaming pass. Raises
    ValueError naming a field no row holds a value of (min-max scaling needs one)."""
    lo, hi = np.full(13, np.inf), np.full(13, -np.inf)
    present, rows = np.zeros(13, np.int64), 0
    for x, _ in dataset(files, 4096, 2, skip_bad_rows=skip_bad_rows, drop_remainder=False, dense=dense_transform.RAW):
        block = x["dense"].numpy().astype(np.float64)
        seen = ~np.isnan(block)
        present += seen.sum(0)
        rows += len(block)
        filled = np.where(seen, block, 0.0)  # missing counts as 0
        lo, hi = np.minimum(lo, filled.min(0)), np.maximum(hi, filled.max(0))
    empty = [f"I{i + 1}" for i in np.flatnonzero(present == 0)]
    if empty:
        raise ValueError(f"--dense-transform minmax: dense field {', '.join(empty)} has no value in any of the {rows} "
                         f"training rows of {list(files)}: min-max scaling needs one (use --dense-transform log1p, or "
                         f"check the column layout)")
    return {"dense_transform": "minmax", "min": lo.tolist(), "max": hi.tolist(), "fitted_on_rows": int(rows)}
