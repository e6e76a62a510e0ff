"""A signal stops a run cleanly: preemption on clusters.

SLURM sends SIGTERM (or the signal its `--signal` names) a while before it kills a job;
Kubernetes sends SIGTERM and waits out the pod's grace period; Ctrl-C is SIGINT. Each
signal `--stop-signals` names (default TERM,INT,USR1) is handled the same way:

1. the update in flight is finished: a signal never cuts an update short;
2. at that update's end all ranks agree, by one allreduce of the signal caught (it may
   have reached one rank only), to stop at the same update;
3. rank 0 writes a checkpoint there: a step checkpoint, or at an epoch's last update an
   epoch checkpoint after the epoch's evaluation;
4. every rank exits with status 128 + the signal's number (143 for SIGTERM, 130 for
   SIGINT, 138 for SIGUSR1), the status a shell reports for a process the signal ended,
   so a scheduler sees what it expects; `final.json` is not written.

`--resume` then continues from that checkpoint as if nothing had happened. A second
signal while stopping is reported and ignored. Checkpoints are written to a temporary
folder and renamed, so even a SIGKILL during the save leaves the previous one intact.

Under `horovodrun`: a signal to one worker stops them all (step 2); the other ranks wait
for rank 0's checkpoint before they exit. SIGTERM or SIGINT to horovodrun itself is
passed on to every worker as SIGTERM (Horovod 0.28 then waits 5 s before SIGKILL), which
stops the job the same way; horovodrun then exits 1, naming a worker's exit code 143, or
0 when its own termination of the workers wins the race (final.json marks a finished run).
"""

import signal
import sys

import keras

from keras_sngm_trainers import engines


def name(signum):
    return signal.Signals(signum).name


class Preempted(Exception):
    """Training stopped for a signal, after a checkpoint (`checkpoint`: its path on
    rank 0, None on the others)."""

    def __init__(self, signum, update, checkpoint):
        self.signum, self.update, self.checkpoint = signum, update, checkpoint
        super().__init__(f"stopped by {name(signum)} after update {update}")

    @property
    def exit_status(self):
        return 128 + self.signum


class StopRequest:
    """Catches `signums` from construction to `close()`. `caught` is the first signal this
    process received; `agreed`, set by the `agreement()` callback at each update's end, is
    the signal all ranks stop for (0: none)."""

    def __init__(self, signums, say=True):
        self.caught, self.agreed, self.saved, self.say = 0, 0, None, say
        self.active = bool(signums)  # (--stop-signals none: nothing to agree on, no allreduce)
        self._previous = {s: signal.signal(s, self._catch) for s in signums}

    def _catch(self, signum, frame):
        if self.caught:
            print(f"sngm-train: {name(signum)} received while stopping: ignored (the checkpoint is being written "
                  f"to a temporary folder, then renamed)", file=sys.stderr, flush=True)
            return
        self.caught = signum
        if self.say:
            print(f"sngm-train: {name(signum)} received: stopping at the end of the update in flight, with a "
                  f"checkpoint", file=sys.stderr, flush=True)

    def take_back(self):
        """Installs the handlers again: the JAX engine's distributed runtime installs its own
        SIGTERM handler (for its preemption notices) when the processes join."""
        for s in self._previous:
            signal.signal(s, self._catch)

    def close(self):
        """Restores the previous handlers, unless a signal was caught: then further ones
        stay ignored until the process exits (with 128 + the first one's number)."""
        for s, previous in self._previous.items():
            if self.caught:  # (SIG_IGN, not our handler: Python drops its handlers while it shuts down)
                previous = signal.SIG_IGN
            signal.signal(s, previous)
        self._previous = {}

    def agreement(self, progress):
        return _Agreement(self, progress)

    def exit(self, progress):
        return _Exit(self, progress)


def _update_ends(progress, batch):
    """(an update ends at Keras' batch index `batch`, it is the last of an epoch that closes)."""
    seg = progress.segment
    return (batch + 1) % seg.k == 0, batch + 1 == seg.steps and seg.closes


class _Agreement(keras.callbacks.Callback):
    """At every update's end: the largest signal number caught on any rank, so every rank
    takes the same decision at the same update. Put it before the checkpoint callback."""

    def __init__(self, request, progress):
        super().__init__()
        self.request, self.progress = request, progress

    def on_train_batch_end(self, batch, logs=None):
        if not self.request.active or not _update_ends(self.progress, batch)[0] or self.request.agreed:
            return
        caught = self.request.caught
        if engines.current().size() > 1:  # engine: one decision for all ranks (one scalar per update)
            caught = int(engines.current().allreduce_max([caught], name="stop_signal")[0])
        self.request.agreed = caught


class _Exit(keras.callbacks.Callback):
    """Raises `Preempted` once the checkpoint of the agreed stop is written: at the update's
    end, or at an epoch's last update after the epoch's end. Put it last."""

    def __init__(self, request, progress):
        super().__init__()
        self.request, self.progress = request, progress

    def on_train_batch_end(self, batch, logs=None):
        ends, closes = _update_ends(self.progress, batch)
        if ends and self.request.agreed and not closes:
            self._stop()

    def on_epoch_end(self, epoch, logs=None):
        if self.request.agreed:
            self._stop()

    def _stop(self):
        if engines.current().size() > 1:  # engine: wait for rank 0's checkpoint, so that no rank's exit makes horovodrun
            engines.current().allreduce_max([0.0], name="stop_saved")  # end rank 0 while it writes
        raise Preempted(self.request.agreed, int(self.model.optimizer.iterations), self.request.saved)
