"""Each optimizer against the NumPy reference of the paper's equations."""

import numpy as np
import pytest
import keras
from keras import ops

import reference as ref
from helpers import keras_variables
from keras_sngm import LARS, MSGD, SNGM, BlockSNGM

SHAPES = {"dense/kernel": (5, 3), "dense/bias": (3,), "conv/kernel": (2, 3, 4), "norm/gamma": (7,)}
STEPS = 12
# `jit_compile` chooses XLA on TensorFlow and one compiled eager step on JAX; the PyTorch
# update (keras_sngm/_torch.py) has one path either way, so it runs once there.
JITS = [True] if keras.backend.backend() == "torch" else [True, False]


def make_variables(seed=0):
    return keras_variables(SHAPES, seed)


def random_grads(seed, steps=STEPS):
    rng = np.random.default_rng(seed + 1000)
    return [[rng.normal(scale=rng.uniform(0.01, 3.0), size=s).astype("float32") for s in SHAPES.values()] for _ in range(steps)]


def run_keras(opt, grads_seq, seed=0):
    variables = make_variables(seed)
    for grads in grads_seq:
        opt.apply([ops.convert_to_tensor(g) for g in grads], variables)
    return [v.numpy() for v in variables], opt


def run_reference(step_fn, grads_seq, lr, seed=0, **kw):
    w = [v.numpy().astype("float64") for v in make_variables(seed)]
    u = [np.zeros_like(x) for x in w]
    for t, grads in enumerate(grads_seq):
        step_lr = lr(t) if callable(lr) else lr
        w, u = step_fn(w, u, [g.astype("float64") for g in grads], step_lr, **kw)
    return w, u


NOT_NORM = [True, True, True, False]         # weight_decay_exclude=["gamma"]
LARS_MASK = [True, False, True, False]       # default: biases and gamma excluded


@pytest.mark.parametrize("jit", JITS)
@pytest.mark.parametrize("mode", ["l2", "decoupled"])
@pytest.mark.parametrize("beta", [0.0, 0.9])
@pytest.mark.parametrize(
    "cls,step_fn",
    [(SNGM, ref.sngm_step), (BlockSNGM, ref.block_sngm_step)],
    ids=["SNGM", "BlockSNGM"],
)
def test_sngm_family_matches_reference(cls, step_fn, beta, mode, jit):
    grads = random_grads(1)
    opt = cls(learning_rate=0.05, momentum=beta, weight_decay=0.01, weight_decay_mode=mode,
              weight_decay_exclude=["gamma"], jit_compile=jit)
    got, opt = run_keras(opt, grads)
    want, want_u = run_reference(step_fn, grads, 0.05, beta=beta, wd=0.01, mode=mode, decay_mask=NOT_NORM)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    for m, w in zip(opt.momentums, want_u):
        np.testing.assert_allclose(m.numpy(), w, rtol=1e-5, atol=1e-6)
    assert int(opt.iterations) == STEPS


@pytest.mark.parametrize("jit", JITS)
@pytest.mark.parametrize("mode", ["l2", "decoupled"])
@pytest.mark.parametrize("phi", ["identity", "clip"])
def test_lars_matches_reference(phi, mode, jit):
    grads = random_grads(2)
    lo, hi = 0.5, 2.0
    opt = LARS(learning_rate=0.5, momentum=0.9, weight_decay=0.01, weight_decay_mode=mode,
               trust_coefficient=0.02, phi=phi, phi_lower=lo, phi_upper=hi, jit_compile=jit)
    got, _ = run_keras(opt, grads)
    phi_fn = (lambda z: min(max(z, lo), hi)) if phi == "clip" else (lambda z: z)
    want, _ = run_reference(ref.lars_step, grads, 0.5, beta=0.9, wd=0.01, mode=mode,
                            decay_mask=LARS_MASK, trust_mask=LARS_MASK, eta=0.02, phi=phi_fn)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_lars_default_exclusions_follow_variable_path():
    opt = LARS(learning_rate=0.1, weight_decay=1e-4)
    variables = make_variables()
    opt.build(variables)
    assert opt._trusted == LARS_MASK
    assert opt._decays == LARS_MASK
    assert SNGM(weight_decay=1e-4).weight_decay_exclude == ()


@pytest.mark.parametrize(
    "schedule",
    [
        keras.optimizers.schedules.PolynomialDecay(0.2, STEPS, end_learning_rate=0.0, power=1.1),
        keras.optimizers.schedules.CosineDecay(0.2, STEPS),
    ],
    ids=["poly1.1", "cosine"],
)
def test_learning_rate_schedules(schedule):
    grads = random_grads(3)
    got, _ = run_keras(SNGM(learning_rate=schedule, momentum=0.9), grads)
    if isinstance(schedule, keras.optimizers.schedules.PolynomialDecay):
        lr = lambda t: 0.2 * (1 - t / STEPS) ** 1.1  # noqa: E731  the paper's eta_t = eta_0 (1 - t/T)^p
    else:
        lr = lambda t: 0.2 * 0.5 * (1 + np.cos(np.pi * t / STEPS))  # noqa: E731
    want, _ = run_reference(ref.sngm_step, grads, lr, beta=0.9)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_lemma2_momentum_norm_bounded():
    beta = 0.9
    opt = SNGM(learning_rate=0.01, momentum=beta)
    variables = make_variables()
    rng = np.random.default_rng(7)
    bound = 1.0 / (1.0 - beta)
    norms = []
    for t in range(200):
        scale = 10.0 ** rng.uniform(-4, 4)  # gradients of wildly varying size
        opt.apply([ops.convert_to_tensor(rng.normal(scale=scale, size=v.shape).astype("float32")) for v in variables], variables)
        norms.append(np.sqrt(sum(np.sum(m.numpy() ** 2) for m in opt.momentums)))
    assert max(norms) <= bound * (1 + 1e-6)
    # Always-aligned gradients approach the bound, so the check is not vacuous.
    for _ in range(200):
        opt.apply([ops.ones(v.shape) for v in variables], variables)
    assert np.sqrt(sum(np.sum(m.numpy() ** 2) for m in opt.momentums)) > 0.99 * bound


@pytest.mark.parametrize("cls", [SNGM, BlockSNGM, LARS, MSGD])
def test_each_optimizer_reports_the_bound_its_rule_has(cls):
    """The bound `diagnostics()` reports against the NumPy statement of each rule, over 100
    updates of two variables: SNGM's ||u|| stays under 1/(1-beta) (Lemma 2); BlockSNGM's
    blocks each stay under it, so the whole momentum reaches past it towards sqrt(2)/(1-beta);
    LARS and MSGD grow with the weights or the gradient: they report none."""
    beta, rng = 0.9, np.random.default_rng(3)
    variables = [keras.Variable(np.ones((3,), "float32")), keras.Variable(np.ones((2, 2), "float32"))]
    opt = cls(learning_rate=1e-3, momentum=beta, **({"trust_coefficient": 1.0} if cls is LARS else {}))
    w = [v.numpy().astype("float64") for v in variables]
    u = [np.zeros_like(x) for x in w]
    step = {SNGM: ref.sngm_step, BlockSNGM: ref.block_sngm_step, LARS: lambda *a: ref.lars_step(*a, eta=1.0),
            MSGD: None}[cls]
    norms = []
    for t in range(100):  # one sign per block, one size per update between 1e-3 and 1e3: one direction throughout
        size = 10.0 ** rng.uniform(-3, 3)
        g = [np.full(x.shape, size * (1 if k == 0 else -1)) for k, x in enumerate(w)]
        opt.apply([ops.convert_to_tensor(x.astype("float32")) for x in g], variables)
        if step is None:
            u = [beta * a + b for a, b in zip(u, g)]
        else:
            w, u = step(w, u, g, 1e-3, beta)
        norms.append(np.sqrt(sum(np.sum(x * x) for x in u)))
    np.testing.assert_allclose(opt.diagnostics()["momentum_norm"], norms[-1], rtol=1e-4)
    bound = opt.diagnostics()["momentum_norm_bound"]
    if cls is SNGM:
        assert bound == pytest.approx(1 / (1 - beta)) and max(norms) <= bound * (1 + 1e-9)
        assert norms[-1] > 0.99 * bound
    elif cls is BlockSNGM:
        assert bound == pytest.approx(np.sqrt(2) / (1 - beta)) and max(norms) <= bound * (1 + 1e-9)
        assert norms[-1] > 0.99 * bound > 1.4 / (1 - beta)  # past SNGM's 1/(1-beta): 14.14 against 10
    else:  # no bound: MSGD's ||u|| follows ||g|| (here past 1/(1-beta) by far), LARS's follows ||w||
        assert bound is None
        if cls is MSGD:
            assert max(norms) > 100 / (1 - beta)


def _minimize_1d(opt, x0, steps):
    x = keras.Variable(np.array([x0], "float32"))
    for _ in range(steps):
        opt.apply([ops.convert_to_tensor(x.numpy() + 1.0)], [x])  # F(x) = (x + 1)^2 / 2
    return float(x.numpy()[0])


def test_paper_counterexample_lars_identity_goes_to_zero_sngm_to_minimum():
    steps = 1000
    # Small constant steps (overdamped with momentum 0.9): x_t shrinks geometrically to 0.
    for beta, lr in [(0.0, 0.01), (0.9, 0.001)]:
        lars = LARS(learning_rate=lr, momentum=beta, trust_coefficient=1.0, trust_ratio_exclude=[])
        x_lars = _minimize_1d(lars, 1.0, steps)
        assert 0.0 <= x_lars < 1e-3, (beta, x_lars)  # converged to the wrong point 0
    schedule = keras.optimizers.schedules.PolynomialDecay(0.1, steps, end_learning_rate=0.0, power=1.1)
    x_sngm = _minimize_1d(SNGM(learning_rate=schedule, momentum=0.9), 1.0, steps)
    assert abs(x_sngm + 1.0) < 1e-2, x_sngm       # reached the minimum -1
    # The clipped phi keeps LARS moving: it leaves 0 behind and gets near -1.
    x_clip = _minimize_1d(
        LARS(learning_rate=schedule, momentum=0.9, trust_coefficient=1.0, phi="clip",
             phi_lower=0.1, phi_upper=10.0, trust_ratio_exclude=[]), 1.0, steps)
    assert abs(x_clip + 1.0) < 5e-2, x_clip


@pytest.mark.parametrize("jit", JITS)
def test_msgd_is_the_papers_momentum_sgd_with_l2(jit):
    """u <- m u + g + wd w; w <- w - lr u (PyTorch's SGD), with a decaying lr, where Keras'
    SGD (decoupled decay, lr folded into the velocity) would step differently."""
    grads = random_grads(4)
    schedule = keras.optimizers.schedules.PolynomialDecay(0.05, STEPS, end_learning_rate=0.0, power=2.0)
    got, opt = run_keras(MSGD(learning_rate=schedule, momentum=0.9, weight_decay=0.01, weight_decay_exclude=["gamma"],
                              jit_compile=jit), grads)
    lr = lambda t: 0.05 * (1 - t / STEPS) ** 2  # noqa: E731
    want, want_u = run_reference(ref.paper_msgd_step, grads, lr, beta=0.9, wd=0.01, decay_mask=NOT_NORM)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    for m, w in zip(opt.momentums, want_u):
        np.testing.assert_allclose(m.numpy(), w, rtol=1e-5, atol=1e-6)
    keras_sgd, _ = run_keras(keras.optimizers.SGD(schedule, momentum=0.9, weight_decay=0.01), grads)
    assert max(np.max(np.abs(a - b)) for a, b in zip(keras_sgd, want)) > 1e-3  # the rule really differs


def test_adam_baseline_adds_l2_to_the_gradient():
    """`--optimizer adam` decays as torch.optim.Adam(weight_decay) does (the paper's
    PyTorch baselines): L2 in the gradient, not Keras' decoupled AdamW decay."""
    from keras_sngm_trainers.recipes import AdamL2, optimizer

    grads = random_grads(5)
    got, _ = run_keras(optimizer("adam", 0.01, weight_decay=0.05), grads)
    want = ref.adam_l2([v.numpy() for v in make_variables()], grads, 0.01, 0.05)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)
    adamw, _ = run_keras(keras.optimizers.Adam(0.01, weight_decay=0.05), grads)
    assert max(np.max(np.abs(a - b)) for a, b in zip(adamw, want)) > 1e-3  # the rule really differs
    restored = AdamL2.from_config(optimizer("adam", 0.01, weight_decay=0.05).get_config())
    assert restored.l2 == 0.05 and isinstance(restored, AdamL2)


@pytest.mark.parametrize("mode", ["l2", "decoupled"])
@pytest.mark.parametrize(
    "cls,step_fn,kw",
    [(SNGM, ref.sngm_step, {}), (BlockSNGM, ref.block_sngm_step, {}),
     (LARS, ref.lars_step, {"trust_mask": LARS_MASK, "eps": 0.0})],
    ids=["SNGM", "BlockSNGM", "LARS"],
)
def test_nesterov_matches_reference(cls, step_fn, kw, mode):
    """nesterov=True: w <- w - lr * (beta * u_t + d_t), u_t = beta * u_{t-1} + d_t."""
    grads = random_grads(6)
    extra = {"epsilon": 0.0} if cls is LARS else {"weight_decay_exclude": ["gamma"]}
    got, opt = run_keras(cls(learning_rate=0.05, momentum=0.9, weight_decay=0.01, weight_decay_mode=mode,
                             nesterov=True, **extra), grads)
    mask = LARS_MASK if cls is LARS else NOT_NORM
    want, want_u = run_reference(step_fn, grads, 0.05, beta=0.9, wd=0.01, mode=mode, decay_mask=mask, nesterov=True,
                                 **kw)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    for m, w in zip(opt.momentums, want_u):
        np.testing.assert_allclose(m.numpy(), w, rtol=1e-5, atol=1e-6)
    plain, _ = run_keras(cls(learning_rate=0.05, momentum=0.9, weight_decay=0.01, weight_decay_mode=mode, **extra), grads)
    assert max(np.max(np.abs(a - b)) for a, b in zip(plain, want)) > 1e-3  # the look-ahead really differs
    # update_norm is the length of the Nesterov step the weights took (diagnostics_every=1)
    opt = cls(learning_rate=0.05, momentum=0.9, weight_decay=0.01, weight_decay_mode=mode, nesterov=True,
              diagnostics_every=1, **extra)
    variables = make_variables()
    for step in grads:
        before = [v.numpy().copy() for v in variables]
        opt.apply([ops.convert_to_tensor(g) for g in step], variables)
    moved = np.sqrt(sum(np.sum((v.numpy() - w) ** 2) for v, w in zip(variables, before)))
    np.testing.assert_allclose(opt.diagnostics()["update_norm"], moved, rtol=1e-3)


def test_msgd_nesterov_equals_pytorch_sgd():
    """Golden values from another implementation: torch.optim.SGD(momentum, nesterov,
    weight_decay) on the same gradients (PyTorch, when installed)."""
    torch = pytest.importorskip("torch")
    grads = random_grads(7)
    got, _ = run_keras(MSGD(learning_rate=0.05, momentum=0.9, weight_decay=0.01, nesterov=True), grads)
    params = [torch.nn.Parameter(torch.tensor(v.numpy(), dtype=torch.float64)) for v in make_variables()]
    sgd = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True)
    for step in grads:
        for p, g in zip(params, step):
            p.grad = torch.tensor(g, dtype=torch.float64)
        sgd.step()
    for g, p in zip(got, params):
        np.testing.assert_allclose(g, p.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_keras_exclude_from_weight_decay_is_honoured_beside_the_regexes():
    """Keras' own `exclude_from_weight_decay(var_names=...)` and our `weight_decay_exclude`
    regexes both take a variable out of the decay."""
    grads = random_grads(8)
    opt = SNGM(learning_rate=0.05, momentum=0.9, weight_decay=0.01, weight_decay_exclude=["gamma"])
    opt.exclude_from_weight_decay(var_names=["bias"])
    got, _ = run_keras(opt, grads)
    want, _ = run_reference(ref.sngm_step, grads, 0.05, beta=0.9, wd=0.01, decay_mask=[True, False, True, False])
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    other, _ = run_keras(SNGM(learning_rate=0.05, momentum=0.9, weight_decay=0.01, weight_decay_exclude=["gamma"]), grads)
    assert np.max(np.abs(other[1] - want[1])) > 1e-4  # the bias really was decayed without the exclusion


@pytest.mark.parametrize("mode", ["l2", "decoupled"])
@pytest.mark.parametrize("cls", [SNGM, BlockSNGM, LARS])
def test_optimizer_diagnostics_match_reference(cls, mode):
    rng = np.random.default_rng(0)
    with keras.name_scope("dense"):
        variables = [keras.Variable(rng.normal(size=(4, 3)).astype("float32"), name="kernel"),
                     keras.Variable(rng.normal(size=(3,)).astype("float32"), name="bias")]
    w = [v.numpy().astype("float64") for v in variables]
    u = [np.zeros_like(x) for x in w]
    kw = dict(learning_rate=0.1, momentum=0.9, weight_decay=0.01, weight_decay_mode=mode)
    opt = cls(diagnostics_every=1, trust_coefficient=0.05, **kw) if cls is LARS else cls(diagnostics_every=1, **kw)
    rng = np.random.default_rng(1)
    mask = [True, False] if cls is LARS else [True, True]
    for _ in range(4):
        g = [rng.normal(size=x.shape) for x in w]
        opt.apply([ops.convert_to_tensor(x.astype("float32")) for x in g], variables)
        g_eff = [gi + 0.01 * wi if (mode == "l2" and m) else gi for gi, wi, m in zip(g, w, mask)]
        w_before = w
        if cls is SNGM:
            w, u = ref.sngm_step(w, u, g, 0.1, 0.9, 0.01, mode)
        elif cls is BlockSNGM:
            w, u = ref.block_sngm_step(w, u, g, 0.1, 0.9, 0.01, mode)
        else:
            w, u = ref.lars_step(w, u, g, 0.1, 0.9, 0.01, mode, decay_mask=mask, trust_mask=mask, eta=0.05)
        d = opt.diagnostics()
        np.testing.assert_allclose(d["grad_norm"], np.sqrt(sum(np.sum(x * x) for x in g_eff)), rtol=1e-5)
        np.testing.assert_allclose(d["momentum_norm"], np.sqrt(sum(np.sum(x * x) for x in u)), rtol=1e-5)
        step = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(w_before, w)))
        np.testing.assert_allclose(d["update_norm"], step, rtol=1e-4)
        assert d["momentum_norm_bound"] == ({SNGM: pytest.approx(10.0), BlockSNGM: pytest.approx(10.0 * np.sqrt(2))}
                                            .get(cls))  # LARS: none
        if cls is not SNGM:
            np.testing.assert_allclose(d["block_grad_norms"], [np.linalg.norm(x) for x in g_eff], rtol=1e-5)
        if cls is LARS:
            want = 0.05 * np.linalg.norm(w_before[0]) / np.linalg.norm(g_eff[0])
            np.testing.assert_allclose(d["trust_ratios"], [want, 1.0], rtol=1e-5)


@pytest.mark.parametrize("cls", [SNGM, BlockSNGM, LARS])
def test_zero_and_nonfinite_gradients(cls):
    v = keras.Variable(np.array([1.0, 2.0], "float32"))
    b = keras.Variable(np.array([0.5], "float32"))
    opt = cls(learning_rate=0.1, momentum=0.9)
    opt.apply([ops.zeros(2), ops.zeros(1)], [v, b])  # zero gradient: no NaN, no move
    np.testing.assert_array_equal(v.numpy(), [1.0, 2.0])
    opt.apply([ops.convert_to_tensor([1.0, -1.0]), ops.convert_to_tensor([2.0])], [v, b])
    before = [v.numpy().copy(), b.numpy().copy(), [m.numpy().copy() for m in opt.momentums]]
    for bad in (np.nan, np.inf, -np.inf):
        opt.apply([ops.convert_to_tensor([bad, 1.0]), ops.convert_to_tensor([1.0])], [v, b])  # NaN in one variable only
        np.testing.assert_array_equal(v.numpy(), before[0])
        np.testing.assert_array_equal(b.numpy(), before[1])
        for m, m0 in zip(opt.momentums, before[2]):
            np.testing.assert_array_equal(m.numpy(), m0)
    assert int(opt.skipped_steps.numpy()) == 3
    assert int(opt.iterations) == 5
    opt.apply([ops.convert_to_tensor([1.0, -1.0]), ops.convert_to_tensor([2.0])], [v, b])
    assert np.all(np.isfinite(v.numpy())) and not np.array_equal(v.numpy(), before[0])
