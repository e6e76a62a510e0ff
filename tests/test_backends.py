"""keras_sngm on every Keras 3 backend and on the oldest and newest supported Keras.

Each backend runs in its own process (KERAS_BACKEND is read once, at import):
- the NumPy-reference tests (tests/test_update_rules.py) and Keras' generic optimizer
  contract (tests/test_optimizer_contract.py) under JAX and PyTorch (and, under PyTorch,
  tests/torch_update_check.py), and the first under the oldest supported Keras on all
  three backends, with `jit_compile=True` (the pinned newest runs them all under
  TensorFlow in the main suite);
- the same `model.fit` (tests/backend_fit.py) under TensorFlow, JAX and PyTorch, and
  under JAX's DataParallel on 2 host devices: equal weights and momenta;
- a `.keras` file saved under one backend, loaded under another, continuing exactly as
  the process that saved it.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import keras_sngm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLDEST = os.path.join(ROOT, ".venv", "keras-oldest")
BACKENDS = ("tensorflow", "jax", "torch")


def _run(args, backend, timeout=900, **env):
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]),
           "TF_CPP_MIN_LOG_LEVEL": "3", **env}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _available(backend):
    return _run(["-c", f"import {'tensorflow' if backend == 'tensorflow' else backend}"], "tensorflow").returncode == 0


def _need(backend):
    if not _available(backend):
        pytest.skip(f"{backend} is not installed (`make install` installs it)")


@pytest.mark.slow
def test_reference_equality_on_every_backend_and_the_oldest_supported_keras():
    """tests/test_update_rules.py (the NumPy references, optax, PyTorch's SGD) in a process of
    its own for JAX and PyTorch with the pinned Keras, and for all three backends with the
    oldest supported Keras first on PYTHONPATH. The runs are mostly single-threaded
    (compiles and eager ops), so two go at a time."""
    from concurrent.futures import ThreadPoolExecutor

    oldest = os.path.isdir(os.path.join(OLDEST, "keras"))
    runs = [(b, False) for b in ("jax", "torch") if _available(b)]
    runs += [(b, True) for b in BACKENDS if oldest and _available(b)]
    if not runs:
        pytest.skip("neither JAX nor PyTorch is installed (`make install-dev` installs them)")

    def one(run):
        backend, old = run
        path = {"PYTHONPATH": os.pathsep.join([OLDEST, ROOT, os.path.join(ROOT, "tests")])} if old else {}
        version = _run(["-c", "import keras; print(keras.__version__)"], backend, **path).stdout.strip()
        # Keras' generic optimizer contract too, with the pinned Keras (TensorFlow runs it in the main suite)
        modules = ["tests/test_update_rules.py"] + ([] if old else ["tests/test_optimizer_contract.py"])
        if backend == "torch" and not old:  # the PyTorch path's own checks: no host round trip, the fused kernel
            modules.append("tests/torch_update_check.py")
        if old:  # a cross-check of the oldest Keras: the compiled paths (the eager ones run with the pinned Keras)
            modules += ["-k", "not False"]
        return version, _run(["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *modules], backend, **path)

    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(runs, pool.map(one, runs)))
    for (backend, old), (version, proc) in results.items():
        what = f"{backend} with Keras {version}"
        if old:
            assert version == keras_sngm.SUPPORTED_KERAS[0], what
        assert proc.returncode == 0 and " passed" in proc.stdout, what + proc.stdout[-3000:] + proc.stderr[-2000:]
        if backend == "torch" or not old:  # PyTorch's golden test ran too (the contract skips what a backend lacks)
            skipped = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
            assert not [line for line in skipped if "test_update_rules.py" in line or "torch_update_check.py" in line], \
                what + "\n".join(skipped)
    if not oldest:
        pytest.skip(f"the oldest supported Keras is not installed in {OLDEST} (`make install` puts it there); "
                    f"the pinned Keras passed on {', '.join(b for b, _ in runs)}")


def _fit(tmp_path, name, backend, *args, **env):
    out = tmp_path / name
    out.mkdir()
    proc = _run([os.path.join(ROOT, "tests", "backend_fit.py"), str(out), *args], backend, **env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.load(out / "result.npz"), out


def _assert_same(a, b, what):
    for i in range(4):
        np.testing.assert_allclose(a[f"arr_{i}"], b[f"arr_{i}"], rtol=1e-5, atol=1e-6, err_msg=f"{what}: weight {i}")
    np.testing.assert_allclose(a["momenta"], b["momenta"], rtol=1e-5, atol=1e-6, err_msg=f"{what}: momenta")


@pytest.mark.slow
def test_fit_is_the_same_on_every_backend_and_under_jax_data_parallel(tmp_path):
    for b in BACKENDS:
        _need(b)
    runs = {b: _fit(tmp_path, b, b, "fit")[0] for b in BACKENDS}
    for b in BACKENDS:
        assert int(runs[b]["iterations"]) == 8 and int(runs[b]["hook_calls"]) >= 1, b  # Keras took the list hook
    assert int(runs["torch"]["hook_calls"]) == 8  # eager: once per update; TF and JAX: once per trace
    moved = np.max(np.abs(runs["tensorflow"]["arr_0"] - np.random.default_rng(1).normal(scale=0.5, size=(8, 16))))
    assert moved > 1e-2  # training really moved the weights
    _assert_same(runs["jax"], runs["tensorflow"], "jax vs tensorflow")
    _assert_same(runs["torch"], runs["tensorflow"], "torch vs tensorflow")
    dp, _ = _fit(tmp_path, "dp", "jax", "dp", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    assert int(dp["devices"]) == 2
    _assert_same(dp, runs["jax"], "DataParallel on 2 devices vs 1 device")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_norm_is_taken_after_loss_scaling_and_gradient_accumulation(tmp_path, backend):
    """Inside LossScaleOptimizer (loss x 2^15), and with 2 accumulated micro-batches of 8
    against batches of 16: the same updates, so SNGM normalized the unscaled, averaged
    gradient (a scaled one would give the same direction but a per-micro-batch one would not)."""
    _need(backend)
    plain, _ = _fit(tmp_path, "plain", backend, "fit")
    scaled, _ = _fit(tmp_path, "lossscale", backend, "lossscale")
    _assert_same(scaled, plain, "inside LossScaleOptimizer")
    np.testing.assert_allclose(scaled["grad_norm"], plain["grad_norm"], rtol=1e-5)  # unscaled before the norm
    accum, _ = _fit(tmp_path, "accum", backend, "accum")
    assert int(accum["iterations"]) == 8  # 16 micro-batches, 8 updates
    _assert_same(accum, plain, "2 accumulated micro-batches of 8 vs batches of 16")


@pytest.mark.slow
@pytest.mark.parametrize("saved, loaded", [("tensorflow", "jax"), ("tensorflow", "torch"), ("jax", "tensorflow")])
def test_keras_file_saved_under_one_backend_continues_identically_under_another(tmp_path, saved, loaded):
    _need(saved)
    _need(loaded)
    whole, out = _fit(tmp_path, "save", saved, "save")
    cont, _ = _fit(tmp_path, "load", loaded, "load", str(out / "model.keras"))
    assert int(cont["iterations"]) == int(whole["iterations"]) == 8
    _assert_same(cont, whole, f"saved under {saved}, continued under {loaded}")


def test_unsupported_keras_is_refused_naming_both_versions():
    low, high = keras_sngm.SUPPORTED_KERAS
    for bad in ("3.11.3", "3.16.0", "2.15.0"):
        with pytest.raises(ImportError, match=rf"supports Keras >={low},<{high}; the installed Keras is {bad}\."):
            keras_sngm.check_keras_version(bad)
    for good in (low, "3.15.1", "3.13.0.dev2025"):
        keras_sngm.check_keras_version(good)


def test_setup_declares_the_tested_range():
    low, high = keras_sngm.SUPPORTED_KERAS
    setup = open(os.path.join(ROOT, "setup.py")).read()
    assert f'"keras>={low[:-2]},<{high[:-2]}"' in setup
    makefile = open(os.path.join(ROOT, "Makefile")).read()
    assert f"KERAS_OLDEST := {low}" in makefile
