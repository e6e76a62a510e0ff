"""Every knob of the trainers, with the reason it exists, its task and its rule.

`sngm-train resnet -h` / `sngm-train deepfm -h` print the reasons. A task's parser has
only the flags that apply to it (`sngm-train deepfm --depth 50` is an error), and
`validate` rejects bad values, naming the flag and the value, before any data is read.
This module imports neither TensorFlow nor Keras, so bad flags fail in well under a
second.
"""

import dataclasses
import math
import os
from dataclasses import dataclass, field

BOTH, RESNET, DEEPFM = ("resnet", "deepfm"), ("resnet",), ("deepfm",)
OPTIMIZERS = ("msgd", "sngm", "block_sngm", "lars", "adam", "lamb")
ARCHS = ("resnet", "twoconv")
SCHEDULES = ("poly", "cosine", "step", "constant")
COMPRESSIONS = ("none", "fp16")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
DATASETS = ("cifar10", "cifar100", "imagenet", "synthetic")
ENGINES = ("auto", "horovod", "jax")
# What the JAX engine cannot do, with the reason its error gives.
JAX_REFUSES = {
    "elastic": "Keras' distribution API has no elastic mode (workers that leave and join): use --engine horovod",
    "xla": "the JAX engine always compiles the whole train step, the update included, with XLA",
}
CIFAR_DEPTHS_HINT = "6n+2 (20, 32, 44, 56, 110) for 32x32 input, 18/34/50 for ImageNet-size input"


def knob(default, why, tasks=BOTH, choices=None, default_factory=None, parse=None):
    """A field of `Config`: `why` is its reason, one text, or {task: text} where the tasks differ."""
    meta = {"help": why, "tasks": tasks, "choices": choices, "parse": parse}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def batch_size_arg(text):
    """`--batch-size`: a positive integer or `auto`."""
    import argparse

    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto'. Received: {text!r}") from None


@dataclass
class Config:
    # --- optimization (the paper's recipe) ---
    optimizer: str = knob("sngm", "what the paper compares: momentum SGD with L2 as in PyTorch (msgd), SNGM, "
                          "block-wise SNGM, LARS, Adam (L2 in the gradient, as torch.optim.Adam), LAMB (Keras' "
                          "Lamb, decoupled decay)", choices=OPTIMIZERS)
    batch_size: int = knob(4096, "global batch B over all workers: the quantity being scaled; 'auto' grows it with "
                           "the measured gradient noise scale B_simple (--batch-min .. --batch-max)", parse=batch_size_arg)
    batch_min: int = knob(0, "with --batch-size auto, the starting batch (required): a multiple of workers x "
                          "micro-batch, at least two micro-batches over all workers (the noise scale needs two batch "
                          "sizes; on --engine jax two per update, each already the mean over the workers); the lr "
                          "schedule is that of a fixed batch of this size, followed in examples")
    batch_max: int = knob(0, "with --batch-size auto, the largest batch (required; a multiple of workers x micro-batch)")
    adapt_every: int = knob(50, "with --batch-size auto, updates between decisions. The rule: no decision while the "
                            "noise estimate is unresolved (|G|^2 <= 0) or holds under 20 updates; target = "
                            "--adapt-factor x B_simple; the batch only grows, only when the target is >= 10% above "
                            "it, at most doubling per decision, rounded down to a multiple of workers x micro-batch "
                            "and clipped to [--batch-min, --batch-max]")
    adapt_factor: float = knob(1.0, "with --batch-size auto, target batch = c x B_simple (1: the critical batch, "
                               "where a larger batch stops saving updates; McCandlish et al. 2018)")
    lr_scaling: str = knob("default", "with --batch-size auto, how msgd, adam and lamb scale the lr with S = B / "
                           "--batch-min: linear S, sqrt sqrt(S), or adascale r = (s2 + m2)/(s2/S + m2) from the same "
                           "noise estimates (sqrt(r) for adam and lamb). default = adascale for those three: r is S "
                           "while B is below the noise scale and falls towards 1 above it, so it never over-scales "
                           "as linear does past the critical batch; none for sngm, block_sngm and lars, whose step "
                           "length lr*||u|| <= lr/(1-beta) does not depend on B (they refuse any other)",
                           choices=("default", "none", "linear", "sqrt", "adascale"))
    micro_batch: int = knob(0, {
        "resnet": "examples per worker per forward pass; B/(workers x micro-batch) are accumulated. 0 = the paper's "
                  "rule, min(128, B/workers): each worker computes its B/workers examples in one pass, and "
                  "accumulates micro-batches of 128 only above that (with --batch-size auto: 128)",
        "deepfm": "examples per worker per forward pass; B/(workers x micro-batch) are accumulated. 0 = min(1024, "
                  "B/workers) (memory is rarely the limit for DeepFM: a larger micro-batch means fewer passes; with "
                  "--batch-size auto: 1024)"})
    lr: float = knob(1.6, "peak learning rate for the global batch (SNGM's step length is lr*||u|| <= lr/(1-beta))")
    schedule: str = knob("poly", {
        "resnet": "the paper's image runs use poly-power or cosine, without warm-up",
        "deepfm": "the paper's CTR runs use a constant lr: no decay, no warm-up"}, choices=SCHEDULES)
    power: float = knob(1.1, "poly power p in lr*(1-t/T)^p (the paper: 1.1 or 2)")
    warmup_epochs: float = knob(0.0, "linear warm-up; SNGM needs none, MSGD and LARS at large batch usually do")
    warmup_start: float = knob(0.0, "the lr the warm-up ramps from (the paper's v1 LARS: 0.1); must be < --lr")
    lr_per_epoch: bool = knob(False, "hold the lr fixed within an epoch, as PyTorch schedulers stepped once per "
                              "epoch do (the paper's cosine: lr_m = lr * (1 + cos(pi m / epochs)) / 2)")
    step_epochs: list = knob(None, {
        "resnet": "epochs after which --schedule step divides the lr by 10 (He et al.'s ImageNet recipe: 30 60 of "
                  "90); empty = after 50% and 75% of --epochs (CIFAR: 80 and 120 of 160)",
        "deepfm": "epochs after which --schedule step divides the lr by 10; empty = after 50% and 75% of --epochs"},
        default_factory=list)
    momentum: float = knob(0.9, "beta of the momentum, in [0, 1)")
    weight_decay: float = knob(1e-4, {"resnet": "L2 strength (the paper's ResNet value 1e-4)",
                                      "deepfm": "L2 strength (the paper's DeepFM value 1e-3, in the torch optimizer)"})
    trust_coefficient: float = knob(0.001, "LARS eta: scales the trust ratio ||w||/||g||")
    epochs: int = knob(160, {"resnet": "passes over the training data (the paper's CIFAR setting: 160; ImageNet: 90)",
                             "deepfm": "passes over the training data (the paper's CTR setting: 10)"})
    on_nonfinite: str = knob("stop", "adam and lamb (Keras optimizers) on a NaN/Inf gradient: stop (it reaches the weights and "
                             "the divergence guard ends the run, nothing saved) or skip (the update is skipped and "
                             "counted); msgd, sngm, block_sngm and lars always skip such a step",
                             choices=("stop", "skip"))
    scale_lr: bool = knob(False, "multiply --lr by the number of workers (off: --lr is already for the global batch)")
    steps_per_epoch: int = knob(0, "updates per epoch; 0 = training examples // batch size")
    # --- distribution ---
    engine: str = knob("auto", "how the processes share the run. horovod: TensorFlow and Horovod, one process per "
                       "device, started by horovodrun (the only engine with --elastic, --compression and --xla); jax: "
                       "Keras' distribution API on the JAX backend, one process per host feeding all its devices, "
                       "started by `sngm-train launch -np N`, srun, or one command per host (no TensorFlow needed "
                       "for synthetic and in-memory data; processes that do not all join within SNGM_CONNECT_TIMEOUT "
                       "seconds, default 120, are an error); auto: jax when KERAS_BACKEND=jax, else horovod",
                       choices=ENGINES)
    compression: str = knob("none", "fp16 halves the allreduce bytes at some precision cost", choices=COMPRESSIONS)
    precision: str = knob("float32", "keras.mixed_precision policy: mixed_float16 computes in float16 with a dynamic "
                          "loss scale (the verdict on overflow is taken on the averaged gradient, so all workers skip "
                          "the same steps); mixed_bfloat16 needs no scale (TPUs, recent GPUs and CPUs); the weights "
                          "and the optimizer stay float32", choices=PRECISIONS)
    xla: bool = knob(False, "compile the forward and backward pass with XLA; the Horovod allreduce and the "
                     "optimizer update stay outside it (Horovod's ops are not XLA ops). Measured on a 2-core CPU: "
                     "5-12% faster in float32, and what makes mixed precision pay there (docs/benchmarks.md)")
    steps_per_execution: int = knob(1, "micro-batches per call of the compiled train function: fewer host round "
                                    "trips for small models; the logs still count every update")
    elastic: bool = knob(False, "under horovodrun's elastic mode (a minimum and maximum of workers and a host "
                         "discovery script): keep training when workers leave or join (same global batch, more or "
                         "less accumulation per worker)")
    commit_every: int = knob(20, "with --elastic, updates between in-memory commits: what a worker failure rolls "
                             "back")
    threads: int = knob(0, "intra-op threads per worker process; 0 = the host's cores / the workers on it. Set it to "
                        "time one worker as it runs beside others on a shared host (a planner's reference run)")
    seed: int = knob(0, "model init, data order and augmentation all derive from it")
    init_weights: str = knob("", "start from these weights instead of the seed's initialization: a .weights.h5 file "
                             "(Keras' save_weights, such as a checkpoint's model.weights.h5, from either engine), so "
                             "that two engines or two setups start from the same point")
    deterministic: bool = knob(False, "TensorFlow op determinism (slower): bit-exact resume checks")
    # --- run directory ---
    logdir: str = knob("runs/default", "where checkpoints, TensorBoard events, config.json and history.json go")
    resume: bool = knob(False, "continue from the newest checkpoint in --logdir (a finished run is left as it is)")
    stop_after: int = knob(0, "end this invocation after N epochs (job time limits); the schedule still spans "
                           "--epochs; 0 = run to the end")
    stop_after_updates: int = knob(0, "end this invocation after N updates, mid-epoch if need be, with a "
                                   "checkpoint there (fixed-size job slices); 0 = no limit")
    stop_signals: str = knob("TERM,INT,USR1", "signals that stop the run cleanly (SLURM and Kubernetes send TERM "
                             "before they kill a job; Ctrl-C is INT; not with --elastic, where a signalled worker "
                             "leaves and the others go on): the update in flight is finished, all workers "
                             "stop at the same update, rank 0 writes a checkpoint, and every worker exits with "
                             "128 + the signal's number (143 for TERM); --resume continues exactly. A comma-separated "
                             "list of names (TERM or SIGTERM), or none")
    hang_timeout: float = knob(600.0, "seconds without a finished update after which a process takes the run for "
                               "hung (a peer stopped or gone, a device that hangs: collectives wait for ever) and "
                               "exits with status 6, so that `sngm-train launch --max-restarts` or the scheduler "
                               "restarts it from the newest checkpoint; 3x that until each fit call's first update "
                               "ends (compilation) and while evaluating; 0 = off")
    ckpt_every: int = knob(1, "epochs between checkpoints (the last epoch is always saved)")
    ckpt_every_steps: int = knob(0, {
        task: f"also checkpoint every N updates within an epoch ({what} epochs are long); --resume then continues "
              f"from the exact next micro-batch; 0 = epoch ends only"
        for task, what in (("resnet", "ImageNet"), ("deepfm", "Criteo's"))})
    ckpt_every_minutes: float = knob(0.0, "also checkpoint within an epoch once this many minutes have passed since "
                                     "the last checkpoint (at the next update's end); 0 = off")
    keep: int = knob(3, "checkpoints kept (0 = all)")
    log_every: int = knob(50, "updates between step-level TensorBoard points and progress lines")
    diagnostics_every: int = knob(50, "updates between diagnostics (norms, noise scale); 0 = off")
    verbose: bool = knob(True, "rank 0 prints the configuration, progress lines and per-epoch results")
    eval_batch: int = knob(1000, "evaluation batch (no gradients: memory is not the limit)")
    # --- resnet ---
    arch: str = knob("resnet", "resnet (--depth) or twoconv: two 5x5 convolutions and a dense layer, the kind of "
                     "small net the paper's Figure 1 uses to show MSGD's large-batch loss (cheap CPU studies)",
                     RESNET, choices=ARCHS)
    depth: int = knob(20, CIFAR_DEPTHS_HINT, RESNET)
    dataset: str = knob("cifar10", "cifar10 | cifar100 (held in memory) | imagenet (streamed from disk, decoded and "
                        "augmented per image; the ImageNet ResNets 18/34/50, or --arch twoconv) | synthetic (benchmarks)",
                        RESNET, DATASETS)
    data_dir: str = knob("", "CIFAR: pickle/binary batches, an image folder (train/<class>/*, test/<class>/*) or a "
                         ".tar of one. ImageNet: TFRecord shards (train-00000-of-01024, ..., validation-00000-of-00128, "
                         "...), an image folder (train/<wnid>/*.JPEG, val/<wnid>/*.JPEG), or the ILSVRC2012 train and "
                         "val tars for tensorflow-datasets to prepare imagenet2012 from", RESNET)
    tfds_dir: str = knob("", "tensorflow-datasets data_dir (default ~/tensorflow_datasets)", RESNET)
    skip_bad_images: bool = knob(False, "ImageNet: drop and count images that cannot be decoded instead of stopping "
                                 "at the first (records without an image or with a bad label always stop)", RESNET)
    download: bool = knob(True, "let tensorflow-datasets download when the data is not prepared", RESNET)
    image_size: int = knob(32, "input size; > 64 (or --dataset imagenet) selects the ImageNet ResNets; ImageNet "
                           "crops are resized to it", RESNET)
    num_classes: int = knob(0, "classes of --dataset synthetic; 0 = 10", RESNET)
    train_subset: int = knob(0, "train on a fixed random subset of this many images (CPU studies); 0 = all", RESNET)
    test_subset: int = knob(0, "likewise for the test set; 0 = all", RESNET)
    augment: bool = knob(True, "pad-4 random crop + horizontal flip", RESNET)
    validation_split: float = knob(0.0, "hold out this fraction of the training set (a fixed draw) to tune on, "
                                   "not on the test set", RESNET)
    # --- deepfm ---
    data: str = knob("", "Criteo TSV/CSV file (gzipped or not), directory or glob; a folder written by "
                     "`sngm-train prep-criteo` (no parsing per epoch); or 'synthetic' (random rows: benchmarks)", DEEPFM)
    test_data: str = knob("", "held-out Criteo file(s) or prepared folder for AUC / log loss", DEEPFM)
    val_data: str = knob("", "validation file(s) to tune on; the test data is then evaluated once, at the end", DEEPFM)
    train_rows: int = knob(0, "rows in --data if known (skips a counting pass over the files); with "
                           "--data synthetic, rows per epoch (0 = 2^20)", DEEPFM)
    hash_space: int = knob(2**18, "buckets of the hashed categorical ids: shared by the 26 fields (--deepfm-variant "
                           "native), or of each field's own table (deepctr)", DEEPFM)
    deepfm_variant: str = knob("native", "native: ours (the dense fields embedded into the FM; two shared hash "
                               "tables); deepctr: DeepCTR-Torch 0.3.0's DeepFM at its defaults, as the paper ran it "
                               "(an FM over the sparse fields only, dense values raw into the linear part and the DNN, "
                               "a table per field, N(0, 1e-4^2) init, l2 1e-5 on the embeddings and the linear part; "
                               "ids hashed per field where it label-encodes)", DEEPFM, choices=("native", "deepctr"))
    loss_reduction: str = knob("mean", "mean: the log loss averaged over the global batch B; sum: summed over it, as "
                               "DeepCTR-Torch's training loop does, so the gradient (and a momentum SGD step) is B times "
                               "the mean's. The sum runs over all B examples of an update, across micro-batches and "
                               "workers (each micro-batch's mean times B, then averaged as usual); the noise scale "
                               "B_simple is unchanged (|G|^2 and tr(Sigma) both grow by B^2). sngm, block_sngm and "
                               "lars normalize the gradient and adam and lamb divide by its scale, so they are "
                               "invariant to it up to weight decay and epsilon; msgd's step grows with B. "
                               "Regularizers and --weight-decay are not scaled (as in DeepCTR-Torch), so they weigh B "
                               "times less against the data", DEEPFM, choices=("mean", "sum"))
    dense_transform: str = knob("log1p", "the 13 dense fields: log1p = log(1 + max(x, 0)); minmax = (x - min) / (max - "
                                "min) per field, fitted on the training data (a missing value counts as 0, as DeepCTR's "
                                "Criteo example fills it before its MinMaxScaler), in one streaming pass at start or "
                                "by `prep-criteo --dense-transform minmax`", DEEPFM, choices=("log1p", "minmax"))
    embedding_dim: int = knob(16, "FM/DNN embedding size", DEEPFM)
    hidden: list = knob(None, "DNN widths (the DeepFM paper: 400 400 400)", DEEPFM,
                        default_factory=lambda: [400, 400, 400])
    dropout: float = knob(0.0, "DNN dropout, in [0, 1)", DEEPFM)
    shuffle_buffer: int = knob(10_000, {
        "resnet": "records in the shuffle window of streamed ImageNet (encoded JPEGs of about 110 KB each): memory is "
                  "bounded by it, not by the files",
        "deepfm": "Criteo rows in the shuffle window of streamed data: memory is bounded by it, not by the files"})
    skip_bad_rows: bool = knob(False, "drop and count malformed rows instead of stopping at the first", DEEPFM)


# Each task's own recipe where it differs from ResNet's.
TASK_DEFAULTS = {
    "resnet": {},
    "deepfm": dict(batch_size=8192, lr=0.1, weight_decay=0.0, epochs=5, schedule="cosine",
                   shuffle_buffer=100_000),
}


def adaptive(cfg):
    return cfg.batch_size == "auto"


# The largest micro-batch `--micro-batch 0` picks, per task.
MICRO_BATCH_CAP = {"resnet": 128, "deepfm": 1024}


def paper_micro_batch(batch, workers, cap=128):
    """The paper's accumulation: each of `workers` computes B/workers examples, in
    micro-batches of at most `cap`."""
    return max(1, min(cap, batch // max(workers, 1)))


def micro_batch_of(cfg, task, workers):
    """`--micro-batch` as given, or where it is 0 the paper's rule (`paper_micro_batch`, with
    the task's cap; the cap itself with --batch-size auto, whose batch changes)."""
    if cfg.micro_batch:
        return cfg.micro_batch
    cap = MICRO_BATCH_CAP[task]
    return cap if adaptive(cfg) else paper_micro_batch(cfg.batch_size, workers, cap)


LR_SCALED = ("msgd", "adam", "lamb")  # the optimizers whose step length grows with the gradient's size


def lr_gain(lr_scaling, optimizer):
    """The `--lr-scaling` an optimizer takes: `default` is adascale for msgd, adam and lamb,
    none for the normalized ones; anything but none on a normalized optimizer is refused."""
    if lr_scaling == "default":
        return "adascale" if optimizer in LR_SCALED else "none"
    if lr_scaling != "none" and optimizer not in LR_SCALED:
        raise ValueError(f"--lr-scaling {lr_scaling} is for {', '.join(LR_SCALED)}: {optimizer} keeps its learning "
                         f"rate when the batch grows (its step length lr*||u|| <= lr/(1-beta) does not depend on B). "
                         f"Received: {lr_scaling!r}")
    return lr_scaling


def check_batch(global_batch, workers, micro_batch, workers_said=None):
    """Returns micro-batches per update; the global batch must split evenly. `workers_said`:
    the workers as the message should count them (`workers_text`)."""
    if global_batch <= 0 or micro_batch <= 0:
        raise ValueError(f"--batch-size and --micro-batch must be positive. Received: {global_batch}, {micro_batch}")
    if global_batch % (workers * micro_batch):
        said = workers_said or f"{workers}"
        raise ValueError(
            f"--batch-size {global_batch} is not divisible by workers x micro-batch = {said} x {micro_batch} "
            f"= {workers * micro_batch}: choose a global batch that is a multiple of {workers * micro_batch}.")
    return global_batch // (workers * micro_batch)


def _known_train_examples(cfg):
    """At most this many training examples, where the flags alone say so (else 0; DeepFM's
    rows are counted in the files)."""
    if cfg.dataset == "synthetic":
        return cfg.train_subset or 4096
    return cfg.train_subset


def stop_signals(text):
    """The signal numbers of `--stop-signals` ("TERM,INT,USR1", "SIGTERM", "none")."""
    import signal

    if text.strip().lower() == "none":
        return []
    out = []
    for part in text.split(","):
        key = part.strip().upper()
        key = key if key.startswith("SIG") else "SIG" + key
        number = getattr(signal.Signals, key, None) if key not in ("SIGKILL", "SIGSTOP") else None
        if number is None:
            raise ValueError(f"--stop-signals: {part.strip()!r} is not a signal that can be caught (names such as "
                             f"TERM, INT, USR1, USR2, HUP, or none). Received: {text!r}")
        out.append(int(number))
    return out


def workers_text(processes, devices):
    """The data-parallel workers, as messages count them: `4` (one device per process), or
    `(2 processes x 4 devices)`."""
    return f"{processes}" if devices == 1 else f"({processes} processes x {devices} devices)"


def engine_of(name):
    """`--engine auto` resolved: jax when KERAS_BACKEND=jax, else horovod."""
    if name != "auto":
        return name
    return "jax" if os.environ.get("KERAS_BACKEND") == "jax" else "horovod"


def workers_from_env():
    """The number of processes horovodrun (or `sngm-train launch`) started, from their
    environment, 1 outside them: known before Horovod, JAX or TensorFlow is imported, for
    the checks that need it."""
    for name in ("HOROVOD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "KERAS_DISTRIBUTION_NUM_PROCESSES"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def reason(f, task):
    """Field `f`'s reason, as `task`'s help gives it."""
    why = f.metadata["help"]
    return why[task] if isinstance(why, dict) else why


def rank_from_env():
    """This process's rank under horovodrun (its environment), 0 outside it."""
    for name in ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "KERAS_DISTRIBUTION_PROCESS_ID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def owner_of(flag_text, task):
    """The other task whose flag `flag_text` (`--depth` or `--depth=50`) is, or None."""
    name = flag_text.split("=")[0][2:].replace("-", "_")
    mine = {f.name for f in fields_of(task)}
    if name.startswith("no_") and name not in mine:  # --no-download: the negation of a switch
        name = name[3:]
    for other in ("resnet", "deepfm"):
        if other != task and name not in mine and name in {f.name for f in fields_of(other)}:
            return other
    return None


def fields_of(task):
    return [f for f in dataclasses.fields(Config) if task in f.metadata["tasks"]]


def defaults(task):
    return dataclasses.replace(Config(), **TASK_DEFAULTS[task])


def flag(name):
    return "--" + name.replace("_", "-")


def add_flags(parser, task, given_only=False):
    """One flag per field of `task`, with the field's reason as its help. With
    `given_only`, flags not on the command line are left out of the parsed namespace
    (what `--resume` compares with the run's own settings)."""
    import argparse

    base = defaults(task)
    for f in fields_of(task):
        default = getattr(base, f.name)
        kw = {"default": argparse.SUPPRESS if given_only else default,
              "help": f"{reason(f, task)} (default: {default})".replace("%", "%%")}  # argparse
        if f.metadata["choices"]:
            kw["choices"] = f.metadata["choices"]
        if isinstance(default, bool):
            parser.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, **kw)
        elif isinstance(default, list):
            parser.add_argument(flag(f.name), type=int, nargs="+", **kw)
        else:
            parser.add_argument(flag(f.name), type=f.metadata["parse"] or type(default), **kw)


def from_args(args, task):
    values = {f.name: getattr(args, f.name) for f in fields_of(task)}
    values["engine"] = engine_of(values["engine"])
    return dataclasses.replace(defaults(task), **values)


def validate(cfg, task):
    """Raises ValueError naming the first bad flag and its value. Cheap: no data is read."""
    def need(ok, name, rule):
        if not ok:
            raise ValueError(f"{flag(name)} {rule}. Received: {getattr(cfg, name)!r}")

    def finite(x):
        return isinstance(x, (int, float)) and math.isfinite(x)

    _check_engine(cfg, need)
    _check_adaptive(cfg, task, need, finite)
    for name in ("epochs", "ckpt_every", "log_every", "eval_batch", "commit_every",
                 "steps_per_execution"):
        need(getattr(cfg, name) >= 1, name, "must be >= 1")
    for name in ("micro_batch", "threads", "steps_per_epoch", "stop_after", "stop_after_updates", "keep", "diagnostics_every", "seed",
                 "shuffle_buffer", "ckpt_every_steps"):
        need(getattr(cfg, name) >= 0, name, "must be >= 0")
    need(finite(cfg.lr) and cfg.lr > 0, "lr", "must be a positive number")
    need(finite(cfg.power) and cfg.power > 0, "power", "must be a positive number")
    need(finite(cfg.warmup_epochs) and 0 <= cfg.warmup_epochs < cfg.epochs, "warmup_epochs",
         f"must be in [0, --epochs={cfg.epochs})")
    need(finite(cfg.warmup_start) and 0 <= cfg.warmup_start < cfg.lr, "warmup_start", f"must be in [0, --lr={cfg.lr})")
    need(finite(cfg.momentum) and 0 <= cfg.momentum < 1, "momentum", "must be in [0, 1)")
    need(finite(cfg.weight_decay) and cfg.weight_decay >= 0, "weight_decay", "must be a number >= 0")
    need(finite(cfg.trust_coefficient) and cfg.trust_coefficient > 0, "trust_coefficient", "must be a positive number")
    need(not (cfg.xla and cfg.deterministic), "xla", "cannot be combined with --deterministic: TensorFlow has no "
         "deterministic XLA version of some gradients (max pooling's)")
    need(all(0 < e < cfg.epochs for e in cfg.step_epochs) and cfg.step_epochs == sorted(set(cfg.step_epochs)),
         "step_epochs", f"must be increasing epochs in (0, --epochs={cfg.epochs})")
    need(finite(cfg.ckpt_every_minutes) and cfg.ckpt_every_minutes >= 0, "ckpt_every_minutes", "must be a number >= 0")
    need(finite(cfg.hang_timeout) and cfg.hang_timeout >= 0, "hang_timeout", "must be a number of seconds >= 0 (0: off)")
    for name in ("ckpt_every_steps", "ckpt_every_minutes", "stop_after_updates"):
        need(not (cfg.elastic and getattr(cfg, name)), name, "is not used with --elastic, which commits its state "
             "every --commit-every updates instead")
    need(not (cfg.elastic and cfg.steps_per_execution > 1), "steps_per_execution",
         "must be 1 with --elastic (its worker count, and so the micro-batches per update, can change)")
    need(not cfg.init_weights or os.path.isfile(cfg.init_weights), "init_weights", "is not a file")
    need(not cfg.init_weights or cfg.init_weights.endswith(".weights.h5"), "init_weights",
         "must be a .weights.h5 file (Keras' save_weights)")
    stop_signals(cfg.stop_signals)
    _check_logdir(cfg.logdir)
    if task == "resnet":
        need(cfg.image_size >= 8, "image_size", "must be >= 8")
        cifar = cfg.image_size <= 64
        if cfg.dataset == "imagenet":
            need(cfg.arch != "resnet" or cfg.depth in (18, 34, 50), "depth", "must be 18, 34 or 50 with --dataset imagenet")
            for name in ("validation_split", "train_subset", "test_subset"):
                need(not getattr(cfg, name), name, "is not supported with --dataset imagenet (its validation split "
                     "is the evaluation set)")
        elif cfg.arch == "resnet":
            need(cfg.depth in (18, 34, 50) if not cifar else (cfg.depth >= 8 and (cfg.depth - 2) % 6 == 0), "depth",
                 f"must be {'6n+2 (20, 32, 44, 56, 110)' if cifar else '18, 34 or 50'} for --image-size {cfg.image_size}")
        for name in ("num_classes", "train_subset", "test_subset"):
            need(getattr(cfg, name) >= 0, name, "must be >= 0")
        need(cfg.dataset != "synthetic" or cfg.num_classes != 1, "num_classes", "must be >= 2")
        need(finite(cfg.validation_split) and 0 <= cfg.validation_split < 1, "validation_split", "must be in [0, 1)")
        need(not cfg.data_dir or os.path.exists(cfg.data_dir), "data_dir", "does not exist")
        from keras_sngm_trainers.data import layouts  # file names only: no TensorFlow

        problem = layouts.check(cfg.data_dir, cfg.dataset)
        if problem:
            raise ValueError(problem)
    else:
        need(bool(cfg.data), "data", "is required: Criteo files, or 'synthetic'")
        need(cfg.data == "synthetic" or bool(_glob(cfg.data)), "data", "matches no file or directory")
        for name in ("test_data", "val_data"):
            need(not getattr(cfg, name) or bool(_glob(getattr(cfg, name))), name, "matches no file or directory")
        for name in ("train_rows",):
            need(getattr(cfg, name) >= 0, name, "must be >= 0")
        for name in ("hash_space", "embedding_dim"):
            need(getattr(cfg, name) >= 1, name, "must be >= 1")
        need(bool(cfg.hidden) and all(h >= 1 for h in cfg.hidden), "hidden", "must be one or more widths >= 1")
        need(finite(cfg.dropout) and 0 <= cfg.dropout < 1, "dropout", "must be in [0, 1)")
        need(not (cfg.data == "synthetic" and cfg.dense_transform == "minmax"), "dense_transform",
             "minmax is fitted on data files; --data synthetic has none")
        if cfg.loss_reduction == "sum":
            need(not adaptive(cfg), "loss_reduction", "sum cannot be combined with --batch-size auto: the sum's "
                 "scale, the batch, would change at every decision")
            need(not cfg.scale_lr, "loss_reduction", "sum cannot be combined with --scale-lr: the summed gradient "
                 "already grows with the batch, and the lr would grow with the workers on top")


def _check_engine(cfg, need):
    """The engine's backend and what it cannot do, before anything is imported."""
    import importlib.util

    backend = os.environ.get("KERAS_BACKEND", "")
    engine = engine_of(cfg.engine)
    if engine == "horovod":
        need(backend in ("", "tensorflow"), "engine", f"horovod runs on TensorFlow, and KERAS_BACKEND is {backend!r}: "
             "unset it, or choose --engine jax")
        return
    if importlib.util.find_spec("jax") is None:
        raise ValueError("--engine jax needs JAX, which is not installed: pip install \"keras-sngm[jax]\" (on a GPU "
                         "host, JAX with CUDA: pip install \"jax[cuda13]\")")
    need(backend in ("", "jax"), "engine", f"jax runs on Keras' JAX backend, and KERAS_BACKEND is {backend!r}: unset "
         "it or set it to jax")
    for name, why in JAX_REFUSES.items():
        need(not getattr(cfg, name), name, f"is not available on --engine jax: {why}")
    need(cfg.compression == "none", "compression", "is not available on --engine jax: the devices' gradients are "
         "averaged inside the compiled step, in the model's precision")
    need(not (cfg.on_nonfinite == "skip" and cfg.optimizer in ("adam", "lamb")), "on_nonfinite",
         f"skip is not available on --engine jax for {cfg.optimizer}: Keras' own optimizers apply a non-finite "
         "step there (use --engine horovod, or msgd, sngm, block_sngm or lars, which skip such steps themselves)")


def _check_adaptive(cfg, task, need, finite):
    """--batch-size auto and its knobs (the worker count from horovodrun's environment)."""
    if not adaptive(cfg):
        need(cfg.batch_size >= 1, "batch_size", "must be >= 1 or 'auto'")
        for name in ("batch_min", "batch_max"):
            need(not getattr(cfg, name), name, "is used only with --batch-size auto")
        need(cfg.lr_scaling == "default", "lr_scaling", "is used only with --batch-size auto (a fixed batch keeps "
             "--lr as given)")
        if cfg.micro_batch >= 0:  # before any import or data
            check_batch(cfg.batch_size, workers_from_env(), micro_batch_of(cfg, task, workers_from_env()))
        known = _known_train_examples(cfg)
        if known > 0 and cfg.batch_size > known:
            raise ValueError(f"--batch-size {cfg.batch_size} is larger than the {known} training examples "
                             f"({'--train-subset' if cfg.train_subset else '--dataset synthetic'}).")
        return
    from keras_sngm_trainers import batch_adapter

    for name in ("batch_min", "batch_max"):
        need(getattr(cfg, name) >= 1, name, "is required with --batch-size auto (a positive number of examples)")
    need(cfg.micro_batch >= 0, "micro_batch", "must be >= 0")
    need(cfg.adapt_every >= 1, "adapt_every", "must be >= 1")
    need(finite(cfg.adapt_factor) and cfg.adapt_factor > 0, "adapt_factor", "must be a positive number")
    workers = workers_from_env()  # (on the JAX engine each process's devices are known later: at least one)
    micro = micro_batch_of(cfg, task, workers)
    smallest = workers * micro if engine_of(cfg.engine) == "jax" else None
    try:
        batch_adapter.check(cfg.batch_min, cfg.batch_max, workers, micro, smallest)
        lr_gain(cfg.lr_scaling, cfg.optimizer)
    except ValueError as e:
        raise ValueError(str(e)) from None
    for name, why in (("elastic", "the elastic loop keeps the global batch fixed while workers come and go; "
                       "an adaptive batch on top of a changing worker count is not supported"),
                      ("steps_per_epoch", "an epoch is a pass over the data, whose updates depend on the batch"),
                      ("steps_per_execution", "the micro-batches per update change with the batch")):
        value = getattr(cfg, name)
        need(not value or (name == "steps_per_execution" and value == 1), name, f"cannot be combined with "
             f"--batch-size auto: {why}")


def _glob(pattern):
    import glob

    return os.path.exists(pattern) or glob.glob(pattern)


def _check_logdir(path):
    """The run directory must be a directory we can create and write (tried for real:
    permission bits say nothing for root or on a read-only file system)."""
    import tempfile

    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--logdir {path!r} exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ValueError(f"--logdir {path!r} is not writable ({e.strerror or e})") from None
