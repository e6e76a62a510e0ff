"""`sngm-train`: the command-line entry point.

    sngm-train resnet --depth 20 --dataset cifar10 --optimizer sngm --batch-size 4096 \
        --micro-batch 128 --lr 1.6 --schedule poly --power 1.1 --epochs 160 --logdir runs/x
    horovodrun -np 4 sngm-train deepfm --data train.tsv --test-data test.tsv --optimizer sngm ...
    sngm-train gen-criteo --out data/planted --train-rows 200000 --test-rows 50000
    sngm-train study --preset cpu-cifar --out runs/study-cpu-cifar   (see `sngm-train study -h`)
"""

import argparse
import codecs
import os
import re
import sys

from trainers import config

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_parser():
    parser = argparse.ArgumentParser(prog="sngm-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for task in ("resnet", "deepfm"):
        config.add_flags(sub.add_parser(task, help=f"train {task} (flags: sngm-train {task} -h)"), task)
    sub.add_parser("study", help="a grid of runs: optimizers x batch sizes x seeds (sngm-train study -h)", add_help=False)
    gen = sub.add_parser("gen-criteo", help="write Criteo-format data with a planted ground truth")
    gen.add_argument("--out", required=True)
    gen.add_argument("--train-rows", type=int, default=200_000)
    gen.add_argument("--test-rows", type=int, default=50_000)
    gen.add_argument("--val-rows", type=int, default=0)
    gen.add_argument("--seed", type=int, default=0)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["study"]:
        from trainers import study

        return study.main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "gen-criteo":
        from trainers.data import planted_ctr

        for name in ("train_rows", "test_rows", "val_rows"):
            low = 1 if name == "train_rows" else 0
            if getattr(args, name) < low:
                print(f"sngm-train: error: --{name.replace('_', '-')} must be >= {low}. Received: {getattr(args, name)}",
                      file=sys.stderr)
                return 2

        print(planted_ctr.generate(args.out, args.train_rows, args.test_rows, args.seed, args.val_rows))
        return 0
    cfg = config.from_args(args, args.command)
    try:
        config.validate(cfg, args.command)  # before TensorFlow is imported or any data read
    except ValueError as e:
        print(f"sngm-train: error: {e}", file=sys.stderr)
        return 2
    import tensorflow as tf

    from trainers import engine, tasks
    from trainers.data.images import DataNotFoundError

    try:
        engine.train(cfg, tasks.TASKS[args.command])
    except (ValueError, FileNotFoundError, DataNotFoundError) as e:
        print(f"sngm-train: error: {e}", file=sys.stderr)
        return 2
    except tf.errors.InvalidArgumentError as e:
        m = re.search(r"\[Malformed Criteo row:\] \[(.*?)\] \[line\] \[(\d+)\] \[:\] \[(.*?)\] \[(.*?)\]", str(e))
        if not m:
            raise
        path, line, reason, hint = (codecs.escape_decode(g)[0].decode("utf-8", "replace") for g in m.groups())  # tf.Assert C-escapes
        print(f"sngm-train: error: malformed Criteo row in {path}, line {line}: {reason} {hint}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
