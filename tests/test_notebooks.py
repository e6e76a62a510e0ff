"""The notebooks execute top to bottom at a small size (nbclient), on real data."""

import ast
import os

import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = ["01_quickstart.ipynb", "02_large_batch.ipynb"]


def _checked(nb, name):
    """The notebook's own printed results against what it claims: plots drawn, and each
    CHECK line (it trained on every class and learned something, without a trivial 100%)."""
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, name
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, f"{name} should draw its plots"
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "stream")
    checks = [ast.literal_eval(line[len("CHECK "):]) for line in text.splitlines() if line.startswith("CHECK ")]
    assert checks, f"{name} should print its CHECK lines"
    for check in checks:
        assert check.get("train_classes", 10) == check.get("test_classes", 10) == check["classes"] == 10, check
        assert 1.5 / check["classes"] < check["val_accuracy"] < 0.95, check


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_executed(name):
    """A reader on GitHub sees the curves: committed run top to bottom (at the small size),
    with its outputs, which pass the same checks as a fresh execution."""
    nb = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), f"{name}: execute it top to bottom"
    _checked(nb, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, shared_data, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("SNGM_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("DATA_DIR", os.path.join(shared_data, "cifar10-jpeg.tar"))
    monkeypatch.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    nb = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}}).execute()
    _checked(nb, name)
