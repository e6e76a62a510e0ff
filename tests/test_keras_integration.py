"""SNGM/BlockSNGM/LARS/MSGD inside Keras: fit, save/load, accumulation, distribution, XLA."""

import numpy as np
import pytest
import keras
import tensorflow as tf

import reference as ref
from keras_sngm import LARS, MSGD, SNGM, BlockSNGM

OPTIMIZERS = {  # keyword arguments given to a test override these
    "SNGM": lambda **kw: SNGM(**{"learning_rate": 0.05, "momentum": 0.9, "weight_decay": 1e-3, **kw}),
    "BlockSNGM": lambda **kw: BlockSNGM(**{"learning_rate": 0.05, "momentum": 0.9, "weight_decay": 1e-3, **kw}),
    "LARS": lambda **kw: LARS(**{"learning_rate": 0.5, "momentum": 0.9, "weight_decay": 1e-3,
                                 "trust_coefficient": 0.01, **kw}),
    "MSGD": lambda **kw: MSGD(**{"learning_rate": 0.05, "momentum": 0.9, "weight_decay": 1e-3, **kw}),
}


def data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype("float32")
    y = (x @ rng.normal(size=(6, 1)) + 0.1 * rng.normal(size=(n, 1))).astype("float32")
    return x, y


def mlp(seed=0, batch_norm=True):
    keras.utils.set_random_seed(seed)
    norm = [keras.layers.BatchNormalization()] if batch_norm else []
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), *norm, keras.layers.Dense(1)])


def weights(model):
    return [w.numpy() for w in model.weights]


def assert_same(a, b, rtol=1e-5, atol=1e-6):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_config_round_trip(name):
    opt = OPTIMIZERS[name](weight_decay_mode="decoupled", weight_decay_exclude=["bias$"], gradient_accumulation_steps=3)
    config = opt.get_config()
    clone = type(opt).from_config(config)
    assert clone.get_config() == config
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(again) is type(opt) and again.get_config() == config
    assert config["weight_decay_exclude"] == ["bias$"]
    if name == "LARS":
        assert config["trust_ratio_exclude"] == ["bias", "normalization", "gamma", "beta"]
    # Schedules serialize too.
    sched = keras.optimizers.schedules.PolynomialDecay(1.6, 1000, end_learning_rate=0.0, power=1.1)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(SNGM(learning_rate=sched)))
    assert restored.learning_rate.numpy() == pytest.approx(1.6)
    assert restored._learning_rate.power == 1.1


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_save_load_continue_equals_uninterrupted(name, tmp_path):
    x, y = data()
    sched = keras.optimizers.schedules.PolynomialDecay(0.05 if name != "LARS" else 0.5, 40, power=2.0)

    def compiled():
        m = mlp()
        m.compile(optimizer=OPTIMIZERS[name](learning_rate=sched), loss="mse")
        return m

    straight = compiled()
    straight.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0)

    first = compiled()
    first.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    path = str(tmp_path / "m.keras")
    first.save(path)
    resumed = keras.models.load_model(path)
    assert type(resumed.optimizer) is type(first.optimizer)
    assert int(resumed.optimizer.iterations) == 8
    # The schedule comes back as a schedule, at its position: lr = sched(8), not its start.
    assert resumed.optimizer.get_config()["learning_rate"]["class_name"] == "PolynomialDecay"
    assert float(resumed.optimizer.learning_rate) == pytest.approx(float(sched(8)), rel=1e-6)
    assert float(sched(8)) < 0.7 * float(sched(0))
    assert_same([v.numpy() for v in resumed.optimizer.momentums], [v.numpy() for v in first.optimizer.momentums], 0, 0)
    resumed.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    assert_same(weights(resumed), weights(straight), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_gradient_accumulation_equals_large_batch(name):
    x, y = data(64)
    big = mlp(batch_norm=False)  # (batch statistics would differ between micro-batches)
    big.compile(optimizer=OPTIMIZERS[name](), loss="mse")
    big.fit(x, y, batch_size=32, epochs=3, shuffle=False, verbose=0)
    small = mlp(batch_norm=False)
    small.compile(optimizer=OPTIMIZERS[name](gradient_accumulation_steps=4), loss="mse")
    small.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
    assert_same(weights(small), weights(big), rtol=1e-5, atol=1e-6)
    assert int(small.optimizer.iterations) == int(big.optimizer.iterations) == 6


@pytest.mark.parametrize("name", ["SNGM", "BlockSNGM", "LARS"])
def test_mirrored_strategy_equals_one_device(name):
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    assert len(devices) == 2, "conftest configures two logical CPUs"
    x, y = data(64)

    def train(strategy):
        with strategy.scope():
            m = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)])
            keras.utils.set_random_seed(3)
            m.set_weights(init)
            m.compile(optimizer=OPTIMIZERS[name](), loss="mse")
        m.fit(x, y, batch_size=32, epochs=3, shuffle=False, verbose=0)
        return weights(m)

    keras.utils.set_random_seed(3)
    init = weights(keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)]))
    one = train(tf.distribute.OneDeviceStrategy(devices[0]))
    two = train(tf.distribute.MirroredStrategy(devices))
    assert_same(two, one, rtol=1e-5, atol=1e-6)
    # A per-replica norm would move the weights differently: the check can fail.
    assert not np.allclose(one[0], init[0])


def test_loss_scale_unscaled_before_norm():
    """With L2 decay the result depends on the gradient's scale: a norm on scaled
    gradients would differ from the plain run."""
    x, y = data()
    plain = mlp()
    plain.compile(optimizer=SNGM(learning_rate=0.05, weight_decay=0.05), loss="mse")
    plain.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    scaled = mlp()
    opt = keras.optimizers.LossScaleOptimizer(SNGM(learning_rate=0.05, weight_decay=0.05), initial_scale=1024.0)
    scaled.compile(optimizer=opt, loss="mse")
    scaled.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    assert_same(weights(scaled), weights(plain), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_mixed_precision(name):
    keras.config.set_dtype_policy("mixed_float16")
    x, y = data(128)
    m = mlp()
    m.compile(optimizer=OPTIMIZERS[name](), loss="mse")
    assert isinstance(m.optimizer, keras.optimizers.LossScaleOptimizer)
    hist = m.fit(x, y, batch_size=32, epochs=8, shuffle=False, verbose=0)
    losses = hist.history["loss"]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert all(np.all(np.isfinite(w)) for w in weights(m))


@pytest.mark.parametrize("model_jit", [True, False])
def test_xla_inside_fit_and_custom_loop(model_jit):
    """The optimizer's XLA step gives the same weights inside fit (with and without a
    whole-model XLA train step) and in a custom tf.function loop."""
    x, y = data()
    results = {}
    for opt_jit in (True, False):
        m = mlp()
        m.compile(optimizer=SNGM(learning_rate=0.05, weight_decay=1e-3, jit_compile=opt_jit), loss="mse", jit_compile=model_jit)
        m.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        results[opt_jit] = weights(m)
    assert_same(results[True], results[False])

    m = mlp()
    opt = SNGM(learning_rate=0.05, weight_decay=1e-3)
    loss_fn = keras.losses.MeanSquaredError()

    @tf.function(jit_compile=model_jit)
    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, m(xb, training=True))
        opt.apply(tape.gradient(loss, m.trainable_variables), m.trainable_variables)
        return loss

    for _ in range(2):
        for i in range(0, 64, 16):
            train_step(x[i:i + 16], y[i:i + 16])
    assert_same([w.numpy() for w in m.trainable_weights], [w for w, v in zip(results[True], mlp().weights) if v.trainable])


@pytest.mark.parametrize("cls", [SNGM, BlockSNGM, LARS])
def test_sparse_gradient_equals_dense(cls):
    """IndexedSlices with repeated indices: same norm and same result as the dense gradient."""
    rng = np.random.default_rng(0)
    table0 = rng.normal(size=(10, 4)).astype("float32")
    kernel0 = rng.normal(size=(4, 2)).astype("float32")
    idx = tf.constant([1, 3, 1, 7, 3, 1])  # repeats
    rows = tf.constant(rng.normal(size=(6, 4)).astype("float32"))
    sparse = tf.IndexedSlices(rows, idx, dense_shape=tf.constant([10, 4]))
    dense = tf.convert_to_tensor(sparse)
    kgrad = tf.constant(rng.normal(size=(4, 2)).astype("float32"))
    out = []
    for g in (sparse, dense):
        with keras.name_scope("emb"):
            table = keras.Variable(table0, name="embeddings")
        kernel = keras.Variable(kernel0, name="kernel")
        opt = cls(learning_rate=0.1, momentum=0.9, weight_decay=0.01)
        for _ in range(3):
            opt.apply([g, kgrad], [table, kernel])
        out.append([table.numpy(), kernel.numpy()])
    assert_same(out[0], out[1], rtol=1e-6, atol=1e-7)
    if cls is SNGM:  # and both equal the NumPy reference on the summed rows
        w, u = [table0.astype("float64"), kernel0.astype("float64")], [np.zeros((10, 4)), np.zeros((4, 2))]
        dense_np = np.zeros((10, 4))
        np.add.at(dense_np, idx.numpy(), rows.numpy())
        for _ in range(3):
            w, u = ref.sngm_step(w, u, [dense_np, kgrad.numpy().astype("float64")], 0.1, 0.9, wd=0.01)
        assert_same(out[0], w)


def test_embedding_model_fits_with_sparse_gradients():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, size=(256, 3))
    y = (ids[:, :1] % 2).astype("float32")
    m = keras.Sequential([keras.Input((3,), dtype="int32"), keras.layers.Embedding(50, 4),
                          keras.layers.Flatten(), keras.layers.Dense(1, activation="sigmoid")])
    m.compile(optimizer=SNGM(learning_rate=0.1), loss="binary_crossentropy")
    hist = m.fit(ids, y, batch_size=64, epochs=10, verbose=0)
    assert hist.history["loss"][-1] < 0.5 * hist.history["loss"][0]


BAD = [
    (dict(learning_rate=0.0), "learning_rate=0.0"),
    (dict(learning_rate=-1.0), "learning_rate=-1.0"),
    (dict(learning_rate=float("nan")), "learning_rate=nan"),
    (dict(momentum=1.0), "momentum=1.0"),
    (dict(momentum=-0.1), "momentum=-0.1"),
    (dict(weight_decay=-1e-4), "weight_decay=-0.0001"),
    (dict(weight_decay_mode="adamw"), "weight_decay_mode='adamw'"),
    (dict(weight_decay_exclude=["("]), "weight_decay_exclude=('(',)"),
    (dict(nesterov=1), "nesterov=1"),
]
LARS_BAD = [
    (dict(phi="sqrt"), "phi='sqrt'"),
    (dict(phi="clip", phi_lower=2.0, phi_upper=1.0), "phi_lower=2.0, phi_upper=1.0"),
    (dict(phi="clip", phi_lower=-1.0, phi_upper=1.0), "phi_lower=-1.0"),
    (dict(trust_coefficient=0.0), "trust_coefficient=0.0"),
    (dict(epsilon=-1.0), "epsilon=-1.0"),
]


@pytest.mark.parametrize("cls", [SNGM, BlockSNGM, LARS])
@pytest.mark.parametrize("kwargs,needle", BAD, ids=[b[1] for b in BAD])
def test_bad_hyperparameters(cls, kwargs, needle):
    with pytest.raises(ValueError) as e:
        cls(**kwargs)
    assert needle in str(e.value) and list(kwargs)[-1] in str(e.value)


@pytest.mark.parametrize("kwargs,needle", LARS_BAD, ids=[b[1] for b in LARS_BAD])
def test_bad_lars_hyperparameters(kwargs, needle):
    with pytest.raises(ValueError, match="Received") as e:
        LARS(**kwargs)
    assert needle in str(e.value)
