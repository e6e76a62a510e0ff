"""What an update costs on this worker, measured for the planner (`sngm-train plan`).

Every micro-batch is timed from the end of the one before (so the callbacks' own time is
counted, as it is in a real run); the micro-batch that closes an update also carries the
allreduce, the optimizer step and the per-update logging. The run directory's
`timing.json` keeps the medians:

    micro_seconds       a micro-batch that does not close its update: forward + backward
    last_micro_seconds  one that does
    step_seconds        their difference: allreduce + optimizer step + per-update work
    update_seconds      a whole update, per micro-batches-per-worker count k

Medians over the updates after the first `skip` of each invocation (tracing and
compilation), leaving out each `fit` call's and each epoch's first update (iterator
start, evaluation).
"""

import collections
import json
import os
import statistics
import time

import keras

KEEP = 20_000  # samples kept per kind: the newest, for the medians


class UpdateTimer(keras.callbacks.Callback):
    """Times every micro-batch and writes `<run_dir>/timing.json` at the end of each
    `fit` call (rank 0 writes).

    Args:
        run_dir: the run directory.
        progress: the engine's `keras_sngm_trainers.segments.Progress` (micro-batches per update).
        skip: updates of each invocation left out of the medians (tracing).
        write: whether this process writes the file.
        facts: what to record beside the times (workers, micro-batch, threads, ...).
        clock: seconds now (a test's own clock).
    """

    def __init__(self, run_dir, progress, skip=5, write=True, facts=None, clock=time.perf_counter):
        super().__init__()
        self.clock = clock
        self.path = os.path.join(run_dir, "timing.json")
        self.progress, self.skip, self.write, self.facts = progress, skip, write, dict(facts or {})
        self.inner, self.last = collections.deque(maxlen=KEEP), collections.deque(maxlen=KEEP)
        self.updates = collections.defaultdict(lambda: collections.deque(maxlen=KEEP))
        self.seen = 0  # updates of this invocation

    def _restart(self):
        self.t_prev, self.clean, self.current = None, False, []

    def on_train_begin(self, logs=None):
        self._restart()

    def on_epoch_begin(self, epoch, logs=None):
        self._restart()

    def on_train_batch_end(self, batch, logs=None):
        now = self.clock()
        if self.t_prev is not None:
            self.current.append(now - self.t_prev)
        self.t_prev = now
        k = self.progress.k
        if (batch + 1) % k:
            return
        self.seen += 1
        if self.clean and self.seen > self.skip and len(self.current) == k:
            self.inner.extend(self.current[:-1])
            self.last.append(self.current[-1])
            self.updates[k].append(sum(self.current))
        self.clean, self.current = True, []  # the next update starts at this one's end

    def summary(self):
        def median(values):
            return statistics.median(values) if values else None

        micro, last = median(self.inner), median(self.last)
        return {**self.facts, "updates_timed": sum(len(v) for v in self.updates.values()),
                "skipped_first_updates": self.skip, "micro_seconds": micro, "last_micro_seconds": last,
                "step_seconds": None if micro is None or last is None else last - micro,
                "by_micro_batches": {str(k): {"updates": len(v), "update_seconds": median(v)}
                                     for k, v in sorted(self.updates.items())}}

    def on_train_end(self, logs=None):
        if self.write and any(self.updates.values()):
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.summary(), f, indent=1)
            os.replace(tmp, self.path)
