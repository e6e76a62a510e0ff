"""The notebooks execute top to bottom at a small size (nbclient), on real data."""

import ast
import os

import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = ["01_quickstart.ipynb", "02_large_batch.ipynb"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_without_outputs(name):
    nb = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: clear outputs before committing"


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, shared_data, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("SNGM_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("DATA_DIR", os.path.join(shared_data, "cifar10-jpeg.tar"))
    monkeypatch.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    nb = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, "the notebook should draw its plots"
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "stream")
    checks = [ast.literal_eval(line[len("CHECK "):]) for line in text.splitlines() if line.startswith("CHECK ")]
    assert checks, "the notebook should print its CHECK lines"
    for check in checks:  # it trained on every class and learned something, without a trivial 100%
        assert check.get("train_classes", 10) == check.get("test_classes", 10) == check["classes"] == 10, check
        assert 1.5 / check["classes"] < check["val_accuracy"] < 0.95, check
