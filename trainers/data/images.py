"""CIFAR-10/100 and image-folder data for the ResNet trainer.

Sources, tried in this order by `load`:
  1. `--data-dir` holding CIFAR in its original python-pickle format
     (`cifar-10-batches-py/`, `cifar-100-python/`), its binary format
     (`cifar-10-batches-bin/`, `cifar-100-binary/`), or an image folder
     (`train/<class>/*`, `test/<class>/*`, possibly one level down), or a `.tar` of one;
  2. tensorflow-datasets (`tfds_dir`, downloading when online).
Images are held in memory as uint8 arrays (CIFAR-size data). A tar is unpacked once
into a cache directory (`$SNGM_DATA_CACHE`, default ~/.cache/keras-sngm/data), and an
image folder is decoded once into a cache keyed by its content (every file's path,
size and modification time), so an edited folder is decoded again.
"""

import glob
import hashlib
import os
import pickle
import shutil
import tarfile

import numpy as np

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
CIFAR_MEAN = {10: (0.4914, 0.4822, 0.4465), 100: (0.5071, 0.4865, 0.4409)}
CIFAR_STD = {10: (0.2470, 0.2435, 0.2616), 100: (0.2673, 0.2564, 0.2762)}


class DataNotFoundError(FileNotFoundError):
    pass


def _say(message):
    """A note on stdout, from rank 0 only under horovodrun (every rank does the work)."""
    from keras_sngm_trainers.config import rank_from_env

    if rank_from_env() == 0:
        print(message, flush=True)


def _cache_dir():
    return os.environ.get("SNGM_DATA_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "keras-sngm", "data"))


# ---------------------------------------------------------------- the CIFAR formats
def _read_pickle(path, label_key):
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    x = np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return x, np.asarray(d[label_key], np.int64)


def _read_binary(path, label_bytes):
    raw = np.fromfile(path, np.uint8)
    record = label_bytes + 3072
    if raw.size % record:
        raise ValueError(f"{path}: size {raw.size} is not a multiple of the {record}-byte CIFAR record")
    raw = raw.reshape(-1, record)
    return raw[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), raw[:, label_bytes - 1].astype(np.int64)


def _concat(parts):
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _cifar_formats(root):
    """Yields (name, loader) for each CIFAR layout found under `root`."""
    p10 = os.path.join(root, "cifar-10-batches-py")
    if os.path.isfile(os.path.join(p10, "test_batch")):
        yield "cifar10-pickle", lambda: (
            _concat([_read_pickle(os.path.join(p10, f"data_batch_{i}"), b"labels") for i in range(1, 6)]),
            _read_pickle(os.path.join(p10, "test_batch"), b"labels"), 10)
    p100 = os.path.join(root, "cifar-100-python")
    if os.path.isfile(os.path.join(p100, "test")):
        yield "cifar100-pickle", lambda: (
            _read_pickle(os.path.join(p100, "train"), b"fine_labels"),
            _read_pickle(os.path.join(p100, "test"), b"fine_labels"), 100)
    b10 = os.path.join(root, "cifar-10-batches-bin")
    if os.path.isfile(os.path.join(b10, "test_batch.bin")):
        yield "cifar10-binary", lambda: (
            _concat([_read_binary(os.path.join(b10, f"data_batch_{i}.bin"), 1) for i in range(1, 6)]),
            _read_binary(os.path.join(b10, "test_batch.bin"), 1), 10)
    b100 = os.path.join(root, "cifar-100-binary")
    if os.path.isfile(os.path.join(b100, "test.bin")):
        yield "cifar100-binary", lambda: (
            _read_binary(os.path.join(b100, "train.bin"), 2), _read_binary(os.path.join(b100, "test.bin"), 2), 100)


# ---------------------------------------------------------------- image folders
def _find_image_folder(root):
    for base in [root] + sorted(glob.glob(os.path.join(root, "*"))):
        if os.path.isdir(os.path.join(base, "train")) and os.path.isdir(os.path.join(base, "test")):
            return base
    return None


def _listing(base, classes):
    """{split: (files, labels)} of an image folder."""
    out = {}
    for split in ("train", "test"):
        files, labels = [], []
        for i, c in enumerate(classes):
            found = sorted(f for f in glob.glob(os.path.join(base, split, c, "*")) if f.lower().endswith(IMAGE_EXTS))
            files += found
            labels += [i] * len(found)
        if not files:
            raise DataNotFoundError(f"no images (*{', *'.join(IMAGE_EXTS)}) under {os.path.join(base, split)}/<class>/")
        out[split] = (files, labels)
    return out


def _content_key(listing, image_size):
    """A digest of what decoding depends on: every file's path, size and mtime, its
    label, and the image size. Replacing, adding or removing an image changes it."""
    h = hashlib.sha1(f"v2:{image_size}".encode())
    for split in ("train", "test"):
        for f, label in zip(*listing[split]):
            st, real = os.stat(f), os.path.realpath(f)  # one entry, however the folder was named
            h.update(f"{split}\0{real}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _decode_all(files, image_size):
    try:
        import tensorflow as tf
    except ImportError:  # (the JAX engine on a host without TensorFlow)
        return _decode_with_pil(files, image_size)
    ds = tf.data.Dataset.from_tensor_slices(files).map(
        lambda f: tf.image.resize(tf.io.decode_image(tf.io.read_file(f), channels=3, expand_animations=False),
                                  [image_size, image_size], method="nearest"),
        num_parallel_calls=tf.data.AUTOTUNE)
    try:
        return np.stack([im.astype(np.uint8) for im in ds.as_numpy_iterator()])
    except tf.errors.InvalidArgumentError:
        for f in files:  # find the file to name (only after a failure)
            try:
                tf.io.decode_image(tf.io.read_file(f), channels=3, expand_animations=False)
            except tf.errors.InvalidArgumentError as e:
                raise DataNotFoundError(f"{f}: not a decodable image ({str(e).splitlines()[0][:120]})") from None
        raise


def _decode_with_pil(files, image_size):
    try:
        from PIL import Image
    except ImportError:
        raise DataNotFoundError("decoding an image folder needs TensorFlow or Pillow, and neither is installed: "
                                "pip install pillow") from None
    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                out.append(np.asarray(im.convert("RGB").resize((image_size, image_size), Image.NEAREST), np.uint8))
        except OSError as e:
            raise DataNotFoundError(f"{f}: not a decodable image ({e})") from None
    return np.stack(out)


def _read_image_folder(base, image_size):
    classes = sorted(d for d in os.listdir(os.path.join(base, "train")) if os.path.isdir(os.path.join(base, "train", d)))
    if not classes:
        raise DataNotFoundError(f"{base}/train has no class folders (expected train/<class>/*.jpg)")
    listing = _listing(base, classes)
    cache = os.path.join(_cache_dir(), f"decoded-{_content_key(listing, image_size)}.npz")
    if os.path.isfile(cache):
        with np.load(cache) as d:
            return (d["xtr"], d["ytr"]), (d["xte"], d["yte"]), len(classes)
    total = sum(len(listing[s][0]) for s in listing)
    if total > 5000:
        _say(f"decoding {total} images under {base} (once: cached in {os.path.dirname(cache)})")
    out = [(_decode_all(listing[s][0], image_size), np.asarray(listing[s][1], np.int64)) for s in ("train", "test")]
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    tmp = cache + f".tmp{os.getpid()}.npz"
    np.savez(tmp, xtr=out[0][0], ytr=out[0][1], xte=out[1][0], yte=out[1][1])
    os.replace(tmp, cache)
    return out[0], out[1], len(classes)


def _unpack_tar(path):
    # the real path: the same tar named by another relative path or through a symlink is one cache entry
    digest = hashlib.sha1(f"{os.path.realpath(path)}:{os.path.getsize(path)}:{os.stat(path).st_mtime_ns}".encode()).hexdigest()[:16]
    dest = os.path.join(_cache_dir(), "tar-" + digest)
    if not os.path.isfile(os.path.join(dest, ".complete")):
        tmp = dest + f".tmp{os.getpid()}"
        os.makedirs(tmp, exist_ok=True)
        _say(f"unpacking {path} ({os.path.getsize(path) / 1e6:.0f} MB, once) into {dest}")
        try:
            with tarfile.open(path) as t:
                t.extractall(tmp, filter="data")
        except (tarfile.TarError, EOFError, OSError) as e:
            shutil.rmtree(tmp, ignore_errors=True)  # no partial unpack left behind
            raise DataNotFoundError(f"{path}: cannot be unpacked, the tar is damaged or truncated "
                                    f"({type(e).__name__}: {e})") from None
        open(os.path.join(tmp, ".complete"), "w").close()
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if not os.path.isdir(dest):
            os.replace(tmp, dest)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


# ---------------------------------------------------------------- entry point
def load(dataset="cifar10", data_dir=None, tfds_dir=None, download=True, image_size=32):
    """Returns ((x_train, y_train), (x_test, y_test), num_classes, source)."""
    looked = []
    if data_dir:
        root = data_dir
        if os.path.isfile(root) and tarfile.is_tarfile(root):
            root = _unpack_tar(root)
        if os.path.isdir(root):
            for name, loader in _cifar_formats(root):
                train, test, classes = loader()
                return train, test, classes, f"{name} at {data_dir}"
            base = _find_image_folder(root)
            if base:
                train, test, classes = _read_image_folder(base, image_size)
                return train, test, classes, f"image folder {base}"
        from keras_sngm_trainers.data import layouts

        raise DataNotFoundError(f"--data-dir {data_dir} holds none of {layouts.CIFAR_LAYOUTS}; a folder you name is "
                                f"never downloaded into")
    if dataset in ("cifar10", "cifar100"):
        try:
            return _load_tfds(dataset, tfds_dir, download) + (f"tensorflow-datasets {dataset}",)
        except Exception as e:  # noqa: BLE001 - report every place we looked
            looked.append(f"tensorflow-datasets '{dataset}' in {tfds_dir or '~/tensorflow_datasets'} ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
    raise DataNotFoundError(
        "No image data found. Looked in:\n  - " + "\n  - ".join(looked or [f"dataset {dataset!r} (unknown)"]) +
        "\nProvide --data-dir with CIFAR's python or binary batches, an image folder "
        "(train/<class>/*.jpg, test/<class>/*.jpg) or a .tar of one; or let tensorflow-datasets prepare it "
        "in --tfds-dir (its download needs internet access; an offline machine can use a tensorflow_datasets "
        "folder prepared elsewhere, with --no-download).")


def _load_tfds(name, data_dir, download):
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    if download:
        builder.download_and_prepare()
    out = []
    for split in ("train", "test"):
        ds = builder.as_dataset(split=split, as_supervised=True, batch_size=-1)
        x, y = tfds.as_numpy(ds)
        out.append((x.astype(np.uint8), y.astype(np.int64)))
    return out[0], out[1], builder.info.features["label"].num_classes


# ---------------------------------------------------------------- tf.data pipelines
def _normalize(x, num_classes):
    import tensorflow as tf

    mean = CIFAR_MEAN.get(num_classes, (0.5, 0.5, 0.5))
    std = CIFAR_STD.get(num_classes, (0.25, 0.25, 0.25))
    return (tf.cast(x, tf.float32) / 255.0 - mean) / std


def train_dataset(x, y, num_classes, micro_batch, seed, first_epoch, rank=0, size=1, augment=True, micro_steps=None,
                  start=0):
    """Infinite stream of per-worker micro-batches, starting at `first_epoch`.

    Epoch e is a pure function of (seed, e): shuffle with seed (seed, e), cut into
    micro-batches, micro-batch t to rank t % size, and element j's augmentation (pad 4
    + random crop, horizontal flip) seeded by (seed, e, j). So N workers see exactly
    the micro-batches (and augmentations) of one process with the same global batch,
    and a resumed run sees what an uninterrupted one would have. Each epoch yields
    `micro_steps` micro-batches per worker (default: all complete ones); the first
    `start` of epoch `first_epoch` are skipped (a resume within an epoch). `first_epoch`
    and `start` may be variables: they are read when an iterator starts, so one dataset
    serves every `fit` of a run (no retracing per call).
    """
    import tensorflow as tf

    n = len(x)
    images = tf.constant(x)
    labels = tf.constant(y)
    pad = 4 if x.shape[1] <= 64 else x.shape[1] // 8
    micro_steps = micro_steps or n // (micro_batch * size)

    def make(e, j, i):
        img = tf.gather(images, i)
        if augment:
            s = tf.stack([seed * 1_000_003 + e, j])
            h, w = img.shape[0], img.shape[1]
            img = tf.pad(img, [[pad, pad], [pad, pad], [0, 0]])
            img = tf.image.stateless_random_crop(img, [h, w, 3], seed=s)
            img = tf.image.stateless_random_flip_left_right(img, seed=s + 1)
        return _normalize(img, num_classes), tf.gather(labels, i)

    def epoch(e):
        order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=tf.stack([tf.cast(seed, tf.int64), e]))
        skip = tf.where(tf.equal(e, tf.cast(first_epoch, tf.int64)), tf.cast(start, tf.int64), 0)
        return (tf.data.Dataset.from_tensor_slices(order).enumerate()
                .filter(lambda j, i: (j // micro_batch) % size == rank)  # micro-batch t -> rank t % size
                .skip(skip * micro_batch)
                .map(lambda j, i: make(e, j, i), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                .batch(micro_batch, drop_remainder=True).take(micro_steps - skip))

    epochs = tf.data.Dataset.range(2**31).map(lambda i: i + tf.cast(first_epoch, tf.int64))  # (read per iterator)
    return epochs.flat_map(epoch).prefetch(tf.data.AUTOTUNE)


def eval_dataset(x, y, num_classes, batch_size):
    """The whole test set, unsharded (every worker evaluates all of it)."""
    import tensorflow as tf

    return (tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
            .map(lambda a, b: (_normalize(a, num_classes), b), num_parallel_calls=tf.data.AUTOTUNE)
            .cache().prefetch(tf.data.AUTOTUNE))


def synthetic(n, image_size, num_classes, seed=0):
    """Random images and labels (throughput benchmarks only)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, image_size, image_size, 3), dtype=np.uint8)
    return x, rng.integers(0, num_classes, size=n).astype(np.int64)
