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
"""

import tensorflow as tf


def unbiased_estimates(small_sq, big_sq, b_small, b_big):
    """(|G|^2, tr(Sigma)) from mean squared norms at batch sizes b_small < b_big."""
    b_small, b_big = tf.cast(b_small, tf.float32), tf.cast(b_big, tf.float32)
    g2 = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
    trace = (small_sq - big_sq) / (1.0 / b_small - 1.0 / b_big)
    return g2, trace


def critical_batch(g2, trace):
    """B_simple = tr(Sigma) / |G|^2 and Yin et al.'s diversity bound 1 + B_simple."""
    b_simple = tf.math.divide_no_nan(trace, g2)
    return b_simple, 1.0 + b_simple
