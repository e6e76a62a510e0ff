"""The divergence guard: a run whose loss or weights stop being finite ends, on every
rank at the same update, before a checkpoint could store the damage."""

import math

import keras

from keras_sngm_trainers import engines
from keras_sngm_trainers.checkpoint import optimizer_state, nonfinite


class Diverged(RuntimeError):
    """Training stopped because a loss or the weights became NaN or infinite."""


class DivergenceGuard(keras.callbacks.Callback):
    """Raises `Diverged` naming the epoch, update and quantity when

    - the training loss is not finite after an update (checked every update; under
      several processes the verdict is agreed by an allreduce, so every rank stops at once even
      when only one rank's batch overflowed), or
    - at an epoch end, the validation loss or any weight or optimizer variable is not
      finite (identical on every rank, so no communication is needed).

    Put it after metric averaging and before the checkpoint callback: a diverged epoch
    is then never saved, and rotation cannot delete the newest finite checkpoint.
    """

    def __init__(self, micro_steps_per_update):
        super().__init__()
        self.k = micro_steps_per_update  # an int, or the engine's keras_sngm_trainers.segments.Progress (its `k` now)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % getattr(self.k, "k", self.k):
            return
        loss = float((logs or {}).get("loss", 0.0))
        bad = not math.isfinite(loss)
        if engines.current().size() > 1:  # engine: one verdict for all ranks
            bad = engines.current().allreduce_mean([float(bad)], name="divergence_guard")[0] > 0
        if bad:
            raise Diverged(f"training loss is not finite ({loss} on this rank) at epoch {self.epoch + 1}, "
                           f"update {int(self.model.optimizer.iterations)}")

    def on_epoch_end(self, epoch, logs=None):
        val = (logs or {}).get("val_loss")
        if val is not None and not math.isfinite(float(val)):
            raise Diverged(f"validation loss is not finite ({float(val)}) after epoch {epoch + 1}")
        bad = nonfinite(self.model.weights + list(optimizer_state(self.model.optimizer)))
        if bad:
            raise Diverged(f"{len(bad)} weight/optimizer tensors are not finite after epoch {epoch + 1} "
                           f"(first: {bad[0]})")
