"""Plain NumPy versions of the paper's update rules, independent of keras_sngm.

Each function takes lists of float64 arrays and returns new lists; no TensorFlow.
Notation follows Zhao, Xie and Li (arXiv 2007.13985).
"""

import numpy as np


def _l2(grads, weights, wd, decay_mask):
    return [g + wd * w if m else g for g, w, m in zip(grads, weights, decay_mask)]


def _finish(weights, momenta, directions, lr, beta, wd, mode, decay_mask, nesterov=False):
    new_u = [beta * u + d for u, d in zip(momenta, directions)]
    new_w = []
    for w, u, d, m in zip(weights, new_u, directions, decay_mask):
        step = beta * u + d if nesterov else u  # Nesterov: look ahead along the new momentum
        step = step + wd * w if (mode == "decoupled" and m) else step
        new_w.append(w - lr * step)
    return new_w, new_u


def sngm_step(weights, momenta, grads, lr, beta, wd=0.0, mode="l2", decay_mask=None, nesterov=False):
    """Eq. (7)-(8): u <- beta*u + g/||g|| (norm over all variables); w <- w - lr*u."""
    decay_mask = decay_mask or [True] * len(weights)
    if mode == "l2":
        grads = _l2(grads, weights, wd, decay_mask)
    norm = np.sqrt(sum(np.sum(g * g) for g in grads))
    directions = [g / norm if norm > 0 else np.zeros_like(g) for g in grads]
    return _finish(weights, momenta, directions, lr, beta, wd, mode, decay_mask, nesterov)


def block_sngm_step(weights, momenta, grads, lr, beta, wd=0.0, mode="l2", decay_mask=None, nesterov=False):
    """Eq. (13)-(14): the same, each block s normalized by its own ||g_s||."""
    decay_mask = decay_mask or [True] * len(weights)
    if mode == "l2":
        grads = _l2(grads, weights, wd, decay_mask)
    directions = []
    for g in grads:
        n = np.linalg.norm(g.ravel())
        directions.append(g / n if n > 0 else np.zeros_like(g))
    return _finish(weights, momenta, directions, lr, beta, wd, mode, decay_mask, nesterov)


def lars_step(weights, momenta, grads, lr, beta, wd=0.0, mode="l2", decay_mask=None,
              trust_mask=None, eta=0.001, eps=1e-9, phi=lambda z: z, nesterov=False):
    """LARS: u_s <- beta*u_s + eta*phi(||w_s||)/(||g_s||+eps) * g_s; w_s <- w_s - lr*u_s."""
    decay_mask = decay_mask or [True] * len(weights)
    trust_mask = trust_mask or [True] * len(weights)
    if mode == "l2":
        grads = _l2(grads, weights, wd, decay_mask)
    directions = []
    for g, w, t in zip(grads, weights, trust_mask):
        ratio = 1.0
        if t:
            p, gn = phi(np.linalg.norm(w.ravel())), np.linalg.norm(g.ravel())
            if p > 0 and gn > 0:
                ratio = eta * p / (gn + eps)
        directions.append(ratio * g)
    return _finish(weights, momenta, directions, lr, beta, wd, mode, decay_mask, nesterov)


def msgd_step(weights, momenta, grads, lr, beta):
    """Keras SGD(momentum) convention: u <- beta*u - lr*g; w <- w + u."""
    new_u = [beta * u - lr * g for u, g in zip(momenta, grads)]
    return [w + u for w, u in zip(weights, new_u)], new_u


def paper_msgd_step(weights, momenta, grads, lr, beta, wd=0.0, decay_mask=None):
    """The paper's MSGD (PyTorch SGD): u <- beta*u + g + wd*w; w <- w - lr*u."""
    decay_mask = decay_mask or [True] * len(weights)
    new_u = [beta * u + g + (wd * w if m else 0.0) for u, g, w, m in zip(momenta, grads, weights, decay_mask)]
    return [w - lr * u for w, u in zip(weights, new_u)], new_u


def adam_l2(w_seq, grads_seq, lr, wd, b1=0.9, b2=0.999, eps=1e-7):
    """torch.optim.Adam(weight_decay=wd): g + wd*w enters both moments (coupled L2),
    with Keras' epsilon (added to the bias-corrected sqrt(v))."""
    w = [x.astype("float64") for x in w_seq]
    m = [np.zeros_like(x) for x in w]
    v = [np.zeros_like(x) for x in w]
    for t, grads in enumerate(grads_seq, start=1):
        for i, g in enumerate(grads):
            g = g.astype("float64") + wd * w[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            w[i] = w[i] - lr * (m[i] / (1 - b1**t)) / (np.sqrt(v[i] / (1 - b2**t)) + eps)
    return w
