"""Gradient noise scale and gradient diversity from two batch sizes training already has.

McCandlish et al. 2018 ("An Empirical Model of Large-Batch Training", app. A): with
|G_s|^2 the squared norm of a gradient averaged over B_s examples and |G_b|^2 that of
one over B_b > B_s examples (means over several samples allowed),

    |G|^2     ~= (B_b |G_b|^2 - B_s |G_s|^2) / (B_b - B_s)        (unbiased)
    tr(Sigma) ~= (|G_s|^2 - |G_b|^2) / (1/B_s - 1/B_b)           (unbiased)
    B_simple   = tr(Sigma) / |G|^2   (~ the critical batch size)

estimated as a ratio of exponential moving averages of the two unbiased estimates.
Gradient diversity (Yin et al. 2018) Delta = sum_i |g_i|^2 / |sum_i g_i|^2 over n
examples gives their batch-size bound n Delta, which in expectation is
(|G|^2 + tr(Sigma)) / |G|^2 = 1 + B_simple.

Written with `keras.ops`: the same code runs inside the trainers' traced TensorFlow step
and, eagerly, in `keras_sngm.callbacks.SNGMDiagnostics` on TensorFlow, JAX and PyTorch.
"""

import math

from keras import ops

from keras_sngm._base import _dense, squared_norm


def unbiased_estimates(small_sq, big_sq, b_small, b_big):
    """(|G|^2, tr(Sigma)) from mean squared norms at batch sizes b_small < b_big."""
    b_small, b_big = ops.cast(b_small, "float32"), ops.cast(b_big, "float32")
    g2 = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)       # |G|^2, unbiased
    trace = (small_sq - big_sq) / (1.0 / b_small - 1.0 / b_big)          # tr(Sigma), unbiased
    return g2, trace


def critical_batch(g2, trace):
    """B_simple = tr(Sigma) / |G|^2 (0 while |G|^2 = 0) and Yin et al.'s diversity bound
    1 + B_simple."""
    g2, trace = ops.cast(g2, "float32"), ops.cast(trace, "float32")
    nonzero = ops.not_equal(g2, 0.0)
    b_simple = ops.where(nonzero, trace / ops.where(nonzero, g2, 1.0), 0.0)
    return b_simple, 1.0 + b_simple


def _squared_norm(grads):
    return sum(squared_norm(_dense(g)) for g in grads)


class NoiseScaleEstimator:
    """Running estimates of |G|^2, tr(Sigma) and B_simple from the two batch sizes that
    data-parallel training with accumulation already computes: each micro-batch
    gradient (B_s = `micro_batch_size` examples) and their average over all micro-batches
    of all workers (B_b = B_s * `micro_batches`).

    Per update: `add_micro(grads)` for each local micro-batch; `local_mean()` is the
    scalar to average over workers (it may travel in the gradients' allreduce);
    `update(mean_over_workers, averaged_grads)` folds one unbiased estimate into EMAs
    (bias-corrected when read). State lives in variables made by `add_variable`
    (e.g. an optimizer's, so it is saved with it); `state_variables()` are those worth
    checkpointing (not the per-update accumulator).

    Args:
        micro_batch_size: examples per micro-batch on one worker (B_s).
        micro_batches: micro-batches per update over all workers (B_b / B_s), >= 2.
        add_variable: `fn(shape, dtype, name) -> variable`.
        ema: decay of the moving averages. Defaults to `0.95`.
    """

    NAMES = ("small_sq_sum", "g2", "trace", "g2_ema", "trace_ema", "ema_weight")

    def __init__(self, micro_batch_size, micro_batches, add_variable, ema=0.95):
        self.b_small, self.ratio, self.ema = micro_batch_size, micro_batches, float(ema)
        self.vars = {n: add_variable(shape=(), dtype="float32", name=f"noise_{n}") for n in self.NAMES}

    def state_variables(self):
        return [self.vars[n] for n in self.NAMES[1:]]

    def add_micro(self, grads):
        self.vars["small_sq_sum"].assign_add(_squared_norm(grads))  # |g_micro|^2

    def local_mean(self, local_micro_batches):
        return self.vars["small_sq_sum"] / local_micro_batches

    def update(self, small_mean, grads, micro_batches=None):
        """Folds one update's estimate in; `micro_batches` (a tensor when the batch
        adapts) overrides the constructor's count for this update."""
        self.update_from_norms(small_mean, _squared_norm(grads), micro_batches)

    def update_from_norms(self, small_mean, big_sq, micro_batches=None):
        """`update` given |G_b|^2 (the averaged gradient's squared norm) instead of the
        gradient itself: for norms taken elsewhere (each replica's, inside the step)."""
        v, a = self.vars, self.ema
        ratio = self.ratio if micro_batches is None else ops.cast(micro_batches, "float32")
        g2, trace = unbiased_estimates(small_mean, big_sq, self.b_small, self.b_small * ratio)
        v["g2"].assign(g2)
        v["trace"].assign(trace)
        v["g2_ema"].assign(a * v["g2_ema"] + (1 - a) * g2)
        v["trace_ema"].assign(a * v["trace_ema"] + (1 - a) * trace)
        v["ema_weight"].assign(a * v["ema_weight"] + (1 - a))
        v["small_sq_sum"].assign(0.0)

    def discard_micro(self):
        """Drops this update's micro-batch sums without an estimate (one micro-batch gradient
        in all: there is no second batch size to compare with)."""
        self.vars["small_sq_sum"].assign(0.0)

    def ema_estimates(self):
        """(|G|^2, tr(Sigma)) as bias-corrected EMAs, as tensors (inside a traced step); (0, 0)
        before the first estimate."""
        v = self.vars
        w = ops.maximum(v["ema_weight"], 1e-12)
        return v["g2_ema"] / w, v["trace_ema"] / w

    def result(self):
        """{"g2", "trace"} (bias-corrected EMAs), "b_simple", "diversity_bound", "batch",
        and "estimates": how many updates the averages hold (from the EMA's weight
        1 - ema^n; 0 before the first)."""
        raw = float(ops.convert_to_numpy(self.vars["ema_weight"]))
        w = max(raw, 1e-12)
        g2, trace = (float(ops.convert_to_numpy(self.vars[n])) / w for n in ("g2_ema", "trace_ema"))
        b_simple, bound = (float(x) for x in critical_batch(g2, trace))
        estimates = 0 if raw <= 0 else (math.inf if raw >= 1 or self.ema == 0 else
                                        round(math.log1p(-raw) / math.log(self.ema)))
        return {"g2": float(g2), "trace": float(trace), "b_simple": b_simple, "diversity_bound": bound,
                "batch": self.b_small * self.ratio, "estimates": estimates}
