"""Tiny ImageNets in the three real layouts, written by the tests themselves: JPEGs of
varied sizes (so crops and resizes are exercised), in TFRecord shards as
`build_imagenet_data` writes them, as an image folder, and as the two ILSVRC tars that
tensorflow-datasets prepares `imagenet2012` from."""

import io
import os
import tarfile

import numpy as np
from PIL import Image

WNIDS = ("n01440764", "n01443537", "n01484850")  # the first three of ImageNet's 1000 (sorted)


def jpeg(rng, h=None, w=None, quality=90):
    h = h or int(rng.integers(24, 90))
    w = w or int(rng.integers(24, 90))
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.integers(0, 256, 3)
    pixels = (base + 60 * np.sin(np.stack([yy / 5.0, xx / 7.0, (yy + xx) / 9.0], -1))).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def images(n, seed):
    """[(jpeg bytes, wnid index)] * n, classes in turn."""
    rng = np.random.default_rng(seed)
    return [(jpeg(rng), i % len(WNIDS)) for i in range(n)]


def example(encoded, label, label_key="image/class/label", image_key="image/encoded"):
    import tensorflow as tf

    feature = {}
    if image_key:
        feature[image_key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded]))
    if label_key:
        feature[label_key] = tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))
    feature["image/format"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"JPEG"]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_tfrecords(root, train=40, val=12, train_shards=4, val_shards=2, seed=0):
    """`root/train-0000k-of-0000K`, `root/validation-...`; labels 1-based as ImageNet's.
    Returns {split: [(bytes, 0-based label), ...] in file order}."""
    import tensorflow as tf

    os.makedirs(root, exist_ok=True)
    out = {}
    for split, n, shards, s in (("train", train, train_shards, seed), ("validation", val, val_shards, seed + 1)):
        data = images(n, s)
        out[split] = []
        for k in range(shards):
            with tf.io.TFRecordWriter(os.path.join(root, f"{split}-{k:05d}-of-{shards:05d}")) as w:
                for encoded, label in data[k::shards]:
                    w.write(example(encoded, label + 1))
                    out[split].append((encoded, label))
    return out


def write_folder(root, train=40, val=12, seed=0):
    """`root/train/<wnid>/<wnid>_i.JPEG` and `root/val/<wnid>/...`."""
    for split, n, s in (("train", train, seed), ("val", val, seed + 1)):
        for i, (encoded, label) in enumerate(images(n, s)):
            d = os.path.join(root, split, WNIDS[label])
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, f"{WNIDS[label]}_{i}.JPEG"), "wb") as f:
                f.write(encoded)
    return root


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_ilsvrc_tars(manual_dir, train=30, seed=0):
    """`ILSVRC2012_img_train.tar` (a tar of one tar per wnid) and `ILSVRC2012_img_val.tar`
    (ILSVRC2012_val_0000000k.JPEG, labelled by TFDS' own validation label list)."""
    import tensorflow_datasets as tfds

    os.makedirs(manual_dir, exist_ok=True)
    data = images(train, seed)
    with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_train.tar"), "w") as outer:
        for c, wnid in enumerate(WNIDS):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for i, (encoded, label) in enumerate(data):
                    if label == c:
                        _add(inner, f"{wnid}_{i}.JPEG", encoded)
            _add(outer, f"{wnid}.tar", buf.getvalue())
    labels_file = os.path.join(os.path.dirname(tfds.__file__), "datasets", "imagenet2012", "validation_labels.txt")
    with open(labels_file) as f:
        val_wnids = f.read().split()[:8]
    rng = np.random.default_rng(seed + 1)
    with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_val.tar"), "w") as t:
        for k in range(len(val_wnids)):
            _add(t, f"ILSVRC2012_val_{k + 1:08d}.JPEG", jpeg(rng))
    return data, val_wnids
