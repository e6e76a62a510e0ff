"""The `fit` calls of a run: which epoch, from which micro-batch, how many, with how many
micro-batches per update.

Keras counts micro-batches (one `train_step` each); an update ends after `k` of them.
The engine trains segment by segment and tells the callbacks, through `Progress`, where
each one starts, so that checkpoints, logs and the divergence guard find the update
boundaries whatever `k` is (with `--batch-size auto` it changes between segments).
"""

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Segment:
    """One `model.fit` call.

    epoch, epochs: fit's `initial_epoch` and `epochs` (a segment is several whole epochs,
        or part of one).
    start: micro-batches of `epoch` done before it, per worker (the data position).
    steps: micro-batches per worker in each of its epochs (`steps_per_epoch`).
    k: micro-batches per worker in each update.
    start_updates: updates of `epoch` done before it.
    closes: its last epoch runs to the epoch's end (validation, epoch logs, checkpoint).
    last: the invocation stops after it.
    """
    epoch: int
    epochs: int
    start: int
    steps: int
    k: int
    start_updates: int
    closes: bool
    last: bool


class Progress:
    """Where training is, shared by the engine (which sets it before each `fit`) and the
    callbacks (which only read it): the segment, the global batch of its updates and the
    examples seen before it."""

    def __init__(self, micro_batch, workers):
        self.per_micro = micro_batch * workers
        self.segment, self.examples_before = None, 0

    def begin(self, segment, examples_before):
        self.segment, self.examples_before = segment, examples_before

    @property
    def k(self):
        return self.segment.k

    @property
    def batch(self):
        return self.segment.k * self.per_micro

    def position(self, epoch, batch):
        """(updates, micro-batches) of `epoch` done after Keras' batch index `batch` (0-based)
        of this segment's epoch `epoch`."""
        first = epoch == self.segment.epoch
        start, start_updates = (self.segment.start, self.segment.start_updates) if first else (0, 0)
        return start_updates + (batch + 1) // self.k, start + batch + 1


def update_ranges(first_epoch, start, end_epoch, updates_per_epoch, max_updates=0):
    """The `fit` calls that train a fixed batch from update `start` of epoch `first_epoch`
    to the end of epoch `end_epoch`, or for `max_updates` updates: (initial_epoch, epochs,
    first update of the first epoch, last update of the last epoch). A call either covers
    whole epochs or one epoch, entered or left mid-way."""
    budget = max_updates or math.inf
    plan, e = [], first_epoch
    if start and e < end_epoch:
        n = min(updates_per_epoch - start, budget)
        plan.append((e, e + 1, start, start + n))
        budget -= n
        if start + n < updates_per_epoch:
            return plan
        e += 1
    whole = min(end_epoch - e, budget // updates_per_epoch)
    if whole > 0:
        plan.append((e, e + whole, 0, updates_per_epoch))
        e, budget = e + whole, budget - whole * updates_per_epoch
    if e < end_epoch and 0 < budget < updates_per_epoch:
        plan.append((e, e + 1, 0, budget))
    return plan


def fixed(first_epoch, start, end_epoch, updates_per_epoch, k, max_updates=0):
    """`update_ranges` as segments of `k` micro-batches per update."""
    plan = update_ranges(first_epoch, start, end_epoch, updates_per_epoch, max_updates)
    return [Segment(begin, stop, first * k, (last - first) * k, k, first, last == updates_per_epoch, i == len(plan) - 1)
            for i, (begin, stop, first, last) in enumerate(plan)]


class Stream:
    """The training data of an invocation, for one worker: `at(epoch, start)` is the
    dataset of a `fit` that begins at micro-batch `start` of `epoch`. A task whose
    `train_dataset` takes its position as variables (`position_variables`) builds it once
    and moves the variables; any other builds it per call."""

    def __init__(self, task, rank, size, micro_batch):
        self.build = lambda epoch, start: task.train_dataset(epoch, rank, size, micro_batch, start=start)
        self.position = None
        if getattr(task, "position_variables", False):
            import tensorflow as tf

            self.position = [tf.Variable(0, dtype=tf.int64, trainable=False) for _ in range(2)]
            self.dataset = self.build(*self.position)

    def at(self, epoch, start):
        if self.position is None:
            return self.build(epoch, start)
        for v, value in zip(self.position, (epoch, start)):
            v.assign(value)
        return self.dataset
