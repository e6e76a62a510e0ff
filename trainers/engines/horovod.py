"""The Horovod engine: TensorFlow, one process per device, `horovodrun` starts them.

Its Horovod calls live in `keras_sngm_trainers.distributed` (the Keras 3 layer over
`horovod.tensorflow`); this module answers the engine's questions with them
(see `keras_sngm_trainers.engines`).
"""

import contextlib

from keras_sngm_trainers import distributed, xla_step
from keras_sngm_trainers.distributed import (agreed, allgather_object, allreduce_max, allreduce_mean,
                                             broadcast_object, rank, size)

__all__ = ["agreed", "allgather_object", "allreduce_max", "allreduce_mean", "broadcast_object", "chief_io", "compile",
           "epoch_callbacks", "every_process_loads", "init", "local_replicas", "name", "optimizer", "rank", "size",
           "smallest_gradient", "start_callbacks"]
name = "horovod"
every_process_loads = False  # rank 0 reads a checkpoint; BroadcastCallback sends its weights to the others


def init(cfg):
    """Initializes Horovod (when present) and TensorFlow's threads; returns the threads."""
    threads = distributed.init(cfg.threads)
    if cfg.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    return threads


def local_replicas():
    return 1  # one device per process


def smallest_gradient(micro_batch):
    return micro_batch  # each process's own micro-batch gradient, before the allreduce


def optimizer(inner, cfg, k, auto):
    """Horovod's allreduce of the gradients, once per update after k micro-batches, around
    `inner`; float16's loss scale decided on the averaged gradient."""
    from keras_sngm_trainers import recipes

    return distributed.DistributedOptimizer(
        inner, accumulation_steps=k, compression=cfg.compression, micro_batch_size=cfg.micro_batch,
        skip_nonfinite=cfg.on_nonfinite == "skip" and cfg.optimizer in recipes.APPLY_NONFINITE,
        dynamic_loss_scale=cfg.precision == "mixed_float16", adaptive=auto)


def compile(model, opt, task, cfg):
    # No whole-model XLA: Horovod's ops are not XLA ops; the optimizers compile their own update.
    model.compile(optimizer=opt, loss=task.loss, metrics=task.metrics(), jit_compile=False,
                  steps_per_execution=cfg.steps_per_execution)
    if model.optimizer is not opt:
        # Keras wraps a mixed_float16 model's optimizer in its LossScaleOptimizer, which checks for overflow
        # before the allreduce, on each worker's own gradient: workers could disagree on a skip. Our wrapper
        # scales instead and decides on the averaged gradient (dynamic_loss_scale).
        model.optimizer = opt
    if cfg.xla:
        xla_step.compile_forward_backward(model)


def chief_io():
    return contextlib.nullcontext()  # rank 0 writes; nothing it does involves the others


def lost_peer(error):
    """Horovod ends a job whose worker is gone itself (horovodrun stops the others): no
    error of a collective is told apart here."""
    return False


def start_callbacks():
    return [distributed.BroadcastCallback()]  # rank 0's weights (and a resumed checkpoint) to every process


def epoch_callbacks():
    return [distributed.MetricAverageCallback()]  # each process's epoch logs averaged
