"""`sngm-train`: the command-line entry point.

    sngm-train resnet --depth 20 --dataset cifar10 --optimizer sngm --batch-size 4096 \
        --micro-batch 128 --lr 1.6 --schedule poly --power 1.1 --epochs 160 --logdir runs/x
    horovodrun -np 4 sngm-train deepfm --data train.tsv --test-data test.tsv --optimizer sngm ...
    sngm-train launch -np 2 sngm-train resnet --engine jax ...   (the JAX engine; see `sngm-train launch -h`)
    sngm-train gen-criteo --out data/planted --train-rows 200000 --test-rows 50000
    sngm-train study --preset cpu-cifar --out runs/study-cpu-cifar   (see `sngm-train study -h`)
    sngm-train plan --run runs/ref --target val_accuracy=0.58 --workers 1,8,64 ...   (see `sngm-train plan -h`)

Exit status: 0 done (or already finished), 2 bad flags or data, 3 training diverged
(a NaN/Inf loss or weights; nothing non-finite is saved), 4 a checkpoint could not be
written (a full disk: the previous checkpoint is kept), 5 a peer process is gone (a
collective failed: --resume continues from the newest checkpoint), 6 the run hung (no
update finished within --hang-timeout: a peer stopped, or a device hangs; --resume
continues), 128 + N stopped cleanly by signal N of --stop-signals (143 for SIGTERM, 130
for SIGINT, 138 for SIGUSR1; a checkpoint was written, resume with --resume).
`sngm-train launch --max-restarts N` restarts on 5, 6, crashes and signals, never on 2,
3 or 4, which a restart cannot heal.
"""

import argparse
import codecs
import os
import re
import sys

from keras_sngm_trainers import config
from keras_sngm_trainers.errors import error, print_error

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


NO_TENSORFLOW = ("the Horovod engine needs TensorFlow, which is not installed (the keras_sngm optimizers run on any "
                 "Keras backend, and `--engine jax` trains on JAX): pip install tensorflow-cpu==2.21.0 (GPU hosts: "
                 "'tensorflow[and-cuda]==2.21.0'), or `make install` in this repository")


class _Parser(argparse.ArgumentParser):
    """argparse's errors, printed once under horovodrun (see `print_error`)."""

    def error(self, message):
        print_error(f"{self.format_usage()}{self.prog}: error: {message}")
        sys.exit(2)


def build_parser(given_only=False):
    parser = _Parser(prog="sngm-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for task in ("resnet", "deepfm"):
        config.add_flags(sub.add_parser(task, help=f"train {task} (flags: sngm-train {task} -h)"), task, given_only)
    sub.add_parser("study", help="a grid of runs: optimizers x batch sizes x seeds (sngm-train study -h)", add_help=False)
    sub.add_parser("launch", help="N processes of the JAX engine on this host, as horovodrun -np N "
                   "(sngm-train launch -h)", add_help=False)
    sub.add_parser("plan", help="predict time to accuracy for N workers and batch B from measured runs "
                                "(sngm-train plan -h)", add_help=False)
    prep = sub.add_parser("prep-criteo", help="parse Criteo text once into binary records that epochs read "
                                              "without parsing; then pass the folder as --data/--test-data")
    prep.add_argument("--data", required=True, help="Criteo TSV/CSV files (gzipped or not), a directory or a glob")
    prep.add_argument("--out", required=True, help="the folder to write (part-*.bin, meta.json)")
    prep.add_argument("--hash-space", type=int, default=2**18, help="buckets of the hashed ids: must equal the "
                      "training run's --hash-space (checked)")
    prep.add_argument("--rows-per-shard", type=int, default=1 << 20, help="rows per part file: enough parts lets "
                      "workers read by file")
    prep.add_argument("--skip-bad-rows", action="store_true", help="drop and count malformed rows instead of stopping")
    prep.add_argument("--dense-transform", choices=("log1p", "minmax"), default="log1p", help="the dense fields' "
                      "transform, stored in the records: must equal the training run's --dense-transform (checked)")
    prep.add_argument("--fit-data", default="", help="with --dense-transform minmax, the training files the min and "
                      "max are fitted on (default: --data); prepare validation and test data with the training "
                      "files here")
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
        from keras_sngm_trainers import study

        return study.main(argv[1:])
    if argv[:1] == ["launch"]:
        from keras_sngm_trainers import launch

        return launch.main(argv[1:])
    if argv[:1] == ["plan"]:
        from keras_sngm_trainers.planning import cli as plan

        return plan.main(argv[1:])
    if argv[:1] in (["resnet"], ["deepfm"]):
        for token in argv[1:]:
            other = config.owner_of(token, argv[0]) if token.startswith("--") else None
            if other:
                return error(f"{token.split('=')[0]} is a flag of `sngm-train {other}`, not of `sngm-train {argv[0]}` "
                             f"(sngm-train {argv[0]} -h lists its flags)")
    args = build_parser().parse_args(argv)
    if args.command == "gen-criteo":
        from keras_sngm_trainers.data import planted_ctr

        if not _at_least(args, train_rows=1, test_rows=0, val_rows=0):
            return 2

        print(planted_ctr.generate(args.out, args.train_rows, args.test_rows, args.seed, args.val_rows))
        return 0
    if args.command == "prep-criteo":
        return _prep_criteo(args)
    cfg = config.from_args(args, args.command)
    try:
        if cfg.resume:  # the run's own settings, from its config.json
            from keras_sngm_trainers import resume

            cfg = resume.settings(cfg, set(vars(build_parser(given_only=True).parse_args(argv))) - {"command"},
                                  args.command)
        config.validate(cfg, args.command)  # before TensorFlow is imported or any data read
    except ValueError as e:
        return error(str(e))
    from keras_sngm_trainers import quiet

    if cfg.engine == "jax":
        os.environ.setdefault("KERAS_BACKEND", "jax")  # before Keras is imported
    tf = None
    try:
        with quiet.banners_filtered():  # TensorFlow's import notices, not its warnings
            import tensorflow as tf
    except ModuleNotFoundError as e:
        if e.name != "tensorflow":
            raise
        if cfg.engine != "jax":
            return error(NO_TENSORFLOW)
    malformed = tf.errors.InvalidArgumentError if tf is not None else ()  # (tf.data's verdict on a bad record)

    from keras_sngm_trainers import checkpoint, engine, tasks
    from keras_sngm_trainers.data.images import DataNotFoundError
    from keras_sngm_trainers.guard import Diverged
    from keras_sngm_trainers.preemption import Preempted

    try:
        engine.train(cfg, tasks.TASKS[args.command])
    except Preempted as e:
        return _preempted(e, cfg, args.command)
    except checkpoint.CheckpointWriteError as e:
        print(f"sngm-train: error: {e}", file=sys.stderr, flush=True)
        return 4
    except Diverged as e:
        kept = checkpoint.latest(cfg.logdir)
        print(f"sngm-train: error: training diverged: {e}. Nothing non-finite was saved; "
              f"{'the newest checkpoint is ' + kept if kept else 'no checkpoint was written'}.", file=sys.stderr)
        return 3
    except (ValueError, FileNotFoundError, DataNotFoundError, ConnectionError) as e:
        return error(str(e))
    except malformed as e:
        return _malformed_row(e)
    except Exception as e:  # noqa: BLE001 - a collective that failed because a peer is gone: one line, not a traceback
        from keras_sngm_trainers import engines

        if not engines.current().lost_peer(e):
            raise
        return _lost_peer(e, cfg)
    return 0


def _lost_peer(e, cfg):
    """The one line of a process whose peer is gone; returns `heartbeat.LOST_PEER`."""
    from keras_sngm_trainers import checkpoint, heartbeat

    kept = checkpoint.latest(cfg.logdir)
    reason = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
    print(f"sngm-train: error: a peer process is gone: a collective failed in update {heartbeat.update_in_flight()} "
          f"({reason[:200]}). The run can continue with --resume"
          f"{' from ' + os.path.basename(kept) if kept else ' (no checkpoint yet: from the start)'}; exiting with "
          f"status {heartbeat.LOST_PEER}.", file=sys.stderr, flush=True)
    return heartbeat.LOST_PEER


def _preempted(e, cfg, task):
    """The message of a clean stop for a signal; returns 128 + the signal's number."""
    rank = config.rank_from_env()
    if e.checkpoint:
        print(f"sngm-train: {e} (the update in flight was finished); checkpoint {e.checkpoint}; final.json "
              f"is not written. Continue with: sngm-train {task} --logdir {cfg.logdir} --resume", file=sys.stderr,
              flush=True)
    else:
        print(f"sngm-train: rank {rank} {e}, with every rank (rank 0 wrote the checkpoint in {cfg.logdir})",
              file=sys.stderr, flush=True)
    return e.exit_status


def _malformed_row(e):
    """Exit 2 with the file, line or record, and the reason of a malformed Criteo row or
    a bad image record, else re-raise."""
    def text(groups):
        return [codecs.escape_decode(g)[0].decode("utf-8", "replace") for g in groups]  # tf.Assert C-escapes

    m = re.search(r"\[Malformed Criteo row:\] \[(.*?)\] \[line\] \[(\d+)\] \[:\] \[(.*?)\] \[(.*?)\]", str(e))
    if m:
        path, line, reason, hint = text(m.groups())
        return error(f"malformed Criteo row in {path}, line {line}: {reason} {hint}")
    m = re.search(r"\[Bad image record:\] \[(.*?)\] \[:\] \[(.*?)\] \[(.*?)\]", str(e))
    if m:
        where, reason, hint = text(m.groups())
        return error(f"{where}: {reason}{hint}")
    raise e


def _at_least(args, **lows):
    """False (after printing the error) when a count flag is below its lower bound."""
    for name, low in lows.items():
        if getattr(args, name) < low:
            print(f"sngm-train: error: --{name.replace('_', '-')} must be >= {low}. Received: {getattr(args, name)}",
                  file=sys.stderr)
            return False
    return True


def _prep_criteo(args):
    if not _at_least(args, hash_space=1, rows_per_shard=1):
        return 2
    if args.fit_data and args.dense_transform != "minmax":
        return error(f"--fit-data is used only with --dense-transform minmax. Received: {args.fit_data!r}")
    import tensorflow as tf

    from keras_sngm_trainers.data import criteo, criteo_binary

    try:
        files = criteo.resolve_files(args.data)
        dense = None
        if args.dense_transform == "minmax":
            dense = criteo.fit_minmax(criteo.resolve_files(args.fit_data) if args.fit_data else files,
                                      args.skip_bad_rows)
        meta = criteo_binary.prepare(files, args.out, args.hash_space, args.rows_per_shard, args.skip_bad_rows,
                                     dense=dense)
    except (ValueError, FileNotFoundError) as e:
        return error(str(e))
    except tf.errors.InvalidArgumentError as e:
        return _malformed_row(e)
    print(f"prepared {meta['rows']} rows in {len(meta['shards'])} part files in {args.out}"
          + (f"; skipped {meta['bad_rows_skipped']} malformed rows" if args.skip_bad_rows else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
