"""The image input pipelines against what the ResNets consume, side by side in one run.

  1. images/s of the CIFAR pipeline (in memory: pad-4 crop + flip + normalize) and of the
     ImageNet pipeline (read + decode + random-resized crop + flip + resize to 224, and the
     evaluation resize + centre crop) on a generated folder of ImageNet-sized JPEGs, with
     tf.data limited to 1 core and to 2; the fused decode-and-crop beside decoding the
     whole image and then cropping;
  2. images/s one training step of ResNet-20 (32 px) and ResNet-50 (224 px) consumes on
     this CPU (SGD, float32);
  3. peak resident memory of one epoch of the streamed ImageNet pipeline over generated
     folders of 2,000 and 20,000 images, beside the in-memory folder loader (the CIFAR
     path) at the same counts.

Every measurement runs in a fresh process.

    .venv/bin/python bench/image_input.py [--images 400] [--memory-counts 2000 20000]
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ENV = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.path.join(ROOT, "tests"), "TF_CPP_MIN_LOG_LEVEL": "3"}


def make_folder(root, n, h, w, seed=0):
    """`root/train/<wnid>/*.JPEG` and a small `val/`: smooth shapes plus noise, quality 90,
    about the size of ImageNet's photos (its mean is about 400 x 350 and 110 KB)."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    for split, count in (("train", n), ("val", 3)):
        for i in range(count):
            d = os.path.join(root, split, f"n{i % 10:08d}")
            os.makedirs(d, exist_ok=True)
            f = rng.uniform(3, 20, 3)
            base = 128 + 90 * np.sin(np.stack([yy / f[0], xx / f[1], (yy + xx) / f[2]], -1))
            pixels = (base + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, "JPEG", quality=90)
            with open(os.path.join(d, f"{i}.JPEG"), "wb") as out:
                out.write(buf.getvalue())
    return root


def _limit(ds, cores):
    import tensorflow as tf

    opts = tf.data.Options()
    opts.threading.private_threadpool_size = cores
    opts.threading.max_intra_op_parallelism = 1
    return ds.with_options(opts)


def _rate(ds, count):
    """Images per second over `count` images after a warm-up batch."""
    it = iter(ds)
    first = next(it)
    seen, t = 0, time.perf_counter()
    while seen < count:
        x = next(it)[0]
        seen += int(x.shape[0])
    return seen / (time.perf_counter() - t), int(first[0].shape[0])


def child(kind, arg, cores, count):
    import numpy as np
    import tensorflow as tf

    from keras_sngm_trainers.data import imagenet, imagenet_input, images

    out = {}
    if kind == "cifar":
        x = np.random.default_rng(0).integers(0, 256, (50_000, 32, 32, 3), dtype=np.uint8)
        y = np.zeros(50_000, np.int64)
        ds = images.train_dataset(x, y, 10, 128, 0, 0)
        out["images_per_s"], _ = _rate(_limit(ds, cores), count)
    elif kind in ("imagenet-train", "imagenet-train-unfused", "imagenet-eval"):
        split = imagenet.find(arg, verbose=False).train
        if kind == "imagenet-train-unfused":  # decode the whole image, then crop: what fusing saves
            def whole_then_crop(encoded, seed, size):
                image = tf.io.decode_jpeg(encoded, channels=3, dct_method=imagenet_input.DCT)
                begin, crop = imagenet_input.crop_window(tf.shape(image), seed)
                image = tf.image.resize(tf.slice(image, tf.concat([begin, [0]], 0), tf.concat([crop, [3]], 0)),
                                        [size, size])
                return tf.where(imagenet_input.flipped(seed), tf.reverse(image, [1]), image)

            imagenet_input.train_image = whole_then_crop
        if kind == "imagenet-eval":
            ds = imagenet_input.eval_dataset(split, 224, 64).repeat()
        else:
            ds = imagenet_input.train_dataset(split, 224, 64, 0, 0, 50, 0, 1, len(split.files) // 64, shuffle_buffer=0)
        out["images_per_s"], _ = _rate(_limit(ds, cores), count)
    elif kind == "memory-streamed":
        split = imagenet.find(arg, verbose=False).train
        n = len(split.files) // 64
        for _ in imagenet_input.train_dataset(split, 224, 64, 0, 0, 1, 0, 1, n).take(n):
            pass
        out["images"] = n * 64
    elif kind == "memory-in-memory":
        import glob

        os.makedirs(os.path.join(arg, "test"), exist_ok=True)
        for f in glob.glob(os.path.join(arg, "val", "*")):  # the CIFAR folder layout names it test/
            shutil.copytree(f, os.path.join(arg, "test", os.path.basename(f)), dirs_exist_ok=True)
        (xtr, _), _, _, _ = images.load("cifar10", arg, image_size=224)
        out["images"] = len(xtr)
    elif kind in ("resnet20", "resnet50"):
        import keras

        from keras_sngm_trainers.models import resnet

        size, batch = (32, 128) if kind == "resnet20" else (224, 16)
        model = resnet.cifar_resnet(20) if kind == "resnet20" else resnet.imagenet_resnet(50)
        model.compile(keras.optimizers.SGD(0.01, momentum=0.9),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        xb = np.random.default_rng(0).normal(size=(batch, size, size, 3)).astype(np.float32)
        yb = np.zeros(batch, np.int64)
        model.train_on_batch(xb, yb)
        steps, t = max(1, count // batch), time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(xb, yb)
        out["images_per_s"] = steps * batch / (time.perf_counter() - t)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out), flush=True)


def measure(kind, arg="", cores=2, count=0, env=None):
    proc = subprocess.run([sys.executable, __file__, "--child", kind, "--arg", arg, "--cores", str(cores),
                           "--count", str(count)], capture_output=True, text=True, env={**ENV, **(env or {})})
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if not line:
        raise RuntimeError(f"{kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[-1][7:])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=400, help="images timed per pipeline measurement")
    p.add_argument("--memory-counts", type=int, nargs="+", default=[2000, 20000])
    p.add_argument("--child")
    p.add_argument("--arg", default="")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--count", type=int, default=0)
    args = p.parse_args()
    if args.child:
        return child(args.child, args.arg, args.cores, args.count)

    tmp = tempfile.mkdtemp(prefix="sngm-bench-images-")
    try:
        t = time.perf_counter()
        photos = make_folder(os.path.join(tmp, "photos"), 640, 375, 500)
        size_kb = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(photos) for f in fs) / 643 / 1024
        print(f"generated 640 JPEGs of 500x375 ({size_kb:.0f} KB each) in {time.perf_counter() - t:.0f} s", flush=True)
        rows = []
        for cores in (1, 2):
            for kind, what in (("cifar", "CIFAR: pad-4 crop + flip (in memory)"),
                               ("imagenet-train", "ImageNet train: fused decode-and-crop + resize 224 + flip"),
                               ("imagenet-train-unfused", "ImageNet train: whole decode, then crop (not fused)"),
                               ("imagenet-eval", "ImageNet eval: decode + resize 256 + centre 224")):
                count = args.images * (40 if kind == "cifar" else 1)
                r = measure(kind, photos, cores, count)
                rows.append((what, cores, r["images_per_s"]))
                print(f"{what:58s} {cores} core(s): {r['images_per_s']:9.0f} images/s", flush=True)
        consume = {}
        for kind in ("resnet20", "resnet50"):
            consume[kind] = measure(kind, count=640 if kind == "resnet20" else 48)["images_per_s"]
            print(f"{kind} training step (SGD, float32, 2 cores): {consume[kind]:.1f} images/s", flush=True)
        mem = []
        for n in args.memory_counts:
            folder = make_folder(os.path.join(tmp, f"mem{n}"), n, 192, 256, seed=n)
            streamed = measure("memory-streamed", folder)
            cache = os.path.join(tmp, f"cache{n}")
            held = measure("memory-in-memory", folder, env={"SNGM_DATA_CACHE": cache})
            mem.append((n, streamed["peak_rss_mb"], held["peak_rss_mb"]))
            print(f"{n} images: streamed peak RSS {streamed['peak_rss_mb']:.0f} MB, in memory {held['peak_rss_mb']:.0f} MB",
                  flush=True)
            shutil.rmtree(folder, ignore_errors=True)
            shutil.rmtree(cache, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print("\n| pipeline | cores | images/s | images/s per core |\n| --- | ---: | ---: | ---: |")
    for what, cores, rate in rows:
        print(f"| {what} | {cores} | {rate:,.0f} | {rate / cores:,.0f} |")
    print("\n| model, one training step on this CPU (2 cores) | images/s |\n| --- | ---: |")
    print(f"| ResNet-20, 32 px, batch 128 | {consume['resnet20']:,.1f} |\n| ResNet-50, 224 px, batch 16 | {consume['resnet50']:,.1f} |")
    print("\n| images in the folder | streamed: peak RSS MB | held in memory at 224 px: peak RSS MB |\n| ---: | ---: | ---: |")
    for n, streamed, held in mem:
        print(f"| {n:,} | {streamed:,.0f} | {held:,.0f} |")


if __name__ == "__main__":
    main()
