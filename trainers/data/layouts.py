"""Which data layout a `--data-dir` holds, decided from file names alone (no TensorFlow,
no reading), so that a folder the user named but that holds no known layout is an error
at once, before any import, download or decoding. The loaders (`images.load`,
`imagenet.find`) then read the layout found here."""

import glob
import os
import tarfile

CIFAR_BATCHES = {"cifar-10-batches-py": "test_batch", "cifar-100-python": "test",
                 "cifar-10-batches-bin": "test_batch.bin", "cifar-100-binary": "test.bin"}
IMAGENET_MANUAL = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")

CIFAR_LAYOUTS = ("CIFAR's python or binary batches (cifar-10-batches-py/, cifar-100-python/, cifar-10-batches-bin/, "
                 "cifar-100-binary/), an image folder (train/<class>/*.jpg and test/<class>/*.jpg, possibly one "
                 "folder down) or a .tar of one")
IMAGENET_LAYOUTS = ("TFRecord shards (train-00000-of-01024, ..., validation-00000-of-00128, ...), an image folder "
                    "(train/<wnid>/*.JPEG and val/<wnid>/*.JPEG, possibly one folder down), or the ILSVRC2012 "
                    f"tars for tensorflow-datasets ({' and '.join(IMAGENET_MANUAL)})")


def _bases(root):
    return [root] + sorted(p for p in glob.glob(os.path.join(root, "*")) if os.path.isdir(p))


def cifar_layout(root):
    """The layout of a CIFAR-size `--data-dir`, or None."""
    if os.path.isfile(root):
        return "tar" if tarfile.is_tarfile(root) else None
    for folder, test in CIFAR_BATCHES.items():
        if os.path.isfile(os.path.join(root, folder, test)):
            return folder
    for base in _bases(root):
        if os.path.isdir(os.path.join(base, "train")) and os.path.isdir(os.path.join(base, "test")):
            return "image folder"
    return None


def imagenet_layout(root):
    """The layout of an ImageNet `--data-dir`, or None."""
    if not os.path.isdir(root):
        return None
    for base in _bases(root):
        if glob.glob(os.path.join(base, "train-?????-of-?????")):
            return "tfrecords"
        if os.path.isdir(os.path.join(base, "train")) and os.path.isdir(os.path.join(base, "val")):
            return "image folder"
    if all(os.path.isfile(os.path.join(root, f)) for f in IMAGENET_MANUAL):
        return "manual tars"
    return None


def check(data_dir, dataset):
    """An error message naming the folder and the layouts looked for, or None."""
    if not data_dir or dataset == "synthetic":
        return None
    imagenet = dataset == "imagenet"
    if (imagenet_layout if imagenet else cifar_layout)(data_dir):
        return None
    what = "is empty" if os.path.isdir(data_dir) and not os.listdir(data_dir) else "holds no data layout known here"
    return (f"--data-dir {what}: it must hold {IMAGENET_LAYOUTS if imagenet else CIFAR_LAYOUTS}. "
            f"A folder you name is never downloaded into: leave --data-dir out to let tensorflow-datasets "
            f"download (--download). Received: {data_dir!r}")
