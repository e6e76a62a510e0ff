"""The ImageNet input pipeline: records streamed from disk, each image decoded and
augmented on its own; nothing holds the dataset in memory.

Training: the random-resized crop (8-100% of the area, aspect 3/4-4/3; Szegedy et al.
2015), decoded fused with the crop for JPEGs (`decode_and_crop_jpeg` decodes only the
window), resized to `--image-size` (bilinear) and flipped at random. Evaluation: the
shorter side resized to 256 (x image_size/224), the centre crop.

Order and augmentation are pure functions of (seed, epoch, worker): the file order is
permuted by (seed, epoch), each shuffle window by (seed, epoch, window, rank), and the
n-th record of a worker's epoch is augmented with the seed (seed, epoch, rank, n). So a
resumed run, also mid-epoch (`start`), sees exactly what an uninterrupted one would have.

Bad records: a record without its image, or with a label out of range, stops the run,
naming the file and the record. An image that cannot be decoded does too, unless
`skip_bad` drops it (counted once per record in `counter`); the epoch then wraps to its
own start to fill its steps. (A resume within an epoch skips records, not images: with
dropped images before the resume point it lands that many images early.)
"""

import tensorflow as tf

from keras_sngm_trainers.data import sharding

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
UNDECODABLE = "not a decodable image"
SKIP_HINT = " (pass --skip-bad-images to drop and count such images)"
MESSAGE = "Bad image record:"  # the CLI finds the file and the problem after this marker
PARALLEL_FILES = 16


# ---------------------------------------------------------------- one image
def crop_window(shape, seed):
    """The random-resized crop of an image of `shape` [h, w, c]: (offset [y, x], size [h, w]).
    The whole image when 10 tries find no window of the allowed area and aspect."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed, min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    return begin[:2], size[:2]


def flipped(seed):
    return tf.random.stateless_uniform([], seed=seed + tf.constant([0, 1], seed.dtype)) < 0.5


# libjpeg's accurate integer DCT: the pixels PIL (the paper's PyTorch pipeline) decodes,
# for about 4% more decode time than the fast one (measured).
DCT = "INTEGER_ACCURATE"


def _decode(encoded):
    return tf.cond(tf.io.is_jpeg(encoded), lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method=DCT),
                   lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False))


def train_image(encoded, seed, size):
    """Random-resized crop + flip of one encoded image, as float pixels 0..255."""
    jpeg = tf.io.is_jpeg(encoded)
    shape = tf.cond(jpeg, lambda: tf.image.extract_jpeg_shape(encoded), lambda: tf.shape(_decode(encoded)))
    begin, crop = crop_window(shape, seed)
    image = tf.cond(jpeg, lambda: tf.image.decode_and_crop_jpeg(encoded, tf.concat([begin, crop], 0), channels=3,
                                                                  dct_method=DCT),
                    lambda: tf.slice(_decode(encoded), tf.concat([begin, [0]], 0), tf.concat([crop, [3]], 0)))
    image = tf.image.resize(image, [size, size])  # bilinear, half-pixel centres
    return tf.where(flipped(seed), tf.reverse(image, [1]), image)


def eval_image(encoded, size):
    """Shorter side to round(256 * size / 224), then the centre size x size."""
    image = _decode(encoded)
    short = round(256 * size / 224)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    scale = short / tf.cast(tf.minimum(h, w), tf.float32)
    nh = tf.maximum(size, tf.cast(tf.round(tf.cast(h, tf.float32) * scale), tf.int32))
    nw = tf.maximum(size, tf.cast(tf.round(tf.cast(w, tf.float32) * scale), tf.int32))
    image = tf.image.resize(image, [nh, nw])
    top, left = (nh - size) // 2, (nw - size) // 2
    return tf.ensure_shape(image[top:top + size, left:left + size], [size, size, 3])


def normalize(image):
    return (image / 255.0 - MEAN) / STD


# ---------------------------------------------------------------- records
def _tfrecord_rows(split, rank, size, run, permute_seed):
    """This worker's records of a TFRecord split: dicts of encoded, label, where, problem."""
    fmt = split.format
    own, by = sharding.shard_files(list(range(len(split.files))), rank, size)
    order = tf.constant(own, tf.int64)
    if permute_seed is not None:  # (seed, epoch), possibly tensors
        order = tf.random.experimental.stateless_shuffle(order, seed=tf.cast(tf.stack(permute_seed), tf.int64))
    paths = tf.constant(split.files)
    spec = {fmt.image_key: tf.io.FixedLenFeature([], tf.string, default_value=""),
            fmt.label_key: tf.io.FixedLenFeature([], tf.int64, default_value=-(2**40))}

    def parse(path, n, raw):
        ex = tf.io.parse_single_example(raw, spec)
        label = ex[fmt.label_key] - fmt.first_label
        problem = tf.where(tf.equal(ex[fmt.image_key], ""), f"no {fmt.image_key!r} feature",
                           tf.where((label >= 0) & (label < 1000), "", tf.strings.join(
                               ["label ", tf.strings.as_string(ex[fmt.label_key]), " is outside ",
                                f"{fmt.first_label}..{fmt.first_label + 999}"])))
        where = tf.strings.join([path, " record ", tf.strings.as_string(n)])
        return {"encoded": ex[fmt.image_key], "label": tf.maximum(label, 0), "where": where, "problem": problem}

    def records(i):
        path = paths[i]
        ds = tf.data.TFRecordDataset(path).enumerate()
        if by == "line":  # few files: runs of `run` records dealt in turn
            ds = ds.filter(lambda n, raw: sharding.my_lines(n, run, rank, size, by))
        return ds.map(lambda n, raw: parse(path, n, raw))

    files = tf.data.Dataset.from_tensor_slices(order)
    if by == "line":  # in file order, one after the other
        return files.flat_map(records)
    return files.interleave(records, cycle_length=min(len(own), PARALLEL_FILES), block_length=1,
                            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _folder_rows(split, rank, size, run, permute_seed):
    """This worker's images of a folder: run t of `run` images (in the permuted order) to rank t % size."""
    n = len(split.files)
    order = tf.range(n, dtype=tf.int64)
    if permute_seed is not None:
        order = tf.random.experimental.stateless_shuffle(order, seed=tf.cast(tf.stack(permute_seed), tf.int64))
    paths, labels = tf.constant(split.files), tf.constant(split.labels, tf.int64)
    return (tf.data.Dataset.from_tensor_slices(order).enumerate()
            .filter(lambda j, i: sharding.my_lines(j, run, rank, size, "line"))
            .map(lambda j, i: {"encoded": tf.constant(""), "label": tf.gather(labels, i), "where": tf.gather(paths, i),
                               "problem": tf.constant("")}))


def records_of_worker(split, rank, size, run):
    """How many records `rows(split, rank, size, run, ...)` yields per epoch."""
    if split.kind == "folder":
        return sharding.rows_of_worker([len(split.files)], rank, size, run)
    return sharding.rows_of_worker(split.counts, rank, size, run)


def rows(split, rank, size, run, permute_seed=None):
    return (_folder_rows if split.kind == "folder" else _tfrecord_rows)(split, rank, size, run, permute_seed)


# ---------------------------------------------------------------- decoding, checked
def _decoded(records, make, out_shape, read_files):
    """(image, label, where, problem) per record, in order. A record `make` cannot decode
    comes out with a zero image and problem UNDECODABLE instead of raising: each record
    is its own one-element dataset, whose decode errors are dropped, followed by the
    flagged fallback, of which the first element is kept."""
    def one(n, r):
        single = tf.data.Dataset.from_tensors((n, r))

        def decode(n, r):
            encoded = tf.io.read_file(r["where"]) if read_files else r["encoded"]
            return make(encoded, n), r["label"], r["where"], r["problem"]

        good = single.filter(lambda n, r: tf.equal(r["problem"], "")).map(decode).ignore_errors()
        bad = single.map(lambda n, r: (tf.zeros(out_shape), r["label"], r["where"],
                                       tf.where(tf.equal(r["problem"], ""), UNDECODABLE, r["problem"])))
        return good.concatenate(bad).take(1)

    return records.interleave(one, cycle_length=tf.data.AUTOTUNE, block_length=1,
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _checked(images, skip_bad, counter):
    """Stops at a bad record (naming it), or drops and counts undecodable images."""
    def check(image, label, where, problem):
        skipped = skip_bad & tf.equal(problem, UNDECODABLE)
        ok = tf.equal(problem, "") | skipped
        hint = tf.where(tf.equal(problem, UNDECODABLE), SKIP_HINT, "")
        with tf.control_dependencies([tf.debugging.Assert(ok, [MESSAGE, where, ":", problem, hint])]):
            keep = tf.logical_not(skipped)
        if counter is not None:
            with tf.control_dependencies([counter.add_keys(tf.boolean_mask([where], [skipped]))]):
                keep = tf.identity(keep)
        return keep

    return images.filter(check).map(lambda image, label, where, problem: (image, label))


def _window_shuffled(records, window, seed, rank, size):
    """Records permuted within consecutive windows of `window`, each by a stateless seed
    (seed, window number, rank): memory is bounded by the window (about 1.1 GB for 10,000
    ImageNet JPEGs), and the order is a pure function of the seeds, also inside a traced
    epoch function (tf.data's own shuffle wants a Python seed there)."""
    def permute(w, batch):
        order = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(batch["label"], out_type=tf.int64)[0]),
                                                         seed=tf.stack([seed, w * size + rank]))
        return {k: tf.gather(v, order) for k, v in batch.items()}

    return records.batch(window).enumerate().map(permute).unbatch()


# ---------------------------------------------------------------- datasets
def train_dataset(split, image_size, micro_batch, seed, first_epoch, epochs, rank, size, micro_steps,
                  shuffle_buffer=10_000, augment=True, skip_bad=False, counter=None, start=0):
    """Micro-batches (images [b, s, s, 3] float32 normalized, labels [b]) for this worker,
    `micro_steps` per epoch from `first_epoch`, the first `start` of it skipped."""
    def make(encoded, n, e):
        if augment:
            return normalize(train_image(encoded, tf.stack([tf.cast(seed, tf.int64) * 1_000_003 + e, rank * 2**40 + n]),
                                         image_size))
        return normalize(eval_image(encoded, image_size))

    def epoch(e):
        recs = rows(split, rank, size, micro_batch, permute_seed=[tf.constant(seed, tf.int64), e])
        if shuffle_buffer and split.kind != "folder":  # a folder is permuted whole
            recs = _window_shuffled(recs, max(micro_batch, shuffle_buffer // size),
                                    tf.constant(seed, tf.int64) * 7919 + e, rank, size)
        skip = tf.where(tf.equal(e, first_epoch), tf.constant(start * micro_batch, tf.int64), 0)
        images = _checked(_decoded(recs.enumerate().skip(skip), lambda encoded, n: make(encoded, n, e),
                                   [image_size, image_size, 3], split.kind == "folder"), skip_bad, counter)
        return images.repeat().take(micro_steps * micro_batch - skip)  # skip_bad: wrap to fill the epoch

    # One pipeline, traced once, for every epoch (its order a function of the epoch number).
    return (tf.data.Dataset.range(first_epoch, max(epochs, first_epoch + 1)).flat_map(epoch)
            .batch(micro_batch, drop_remainder=True).repeat().prefetch(tf.data.AUTOTUNE))


def eval_dataset(split, image_size, batch, rank=0, size=1, skip_bad=False, counter=None):
    """The split once, in file order, center-cropped; with several workers each takes its
    share of records (the epoch logs average the workers' means)."""
    images = _decoded(rows(split, rank, size, 1).enumerate(), lambda encoded, n: normalize(eval_image(encoded, image_size)),
                      [image_size, image_size, 3], split.kind == "folder")
    return _checked(images, skip_bad, counter).batch(batch).prefetch(tf.data.AUTOTUNE)
