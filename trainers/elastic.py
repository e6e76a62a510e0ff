"""Elastic training: workers may leave or join while the job runs.

    horovodrun --gloo -np 4 --min-np 2 --max-np 8 --host-discovery-script ./hosts.sh \
        sngm-train resnet --elastic --commit-every 20 ...

Built on `horovod.tensorflow.elastic` (Horovod's Keras helpers target Keras 2): our
`KerasState` holds the model's and the optimizer's variables and the position of
training (updates done), committed in memory every `--commit-every` updates and at
epoch ends. When a worker dies, the survivors roll back to the last commit; when the
worker set changes, everyone re-syncs from rank 0 and the loop goes on with the new
number of workers and the **same global batch**: each worker accumulates more (or fewer)
micro-batches, and the gradient is still averaged over all of them before the
optimizer, so SNGM's norm is still the global one. The data position is exact: epoch e
is a pure function of (seed, e) and update u starts at global micro-batch u*B/micro,
whatever the number of workers. Rank 0 writes a checkpoint at every epoch end.

It logs as the standard loop does: the per-update TensorBoard scalars (`step/*`), the
diagnostics (`diagnostics/*`), the progress lines with their ETA, on one step axis (the
update count). After a rollback the updates since the last commit are done again and
logged again: TensorBoard then holds two points at those steps, the later one current.
"""

import json
import os

import keras
import numpy as np
import tensorflow as tf

from keras_sngm_trainers import checkpoint, distributed, recipes, segments
from keras_sngm_trainers.callbacks import DiagnosticsLogger, ProgressLogger
from keras_sngm_trainers.guard import DivergenceGuard

import horovod.tensorflow as hvd  # HVD
from horovod.common.elastic import ObjectState  # HVD
from horovod.common.exceptions import HorovodInternalError  # HVD


class KerasState(ObjectState):  # HVD
    """Keras 3 model + optimizer variables (and `update`, the updates done) for
    `hvd.elastic.run`: saved on `commit()`, restored after a failure, broadcast from
    rank 0 after a reset."""

    def __init__(self, model, optimizer, **kwargs):
        self.model, self.optimizer = model, optimizer
        self._save_variables()
        super().__init__(bcast_object=hvd.broadcast_object, get_rank=hvd.rank, **kwargs)  # HVD

    def _variables(self):
        return list(self.model.variables) + list(self.optimizer.variables)

    def _save_variables(self):
        self._saved = [np.array(keras.ops.convert_to_numpy(v.value)) for v in self._variables()]

    def save(self):
        self._save_variables()
        super().save()

    def restore(self):
        for v, value in zip(self._variables(), self._saved):
            v.assign(value)
        super().restore()

    def sync(self):
        if hvd.size() > 1:  # HVD
            hvd.broadcast_variables([v.value for v in self._variables()], root_rank=0)  # HVD
        self._save_variables()
        super().sync()


def train(cfg, task, model, inner, compile_fn, updates_per_epoch, run_dir, extra, first_update=0, schedule=None):
    """Runs updates `first_update`..`cfg.epochs * updates_per_epoch` elastically; returns
    the updates done.

    `compile_fn(optimizer)` compiles `model` with a Horovod-wrapped optimizer; it is
    called again, with the new accumulation, after every change of workers. `schedule`
    is the lr schedule the loggers report.
    """
    inner.build(model.trainable_variables)
    total = cfg.epochs * updates_per_epoch
    state = KerasState(model, inner, update=first_update)

    @hvd.elastic.run  # HVD: re-entered after a reset, with `state` restored or synced
    def loop(state):
        rank, size = hvd.rank(), hvd.size()  # HVD
        if cfg.batch_size % (size * cfg.micro_batch):
            raise ValueError(f"--batch-size {cfg.batch_size} is not divisible by {size} workers x --micro-batch "
                             f"{cfg.micro_batch}: choose sizes that divide it for every worker count")
        k = cfg.batch_size // (size * cfg.micro_batch)
        opt = distributed.DistributedOptimizer(inner, accumulation_steps=k, compression=cfg.compression,  # HVD
                                               micro_batch_size=cfg.micro_batch,
                                               skip_nonfinite=cfg.on_nonfinite == "skip"
                                               and cfg.optimizer in recipes.APPLY_NONFINITE,
                                               dynamic_loss_scale=cfg.precision == "mixed_float16")
        compile_fn(opt)
        task.micro_steps_per_epoch = updates_per_epoch * k
        if rank == 0:  # (rare: at the start and after each change of workers)
            print(f"elastic: {size} workers x {k} micro-batches of {cfg.micro_batch} per update, from update "
                  f"{state.update} of {total}", flush=True)
        progress = segments.Progress(cfg.micro_batch, size)  # the loggers of the standard loop, on rank 0 now
        loggers = [ProgressLogger(run_dir, progress, cfg.log_every, write=rank == 0, schedule=schedule,
                                  total_examples=total * cfg.batch_size, total_updates=total,
                                  show=cfg.verbose and rank == 0)]
        if cfg.diagnostics_every:
            loggers.append(DiagnosticsLogger(run_dir, progress, cfg.diagnostics_every, write=rank == 0,
                                             schedule=schedule))
        while state.update < total:
            epoch, done = divmod(state.update, updates_per_epoch)
            n = min(cfg.commit_every, updates_per_epoch - done)
            data = task.train_dataset(epoch, rank, size, cfg.micro_batch).skip(done * k)  # exact position
            progress.begin(segments.Segment(epoch, epoch + 1, done * k, n * k, k, done, done + n == updates_per_epoch,
                                            False), state.update * cfg.batch_size)
            try:
                model.fit(data, initial_epoch=epoch, epochs=epoch + 1, steps_per_epoch=n * k, verbose=0,
                          shuffle=False, callbacks=loggers + [DivergenceGuard(k)])
            except tf.errors.OpError as e:  # a collective failed: a worker left
                if "Horovod" in str(e) or "horovod" in str(e):
                    raise HorovodInternalError(e) from None  # HVD: roll back to the last commit
                raise
            state.update += n
            if state.update % updates_per_epoch == 0 and rank == 0:
                checkpoint.save(run_dir, model, opt, state.update // updates_per_epoch, cfg.keep, extra)
            state.commit()  # HVD: in memory; raises if workers left or joined
        return size

    workers = loop(state)
    with open(os.path.join(run_dir, f"elastic-rank{hvd.rank()}.json"), "w") as f:  # HVD
        weights = [np.asarray(keras.ops.convert_to_numpy(w)) for w in model.trainable_weights]
        json.dump({"rank": hvd.rank(), "workers": workers, "updates": int(state.update),  # HVD
                   "finite": bool(all(np.all(np.isfinite(w)) for w in weights)),
                   "weights_sum": float(sum(np.sum(w.astype(np.float64)) for w in weights)),
                   "weights_abs_sum": float(sum(np.sum(np.abs(w.astype(np.float64))) for w in weights))}, f)
    return state.update

