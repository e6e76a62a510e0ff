"""Finding ImageNet on disk, in any of its three usual layouts, without reading images.

  1. TFRecord shards as the well-known `build_imagenet_data` script writes them:
     `train-00000-of-01024` ..., `validation-00000-of-00128` ... in `--data-dir` (or one
     folder down); each record a `tf.train.Example` with `image/encoded` (JPEG bytes) and
     `image/class/label` (1-based, 1..1000).
  2. tensorflow-datasets' `imagenet2012` prepared in `--tfds-dir`; when it is not
     prepared and `--data-dir` holds `ILSVRC2012_img_train.tar` and
     `ILSVRC2012_img_val.tar` (TFDS' `manual_dir`), TFDS prepares it from them.
  3. An image folder `train/<wnid>/*.JPEG` and `val/<wnid>/*.JPEG`, read file by file.

`find` returns, per split, the files and how many records each holds (counted from the
TFRecord headers alone: 12 bytes read per record), so every worker knows its share and
the steps per epoch before training. Problems found here (a missing shard, a file that
is not a TFRecord, an empty folder, a first record without `image/encoded` or with a
label outside 1..1000) are `DataNotFoundError`s naming the file.
"""

import dataclasses
import glob
import os
import re
import struct

from keras_sngm_trainers.data.images import IMAGE_EXTS, DataNotFoundError

SHARD = re.compile(r"^(train|validation)-(\d{5})-of-(\d{5})$")
NUM_CLASSES = 1000
MANUAL_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


@dataclasses.dataclass
class Format:
    """How a record stores its image and label."""
    image_key: str
    label_key: str
    first_label: int  # 1 for build_imagenet_data's 1..1000, 0 for TFDS


TFRECORD = Format("image/encoded", "image/class/label", 1)
TFDS = Format("image", "label", 0)


@dataclasses.dataclass
class Split:
    kind: str  # "tfrecord" | "tfds" | "folder"
    files: list  # TFRecord files, or one image per entry for a folder
    counts: list  # records in each file (1 per image for a folder)
    labels: list = None  # a folder's 0-based labels, one per file
    format: Format = None  # TFRecord kinds

    @property
    def size(self):
        return sum(self.counts)


@dataclasses.dataclass
class Source:
    train: Split
    validation: Split
    num_classes: int
    description: str


def find(data_dir="", tfds_dir="", download=True, verbose=True):
    """The ImageNet splits under `data_dir` (TFRecords or an image folder) or in `tfds_dir`."""
    looked = []
    if data_dir:
        if not os.path.isdir(data_dir):
            raise DataNotFoundError(f"--data-dir {data_dir}: not a directory (ImageNet is read from TFRecord shards "
                                    f"or train/ and val/ image folders)")
        for base in [data_dir] + sorted(glob.glob(os.path.join(data_dir, "*"))):
            if glob.glob(os.path.join(base, "train-?????-of-?????")):
                return _tfrecords(base, verbose)
            if os.path.isdir(os.path.join(base, "train")) and os.path.isdir(os.path.join(base, "val")):
                return _folder(base)
        if not all(os.path.isfile(os.path.join(data_dir, f)) for f in MANUAL_FILES):  # nor a TFDS manual_dir
            from keras_sngm_trainers.data import layouts

            raise DataNotFoundError(f"--data-dir {data_dir} holds none of {layouts.IMAGENET_LAYOUTS}; a folder you "
                                    f"name is never downloaded into")
        looked.append(f"--data-dir {data_dir}: no train-NNNNN-of-NNNNN TFRecord shards, no train/ and val/ folders")
    try:
        return _tfds(tfds_dir, data_dir, download, verbose)
    except DataNotFoundError as e:
        looked.append(str(e))
    raise DataNotFoundError("No ImageNet data found. Looked in:\n  - " + "\n  - ".join(looked) +
                            "\nProvide --data-dir with TFRecord shards (train-00000-of-01024, ..., "
                            "validation-00000-of-00128, ...) or an image folder (train/<wnid>/*.JPEG, "
                            "val/<wnid>/*.JPEG), or --tfds-dir with imagenet2012 prepared by tensorflow-datasets "
                            f"(or --data-dir holding {' and '.join(MANUAL_FILES)} for it to prepare).")


# ---------------------------------------------------------------- TFRecord shards
def _tfrecords(base, verbose):
    splits = {}
    for split in ("train", "validation"):
        named = sorted(glob.glob(os.path.join(base, f"{split}-?????-of-?????")))
        if not named:
            raise DataNotFoundError(f"{base}: has train shards but no {split}-NNNNN-of-NNNNN shards")
        totals = {SHARD.match(os.path.basename(f)).group(3) for f in named}
        if len(totals) > 1:
            raise DataNotFoundError(f"{base}: {split} shards of different sets ({split}-*-of-{' and -of-'.join(sorted(totals))})")
        total = int(totals.pop())
        have = {int(SHARD.match(os.path.basename(f)).group(2)) for f in named}
        missing = sorted(set(range(total)) - have)
        if missing:
            raise DataNotFoundError(f"{base}: {len(missing)} of the {total} {split} shards are missing "
                                    f"(first: {split}-{missing[0]:05d}-of-{total:05d})")
        if verbose and len(named) > 64:
            print(f"counting the records of {len(named)} {split} shards in {base} (headers only)", flush=True)
        splits[split] = Split("tfrecord", named, [count_records(f) for f in named], format=TFRECORD)
        probe(splits[split])
    return Source(splits["train"], splits["validation"], NUM_CLASSES, f"ImageNet TFRecords in {base}")


def count_records(path):
    """Records in a TFRecord file, from its headers alone (length + checksum, 12 bytes
    each; the payload is skipped). A file that is not a TFRecord, or is truncated, is a
    `DataNotFoundError` naming it."""
    size, n, pos = os.path.getsize(path), 0, 0
    with open(path, "rb") as f:
        while pos < size:
            head = f.read(12)
            if len(head) < 12:
                raise DataNotFoundError(f"{path}: not a TFRecord file (truncated record header at byte {pos})")
            length, crc = struct.unpack("<QI", head)
            if _masked_crc32c(head[:8]) != crc:
                raise DataNotFoundError(f"{path}: not a TFRecord file (the record header at byte {pos} fails "
                                        f"its checksum)")
            pos += 12 + length + 4
            if pos > size:
                raise DataNotFoundError(f"{path}: truncated TFRecord file (record {n} at byte {pos - length - 16} "
                                        f"claims {length} bytes; the file ends at {size})")
            f.seek(pos)
            n += 1
    return n


def _crc_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # CRC-32C (Castagnoli), reflected
        table.append(c)
    return table


_CRC = _crc_table()


def _masked_crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC[(c ^ b) & 0xFF] ^ (c >> 8)
    c ^= 0xFFFFFFFF
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF  # TFRecord's masking


def probe(split):
    """Reads the first record of the first non-empty file: the right features, a label
    in range. (Every record is checked again as it is read.)"""
    import tensorflow as tf

    fmt = split.format
    path = next((f for f, n in zip(split.files, split.counts) if n), None)
    if path is None:
        raise DataNotFoundError(f"{os.path.dirname(split.files[0])}: every {split.kind} shard is empty")
    raw = next(iter(tf.data.TFRecordDataset(path).take(1))).numpy()
    example = tf.train.Example.FromString(raw).features.feature
    if fmt.image_key not in example or not example[fmt.image_key].bytes_list.value:
        raise DataNotFoundError(f"{path} record 0: no {fmt.image_key!r} feature (has: {', '.join(sorted(example))})")
    if fmt.label_key not in example or not example[fmt.label_key].int64_list.value:
        raise DataNotFoundError(f"{path} record 0: no {fmt.label_key!r} feature (has: {', '.join(sorted(example))})")
    label = example[fmt.label_key].int64_list.value[0]
    if not fmt.first_label <= label < fmt.first_label + NUM_CLASSES:
        raise DataNotFoundError(f"{path} record 0: label {label} is outside "
                                f"{fmt.first_label}..{fmt.first_label + NUM_CLASSES - 1}")


# ---------------------------------------------------------------- tensorflow-datasets
def _tfds(tfds_dir, manual_dir, download, verbose):
    import tensorflow_datasets as tfds

    where = tfds_dir or "~/tensorflow_datasets"
    builder = tfds.builder("imagenet2012", data_dir=tfds_dir or None)
    if not builder.is_prepared():
        if not manual_dir:
            raise DataNotFoundError(f"tensorflow-datasets imagenet2012 in {where}: not prepared (ImageNet cannot be "
                                    f"downloaded: pass --data-dir with {' and '.join(MANUAL_FILES)} for TFDS to "
                                    f"prepare it from)")
        if not download:
            raise DataNotFoundError(f"tensorflow-datasets imagenet2012 in {where}: not prepared, and --no-download "
                                    f"forbids preparing it from {manual_dir}")
        if verbose:
            print(f"tensorflow-datasets: preparing imagenet2012 in {where} from {manual_dir} (once)", flush=True)
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    splits = {}
    for split in ("train", "validation"):
        if split not in builder.info.splits:
            raise DataNotFoundError(f"tensorflow-datasets imagenet2012 in {where}: no {split} split")
        info = builder.info.splits[split]
        splits[split] = Split("tfds", [os.fspath(p) for p in info.filepaths], list(info.shard_lengths), format=TFDS)
    return Source(splits["train"], splits["validation"], builder.info.features["label"].num_classes,
                  f"tensorflow-datasets imagenet2012 in {where}")


# ---------------------------------------------------------------- image folder
def _folder(base):
    train = os.path.join(base, "train")
    classes = sorted(d for d in os.listdir(train) if os.path.isdir(os.path.join(train, d)))
    if not classes:
        raise DataNotFoundError(f"{train}: no class folders (expected train/<wnid>/*.JPEG)")
    index = {c: i for i, c in enumerate(classes)}
    val = os.path.join(base, "val")
    unknown = sorted(set(d for d in os.listdir(val) if os.path.isdir(os.path.join(val, d))) - set(classes))
    if unknown:
        raise DataNotFoundError(f"{val}: class folder {unknown[0]!r} has no counterpart in {train}")
    splits = {}
    for split, root in (("train", train), ("validation", val)):
        files, labels = [], []
        for c in classes:
            folder = os.path.join(root, c)
            found = sorted(e.path for e in os.scandir(folder) if e.name.lower().endswith(IMAGE_EXTS)) \
                if os.path.isdir(folder) else []
            files += found
            labels += [index[c]] * len(found)
        if not files:
            raise DataNotFoundError(f"{root}: no images (*{', *'.join(IMAGE_EXTS)}) in its <wnid>/ folders")
        splits[split] = Split("folder", files, [1] * len(files), labels)
    return Source(splits["train"], splits["validation"], len(classes), f"image folder {base}")

