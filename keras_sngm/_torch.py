"""The update on the PyTorch backend: foreach kernels over all variables, no host round trip.

Keras' generic path (`NormalizedMomentumOptimizer._step` in `keras.ops`) launches several
kernels per variable on eager PyTorch, and its `ops.cond` reads a tensor on the host: a GPU
synchronisation every update. This is the same step, written with PyTorch's multi-tensor
kernels (what Keras' own SGD and Adam use there) and with every branch a tensor select:

    g_s <- g_s + wd w_s                    (weight_decay_mode="l2")   one foreach add
    ||g_s||                                                           one foreach norm
    d_s = c_s g_s                          (each algorithm's `_scales`) one foreach mul
    w_s <- (1 - lr wd) w_s                 (weight_decay_mode="decoupled")
    u_s <- beta u_s + d_s;  w_s <- w_s - lr u_s (nesterov: beta u_s + d_s)

The last line is PyTorch's fused SGD kernel (`torch._fused_sgd_`, as `torch.optim.SGD(
fused=True)` steps): one pass that reads d, u, w and writes u, w, and that skips the whole
update when given a non-finite flag, so a skipped step is decided on the device too.
Nothing here calls `.item()`, `bool()` or a Python branch on a tensor.
"""

import torch
from keras import ops


def norms(tensors):
    """The vector of ||x_s||, in float32, from one foreach kernel."""
    return torch.stack(torch._foreach_norm([ops.convert_to_tensor(t) for t in tensors], dtype=torch.float32))


def _mul_each(tensors, scales):
    """x_s * c_s for each variable (new tensors)."""
    return torch._foreach_mul(tensors, [c.to(t.dtype) for c, t in zip(scales.unbind(), tensors)])


@torch.no_grad()
def update(opt, grads, variables, momenta, learning_rate, step, indices):
    """One update of `opt` (a keras_sngm optimizer) on PyTorch; `step` is the 0-based update
    index, a tensor."""
    w = [v.value for v in variables]
    u = [m.value for m in momenta]
    g = [ops.convert_to_tensor(x).to(t.dtype) for x, t in zip(grads, w)]
    decayed = [k for k, i in enumerate(indices) if opt._decays[i]]
    wd = opt.weight_decay
    if opt.weight_decay_mode == "l2" and decayed:  # the L2 term enters before the normalization
        for k, x in zip(decayed, torch._foreach_add([g[k] for k in decayed], [w[k] for k in decayed], alpha=wd)):
            g[k] = x
    grad_norms = norms(g)                                                     # ||g_s||
    finite = torch.isfinite(grad_norms).all()
    scales = opt._scales(grad_norms, lambda: norms(w), indices)               # c_s
    lr = ops.convert_to_tensor(learning_rate).to(device=grad_norms.device, dtype=torch.float32)
    d = _mul_each(g, scales)                                                  # d_s = c_s * g_s
    if opt.weight_decay_mode == "decoupled" and decayed:                      # outside the normalization
        torch._foreach_mul_([w[k] for k in decayed], torch.where(finite, 1.0 - lr * wd, 1.0))
    skip = (~finite).to(torch.float32)
    for group in _groups(w):  # u <- beta u + d; w <- w - lr u (or the nesterov step); all skipped if not finite
        torch._fused_sgd_([w[k] for k in group], [d[k] for k in group], [u[k] for k in group] if opt.momentum else [],
                          weight_decay=0.0, momentum=opt.momentum, lr=lr.to(w[group[0]].dtype), dampening=0.0,
                          nesterov=opt.nesterov and bool(opt.momentum), maximize=False, is_first_step=False,
                          found_inf=skip)
    if not opt.momentum:  # SNGD: no momentum kernel, but u_t = d_t all the same (the diagnostics read it)
        for x, y in zip(u, d):
            x.copy_(torch.where(finite, y, x))
    opt.assign_add(opt._state["skipped_steps"], (~finite).to(torch.int32))
    _record(opt, grad_norms, scales, w, u, d, finite, lr, step, indices)


def _groups(tensors):
    """Indices grouped by device and dtype (one fused call each)."""
    out = {}
    for k, t in enumerate(tensors):
        out.setdefault((t.device, t.dtype), []).append(k)
    return list(out.values())


def _record(opt, grad_norms, scales, w, u, d, finite, lr, step, indices):
    """The diagnostics of `NormalizedMomentumOptimizer._record`, with the refresh every
    `diagnostics_every` updates as a select instead of a branch (the norms are computed on
    every update, which costs one more read of u)."""
    state = opt._state
    opt.assign(state["grad_norm"], torch.sqrt(torch.sum(grad_norms * grad_norms)))
    at = torch.as_tensor(indices, device=grad_norms.device)
    if "block_grad_norms" in state:
        opt.assign(state["block_grad_norms"], state["block_grad_norms"].value.index_put((at,), grad_norms))
    if "trust_ratios" in state:
        opt.assign(state["trust_ratios"], state["trust_ratios"].value.index_put((at,), scales.to(torch.float32)))
    if not opt.diagnostics_every:
        return
    lr = torch.where(finite, lr, 0.0)
    u_norm = torch.linalg.vector_norm(norms(u))
    steps = u
    if opt.nesterov:  # beta u_t + d_t (a skipped step is 0 below, whatever d holds)
        steps = torch._foreach_add(torch._foreach_mul(u, opt.momentum), [torch.where(finite, x, 0.0) for x in d])
    decayed = [k for k, i in enumerate(indices) if opt._decays[i]]
    if opt.weight_decay_mode == "decoupled" and decayed:  # (s + wd w_t) / (1 - lr wd)
        steps = list(steps)
        for k in decayed:
            steps[k] = (steps[k] + opt.weight_decay * w[k]) / (1.0 - lr * opt.weight_decay)
    step_norm = torch.where(finite, lr * torch.linalg.vector_norm(norms(steps)), 0.0)
    refresh = (step % opt.diagnostics_every) == 0
    for name, value in (("momentum_norm", u_norm), ("update_norm", step_norm),
                        ("refreshed_at_update", (step + 1).to(torch.int32))):
        old = state[name].value
        opt.assign(state[name], torch.where(refresh, value.to(old.dtype), old))
