"""docs/api.md is what tools/api_docs.py generates from the docstrings now, and the
docstrings' examples run, as doctests, on TensorFlow, JAX and PyTorch."""

import os
import subprocess
import sys

import pytest

from helpers import ROOT

MODULES = ["keras_sngm.sngm", "keras_sngm.block_sngm", "keras_sngm.lars", "keras_sngm.msgd", "keras_sngm.callbacks"]


def test_the_api_page_is_current():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "api_docs.py"), "--check"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = open(os.path.join(ROOT, "docs", "api.md"), encoding="utf-8").read()
    for name in ("keras_sngm.SNGM", "keras_sngm.LARS", "keras_sngm.callbacks.SNGMDiagnostics",
                 "keras_sngm.noise_scale.NoiseScaleEstimator"):
        assert f"### `{name}`" in text
    assert "- `update_freq`: int > 0" in text  # an argument, from the docstring's Args section


def test_a_stale_page_is_caught(tmp_path):
    """The check compares the whole page: one changed line fails it."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import api_docs

    page = tmp_path / "api.md"
    page.write_text(api_docs.render().replace("int > 0", "int >= 0", 1))
    original, api_docs.OUT = api_docs.OUT, str(page)
    try:
        assert api_docs.main(["--check"]) == 1
    finally:
        api_docs.OUT = original


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_docstring_examples_run(backend):
    code = ("import doctest, importlib, sys; failed = attempted = 0\n"
            f"for m in {MODULES!r}:\n"
            "    r = doctest.testmod(importlib.import_module(m), optionflags=doctest.NORMALIZE_WHITESPACE)\n"
            "    failed += r.failed; attempted += r.attempted\n"
            "print('attempted', attempted); sys.exit(failed)")
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "attempted 31" in proc.stdout
