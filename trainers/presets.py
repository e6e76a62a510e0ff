"""The study presets: the paper's protocols for GPU hosts, named after their source, and
the CPU studies that test its claims on 2 cores.

A preset is a list of arms (an optimizer at a batch size, the centre of its learning-rate
sweep, its own flags), the flags every run shares, the seeds, and the paper's published
numbers for the same cells. `sngm-train study` sweeps each arm the same way.

Where the paper names a value it is used as given; the sweep centres it does not give
(the journal's CIFAR and CTR learning rates) come from `base_lr` below, and the sweep
decides. Workers: every paper experiment ran on 8 GPUs, each computing B/8 examples,
accumulated in micro-batches of 128 when B/8 > 128: `--micro-batch min(128, B/8)`.
"""

import math


def base_lr(optimizer, batch, task):
    """This project's sweep centres (not the paper's numbers). ResNet MSGD: the linear
    scaling rule from 0.1 at B=128 (Goyal et al.). DeepFM MSGD: square-root scaling,
    because the linear rule put every B=8192 lr past divergence (measured). SNGM, LARS,
    Adam and LAMB: square-root scaling around the values below."""
    if task == "resnet":
        return {"msgd": 0.1 * batch / 128, "sngm": 1.6 * math.sqrt(batch / 4096),
                "block_sngm": 1.6 * math.sqrt(batch / 4096), "lars": 2.0 * math.sqrt(batch / 4096),
                "adam": 1e-3 * math.sqrt(batch / 128), "lamb": 1e-2 * math.sqrt(batch / 1024)}[optimizer]
    return {"msgd": 0.05, "sngm": 0.5, "block_sngm": 0.5, "lars": 5.0, "adam": 1e-3,
            "lamb": 1e-2}[optimizer] * math.sqrt(batch / 1024)


def arm(optimizer, batch, lr, flags=(), label=None, adaptive_to=None):
    """One (optimizer, batch) cell; `label` names variants of one optimizer (LARS with
    and without warm-up). With `adaptive_to`, the batch is `--batch-size auto` from `batch`
    (`--batch-min`) to `adaptive_to` (`--batch-max`)."""
    a = {"label": label or optimizer, "optimizer": optimizer, "batch": batch, "lr": lr, "flags": list(flags)}
    if adaptive_to:
        a["batch_max"] = adaptive_to
    return a


def grid(optimizers, batch_sizes, task, lr=None):
    """Every optimizer at every batch size, centred on `lr` or on `base_lr`."""
    return [arm(o, b, lr if lr is not None else base_lr(o, b, task)) for o in optimizers for b in batch_sizes]


# journal Table 2: ResNet-20 / CIFAR-10, test accuracy (%), 160 epochs, per-epoch cosine.
JOURNAL_T2 = {"source": "journal Table 2", "metric": "test accuracy (%)", "rows": {
    "msgd": {128: 92.42, 1024: 90.62, 2048: 89.78, 4096: 87.81, 8192: 83.93},
    "lars": {128: 92.47, 1024: 91.90, 2048: 91.05, 4096: 90.42, 8192: 87.07},
    "extrap-sgd": {128: 91.90, 1024: 90.41, 2048: 89.14, 4096: 88.35, 8192: 85.78},
    "clars": {128: 91.40, 1024: 91.22, 2048: 91.09, 4096: 89.99, 8192: 87.06},
    "sngm": {128: 92.52, 1024: 92.19, 2048: 91.80, 4096: 91.03, 8192: 89.23}}}

# journal Table 8: DeepFM / Criteo (10M rows), test AUC, 10 epochs, constant lr.
JOURNAL_T8 = {"source": "journal Table 8", "metric": "test AUC", "rows": {
    "msgd": {1024: 0.7397, 8192: 0.5}, "adam": {1024: 0.7311, 8192: 0.6666}, "lars": {1024: 0.6065, 8192: 0.6006},
    "lamb": {1024: 0.7066, 8192: 0.6811}, "sngm": {1024: 0.7489, 8192: 0.7514}}}

CIFAR_COMMON = ["--dataset", "cifar10", "--momentum", "0.9", "--weight-decay", "1e-4"]
# journal Table 8's protocol, and the conditions of the code the paper ran (DeepCTR-Torch 0.3.0).
CTR_COMMON = ["--epochs", "10", "--momentum", "0.9", "--weight-decay", "1e-3", "--schedule", "constant",
              "--embedding-dim", "4", "--hidden", "256", "128"]
PAPER_CTR_CONDITIONS = ["--deepfm-variant", "deepctr", "--loss-reduction", "sum", "--dense-transform", "minmax"]


def _v1(depth, lrs, acc):
    """v1 Table 2 for one depth: MSGD B=128 with He et al.'s steps (lr/10 at epochs 80
    and 120 of 160) against B=4096 with the poly schedule, the v1 learning rates as the
    sweep centres."""
    poly = ["--schedule", "poly", "--power", "1.1"]
    arms = [arm("msgd", 128, lrs["msgd128"], ["--schedule", "step", "--lr-per-epoch"]),
            arm("msgd", 4096, lrs["msgd"], poly),
            arm("lars", 4096, lrs["lars"], poly),
            arm("lars", 4096, lrs["lars-warmup"], ["--schedule", "poly", "--power", "2", "--warmup-epochs", "5",
                                                     "--warmup-start", "0.1"], label="lars-warmup"),
            arm("sngm", 4096, lrs["sngm"], poly)]
    rows = {}
    for (label, b), v in acc.items():
        rows.setdefault(label, {})[b] = v
    return dict(task="resnet", arms=arms, seeds=[0], lr_factors=[0.5, 1.0, 2.0], extend_edges=1, workers=8,
                flags=["--depth", str(depth), *CIFAR_COMMON, "--epochs", "160", "--validation-split", "0.1"],
                paper={"source": "v1 Table 2", "metric": f"ResNet-{depth} test accuracy (%)",
                       "rows": rows}, paper_inline=True)


PRESETS = {
    # journal Table 2, for an 8-GPU host: MSGD, LARS, SNGM and block-wise SNGM (the
    # theory's comparison) at every batch size of the table.
    "paper-cifar": dict(task="resnet", arms=grid(["msgd", "lars", "sngm", "block_sngm"], [128, 1024, 2048, 4096, 8192],
                                                 "resnet"),
                        seeds=[0], lr_factors=[0.5, 1.0, 2.0], extend_edges=1, workers=8,
                        flags=["--depth", "20", *CIFAR_COMMON, "--epochs", "160", "--schedule", "cosine",
                               "--lr-per-epoch", "--validation-split", "0.1"],
                        paper=JOURNAL_T2, paper_inline=True),
    "paper-cifar-v1": _v1(20, {"msgd128": 0.1, "msgd": 0.4, "lars": 0.8, "lars-warmup": 2.4, "sngm": 1.6},
                          {("msgd", 128): 91.63, ("msgd", 4096): 89.25, ("lars", 4096): 90.66,
                           ("lars-warmup", 4096): 90.80, ("sngm", 4096): 91.42}),
    "paper-cifar-v1-resnet56": _v1(56, {"msgd128": 0.1, "msgd": 0.3, "lars": 0.64, "lars-warmup": 2.8, "sngm": 1.3},
                                   {("msgd", 128): 93.11, ("msgd", 4096): 88.55, ("lars", 4096): 92.46,
                                    ("lars-warmup", 4096): 92.98, ("sngm", 4096): 93.12}),
    # journal Table 8: lr from {0.001, 0.01, 0.1} on validation (centre 0.01 x {0.1, 1, 10},
    # plus one step past an edge), no decay, no warm-up, 10 epochs, wd 1e-3, momentum 0.9,
    # under the conditions the paper's code had: DeepCTR-Torch's DeepFM at its defaults
    # (embeddings of 4, DNN 256-128), its summed loss, and DeepCTR's Criteo example's
    # min-max dense features. The Criteo files are the user's: --data, --val-data and
    # --test-data after the preset.
    "paper-ctr": dict(task="deepfm", arms=grid(["msgd", "adam", "lars", "lamb", "sngm"], [1024, 8192], "deepfm", lr=0.01),
                      seeds=[0], lr_factors=[0.1, 1.0, 10.0], extend_edges=1, workers=1, micro_batch=1024,
                      flags=[*CTR_COMMON, *PAPER_CTR_CONDITIONS],
                      paper=JOURNAL_T8, paper_inline=True),
}

# paper_inline: the paper's number goes into our table's cell only where the setup is the
# paper's; the CPU studies show the published table below theirs, in the same layout.

# The paper-ctr protocol on planted-truth Criteo-format rows (generated into <out>/data):
# 200k train, and the paper's split around it (20% test, the rest 4:1 train/validation).
# The lr is chosen on seed 0; the chosen lr is then run with seeds 1 and 2.
# Our DeepFM, the averaged loss and log1p dense features (what docs/results.md first measured).
PRESETS["cpu-ctr"] = dict(PRESETS["paper-ctr"], seeds=[0, 1, 2], sweep_seeds=1, data_rows=(200_000, 50_000, 62_500),
                          paper_inline=False,  # other data: the published table is shown below ours, not in it
                          flags=CTR_COMMON + ["--hash-space", "131072", "--shuffle-buffer", "50000"])
# The same rows and protocol under the paper's conditions (`paper-ctr`'s): DeepCTR-Torch's
# DeepFM (a table of 16,384 hashed ids per field, where it label-encodes), the summed loss,
# min-max dense features. MSGD and SNGM also with the averaged loss ("-mean"), to show what
# the sum does to each at both batches. One micro-batch per update (DeepFM has no batch
# statistics, so this changes only the summation order, and it is the fastest on 2 cores).
PRESETS["cpu-ctr-paper"] = dict(
    PRESETS["cpu-ctr"], micro_batch=8192, flags=CTR_COMMON + PAPER_CTR_CONDITIONS + ["--hash-space", "16384", "--shuffle-buffer", "50000"],
    arms=grid(["msgd", "sngm"], [1024, 8192], "deepfm", lr=0.01)
    + [arm(o, b, 0.01, ["--loss-reduction", "mean"], label=f"{o}-mean") for o in ("msgd", "sngm") for b in (1024, 8192)])

# CIFAR-10 on 2 cores: the two-convolution net on a fixed 7,000-image subset (15% held out
# for validation: 5,950 train), 37 epochs, so the largest batch, 512, is 8.6% of the
# training set and still gets 11 x 37 = 407 updates; the journal's per-epoch cosine, no
# warm-up. MSGD, LARS and SNGM at B = 128 and 512; block-wise SNGM at 512 for the
# training-loss comparison with SNGM. The lr is chosen on seed 0, then run with seed 1.
# Up to 4 extensions past an edge: the linear scaling rule centres this BN-free net's
# MSGD far above its best (measured: lr 0.1 at B=128 leaves it at chance).
PRESETS["cpu-cifar"] = dict(
    task="resnet", arms=grid(["msgd", "lars", "sngm"], [128, 512], "resnet") + grid(["block_sngm"], [512], "resnet"),
    seeds=[0, 1], sweep_seeds=1, lr_factors=[0.5, 1.0, 2.0], extend_edges=4, workers=1,
    flags=["--arch", "twoconv", *CIFAR_COMMON, "--train-subset", "7000", "--test-subset", "4000",
           "--validation-split", "0.15", "--epochs", "37", "--schedule", "cosine", "--lr-per-epoch"],
    paper=JOURNAL_T2)

# ---------------------------------------------------------------- ImageNet, for GPU hosts
# The ImageNet runs read the user's copy: `--data-dir` (TFRecord shards, an image folder,
# or the ILSVRC tars for tensorflow-datasets) after the preset. ImageNet's test labels are
# not public: the paper reports the validation set, and so do these presets (the v1 lrs
# are used as published, without a sweep; Table 4's are swept on it, as the paper must
# have). Checkpoints every 30 minutes, so a preempted run loses at most that.
IMAGENET_COMMON = ["--dataset", "imagenet", "--image-size", "224", "--epochs", "90", "--momentum", "0.9",
                   "--weight-decay", "1e-4", "--eval-batch", "250", "--ckpt-every-minutes", "30"]

V1_T3 = {18: {("msgd", 256): 69.71, ("sngm", 8192): 69.65}, 50: {("msgd", 256): 75.70, ("sngm", 8192): 75.42}}

# journal Table 4: ResNet-50, 90 epochs, warm-up and poly for both, top-1 (%).
JOURNAL_T4 = {"source": "journal Table 4", "metric": "ResNet-50 top-1 validation accuracy (%)", "rows": {
    "lars": {1024: 76.77, 32768: 75.77}, "sngm": {1024: 76.72, 32768: 76.16}}}


def _v1_imagenet(depth):
    """v1 Table 3: He et al.'s MSGD (B=256, lr 0.1, /10 after epochs 30 and 60, stepped per
    epoch) against SNGM at B=8192 (lr 0.8, poly power 2, no warm-up), micro-batch 128.
    The 90 epochs are He et al.'s; v1 does not state them."""
    rows = {}
    for (label, b), v in V1_T3[depth].items():
        rows.setdefault(label, {})[b] = v
    return dict(task="resnet", seeds=[0], lr_factors=[1.0], extend_edges=0, workers=8,
                arms=[arm("msgd", 256, 0.1, ["--schedule", "step", "--step-epochs", "30", "60", "--lr-per-epoch"]),
                      arm("sngm", 8192, 0.8, ["--schedule", "poly", "--power", "2"])],
                flags=["--depth", str(depth), *IMAGENET_COMMON],
                paper={"source": "v1 Table 3", "metric": f"ResNet-{depth} top-1 validation accuracy (%)", "rows": rows},
                paper_inline=True)


PRESETS["paper-imagenet"] = _v1_imagenet(50)
PRESETS["paper-imagenet-resnet18"] = _v1_imagenet(18)

# journal Table 4: LARS and SNGM at B = 1024 and 32768. The paper names neither the lrs,
# the warm-up length nor the poly power: 5 warm-up epochs (Goyal et al.) and power 2
# (v1's ImageNet SNGM) here; sweep centres are ours, square-root scaled from v1's SNGM
# 0.8 at B=8192 and from LARS 16 at B=32768 (MLPerf-style LARS rates are 10-30 there).
PRESETS["paper-imagenet-32k"] = dict(
    task="resnet", seeds=[0], lr_factors=[0.5, 1.0, 2.0], extend_edges=1, workers=8,
    arms=[arm(o, b, round(centre * math.sqrt(b / ref), 4), ["--schedule", "poly", "--power", "2", "--warmup-epochs", "5"])
          for o, centre, ref in (("lars", 16.0, 32768), ("sngm", 0.8, 8192)) for b in (1024, 32768)],
    flags=["--depth", "50", *IMAGENET_COMMON], paper=JOURNAL_T4, paper_inline=True)

# The adaptive batch on cpu-cifar's net, data, epochs and schedule: SNGM at fixed 128 and
# 512 and growing from 128 to 1024 with the noise scale (--adapt-every 50, factor 1: the
# critical batch), MSGD at fixed 128 and growing with its default AdaScale gain. Every
# arm sweeps its lr by the study's rule (x {0.5, 1, 2} on validation, seed 0, up to 4
# extensions past an edge), centred on the lr cpu-cifar chose for the same optimizer at
# the same (starting) batch by that rule (to 3 figures); seed 1 runs at the chosen lr. Micro-batches of
# 64, so that B=128 has two micro-batch gradients per update, the noise scale's minimum
# (the two-convolution net has no batch normalization: the micro-batch changes only the
# summation order, not the update).
CPU_CIFAR_CHOSEN = {("sngm", 128): 0.0707, ("sngm", 512): 0.141, ("msgd", 128): 0.0125}
PRESETS["cpu-cifar-adaptive"] = dict(
    PRESETS["cpu-cifar"], micro_batch=64, paper=None,
    arms=[arm("sngm", 128, CPU_CIFAR_CHOSEN[("sngm", 128)], label="sngm-auto", adaptive_to=1024),
          arm("sngm", 128, CPU_CIFAR_CHOSEN[("sngm", 128)]),
          arm("sngm", 512, CPU_CIFAR_CHOSEN[("sngm", 512)]),
          arm("msgd", 128, CPU_CIFAR_CHOSEN[("msgd", 128)], label="msgd-auto", adaptive_to=1024),
          arm("msgd", 128, CPU_CIFAR_CHOSEN[("msgd", 128)])])

# The same on cpu-ctr's planted rows, protocol and 10 epochs: SNGM at fixed 1024 and 8192
# and growing from 1024 to 8192, MSGD at fixed 1024 and growing (AdaScale gain), each
# swept over the paper's grid {0.001, 0.01, 0.1} (plus one step past an edge) on seed 0,
# then seeds 1 and 2 at the chosen lr. Micro-batches of 512: two per update at B=1024.
PRESETS["cpu-ctr-adaptive"] = dict(
    PRESETS["cpu-ctr"], micro_batch=512, paper=None,
    arms=[arm("sngm", 1024, 0.01, label="sngm-auto", adaptive_to=8192), arm("sngm", 1024, 0.01),
          arm("sngm", 8192, 0.01), arm("msgd", 1024, 0.01, label="msgd-auto", adaptive_to=8192),
          arm("msgd", 1024, 0.01)])
