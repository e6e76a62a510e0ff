"""Finding a hung run: `--hang-timeout SECONDS`, on either engine.

A data-parallel update ends only when every process's gradient has arrived. A peer that
is stopped (SIGSTOP, a frozen host, a hung GPU) or gone without a word leaves the others
waiting inside a collective (NCCL and gloo wait), for ever. `Heartbeat`, a callback, notes
each update's end; a watchdog thread of its own ends the process when no update has
finished for too long:

    sngm-train: error: no update has finished for 31 s (--hang-timeout 30), in update 9:
    a peer process is stopped or gone, or a device hangs. Exiting with status 6 ...

Status 6 (`HANG`) tells `sngm-train launch --max-restarts` (or a scheduler's requeue loop)
to restart the group, which then resumes from the newest checkpoint. The clock allows for
what is slow but alive: until the first update of each `fit` call ends (tracing and
compilation), and while the model is evaluated, the limit is `COMPILE_FACTOR` times the
timeout. The thread works while the main thread is blocked in a collective (JAX and
TensorFlow release the GIL while they wait).

Rank 0 also keeps `<logdir>/progress.json` ({"update": N}, after each update): how far the
run got, which the launcher sets against the checkpoint it restarts from (the updates lost).
"""

import json
import os
import sys
import threading
import time

import keras

HANG = 6  # the exit status of a process that found the run hung
LOST_PEER = 5  # the exit status of a process whose collective failed because a peer is gone
COMPILE_FACTOR = 3  # the first update of a `fit` call and the evaluation get this many timeouts
PROGRESS = "progress.json"

_state = {"update": 0}  # the update in flight (1-based), for the lost-peer message too


def update_in_flight():
    """The update this process is in (counted from 1 over the whole run), 0 before training."""
    return _state["update"]


def read_progress(run_dir):
    """The last update rank 0 finished, from `<run_dir>/progress.json` (None without one)."""
    try:
        with open(os.path.join(run_dir, PROGRESS)) as f:
            return int(json.load(f)["update"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class Heartbeat(keras.callbacks.Callback):
    """Notes every update's end; a daemon thread exits the process with status `HANG` when
    none has ended for `timeout` seconds (`COMPILE_FACTOR` times that while compiling or
    evaluating). 0 turns the watchdog off; the progress file is kept all the same.

    Args:
        run_dir: the run directory (rank 0 writes `progress.json` there).
        progress: the engine's `keras_sngm_trainers.segments.Progress` (micro-batches per update).
        timeout: seconds; 0 = off.
        write: whether this process writes the progress file.
        clock: seconds now (a test's own clock).
        exit: what ends the process (a test's own).
    """

    def __init__(self, run_dir, progress, timeout, write=True, clock=time.monotonic, exit=os._exit):
        super().__init__()
        self.path, self.progress, self.timeout, self.write = os.path.join(run_dir, PROGRESS), progress, timeout, write
        self.clock, self.exit = clock, exit
        self.last, self.slow, self.done = clock(), True, None
        self.lock, self.stopped = threading.Lock(), threading.Event()
        self.thread = None

    def _beat(self, slow):
        with self.lock:
            self.last, self.slow = self.clock(), slow

    def on_train_begin(self, logs=None):
        self.done = int(self.model.optimizer.iterations)  # then counted here: no variable read per update
        _state["update"] = self.done + 1
        self._beat(slow=True)
        if self.timeout and self.thread is None:
            self.stopped.clear()
            self.thread = threading.Thread(target=self._watch, name="sngm-hang-watchdog", daemon=True)
            self.thread.start()

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.progress.k:
            return
        self.done += 1
        _state["update"] = self.done + 1
        self._beat(slow=False)
        if self.write:
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"update": self.done}, f)
            os.replace(tmp, self.path)

    def on_test_begin(self, logs=None):
        self._beat(slow=True)

    def on_test_end(self, logs=None):
        self._beat(slow=True)  # the next update may compile again (after evaluation's own trace)

    def on_train_end(self, logs=None):
        self.stopped.set()
        self.thread = None

    def overdue(self):
        """(seconds since the last beat, the limit that applies) when past it, else None."""
        with self.lock:
            quiet, limit = self.clock() - self.last, self.timeout * (COMPILE_FACTOR if self.slow else 1)
        return (quiet, limit) if quiet > limit else None

    def _watch(self):
        while not self.stopped.wait(min(max(self.timeout / 10, 0.2), 5.0)):
            late = self.overdue()
            if late:
                print(f"sngm-train: error: no update has finished for {late[0]:.0f} s (--hang-timeout "
                      f"{self.timeout:g}{'' if late[1] == self.timeout else f', x{COMPILE_FACTOR} while compiling or evaluating'}"
                      f"), in update {update_in_flight()}: a peer process is stopped or gone, or a device hangs. "
                      f"Exiting with status {HANG} so that the launcher (--max-restarts) or the scheduler restarts "
                      "the run, which continues with --resume from its newest checkpoint.", file=sys.stderr, flush=True)
                self.exit(HANG)
                return
