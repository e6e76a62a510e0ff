"""`--batch-size auto`: the global batch follows the measured gradient noise scale.

McCandlish et al. (2018): B_simple = tr(Sigma) / |G|^2 estimates the critical batch, where
a larger batch stops saving updates; it grows as the loss falls. Every `--adapt-every`
updates the engine asks `BatchAdapter.decide` for the next batch, from the noise-scale
averages that every worker holds identically (they are computed from allreduced values),
so every worker takes the same decision without communicating. The rule:

1. no decision while the estimate is unresolved (|G|^2 <= 0) or holds fewer updates than
   the averages' time constant 1/(1 - ema) (20 at the trainers' 0.95);
2. target = c * B_simple (c = `--adapt-factor`; 1 is the critical batch);
3. the batch only grows, and only when the target is at least 10% above it (hysteresis:
   the estimate is noisy, and a batch that oscillated was AdaptDL's issue 27);
4. at most doubling per decision: new = min(target, 2 B);
5. rounded down to a multiple of workers x micro-batch, clipped to [--batch-min, --batch-max].

The batch grows by accumulating more micro-batches per update (one allreduce per update
still). An epoch stays `rounds_per_epoch` micro-batches per worker, the epoch of the
fixed `--batch-min` run; its last update takes the micro-batches left when fewer than a
whole batch remain, so every epoch ends at the same example as the fixed run's.
"""

import math

from keras_sngm_trainers.segments import Segment

YOUNG_AFTER = 20  # updates in the noise averages before they are trusted: 1 / (1 - 0.95)


def check(batch_min, batch_max, workers, micro_batch, smallest=None):
    """Raises ValueError naming the flag and the value when the range cannot work.
    `smallest`: the examples of the smallest gradient the engine's optimizer sees (one
    worker's micro-batch on Horovod; on the JAX engine a train step over all workers)."""
    quantum, smallest = workers * micro_batch, smallest or micro_batch
    if batch_min > batch_max:
        raise ValueError(f"--batch-min {batch_min} is above --batch-max {batch_max}")
    if batch_min < 2 * smallest:
        least = -(-2 * smallest // quantum) * quantum
        seen = (f"micro-batch gradients per update (each is already the mean over the {workers} workers' "
                f"micro-batches, {smallest} examples)" if smallest != micro_batch else
                f"micro-batch gradients per update over {workers} worker(s) x --micro-batch {micro_batch}")
        raise ValueError(f"--batch-min {batch_min} gives fewer than two {seen}: the noise scale needs two batch "
                         f"sizes; use at least {least}")
    for name, value in (("batch_min", batch_min), ("batch_max", batch_max)):
        if value % quantum:
            raise ValueError(f"--{name.replace('_', '-')} {value} is not a multiple of workers x micro-batch = "
                             f"{workers} x {micro_batch} = {quantum}")


def next_batch(batch, noise, batch_min, batch_max, quantum, factor=1.0, young_after=YOUNG_AFTER):
    """The batch after one decision (rules 1-5 above). `noise`: a dict with "g2", "b_simple"
    and "estimates" (`DistributedOptimizer.noise_scale()`), or None."""
    if not noise or not noise["g2"] > 0 or not math.isfinite(noise["b_simple"]) or noise["estimates"] < young_after:
        return batch  # unresolved or too young
    target = factor * noise["b_simple"]
    if target < 1.1 * batch:
        return batch  # it only grows, and not for less than 10%
    new = int(min(target, 2 * batch)) // quantum * quantum
    return max(batch_min, min(batch_max, max(new, batch)))


class BatchAdapter:
    """The batch in use and its history; `state()` goes into checkpoints.

    Args:
        batch_min, batch_max: the range (multiples of `quantum`).
        quantum: workers x micro-batch.
        every: updates between decisions.
        factor: target = factor * B_simple.
        rounds_per_epoch: micro-batches per worker in an epoch.

    References:
        - [McCandlish et al., 2018](https://arxiv.org/abs/1812.06162), "An Empirical Model
          of Large-Batch Training".
        - [Qiao et al., 2021](https://www.usenix.org/conference/osdi21/presentation/qiao),
          "Pollux: Co-adaptive Cluster Scheduling for Goodput-Optimized Deep Learning".
    """

    def __init__(self, batch_min, batch_max, quantum, every, factor, rounds_per_epoch):
        self.batch_min, self.batch_max, self.quantum = batch_min, batch_max, quantum
        self.every, self.factor, self.rounds_per_epoch = every, factor, rounds_per_epoch
        self.batch = batch_min
        self.decisions = []  # every change: {"update", "examples", "batch_size", "b_simple", "from"}
        self.runs = []  # [first update, updates, global batch, examples before]: every update's batch
        self.decided_at = 0  # the update after which the last decision was taken

    @property
    def k(self):
        return self.batch // self.quantum

    def decide(self, update, examples, noise):
        """The decision due after `update` updates (`examples` seen); returns the batch."""
        self.decided_at = update
        new = next_batch(self.batch, noise, self.batch_min, self.batch_max, self.quantum, self.factor)
        if new != self.batch:
            self.decisions.append({"update": update, "examples": examples, "batch_size": new, "from": self.batch,
                                   "b_simple": noise["b_simple"]})
            self.batch = new
        return new

    def record(self, first_update, updates, batch, examples_before, runs=None):
        runs = self.runs if runs is None else runs
        last = runs[-1] if runs else None
        if last and last[2] == batch and last[0] + last[1] == first_update:
            last[1] += updates
        elif updates:
            runs.append([first_update, updates, batch, examples_before])
        return runs

    def updates_done(self):
        return sum(r[1] for r in self.runs)

    def state(self, pending=None):
        """What a checkpoint holds; `pending` (a run in flight) is counted as done."""
        runs = [list(r) for r in self.runs]
        if pending:
            self.record(*pending, runs=runs)
        return {"batch": self.batch, "decisions": list(self.decisions), "runs": runs, "decided_at": self.decided_at,
                "quantum": self.quantum}

    def load(self, state):
        if state["quantum"] != self.quantum:  # its data position counts micro-batches per worker
            raise ValueError(f"the checkpoint of this --batch-size auto run was written with workers x micro-batch = "
                             f"{state['quantum']}, not {self.quantum}: resume it on the same number of workers")
        self.batch, self.decisions = state["batch"], list(state["decisions"])
        self.runs, self.decided_at = [list(r) for r in state["runs"]], state["decided_at"]

    def plan(self, epoch, start, start_updates, end_epoch, max_updates, run, noise):
        """Trains from micro-batch `start` of `epoch` (`start_updates` updates into it) to the
        end of epoch `end_epoch`, or for `max_updates` updates: `run(segment)` trains one
        segment and returns the examples seen after it; `noise()` is the noise-scale dict a
        decision reads. A decision that was due where a checkpoint was taken is taken first."""
        budget = max_updates or math.inf
        r, u_epoch, done = start, start_updates, self.updates_done()
        examples = sum(n * b for _, n, b, _ in self.runs)
        if done and done % self.every == 0 and self.decided_at != done:
            self.decide(done, examples, noise())
        while epoch < end_epoch and budget > 0:
            left, k = self.rounds_per_epoch - r, self.k
            if left < k:  # the epoch's last update takes what is left
                k, n = left, 1
            else:
                n = min(left // k, self.every - done % self.every, budget)
            closes = r + n * k == self.rounds_per_epoch
            budget -= n
            last = budget <= 0 or (closes and epoch + 1 == end_epoch)
            examples = run(Segment(epoch, epoch + 1, r, n * k, k, u_epoch, closes, last))
            self.record(done, n, k * self.quantum, examples - n * k * self.quantum)
            done, r, u_epoch = done + n, r + n * k, u_epoch + n
            if closes:
                epoch, r, u_epoch = epoch + 1, 0, 0
            if done % self.every == 0:
                self.decide(done, examples, noise())
