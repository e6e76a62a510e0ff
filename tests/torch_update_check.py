"""The PyTorch update (keras_sngm/_torch.py): foreach and fused kernels, and no host round trip.

Runs under KERAS_BACKEND=torch (tests/test_backends.py starts it so); skipped elsewhere. Every
optimizer steps with `torch.Tensor.__bool__`, `.item()`, `__int__` and `__float__` made to
raise, through a NaN step, nesterov, both weight-decay modes with an exclusion and a
diagnostics refresh, and must land on the NumPy reference of the paper's equations.
"""

import contextlib

import numpy as np
import pytest
import keras
from keras import ops

import reference as ref
from helpers import keras_variables
from keras_sngm import LARS, MSGD, SNGM, BlockSNGM

pytestmark = pytest.mark.skipif(keras.backend.backend() != "torch", reason="the PyTorch path runs under KERAS_BACKEND=torch")

SHAPES = {"dense/kernel": (5, 3), "dense/bias": (3,), "conv/kernel": (2, 3, 4)}
MASK = [True, False, True]  # weight_decay_exclude=["bias"]


def _variables():
    return keras_variables(SHAPES)


def _grads(steps):
    rng = np.random.default_rng(1)
    out = [[rng.normal(scale=rng.uniform(0.1, 3), size=s).astype("float32") for s in SHAPES.values()]
           for _ in range(steps)]
    out[3][2][0, 1, 2] = np.nan  # a non-finite step in the middle: skipped
    return out


@contextlib.contextmanager
def no_host_round_trip():
    """Any read of a tensor's value on the host raises inside the block."""
    import torch

    def refuse(*_args, **_kwargs):
        raise AssertionError("a tensor was read on the host during apply()")

    names = ("__bool__", "item", "__int__", "__float__")
    saved = {name: getattr(torch.Tensor, name) for name in names}
    for name in names:
        setattr(torch.Tensor, name, refuse)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)


CASES = {
    "SNGM": (lambda **kw: SNGM(**kw), ref.sngm_step),
    "BlockSNGM": (lambda **kw: BlockSNGM(**kw), ref.block_sngm_step),
    "LARS": (lambda **kw: LARS(trust_coefficient=0.05, trust_ratio_exclude=["bias"], **kw),
             lambda *a, **kw: ref.lars_step(*a, eta=0.05, trust_mask=MASK, **kw)),
    "MSGD": (lambda **kw: MSGD(**kw), None),  # below: the same frame with d = g
}


def _reference(name, grads_seq, mode, nesterov):
    step = CASES[name][1]
    w = [v.numpy().astype("float64") for v in _variables()]
    u = [np.zeros_like(x) for x in w]
    for grads in grads_seq:
        g = [x.astype("float64") for x in grads]
        if not all(np.isfinite(x).all() for x in g):
            continue  # skipped: weights and momentum as they were
        if step is None:  # MSGD: d = g (tests/reference.py has no nesterov or decoupled MSGD)
            if mode == "l2":
                g = [x + 0.1 * y if m else x for x, y, m in zip(g, w, MASK)]
            u = [0.9 * a + b for a, b in zip(u, g)]
            steps = [0.9 * a + b for a, b in zip(u, g)] if nesterov else u
            w = [x - 0.1 * (s + (0.1 * x if mode == "decoupled" and m else 0.0)) for x, s, m in zip(w, steps, MASK)]
            continue
        w, u = step(w, u, g, 0.1, 0.9, wd=0.1, mode=mode, decay_mask=MASK, nesterov=nesterov)
    return w, u


@pytest.mark.parametrize("nesterov", [False, True], ids=["plain", "nesterov"])
@pytest.mark.parametrize("mode", ["l2", "decoupled"])
@pytest.mark.parametrize("name", list(CASES))
def test_apply_reads_nothing_on_the_host_and_meets_the_reference(name, mode, nesterov):
    grads = _grads(6)
    opt = CASES[name][0](learning_rate=0.1, momentum=0.9, weight_decay=0.1, weight_decay_mode=mode,
                         weight_decay_exclude=["bias"], nesterov=nesterov, diagnostics_every=2)
    vs = _variables()
    opt.apply([ops.convert_to_tensor(g) for g in grads[0]], vs)  # builds the optimizer (host reads allowed)
    with no_host_round_trip():
        for g in grads[1:]:
            opt.apply([ops.convert_to_tensor(x) for x in g], vs)
    w, u = _reference(name, grads, mode, nesterov)
    for a, b in zip(vs, w):
        np.testing.assert_allclose(a.numpy(), b, rtol=2e-5, atol=2e-6)
    for a, b in zip(opt.momentums, u):
        np.testing.assert_allclose(a.numpy(), b, rtol=2e-5, atol=2e-6)
    d = opt.diagnostics()
    assert int(d["skipped_steps"]) == 1 and int(opt.iterations.numpy()) == 6
    assert int(d["refreshed_at_update"]) == 5  # updates 1, 3, 5 refresh at diagnostics_every=2
    np.testing.assert_allclose(d["momentum_norm"], np.sqrt(sum(np.sum(x * x) for x in u)), rtol=1e-5)


def test_the_fused_kernel_takes_the_whole_update(monkeypatch):
    """One fused SGD call per update (one dtype, one device), and the reading of a tensor
    on the host raises in the block above: the step is PyTorch's multi-tensor path."""
    import torch

    calls = []
    fused = torch._fused_sgd_

    def counting(params, *args, **kwargs):
        calls.append(len(params))
        return fused(params, *args, **kwargs)

    monkeypatch.setattr(torch, "_fused_sgd_", counting)
    opt, vs = SNGM(learning_rate=0.1), _variables()
    for g in _grads(6)[:3]:
        opt.apply([ops.convert_to_tensor(x) for x in g], vs)
    assert calls == [3, 3, 3]


def test_a_schedule_and_keras_loss_scale_optimizer():
    """A schedule's rate, read at the update, and Keras' LossScaleOptimizer (which unscales
    and skips before the step) over the same path: the NumPy reference."""
    grads = [g for i, g in enumerate(_grads(6)) if i != 3]
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    lso = keras.optimizers.LossScaleOptimizer(SNGM(learning_rate=schedule, momentum=0.9), initial_scale=256.0)
    vs = _variables()
    for g in grads:
        lso.apply([ops.convert_to_tensor(x * 256.0) for x in g], vs)
    w = [v.numpy().astype("float64") for v in _variables()]
    u = [np.zeros_like(x) for x in w]
    for t, g in enumerate(grads):
        w, u = ref.sngm_step(w, u, [x.astype("float64") for x in g], 0.1 * 0.5 ** t, 0.9)
    for a, b in zip(vs, w):
        np.testing.assert_allclose(a.numpy(), b, rtol=2e-5, atol=2e-6)


def _held_bytes(opt):
    """What the optimizer holds: its variables and its PyTorch buffers."""
    import torch

    tensors = [v.value for v in opt.variables]
    for store in opt._torch_buffers.values():
        tensors += list(store.values()) if isinstance(store, dict) else [store]
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


@pytest.mark.parametrize("mode", ["l2", "decoupled"])
@pytest.mark.parametrize("name", ["SNGM", "BlockSNGM", "LARS"])
def test_own_grad_is_written_in_place_and_a_callers_tensor_never(name, mode):
    """As `model.fit` passes them (each variable's own `.grad`, which Keras zeroes before the
    next step) the gradients are scaled in place and the optimizer allocates no buffer;
    tensors the caller still owns are copied and left bit for bit as they were. Both land on
    the NumPy reference, and both hold the same weights afterwards."""
    import torch

    grads = [g for i, g in enumerate(_grads(5)) if i != 3]
    kw = dict(learning_rate=0.1, momentum=0.9, weight_decay=0.1, weight_decay_mode=mode, weight_decay_exclude=["bias"])
    own_opt, own_vs = CASES[name][0](**kw), _variables()
    copy_opt, copy_vs = CASES[name][0](**kw), _variables()
    for g in grads:
        for v, x in zip(own_vs, g):  # as after loss.backward(): the gradient lives on the parameter
            v.value.grad = torch.as_tensor(x.copy())
        own = [v.value.grad for v in own_vs]
        pointers = [t.data_ptr() for t in own]
        own_opt.apply(own, own_vs)
        assert [t.data_ptr() for t in own] == pointers and all(v.value.grad is t for v, t in zip(own_vs, own))
        theirs = [torch.as_tensor(x.copy()) for x in g]
        copy_opt.apply(theirs, copy_vs)
        for t, x in zip(theirs, g):  # the caller's tensors: never written
            np.testing.assert_array_equal(t.numpy(), x)
    assert any(not np.array_equal(t.numpy(), x) for t, x in zip(own, grads[-1]))  # really scaled in place
    assert not any(isinstance(s, dict) and s for s in own_opt._torch_buffers.values())  # no copy made
    variable_bytes = sum(int(np.prod(s)) * 4 for s in SHAPES.values())
    assert _held_bytes(copy_opt) - _held_bytes(own_opt) == variable_bytes  # the copy: one buffer per variable
    w, u = _reference(name, grads, mode, False)
    for a, b, c in zip(own_vs, copy_vs, w):
        np.testing.assert_allclose(a.numpy(), c, rtol=2e-5, atol=2e-6)
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(own_opt.momentums, u):
        np.testing.assert_allclose(a.numpy(), b, rtol=2e-5, atol=2e-6)
