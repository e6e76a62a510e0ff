"""The planner's cost model (the numbering of docs/planning.md). With b = B/N examples
per worker and micro-batch m:

    T_update(B, N) = ceil(b/m) t_micro(min(b, m)) + t_step + max(T_allreduce - overlap t_micro, 0)   (1)
    T_allreduce(S, N) = 2(N-1)/N S / busbw + 2(N-1) alpha                                           (2)
    S(B) = S_min (1 + B_noise/B) = S_min + E_min/B,   E(B) = E_min (1 + B/B_noise)                   (3)
    B_noise = sum_t w_t B_simple,t / sum_t w_t,   w_t = 1 / (1 + B_simple,t / B_t)                   (4)

(1): t_micro is one micro-batch's forward and backward pass, t_step the update's own work
(optimizer step, logging); a share b < m is one micro-batch costing t_micro b/m; `overlap`
is the fraction of the last pass the allreduce can hide behind (0 for this project's
Horovod wrapper, which reduces after it). (2): a ring allreduce of S bytes sends
2(N-1)/N S per worker in 2(N-1) steps of latency alpha; busbw is the bus bandwidth in
NCCL-tests' convention (algbw = S/t, busbw = algbw 2(N-1)/N). (3): McCandlish et al.
(2018), E_min = S_min B_noise; written S_min + E_min/B it also holds at B_noise = inf
(S_min = 0: the examples to the target do not depend on B). (4): the noise scale that
makes (3) exact along a measured run: update t at batch B_t advances the ideal
(infinite-batch) progress by w_t, so S(B) = sum_t w_t (1 + B_simple,t / B); the mean is
progress-weighted, neither the last value (which overstates it: B_simple grows as the
loss falls) nor the plain mean over updates.

References:
    McCandlish, Kaplan, Amodei. An Empirical Model of Large-Batch Training. arXiv:1812.06162.
    NVIDIA nccl-tests, doc/PERFORMANCE.md (bus bandwidth).
"""

import math

import numpy as np


def allreduce_seconds(nbytes, workers, busbw, alpha):
    """(2): seconds of a ring allreduce of `nbytes` over `workers`; busbw in bytes/s."""
    if workers <= 1:
        return 0.0
    return 2 * (workers - 1) / workers * nbytes / busbw + 2 * (workers - 1) * alpha


def compute_seconds(batch, workers, micro_batch, t_micro):
    """The forward and backward passes of one update on one worker, (1)'s first term."""
    share = batch / workers
    if share <= micro_batch:
        return t_micro * share / micro_batch
    return math.ceil(share / micro_batch) * t_micro


def update_seconds(batch, workers, micro_batch, t_micro, t_step, nbytes, busbw, alpha, overlap=0.0):
    """(1): seconds of one update of global batch `batch` on `workers`."""
    comm = allreduce_seconds(nbytes, workers, busbw, alpha)
    hidden = overlap * t_micro * min(1.0, batch / workers / micro_batch)
    return compute_seconds(batch, workers, micro_batch, t_micro) + t_step + max(comm - hidden, 0.0)


def updates_to_target(s_min, e_min, batch):
    """(3) as S(B) = S_min + E_min/B, which also holds at B_noise = inf (perfect scaling:
    S_min = 0, the examples to the target do not depend on B)."""
    return s_min + e_min / batch


def examples_to_target(s_min, e_min, batch):
    """(3): E(B) = S(B) B = E_min + S_min B."""
    return updates_to_target(s_min, e_min, batch) * batch


def progress_weights(b_simple, batches):
    """(4)'s w_t: the ideal progress each update made."""
    b_simple, batches = np.asarray(b_simple, float), np.asarray(batches, float)
    return 1.0 / (1.0 + b_simple / batches)


def effective_noise_scale(b_simple, batches):
    """(4): the progress-weighted mean of B_simple over a run's updates."""
    w = progress_weights(b_simple, batches)
    return float(np.sum(w * np.asarray(b_simple, float)) / np.sum(w))


def fit_scaling(updates, batches, b_noise):
    """(S_min, E_min) of (3) by least squares over runs that reached the target, B_noise
    given: S_i ~ S_min x_i with x_i = 1 + B_noise/B_i, E_min = S_min B_noise. With
    B_noise = inf, S_i ~ E_min / B_i and S_min = 0."""
    s, b = np.asarray(updates, float), np.asarray(batches, float)
    if not math.isfinite(b_noise):
        return 0.0, float(np.sum(s / b) / np.sum(1 / b ** 2))
    x = 1 + b_noise / b
    s_min = float(np.sum(s * x) / np.sum(x * x))
    return s_min, s_min * b_noise


def fit_s_min_and_noise(updates, batches):
    """(3) fitted by least squares from runs at two or more batch sizes: S = a + c/B, so
    S_min = a and B_noise = c/a. A check on (4), not the planner's input."""
    batches = np.asarray(batches, float)
    if len(set(batches)) < 2:
        raise ValueError(f"fitting S_min and B_noise needs runs at two batch sizes. Received: {sorted(set(batches))}")
    a, c = np.linalg.lstsq(np.stack([np.ones_like(batches), 1 / batches], 1), np.asarray(updates, float), rcond=None)[0]
    return float(a), float(c / a) if a > 0 else math.nan


def trajectory_updates(s_min, progress_at, b_simple_at, batch_of_update, limit=10**8):
    """Updates a run whose update u has global batch `batch_of_update(u)` needs to reach
    `s_min` of ideal progress, with B_simple read off the reference trajectory as a
    function of progress (`progress_at`, `b_simple_at`: increasing progress, B_simple there).
    Fractional: the last update counts for the part of it needed."""
    done, u = 0.0, 0
    while u < limit:
        b_noise = float(np.interp(done, progress_at, b_simple_at))
        step = 1.0 / (1.0 + b_noise / batch_of_update(u))
        if done + step >= s_min:
            return u + (s_min - done) / step
        done, u = done + step, u + 1
    raise ValueError(f"the batch trajectory does not reach the target within {limit} updates")


def fit_allreduce(nbytes, seconds, workers):
    """alpha (s) and busbw (bytes/s) of (2) from measured allreduce times, by least squares on
    the relative error (so the small messages, which fix alpha, count as much as the large
    ones, which fix busbw). Returns (alpha, busbw, rms relative error)."""
    if workers < 2:
        raise ValueError(f"an allreduce fit needs at least 2 workers. Received: {workers}")
    s, t = np.asarray(nbytes, float), np.asarray(seconds, float)
    if len(s) < 2 or np.any(t <= 0):
        raise ValueError(f"an allreduce fit needs positive times at two sizes or more. Received: {list(t)}")
    design = np.stack([np.ones_like(s) / t, s / t], 1)  # (a + b S) / t ~ 1
    a, b = np.linalg.lstsq(design, np.ones_like(t), rcond=None)[0]
    if a < 0:  # latency below resolution: bandwidth alone
        a, b = 0.0, float(np.sum(s / t) / np.sum((s / t) ** 2))
    if b <= 0:
        raise ValueError("the allreduce times do not grow with the message size: no bandwidth to fit")
    rel = (a + b * s) / t - 1
    return a / (2 * (workers - 1)), 2 * (workers - 1) / workers / b, float(np.sqrt(np.mean(rel ** 2)))
