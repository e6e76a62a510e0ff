"""Logging callbacks for the trainers (rank 0 writes)."""

import time

import keras
import tensorflow as tf


class ProgressLogger(keras.callbacks.Callback):
    """Learning rate and throughput (examples/s, all workers) to the epoch logs and,
    every `every` updates, straight to TensorBoard (`<logdir>/train`)."""

    def __init__(self, logdir, global_batch, micro_steps_per_update, every=50, write=True):
        super().__init__()
        self.global_batch, self.k, self.every = global_batch, micro_steps_per_update, every
        self.writer = tf.summary.create_file_writer(f"{logdir}/train") if (write and logdir) else None

    def _lr(self):
        opt = self.model.optimizer
        lr = opt.learning_rate
        return float(keras.ops.convert_to_numpy(lr))

    def on_epoch_begin(self, epoch, logs=None):
        self.t_epoch = self.t_window = time.perf_counter()
        self.updates_epoch = self.updates_window = 0

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.k:
            return
        self.updates_epoch += 1
        self.updates_window += 1
        if self.writer is not None and self.updates_window >= self.every:
            now = time.perf_counter()
            step = int(self.model.optimizer.iterations)
            with self.writer.as_default(step=step):
                tf.summary.scalar("step/learning_rate", self._lr())
                tf.summary.scalar("step/examples_per_sec", self.updates_window * self.global_batch / (now - self.t_window))
                for k, v in (logs or {}).items():
                    tf.summary.scalar(f"step/{k}", float(v))
            self.writer.flush()
            self.t_window, self.updates_window = now, 0

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = self._lr()
            logs["examples_per_sec"] = self.updates_epoch * self.global_batch / (time.perf_counter() - self.t_epoch)
