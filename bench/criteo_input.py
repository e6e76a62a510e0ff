"""The Criteo input pipeline against what DeepFM consumes, side by side in one run.

  1. parse rate (rows/s) of `keras_sngm_trainers.data.criteo.dataset` on a planted-truth TSV (the
     10x copy used for the memory rows, so start-up is a small share),
     with and without its shuffle window, beside the row-at-a-time parser it replaced
     (tests/criteo_rowwise.py) and beside bare line reading (the floor of any parser);
  2. `sngm-train deepfm` examples/s on that TSV, on its `prep-criteo` binary records
     and with `--data synthetic` at the same flags, rounds alternating;
  3. peak resident memory of one epoch through the pipeline at 200k and 2M rows (the
     same shuffle window): bounded by the window, not the file.

    .venv/bin/python bench/criteo_input.py [--rows 200000] [--rounds 2]
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


def child(kind, path, shuffle):
    """One measurement in a fresh process; prints RESULT {rows, seconds, peak_rss_mb}."""
    import tensorflow as tf

    from keras_sngm_trainers.data import criteo

    if kind == "rowwise":
        from criteo_rowwise import parse_row

        ds = tf.data.TextLineDataset(path).map(lambda s: parse_row(s, "\t", 2**18), num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(1024)
    elif kind == "binary":
        from keras_sngm_trainers.data import criteo_binary

        ds = criteo_binary.dataset(path, 1024, shuffle_buffer=shuffle, drop_remainder=False)
    elif kind == "lines":
        ds = tf.data.TextLineDataset(path, buffer_size=1 << 20).batch(4096)
    else:
        ds = criteo.dataset(path, 1024, 2**18, shuffle_buffer=shuffle, drop_remainder=False)
    t0, rows = time.perf_counter(), 0
    for batch in ds:
        rows += int(tf.shape(tf.nest.flatten(batch)[0])[0])
    dt = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps({"rows": rows, "seconds": dt, "peak_rss_mb": rss}), flush=True)


def measure(kind, path, shuffle=0):
    out = subprocess.run([sys.executable, __file__, "--child", kind, path, str(shuffle)], env=ENV, capture_output=True,
                         text=True, cwd=ROOT)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode or not lines:
        raise RuntimeError(f"{kind} failed:\n{out.stderr[-2000:]}")
    return json.loads(lines[0][7:])


def train_rate(data, logdir, steps):
    flags = ["deepfm", "--data", data, "--batch-size", "8192", "--micro-batch", "1024", "--epochs", "2",
             "--steps-per-epoch", str(steps), "--optimizer", "sngm", "--lr", "0.01", "--diagnostics-every", "0",
             "--shuffle-buffer", "100000", "--no-verbose", "--logdir", logdir]
    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "sngm-train"), *flags], env=ENV,
                         capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    history = json.load(open(os.path.join(logdir, "history.json")))["history"]
    return history["examples_per_sec"][-1]  # the second epoch: compiled, pipeline warm


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=200_000, help="rows of the planted TSV (x10 for the memory row)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of each training measurement")
    parser.add_argument("--steps", type=int, default=12, help="updates per timed training epoch (B=8192)")
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], int(args.child[2]))

    tmp = tempfile.mkdtemp(prefix="criteo-bench-")
    try:
        sys.path.insert(0, ROOT)
        from keras_sngm_trainers.data import planted_ctr

        planted_ctr.generate(tmp, args.rows, 1000, seed=0)
        small = os.path.join(tmp, "train.tsv")
        big = os.path.join(tmp, "big.tsv")
        with open(big, "wb") as out:  # 10x the rows, same content repeated
            for _ in range(10):
                with open(small, "rb") as f:
                    shutil.copyfileobj(f, out)
        from keras_sngm_trainers.data import criteo_binary

        t0 = time.perf_counter()
        criteo_binary.prepare([big], os.path.join(tmp, "big-bin"), 2**18, log=lambda *a, **k: None)
        prep_rate = 10 * args.rows / (time.perf_counter() - t0)
        criteo_binary.prepare([small], os.path.join(tmp, "small-bin"), 2**18, log=lambda *a, **k: None)
        mb = os.path.getsize(small) / 1e6
        print(f"{os.cpu_count()} CPUs; planted TSV of {args.rows} rows ({mb:.0f} MB); batch 1024")
        print("\n| pipeline | rows/s | ratio to the row-at-a-time parser |")
        print("| --- | ---: | ---: |")
        rates = {}
        # One pass in a fresh process each, start-up included: the fast pipelines read the
        # 10x file so that tracing and the first shuffle window are a small share.
        for name, kind, shuffle, path in (("row-at-a-time parser (before)", "rowwise", 0, small),
                                          ("vectorized, no shuffle", "vectorized", 0, big),
                                          ("vectorized, 100k-row shuffle window", "vectorized", 100_000, big),
                                          ("bare line reading (TextLineDataset, no parsing)", "lines", 0, big),
                                          ("prepared binary records, no shuffle", "binary", 0, os.path.join(tmp, "big-bin")),
                                          ("prepared binary records, 100k-row shuffle window", "binary", 100_000,
                                           os.path.join(tmp, "big-bin"))):
            r = measure(kind, path, shuffle)
            rates[name] = r["rows"] / r["seconds"]
            base = rates["row-at-a-time parser (before)"]
            print(f"| {name} | {rates[name]:,.0f} | {rates[name] / base:.1f}x |", flush=True)
        print(f"| one-time `prep-criteo` of the 10x file (parse + write) | {prep_rate:,.0f} | "
              f"{prep_rate / rates['row-at-a-time parser (before)']:.1f}x |", flush=True)

        print("\n| `sngm-train deepfm`, B=8192, micro-batch 1024, SNGM | examples/s (rounds) | ratio to synthetic |")
        print("| --- | --- | ---: |")
        got = {"synthetic": [], "tsv": [], "binary": []}
        for i in range(args.rounds):
            for name, data in (("synthetic", "synthetic"), ("tsv", small), ("binary", os.path.join(tmp, "small-bin"))):
                got[name].append(train_rate(data, os.path.join(tmp, f"run-{name}-{i}"), args.steps))
        syn = sum(got["synthetic"]) / args.rounds
        for name, label in (("synthetic", "--data synthetic"), ("tsv", f"--data train.tsv ({args.rows} rows)"),
                            ("binary", "--data prepared/ (prep-criteo of train.tsv)")):
            mean = sum(got[name]) / args.rounds
            print(f"| {label} | {mean:,.0f} ({', '.join(f'{v:,.0f}' for v in got[name])}) | {mean / syn:.2f} |", flush=True)

        print("\n| one epoch, 100k-row shuffle window | rows | file MB | peak RSS MB |")
        print("| --- | ---: | ---: | ---: |")
        for path in (small, big):
            r = measure("vectorized", path, 100_000)
            print(f"| {os.path.basename(path)} | {r['rows']:,} | {os.path.getsize(path) / 1e6:.0f} | {r['peak_rss_mb']:.0f} |",
                  flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
