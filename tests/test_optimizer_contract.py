"""Keras' generic optimizer contract, for every keras_sngm optimizer, with Keras SGD as the control.

Keras tests each of its own optimizers for the same generic behaviours
(keras/src/optimizers/optimizer_test.py, sgd_test.py, loss_scale_optimizer_test.py and
optimizer_sparse_test.py in Keras 3.15). This module states them again for SNGM, BlockSNGM,
LARS and MSGD, and runs Keras' SGD(momentum) through the same assertions, so a failure that
is Keras' own shows on the control too. The module runs on the suite's backend (TensorFlow),
and tests/test_backends.py runs it again under JAX and PyTorch.

Every expectation is Keras' documented semantics applied to the gradients in NumPy, followed
by the NumPy statement of the update rule (tests/reference.py); none comes from the optimizer
under test. Keras' base arguments act on the gradients before our list-level step, so:

- `clipnorm` clips each variable's gradient to that norm on its own. That changes the
  relative size of the variables' gradients, hence SNGM's direction g/||g|| (and MSGD's
  step); BlockSNGM and LARS divide each variable by its own norm, so for them it changes
  nothing but through the L2 term.
- `global_clipnorm` scales all gradients by one factor, which every normalized direction
  divides out: without L2 decay it changes nothing for SNGM, BlockSNGM and LARS (it does
  scale MSGD's and SGD's step). With `weight_decay_mode="l2"` the decay is added after the
  clipping, so the clipped gradient and `wd * w` are normalized together.
- `clipvalue` clips elementwise, which changes every direction.
- `loss_scale_factor` divides the gradients before the step; `gradient_accumulation_steps`
  averages the micro-batches' gradients; `iterations` counts updates, and a schedule is read
  at Keras' micro-batch counter, as for Keras' own optimizers.
- `use_ema` keeps the average of the weights after each update, and with
  `ema_overwrite_frequency=k` writes it into the weights every k-th update; the momentum is
  not touched.
- A skipped non-finite step: our own skip advances `iterations` (it counts the batches
  consumed, so that a schedule and a resumed data position stay in step with the data) and
  counts it in `skipped_steps`; `keras.optimizers.LossScaleOptimizer` skips before the
  inner optimizer runs, so there neither advances.
"""

import pickle

import numpy as np
import pytest
import keras
from keras import ops

import reference as ref
from helpers import keras_variables
from keras_sngm import LARS, MSGD, SNGM, BlockSNGM

BACKEND = keras.backend.backend()
LR, BETA = 0.1, 0.9
SHAPES = {"dense/kernel": (4, 3), "dense/bias": (3,)}

# name: (constructor, NumPy step(w, u, g, lr, beta, wd, mode, mask), how the direction is normalized:
# "global" over all variables, "block" per variable, None not at all)
OPTIMIZERS = {
    "SNGM": (lambda **kw: SNGM(**kw), ref.sngm_step, "global"),
    "BlockSNGM": (lambda **kw: BlockSNGM(**kw), ref.block_sngm_step, "block"),
    "LARS": (lambda **kw: LARS(trust_coefficient=0.1, trust_ratio_exclude=(), **kw),
             lambda w, u, g, lr, beta, **kw: ref.lars_step(w, u, g, lr, beta, eta=0.1, **kw), "block"),
    "MSGD": (lambda **kw: MSGD(**kw),
             lambda w, u, g, lr, beta, wd=0.0, mode="l2", decay_mask=None: ref.paper_msgd_step(w, u, g, lr, beta, wd,
                                                                                              decay_mask), None),
    "SGD": (lambda weight_decay_exclude=None, **kw: keras.optimizers.SGD(**kw),
            lambda w, u, g, lr, beta, **kw: ref.msgd_step(w, u, g, lr, beta), None),
}
OURS = ["SNGM", "BlockSNGM", "LARS", "MSGD"]


def make(name, **kw):
    kw = {"learning_rate": LR, "momentum": BETA, "weight_decay_exclude": (), **kw}
    return OPTIMIZERS[name][0](**kw)


def variables(seed=0):
    return keras_variables(SHAPES, seed)


def gradients(steps, seed=1, scales=(3.0, 0.05)):
    """Gradients whose variables differ in size by 60x, so per-variable clipping matters."""
    rng = np.random.default_rng(seed)
    return [[(s * rng.normal(size=shape)).astype("float32") for s, shape in zip(scales, SHAPES.values())]
            for _ in range(steps)]


def numpy(x):
    return ops.convert_to_numpy(x).astype("float64")


def reference(name, grads_seq, lr=LR, prepare=lambda g, t: g, seed=0, **kw):
    """The NumPy update rule of `name` over `grads_seq` after Keras' `prepare(grads, t)`."""
    step = OPTIMIZERS[name][1]
    w = [numpy(v) for v in variables(seed)]
    u = [np.zeros_like(x) for x in w]
    for t, grads in enumerate(grads_seq):
        g = prepare([x.astype("float64") for x in grads], t)
        w, u = step(w, u, g, lr(t) if callable(lr) else lr, BETA, **kw)
    return w, u


def run(opt, grads_seq, seed=0):
    vs = variables(seed)
    for grads in grads_seq:
        opt.apply([ops.convert_to_tensor(g) for g in grads], vs)
    return vs


def assert_weights(actual, expected, what=""):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(numpy(a), e, rtol=2e-5, atol=2e-6, err_msg=what)


def sgd_decoupled(grads_seq, wd, mask=(True, True)):
    """Keras SGD with weight decay: `w -= lr * wd * w` before each momentum step."""
    w = [numpy(v) for v in variables()]
    u = [np.zeros_like(x) for x in w]
    for gs in grads_seq:
        w = [x * (1 - LR * wd) if m else x for x, m in zip(w, mask)]
        w, u = ref.msgd_step(w, u, [g.astype("float64") for g in gs], LR, BETA)
    return w


def differs(a, b):
    return max(np.max(np.abs(numpy(x) - y)) for x, y in zip(a, b)) > 1e-3


# ---- clipping -----------------------------------------------------------------------------

def clip_each(grads, c):
    return [g * min(1.0, c / np.linalg.norm(g)) for g in grads]


def clip_global(grads, c):
    norm = np.sqrt(sum(np.sum(g * g) for g in grads))
    return [g * min(1.0, c / norm) for g in grads]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_clipnorm_clips_each_variable_before_the_step(name):
    grads = gradients(4)
    vs = run(make(name, clipnorm=1.0), grads)
    assert_weights(vs, reference(name, grads, prepare=lambda g, t: clip_each(g, 1.0))[0])
    unclipped = reference(name, grads)[0]
    if OPTIMIZERS[name][2] == "block":   # each variable is divided by its own norm: no change
        assert_weights(vs, unclipped)
    else:                                # SNGM's direction (and the unnormalized steps) change
        assert differs(vs, unclipped)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_global_clipnorm_changes_no_normalized_direction(name):
    grads = gradients(4)
    vs = run(make(name, global_clipnorm=0.5), grads)
    assert_weights(vs, reference(name, grads, prepare=lambda g, t: clip_global(g, 0.5))[0])
    if OPTIMIZERS[name][2]:
        assert_weights(vs, reference(name, grads)[0])
    else:
        assert differs(vs, reference(name, grads)[0])


@pytest.mark.parametrize("name", OURS)
def test_l2_decay_enters_after_the_clipping(name):
    """With L2 decay in the gradient, the clipped gradient and wd * w are normalized together:
    the clip then matters for every optimizer."""
    grads = gradients(4)
    vs = run(make(name, global_clipnorm=0.5, weight_decay=0.3), grads)
    expected = reference(name, grads, prepare=lambda g, t: clip_global(g, 0.5), wd=0.3)[0]
    assert_weights(vs, expected)
    assert differs(vs, reference(name, grads, wd=0.3)[0])


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_clipvalue_clips_each_element(name):
    grads = gradients(4)
    vs = run(make(name, clipvalue=0.5), grads)
    assert_weights(vs, reference(name, grads, prepare=lambda g, t: [np.clip(x, -0.5, 0.5) for x in g])[0])
    assert differs(vs, reference(name, grads)[0])


def test_only_one_clipping_argument():
    for name in OPTIMIZERS:
        with pytest.raises(ValueError, match="Only one of `clipnorm`, `clipvalue` and `global_clipnorm`"):
            make(name, clipnorm=1.0, global_clipnorm=1.0)


# ---- loss scale, accumulation, weight decay exclusions ------------------------------------

@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_loss_scale_factor_divides_the_gradients(name):
    grads = gradients(3)
    opt = make(name, loss_scale_factor=1024.0, **({} if name == "SGD" else {"weight_decay": 0.3}))
    assert float(numpy(opt.scale_loss(1.0))) == 1024.0
    vs = run(opt, [[g * 1024.0 for g in gs] for gs in grads])
    assert_weights(vs, reference(name, grads, **({} if name == "SGD" else {"wd": 0.3}))[0])


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_gradient_accumulation_averages_micro_batches_and_counts_updates(name):
    """3 micro-batches per update; a schedule is read at Keras' micro-batch counter (the
    update k uses lr(3k + 2)), as for Keras' own optimizers."""
    micro = gradients(9)
    schedule = keras.optimizers.schedules.ExponentialDecay(LR, decay_steps=1, decay_rate=0.8)
    opt = make(name, learning_rate=schedule, gradient_accumulation_steps=3)
    vs = variables()
    for i, grads in enumerate(micro):
        opt.apply([ops.convert_to_tensor(g) for g in grads], vs)
        assert int(numpy(opt.iterations)) == (i + 1) // 3
        assert int(numpy(opt._iterations)) == i + 1
    means = [[np.mean([micro[3 * k + j][s] for j in range(3)], axis=0) for s in range(len(SHAPES))] for k in range(3)]
    assert_weights(vs, reference(name, means, lr=lambda k: LR * 0.8 ** (3 * k + 2))[0])


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_exclude_from_weight_decay_by_keras_names(name):
    """Keras' own `exclude_from_weight_decay(var_names=...)` (the SGD control decays decoupled,
    `w -= lr * wd * w` before its step; ours decay in the gradient)."""
    grads = gradients(3)
    opt = make(name, weight_decay=0.2)
    opt.exclude_from_weight_decay(var_names=["bias"])
    vs = run(opt, grads)
    if name == "SGD":
        expected = sgd_decoupled(grads, 0.2, mask=[True, False])
    else:
        expected = reference(name, grads, wd=0.2, decay_mask=[True, False])[0]
    assert_weights(vs, expected)


# ---- None gradients, learning rates ------------------------------------------------------

@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_none_gradients_are_left_out_with_a_warning(name):
    """A None gradient: Keras warns and leaves that variable (and its momentum) alone; the
    others step as if it did not exist (SNGM's norm is over the given gradients only)."""
    grads = gradients(3)
    opt, vs = make(name), variables()
    bias0 = numpy(vs[1])
    for gs in grads:
        with pytest.warns(UserWarning, match="Gradients do not exist for variables"):
            opt.apply([ops.convert_to_tensor(gs[0]), None], vs)
    np.testing.assert_array_equal(numpy(vs[1]), bias0)
    w, u = [numpy(variables()[0])], [np.zeros(SHAPES["dense/kernel"])]
    for gs in grads:
        w, u = OPTIMIZERS[name][1](w, u, [gs[0].astype("float64")], LR, BETA)
    assert_weights(vs[:1], w)
    assert int(numpy(opt.iterations)) == 3
    with pytest.raises(ValueError, match="No gradients provided for any variable"):
        opt.apply([None, None], vs)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("kind", ["schedule", "callable"])
def test_learning_rate_schedules_and_callables(name, kind):
    grads = gradients(4)
    if kind == "schedule":
        lr = keras.optimizers.schedules.PolynomialDecay(LR, decay_steps=4, end_learning_rate=0.0, power=2.0)
        expected = lambda t: LR * (1 - t / 4) ** 2  # noqa: E731
    else:
        lr, expected = (lambda: 0.05), (lambda t: 0.05)
    vs = run(make(name, learning_rate=lr), grads)
    assert_weights(vs, reference(name, grads, lr=expected)[0])


# ---- EMA -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_ema_and_its_overwrite_frequency(name):
    grads = gradients(5)
    opt = make(name, use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=3)
    vs = run(opt, grads)
    step = OPTIMIZERS[name][1]
    w = [numpy(v) for v in variables()]
    u = [np.zeros_like(x) for x in w]
    ema = None
    for n, gs in enumerate(grads, start=1):
        w, u = step(w, u, [g.astype("float64") for g in gs], LR, BETA)
        ema = w if ema is None else [0.9 * a + 0.1 * x for a, x in zip(ema, w)]   # the first is the weights
        if n % 3 == 0:
            w = list(ema)                                                           # overwritten; u kept
    assert_weights(vs, w, "weights")
    assert_weights(opt._model_variables_moving_average, ema, "average")
    assert_weights([opt.momentums[i] for i in range(2)], u, "momentum")


# ---- serialization -------------------------------------------------------------------------

@pytest.mark.parametrize("name", OURS)
def test_config_and_pickle_round_trips_step_identically(name):
    opt = make(name, weight_decay=0.1, weight_decay_mode="decoupled", clipnorm=2.0, nesterov=True,
               gradient_accumulation_steps=2, use_ema=True, ema_overwrite_frequency=2, loss_scale_factor=4.0)
    config = opt.get_config()
    clones = [type(opt).from_config(config), keras.optimizers.deserialize(keras.optimizers.serialize(opt)),
              pickle.loads(pickle.dumps(opt))]
    grads = gradients(4)
    original = run(opt, grads)
    for clone in clones:
        assert type(clone) is type(opt) and clone.get_config() == config
        assert_weights(run(clone, grads), [numpy(v) for v in original])


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(1)])


def _data():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(64, 5)).astype("float32")
    return x, (x @ rng.normal(size=(5, 1))).astype("float32")


@pytest.mark.parametrize("name", OURS)
def test_keras_file_round_trip_continues_as_uninterrupted(name, tmp_path):
    x, y = _data()
    whole = _model()
    whole.compile(optimizer=make(name, weight_decay=0.01), loss="mse")
    whole.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    half = _model()
    half.compile(optimizer=make(name, weight_decay=0.01), loss="mse")
    half.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    half.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded.optimizer) is type(half.optimizer) and int(numpy(loaded.optimizer.iterations)) == 4
    loaded.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert_weights(loaded.weights, [numpy(w) for w in whole.weights])


# ---- stateless_apply -----------------------------------------------------------------------

@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_stateless_apply_equals_apply(name):
    if BACKEND == "tensorflow":
        pytest.skip("Keras' stateless_apply is for JAX (and PyTorch); TensorFlow's variables are stateful")
    grads = gradients(3)
    opt, vs = make(name, weight_decay=0.1), variables()
    opt.build(vs)
    values, opt_values = [v.value for v in vs], [v.value for v in opt.variables]
    step = opt.stateless_apply
    if BACKEND == "jax":
        import jax
        step = jax.jit(step)
    for gs in grads:
        values, opt_values = step(opt_values, [ops.convert_to_tensor(g) for g in gs], values)
    expected = sgd_decoupled(grads, 0.1) if name == "SGD" else reference(name, grads, wd=0.1)[0]
    assert_weights(values, expected)
    if BACKEND == "jax":  # JAX's arrays are immutable (Keras' SGD on PyTorch updates the tensors in place)
        np.testing.assert_array_equal(numpy(vs[0]), numpy(variables()[0]))


# ---- sparse gradients ----------------------------------------------------------------------

EMB = (6, 3)


def _sparse(rows, indices):
    """A sparse gradient of a (6, 3) table on this backend, and its dense NumPy sum."""
    dense = np.zeros(EMB)
    np.add.at(dense, list(indices), rows)
    if BACKEND == "tensorflow":
        import tensorflow as tf
        return tf.IndexedSlices(tf.constant(rows), tf.constant(indices), dense_shape=tf.constant(EMB)), dense
    if BACKEND == "jax":
        import jax.experimental.sparse as jax_sparse
        return jax_sparse.BCOO((rows, np.array([[i] for i in indices])), shape=EMB), dense
    pytest.skip(f"Keras has no sparse tensors on {BACKEND}")


@pytest.mark.parametrize("indices", [(0, 2, 4), (1, 3, 1, 5, 1)], ids=["unique", "repeated"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_sparse_gradients_equal_their_dense_sum(name, indices):
    rng = np.random.default_rng(7)
    table0 = rng.normal(size=EMB).astype("float32")
    kernel0 = rng.normal(size=(3, 2)).astype("float32")
    steps = []
    for _ in range(3):
        sparse, dense = _sparse(rng.normal(size=(len(indices), EMB[1])).astype("float32"), indices)
        steps.append((sparse, dense, rng.normal(size=(3, 2)).astype("float32")))
    table, kernel = keras.Variable(table0, name="embeddings"), keras.Variable(kernel0, name="kernel")
    opt = make(name)
    for sparse, _, k in steps:
        opt.apply([sparse, ops.convert_to_tensor(k)], [table, kernel])
    w, u = [table0.astype("float64"), kernel0.astype("float64")], [np.zeros(EMB), np.zeros((3, 2))]
    for _, dense, k in steps:
        w, u = OPTIMIZERS[name][1](w, u, [dense, k.astype("float64")], LR, BETA)
    assert_weights([table, kernel], w, "apply")
    if BACKEND == "jax":  # and through a jit-compiled stateless_apply, as model.fit runs it
        import jax
        fresh, opt2 = [keras.Variable(table0), keras.Variable(kernel0)], make(name)
        opt2.build(fresh)
        values, opt_values = [v.value for v in fresh], [v.value for v in opt2.variables]
        step = jax.jit(opt2.stateless_apply)
        for sparse, _, k in steps:
            values, opt_values = step(opt_values, [sparse, ops.convert_to_tensor(k)], values)
        assert_weights(values, w, "stateless_apply in jax.jit")


@pytest.mark.parametrize("name", OURS)
def test_raw_tensorflow_variables_beside_keras_ones(name):
    """Keras' optimizers accept a `tf.Variable` (which has no `path`, only a `name`) beside
    Keras variables; the exclusion patterns then match its name."""
    if BACKEND != "tensorflow":
        pytest.skip("tf.Variable exists on the TensorFlow backend only")
    import tensorflow as tf
    grads = gradients(3)
    kernel = variables()[0]
    bias = tf.Variable(numpy(variables()[1]).astype("float32"), name="bias")
    patterns = {"weight_decay": 0.1, "weight_decay_exclude": ["bias"]}
    mask = {"wd": 0.1, "decay_mask": [True, False]}
    if name == "LARS":
        opt = LARS(learning_rate=LR, momentum=BETA, trust_coefficient=0.1, trust_ratio_exclude=["bias"], **patterns)
        mask["trust_mask"] = [True, False]
    else:
        opt = make(name, **patterns)
    for gs in grads:
        opt.apply([tf.constant(g) for g in gs], [kernel, bias])
    assert_weights([kernel, bias], reference(name, grads, **mask)[0])
    assert differs([kernel, bias], reference(name, grads, wd=0.1)[0])   # the exclusion did act


# ---- LossScaleOptimizer --------------------------------------------------------------------

def _lso_apply(lso, grads, vs):
    """`apply` where Keras' LossScaleOptimizer supports it eagerly; on JAX (where its eager
    `apply` fails for Keras SGD too) a jit-compiled `stateless_apply`, written back."""
    if BACKEND != "jax":
        lso.apply([ops.convert_to_tensor(g) for g in grads], vs)
        return
    import jax
    if not lso.built:
        lso.build(vs)
    new, opt_values = jax.jit(lso.stateless_apply)([v.value for v in lso.variables],
                                                   [ops.convert_to_tensor(g) for g in grads], [v.value for v in vs])
    for v, x in zip(vs, new):
        v.assign(x)
    for v, x in zip(lso.variables, opt_values):
        v.assign(x)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_loss_scale_optimizer_unscales_and_skips_non_finite_steps(name):
    grads = gradients(3)
    lso = keras.optimizers.LossScaleOptimizer(make(name), initial_scale=2.0 ** 10)
    vs = variables()
    for gs in grads:
        _lso_apply(lso, [g * 2.0 ** 10 for g in gs], vs)
    expected = reference(name, grads)[0]
    assert_weights(vs, expected)
    inner = lso.inner_optimizer
    assert int(numpy(inner.iterations)) == 3
    bad = [np.full(SHAPES["dense/kernel"], np.inf, "float32"), grads[0][1]]
    _lso_apply(lso, bad, vs)
    assert_weights(vs, expected, "after a non-finite step")
    assert float(numpy(lso.dynamic_scale)) == 2.0 ** 9              # halved
    assert int(numpy(inner.iterations)) == 3                        # the inner optimizer never ran
    if name != "SGD":
        assert int(numpy(inner.skipped_steps)) == 0
        # Our own skip, outside LossScaleOptimizer, counts the batch (see the module docstring).
        opt, ws = make(name), variables()
        for gs in (grads[0], bad):
            opt.apply([ops.convert_to_tensor(g) for g in gs], ws)
        assert int(numpy(opt.iterations)) == 2 and int(numpy(opt.skipped_steps)) == 1


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_loss_scale_optimizer_inside_fit(name):
    """`model.fit` with LossScaleOptimizer(opt) equals `model.fit` with opt: the scale is
    divided out before the step (on JAX this is the jit-compiled stateless path)."""
    x, y = _data()
    out = []
    for wrap in (False, True):
        model = _model()
        opt = make(name, weight_decay=0.01) if name != "SGD" else make(name)
        model.compile(optimizer=keras.optimizers.LossScaleOptimizer(opt) if wrap else opt, loss="mse")
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        out.append([numpy(w) for w in model.weights])
    assert_weights(out[1], out[0])
    assert differs(out[0], [numpy(w) for w in _model().weights])
