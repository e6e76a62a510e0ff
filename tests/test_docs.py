"""The documentation: the site builds with MkDocs in strict mode (a broken link, a page
missing from the nav, or a docstring cross-reference to nothing fails the build, with the
name), its API reference renders the docstrings' sections, the docstrings' examples run as
doctests on TensorFlow, JAX and PyTorch, and the README stays short with links that resolve."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from helpers import BIN, ROOT

MODULES = ["keras_sngm", "keras_sngm.sngm", "keras_sngm.block_sngm", "keras_sngm.lars", "keras_sngm.msgd",
           "keras_sngm.callbacks"]


def mkdocs_build(root, site):
    return subprocess.run([os.path.join(BIN, "mkdocs"), "build", "--strict", "-f", os.path.join(root, "mkdocs.yml"),
                           "-d", str(site)], cwd=root, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    proc = mkdocs_build(ROOT, out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _text(html):
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).replace("&quot;", '"').replace("&gt;", ">")


def test_every_page_is_built_and_the_reference_renders_the_docstrings(site):
    for page in ("getting-started", "optimizers", "diagnostics", "trainers", "adaptive-batch", "preemption",
                 "gpu-clusters", "planning", "study", "results", "benchmarks", "benchmarks-gpu", "api", "development"):
        assert (site / page / "index.html").is_file(), page
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("SNGM", "BlockSNGM", "LARS", "MSGD", "callbacks.SNGMDiagnostics", "noise_scale.NoiseScaleEstimator"):
        assert f'id="keras_sngm.{name}"' in api, name
    sngm = _text(api[api.index('id="keras_sngm.SNGM"'):api.index('id="keras_sngm.BlockSNGM"')])
    assert "u = momentum * u + g / norm ( g )" in sngm or "u = momentum * u + g / norm(g)" in sngm
    # `Args:` became a parameter table and `References:` a section of its own
    assert re.search(r"Parameters: Name Type Description Default learning_rate", sngm), sngm[:3000]
    assert re.search(r"momentum .{0,40}float in \[0, 1\)", sngm)
    assert re.search(r'<details class="references" open> <summary>References</summary> <ul> <li><a href="https://arxiv'
                     r'\.org/abs/2007\.13985">Zhao, Xie and Li, 2020</a>', re.sub(r"\s+", " ", api))


def _copy_project(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(os.path.join(ROOT, "mkdocs.yml"), root)
    shutil.copytree(os.path.join(ROOT, "docs"), root / "docs")
    shutil.copytree(os.path.join(ROOT, "keras_sngm"), root / "keras_sngm")
    return root


@pytest.mark.parametrize("damage, named", [
    ("link", "no-such-page.md"),
    ("unlisted", "stray.md"),
    ("crossref", "keras_sngm.NoSuchOptimizer"),
])
def test_the_strict_build_fails_naming_what_is_wrong(tmp_path, damage, named):
    root = _copy_project(tmp_path)
    if damage == "link":
        with open(root / "docs" / "optimizers.md", "a") as f:
            f.write("\nSee [the other page](no-such-page.md).\n")
    elif damage == "unlisted":
        (root / "docs" / "stray.md").write_text("# A page the nav does not list\n")
    else:
        path = root / "keras_sngm" / "msgd.py"
        path.write_text(path.read_text().replace('"""Momentum SGD as', '"""See [keras_sngm.NoSuchOptimizer][]. Momentum SGD as', 1))
    proc = mkdocs_build(str(root), tmp_path / "site")
    assert proc.returncode != 0 and named in proc.stdout + proc.stderr, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_the_sngm_reference_in_a_browser(site, tmp_path):
    """Chromium renders the SNGM entry with its update rule and its parameter table."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("chromium is not installed (apt-get install chromium); the reference page was checked as HTML")
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                           (site / "api" / "index.html").as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    sngm = _text(dom[dom.index('id="keras_sngm.SNGM"'):dom.index('id="keras_sngm.BlockSNGM"')])
    assert "g / norm" in sngm and "Parameters:" in sngm and "learning_rate" in sngm


def test_the_readme_is_short_and_its_links_resolve():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    words = len(re.sub(r"```.*?```", " ", text, flags=re.S).split())
    assert words <= 1500, f"README.md has {words} words outside code blocks"
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not target.startswith(("http://", "https://")):
            assert os.path.exists(os.path.join(ROOT, target)), target


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
