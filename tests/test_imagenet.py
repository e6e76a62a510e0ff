"""Streaming ImageNet: the three layouts, the crops against an independent NumPy/PIL
computation, sharding, exact mid-epoch order, and bad input through the CLI."""

import hashlib
import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

import imagenet_fixtures as fx
from helpers import sngm_train

tf = pytest.importorskip("tensorflow")

from keras_sngm_trainers.data import imagenet, imagenet_input  # noqa: E402
from keras_sngm_trainers.data.images import DataNotFoundError  # noqa: E402

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


# ---------------------------------------------------------------- an independent reference
def bilinear(img, out_h, out_w):
    """Bilinear resize with half-pixel centres, edges clamped (NumPy)."""
    def axis(n_in, n_out):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo

    y0, y1, fy = axis(img.shape[0], out_h)
    x0, x1, fx_ = axis(img.shape[1], out_w)
    img = img.astype(np.float64)
    top = img[y0][:, x0] * (1 - fx_)[None, :, None] + img[y0][:, x1] * fx_[None, :, None]
    bottom = img[y1][:, x0] * (1 - fx_)[None, :, None] + img[y1][:, x1] * fx_[None, :, None]
    return top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]


def pil_pixels(encoded):
    return np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))


def reference_eval(encoded, size):
    img = pil_pixels(encoded)
    h, w = img.shape[:2]
    short = round(256 * size / 224)
    nh, nw = max(size, round(h * short / min(h, w))), max(size, round(w * short / min(h, w)))
    img = bilinear(img, nh, nw)
    top, left = (nh - size) // 2, (nw - size) // 2
    return (img[top:top + size, left:left + size] / 255.0 - MEAN) / STD


def reference_train(encoded, begin, crop, flip, size):
    img = pil_pixels(encoded)[begin[0]:begin[0] + crop[0], begin[1]:begin[1] + crop[1]]
    img = bilinear(img, size, size)
    return ((img[:, ::-1] if flip else img) / 255.0 - MEAN) / STD


def close_to_reference(got, want, window=False):
    """In 0..255 pixel levels. A whole decode equals PIL's within float rounding (the
    pipeline uses libjpeg's accurate DCT; the fast one differs by 0.9 level on average).
    A fused decode-and-crop decodes only the window: its chroma upsampling at the
    window's edge has no neighbours outside, a few levels in a few edge pixels."""
    err = np.abs(np.asarray(got, np.float64) - want) * STD * 255
    if window:
        assert err.mean() < 0.2 and np.percentile(err, 99) < 2.5 and err.max() < 6, (err.mean(), err.max())
    else:
        assert err.max() < 0.01, (err.mean(), err.max())


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    records = fx.write_tfrecords(str(root / "tfrecord"))
    fx.write_folder(str(root / "folder"))
    fx.write_ilsvrc_tars(str(root / "manual"))
    return root, records


def test_tfrecord_layout_reads_every_record_with_its_label(layouts):
    root, records = layouts
    src = imagenet.find(str(root / "tfrecord"), verbose=False)
    assert src.num_classes == 1000 and src.train.counts == [10] * 4 and src.validation.counts == [6, 6]
    got = list(imagenet_input.eval_dataset(src.validation, 24, 5).unbatch().as_numpy_iterator())
    assert [int(y) for _, y in got] == [label for _, label in records["validation"]]  # 1-based on disk, 0-based here
    for (x, _), (encoded, _) in zip(got, records["validation"]):
        close_to_reference(x, reference_eval(encoded, 24))


def test_folder_layout_labels_are_sorted_wnids(layouts):
    root, _ = layouts
    src = imagenet.find(str(root / "folder"), verbose=False)
    assert src.num_classes == 3 and src.train.size == 40 and src.validation.size == 12
    for path, label in zip(src.train.files, src.train.labels):
        assert os.path.basename(os.path.dirname(path)) == fx.WNIDS[label]
    x, y = next(iter(imagenet_input.eval_dataset(src.validation, 40, 12)))
    for xi, yi, path in zip(x.numpy(), y.numpy(), src.validation.files):
        assert fx.WNIDS[yi] in path
        close_to_reference(xi, reference_eval(open(path, "rb").read(), 40))


def test_tfds_prepares_imagenet2012_from_the_ilsvrc_tars_and_streams_it(layouts):
    root, _ = layouts
    tfds_dir = str(root / "tfds")
    with pytest.raises(DataNotFoundError, match="not prepared"):
        imagenet.find("", tfds_dir, verbose=False)
    src = imagenet.find(str(root / "manual"), tfds_dir, verbose=False)  # TFDS' own download_and_prepare
    assert src.train.kind == "tfds" and src.train.size == 30 and src.validation.size == 8
    again = imagenet.find("", tfds_dir, verbose=False)  # prepared: read without the tars
    assert again.train.files == src.train.files
    import tensorflow_datasets as tfds

    names = tfds.builder("imagenet2012", data_dir=tfds_dir).info.features["label"].names
    _, val_wnids = fx.write_ilsvrc_tars(str(root / "manual2"))
    labels = sorted(int(y) for _, y in imagenet_input.eval_dataset(src.validation, 16, 8).unbatch().as_numpy_iterator())
    assert labels == sorted(names.index(w) for w in val_wnids)


def test_random_resized_crop_and_flip_match_numpy(layouts):
    root, records = layouts
    encoded = records["train"][3][0]
    h, w = pil_pixels(encoded).shape[:2]
    areas, aspects, flips = [], [], []
    for s in range(60):
        seed = tf.constant([7, s], tf.int64)
        begin, crop = (t.numpy() for t in imagenet_input.crop_window(tf.constant([h, w, 3]), seed))
        flip = bool(imagenet_input.flipped(seed))
        assert 0 <= begin[0] and begin[0] + crop[0] <= h and 0 <= begin[1] and begin[1] + crop[1] <= w
        if (crop[0], crop[1]) != (h, w):  # not the whole-image fallback
            areas.append(crop[0] * crop[1] / (h * w))
            aspects.append(crop[1] / crop[0])
        flips.append(flip)
        got = imagenet_input.normalize(imagenet_input.train_image(tf.constant(encoded), seed, 20)).numpy()
        close_to_reference(got, reference_train(encoded, begin, crop, flip, 20), window=True)
    assert len(areas) > 30 and min(areas) >= 0.08 - 0.03 and max(areas) <= 1.0  # integer rounding of small windows
    assert min(aspects) >= 0.75 * 0.8 and max(aspects) <= 4 / 3 / 0.8 and 15 < sum(flips) < 45


def _hashes(ds):
    return [hashlib.sha1(np.round(x, 3).tobytes()).hexdigest() for x, _ in ds.unbatch().as_numpy_iterator()]


@pytest.mark.parametrize("layout,shards", [("tfrecord", 4), ("tfrecord", 3), ("folder", None)])
def test_two_workers_cover_every_record_once_per_epoch(layouts, tmp_path, layout, shards):
    root, _ = layouts
    base = str(root / layout)
    if shards == 3:  # 3 files for 2 workers: read by record instead of by file
        base = str(tmp_path / "three")
        fx.write_tfrecords(base, train=36, train_shards=3)
    src = imagenet.find(base, verbose=False)
    from keras_sngm_trainers.data import sharding

    want = sorted(_hashes(imagenet_input.eval_dataset(src.train, 16, 64)))  # every record once, unaugmented
    seen = []
    for rank in (0, 1):
        n = imagenet_input.records_of_worker(src.train, rank, 2, 2)
        ds = imagenet_input.train_dataset(src.train, 16, 2, 0, 0, 1, rank, 2, n // 2, augment=False)
        seen.append(_hashes(ds.take(n // 2)))
    by = sharding.shard_files(src.train.files, 0, 2)[1] if layout == "tfrecord" else "line"
    assert by == ("file" if shards == 4 else "line")
    assert len(seen[0]) + len(seen[1]) == len(want) and sorted(seen[0] + seen[1]) == want


def test_order_depends_on_seed_and_epoch_only_and_resumes_mid_epoch(layouts):
    root, _ = layouts
    src = imagenet.find(str(root / "tfrecord"), verbose=False)

    def stream(first_epoch=0, start=0, seed=0):
        ds = imagenet_input.train_dataset(src.train, 16, 4, seed, first_epoch, 3, 0, 1, 10, shuffle_buffer=16,
                                          start=start)
        return [x for x, _ in ds.take(30 - 10 * first_epoch - start).as_numpy_iterator()]

    full = stream()
    assert all(np.array_equal(a, b) for a, b in zip(full, stream()))  # deterministic
    assert not np.allclose(full[0], stream(seed=1)[0])
    assert not np.allclose(full[0], full[10])  # epochs differ
    for first_epoch, start in ((1, 0), (1, 3), (0, 7)):
        tail = stream(first_epoch, start)
        at = 10 * first_epoch + start
        assert len(tail) == 30 - at and all(np.array_equal(a, b) for a, b in zip(full[at:], tail))


def test_skip_bad_images_drops_and_counts_and_fills_the_epoch(layouts, tmp_path):
    from keras_sngm_trainers.data import criteo

    base = str(tmp_path / "bad")
    fx.write_tfrecords(base)
    path = os.path.join(base, "train-00001-of-00004")
    recs = [r.numpy() for r in tf.data.TFRecordDataset(path)]
    recs[2] = fx.example(b"\xff\xd8\xff\xe0 not really a jpeg" * 5, 3)
    with tf.io.TFRecordWriter(path) as w:
        for r in recs:
            w.write(r)
    src = imagenet.find(base, verbose=False)
    counter = criteo.BadRowCounter()
    ds = imagenet_input.train_dataset(src.train, 16, 4, 0, 0, 2, 0, 1, 10, skip_bad=True, counter=counter)
    batches = list(ds.take(20).as_numpy_iterator())
    assert len(batches) == 20 and all(np.isfinite(x).all() for x, _ in batches)
    assert counter.count == 1  # the same record dropped in both epochs counts once
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"train-00001-of-00004 record 2.*not a decodable image"):
        list(imagenet_input.train_dataset(src.train, 16, 4, 0, 0, 1, 0, 1, 10).take(10))


# ---------------------------------------------------------------- through the CLI
def _run(data_dir, logdir, *extra, np_check=True, model=("--arch", "twoconv")):
    """A small run through the CLI; the two-convolution net unless `model` says otherwise (the
    ResNet-18 of the first test below is what costs the time)."""
    return sngm_train(["resnet", "--dataset", "imagenet", "--data-dir", data_dir, *model, "--image-size", "32",
                       "--batch-size", "8", "--micro-batch", "4", "--epochs", "1", "--eval-batch", "8", "--logdir",
                       logdir, "--no-verbose", *extra])


def test_cli_trains_resnet18_on_a_folder_and_a_tfrecord_layout(layouts, tmp_path):
    root, _ = layouts
    for layout, classes in (("folder", 3), ("tfrecord", 1000)):
        proc = _run(str(root / layout), str(tmp_path / layout), "--epochs", "2", "--lr", "0.05", model=("--depth", "18"))
        assert proc.returncode == 0, proc.stderr[-2000:]
        cfg = json.load(open(tmp_path / layout / "config.json"))
        final = json.load(open(tmp_path / layout / "final.json"))
        assert cfg["classes"] == classes and cfg["updates_per_epoch"] == 40 // 8 and cfg["train_files"] > 1
        import keras

        from keras_sngm_trainers.models import resnet

        assert cfg["parameters"] == resnet.imagenet_resnet(18, classes, (32, 32, 3)).count_params()  # not the CIFAR net
        keras.backend.clear_session()
        assert final["epochs_done"] == 2 and np.isfinite(final["val_loss"])


def _rewrite(path, k, payload):
    recs = [r.numpy() for r in tf.data.TFRecordDataset(path)]
    recs[k] = payload
    with tf.io.TFRecordWriter(path) as w:
        for r in recs:
            w.write(r)


def _break(kind, d):
    rng = np.random.default_rng(5)
    if kind == "folder-empty":
        shutil.rmtree(d)
        os.makedirs(os.path.join(d, "train", "n01440764"))
        os.makedirs(os.path.join(d, "val", "n01440764"))
        return r"train: no images \(\*\.jpg.*in its <wnid>/ folders"
    fx.write_tfrecords(d)
    if kind == "not-tfrecord":
        with open(os.path.join(d, "train-00001-of-00004"), "wb") as f:
            f.write(b"just some text, not records\n" * 20)
        return r"train-00001-of-00004: not a TFRecord file"
    if kind == "missing-shard":
        os.remove(os.path.join(d, "validation-00001-of-00002"))
        return r"1 of the 2 validation shards are missing \(first: validation-00001-of-00002\)"
    if kind == "no-image-first":
        _rewrite(os.path.join(d, "train-00000-of-00004"), 0, fx.example(b"", 3, image_key=None))
        return r"train-00000-of-00004 record 0: no 'image/encoded' feature"
    if kind == "no-image-later":
        _rewrite(os.path.join(d, "train-00002-of-00004"), 3, fx.example(b"", 3, image_key=None))
        return r"train-00002-of-00004 record 3: no 'image/encoded' feature$"
    if kind == "label-out-of-range":
        _rewrite(os.path.join(d, "train-00001-of-00004"), 5, fx.example(fx.jpeg(rng), 1001))
        return r"train-00001-of-00004 record 5: label 1001 is outside 1\.\.1000$"
    if kind == "label-zero":
        _rewrite(os.path.join(d, "validation-00000-of-00002"), 4, fx.example(fx.jpeg(rng), 0))
        return r"validation-00000-of-00002 record 4: label 0 is outside 1\.\.1000$"
    _rewrite(os.path.join(d, "train-00003-of-00004"), 2, fx.example(fx.jpeg(rng)[:60] + b"\0" * 200, 2))
    return r"train-00003-of-00004 record 2: not a decodable image \(pass --skip-bad-images"


@pytest.mark.parametrize("kind", ["folder-empty", "not-tfrecord", "missing-shard", "no-image-first", "no-image-later",
                                  "label-out-of-range", "label-zero", "corrupt-jpeg"])
def test_bad_input_is_a_clear_error_naming_the_file(tmp_path, kind):
    d = str(tmp_path / "data")
    os.makedirs(d)
    pattern = _break(kind, d)
    proc = _run(d, str(tmp_path / "run"))
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith("sngm-train: error: ") and d in last, proc.stderr[-2000:]
    import re

    assert re.search(pattern, last), last
    assert not os.path.exists(tmp_path / "run" / "final.json")


def test_corrupt_jpeg_skipped_and_counted_with_the_flag(tmp_path):
    d = str(tmp_path / "data")
    os.makedirs(d)
    _break("corrupt-jpeg", d)
    proc = _run(d, str(tmp_path / "run"), "--skip-bad-images", "--epochs", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skipped 1 undecodable images" in proc.stdout
    assert json.load(open(tmp_path / "run" / "final.json"))["epochs_done"] == 2
