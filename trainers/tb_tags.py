"""Every TensorBoard tag the trainers write, each once, with the description TensorBoard
shows under its chart: what it is, and at which update it was taken.

One step axis for `step/*` and `diagnostics/*`: step n is the n-th update, and a value at
step n is the one update n used (its learning rate, its batch) or the state after it (the
norms, the noise estimates). `epoch_*` (in `train/` and `validation/`) are on the epoch
axis, and only for what is not already logged per update.
"""

STEP = {
    "batch_size": "global batch of this update (examples, all workers)",
    "examples": "examples seen after this update (all workers)",
    "learning_rate": "the learning rate this update used",
    "examples_per_sec": "throughput since the previous point (examples per second, all workers)",
}
STEP_METRIC = "{name}: this epoch's running mean of the training {name}, after this update"

DIAGNOSTICS = {
    "grad_norm": "||g_t||: global norm of the averaged gradient this update used (after L2 weight decay)",
    "momentum_norm": "||u_t||: norm of the momentum after this update (SNGM: at most momentum_norm_bound, Lemma 2)",
    "momentum_norm_bound": "1/(1-beta): Lemma 2's bound on ||u_t|| for the normalized optimizers",
    "update_norm": "||w_t - w_(t+1)||: the step this update took (for SNGM lr*||u_t||, its effective learning rate)",
    "skipped_steps": "updates skipped so far for a non-finite gradient, after this update",
    "effective_lr": "lr/(1-beta): momentum SGD's effective learning rate for this update",
    "temperature": "lr/(B(1-beta)): the SGD temperature of this update (Smith et al. 2020)",
    "loss_scale": "float16 dynamic loss scale after this update",
    "overflow_skips": "updates skipped so far for a float16 overflow, after this update",
    "noise_g2": "|G|^2: unbiased estimate of the squared norm of the true gradient (moving average, after this "
                "update)",
    "noise_trace_sigma": "tr(Sigma): unbiased estimate of the per-example gradient variance (moving average, after "
                         "this update)",
    "noise_scale": "B_simple = tr(Sigma)/|G|^2 after this update: the critical batch estimate (McCandlish et al. "
                   "2018); compare step/batch_size",
    "gradient_diversity_bound": "1 + B_simple: Yin et al.'s bound on the batch up to which an update's progress "
                                "grows linearly, after this update",
    "block_grad_norms": "per-variable gradient norms this update used (one value per trainable variable)",
    "trust_ratios": "LARS trust ratios this update used (one value per trainable variable)",
}

# Epoch-log keys logged per update above: written once, there, and kept out of epoch_* (they
# stay in history.json).
PER_UPDATE = {"learning_rate", "examples_per_sec", "examples", "grad_norm", "momentum_norm", "noise_scale",
              "gradient_diversity_bound", "loss_scale", "overflow_skips"}
EPOCH = "{name} over epoch (step) + 1: {what}"


def step(name):
    return STEP.get(name) or STEP_METRIC.format(name=name)


def epoch(name, evaluation=None):
    """An epoch tag's description: `evaluation` is the evaluation set's name, None for training."""
    what = (f"on the {evaluation} set after the epoch's last update" if evaluation else
            "the training mean over the epoch's updates")
    return EPOCH.format(name=name, what=what)
