"""`sngm-train`: the command-line entry point.

    sngm-train resnet --depth 20 --dataset cifar10 --optimizer sngm --batch-size 4096 \
        --micro-batch 128 --lr 1.6 --schedule poly --power 1.1 --epochs 160 --logdir runs/x
    horovodrun -np 4 sngm-train deepfm --data train.tsv --test-data test.tsv --optimizer sngm ...
    sngm-train gen-criteo --out data/planted --train-rows 200000 --test-rows 50000
    sngm-train study --preset cpu-cifar --out runs/study-cpu-cifar   (see `sngm-train study -h`)
"""

import argparse
import dataclasses
import os
import re
import sys
from dataclasses import dataclass, field

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@dataclass
class Config:
    # --- optimization (the paper's recipe) ---
    optimizer: str = "sngm"        # msgd | sngm | block_sngm | lars | adam: what the paper compares
    batch_size: int = 4096         # global batch B over all workers: the quantity being scaled
    micro_batch: int = 128         # per-worker batch per forward pass; B/(workers*micro) are accumulated (paper: 128)
    lr: float = 1.6                # peak learning rate for the global batch (SNGM's step length is lr*||u|| <= lr/(1-beta))
    schedule: str = "poly"         # poly | cosine | step | constant: the paper uses poly-power or cosine, no warm-up
    power: float = 1.1             # poly power p in lr*(1-t/T)^p (paper: 1.1 or 2)
    warmup_epochs: float = 0.0     # linear warm-up; SNGM needs none, MSGD at large batch usually does
    momentum: float = 0.9          # beta of the momentum
    weight_decay: float = 1e-4     # L2 strength (paper's ResNet value)
    trust_coefficient: float = 0.001  # LARS eta
    epochs: int = 160              # passes over the training data (paper's CIFAR setting)
    scale_lr: bool = False         # multiply lr by the number of workers (off: --lr is already for the global batch)
    steps_per_epoch: int = 0       # updates per epoch; 0 = training examples // batch size
    # --- distribution ---
    compression: str = "none"      # none | fp16: halves allreduce bytes at some precision cost
    seed: int = 0                  # model init, data order and augmentation all derive from it
    deterministic: bool = False    # TensorFlow op determinism (slower); for exact resume checks
    # --- run directory ---
    logdir: str = "runs/default"   # checkpoints, TensorBoard events, config.json, history.json
    resume: bool = False           # continue from the latest checkpoint in logdir
    stop_after: int = 0            # end this invocation after N epochs (job time limits); schedule still spans --epochs
    ckpt_every: int = 1            # epochs between checkpoints (the last epoch is always saved)
    keep: int = 3                  # checkpoints kept
    log_every: int = 50            # updates between step-level TensorBoard points
    diagnostics_every: int = 50    # updates between diagnostics (norms, noise scale); 0 = off
    verbose: bool = True           # rank 0 prints the configuration and per-epoch lines
    eval_batch: int = 1000         # evaluation batch (no gradients: memory is not the limit)
    # --- resnet ---
    depth: int = 20                # 6n+2 for CIFAR (20, 32, 44, 56, 110); 18/34/50 for ImageNet-size input
    dataset: str = "cifar10"       # cifar10 | cifar100 (TFDS or --data-dir) | synthetic (benchmarks)
    data_dir: str = ""             # CIFAR pickle/binary batches, an image folder, or a .tar of one
    tfds_dir: str = ""             # tensorflow-datasets data_dir
    download: bool = True          # let TFDS download when online
    image_size: int = 32           # input size; > 64 selects the ImageNet ResNets
    num_classes: int = 0           # synthetic data only
    train_subset: int = 0          # use a fixed random subset of the training set (CPU studies); 0 = all
    test_subset: int = 0           # likewise for the test set
    augment: bool = True           # pad-4 random crop + horizontal flip
    validation_split: float = 0.0  # hold out this fraction of the training set (fixed draw) to tune on, not the test set
    # --- deepfm ---
    data: str = ""                 # Criteo TSV/CSV file, directory or glob
    test_data: str = ""            # held-out Criteo file(s) for AUC / log loss
    val_data: str = ""             # validation file(s) to tune on; then test data is evaluated once, at the end
    train_rows: int = 0            # rows in --data if known (skips a counting pass)
    hash_space: int = 2**18        # buckets shared by the 26 categorical fields
    embedding_dim: int = 16        # FM/DNN embedding size
    hidden: list = field(default_factory=lambda: [400, 400, 400])  # DNN widths (DeepFM paper)
    dropout: float = 0.0           # DNN dropout
    shuffle_buffer: int = 100_000  # rows in the shuffle window (streamed data)
    skip_bad_rows: bool = False    # drop and count malformed rows instead of stopping


def _add_config_flags(parser, task):
    defaults = Config()
    if task == "deepfm":  # DeepFM's usual recipe differs from ResNet's
        defaults = dataclasses.replace(defaults, batch_size=8192, micro_batch=1024, lr=0.1, weight_decay=0.0,
                                       epochs=5, schedule="cosine")
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            parser.add_argument(flag, default=default, action=argparse.BooleanOptionalAction)
        elif isinstance(default, list):
            parser.add_argument(flag, default=default, type=int, nargs="+")
        else:
            parser.add_argument(flag, default=default, type=type(default))


def build_parser():
    parser = argparse.ArgumentParser(prog="sngm-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for task in ("resnet", "deepfm"):
        _add_config_flags(sub.add_parser(task, help=f"train {task}"), task)
    sub.add_parser("study", help="a grid of runs: optimizers x batch sizes x seeds (sngm-train study -h)", add_help=False)
    gen = sub.add_parser("gen-criteo", help="write Criteo-format data with a planted ground truth")
    gen.add_argument("--out", required=True)
    gen.add_argument("--train-rows", type=int, default=200_000)
    gen.add_argument("--test-rows", type=int, default=50_000)
    gen.add_argument("--val-rows", type=int, default=0)
    gen.add_argument("--seed", type=int, default=0)
    return parser


def config_from_args(args):
    return Config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Config)})


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["study"]:
        from trainers import study

        return study.main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "gen-criteo":
        from trainers.data import planted_ctr

        print(planted_ctr.generate(args.out, args.train_rows, args.test_rows, args.seed, args.val_rows))
        return 0
    import tensorflow as tf

    from trainers import engine, tasks
    from trainers.data.images import DataNotFoundError

    try:
        engine.train(config_from_args(args), tasks.TASKS[args.command])
    except (ValueError, FileNotFoundError, DataNotFoundError) as e:
        print(f"sngm-train: error: {e}", file=sys.stderr)
        return 2
    except tf.errors.InvalidArgumentError as e:
        m = re.search(r"\[Malformed Criteo row:\] \[(.*?)\] \[line\] \[(\d+)\] \[:\] \[(.*?)\] \[(.*?)\]", str(e))
        if not m:
            raise
        path, line, reason, hint = m.groups()
        print(f"sngm-train: error: malformed Criteo row in {path}, line {line}: {reason} {hint}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
