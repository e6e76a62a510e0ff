"""Every TensorBoard tag the trainers write, each once, with the description TensorBoard
shows under its chart: what it is, and at which update it was taken.

One step axis for `step/*` and `diagnostics/*`: step n is the n-th update, and a value at
step n is the one update n used (its learning rate, its batch) or the state after it (the
norms, the noise estimates). `epoch_*` (in `train/` and `validation/`) are on the epoch
axis, and only for what is not already logged per update.
"""

from keras_sngm.summary import DIAGNOSTICS, STEP  # the tags SNGMDiagnostics writes too: one layout serves both

STEP_METRIC = "{name}: this epoch's running mean of the training {name}, after this update"

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
