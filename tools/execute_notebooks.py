"""Runs the notebooks top to bottom at their small size and saves them with their outputs
(what a reader on GitHub sees; tests/test_notebooks.py checks the saved outputs and runs
them again).

    make notebooks      (DATA_DIR=path/to/cifar10 .venv/bin/python tools/execute_notebooks.py)
"""

import os

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = ("01_quickstart.ipynb", "02_large_batch.ipynb")


def main():
    os.environ["SNGM_NOTEBOOK_SMALL"] = "1"
    os.environ["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    folder = os.path.join(ROOT, "notebooks")
    for name in NOTEBOOKS:
        nb = nbformat.read(os.path.join(folder, name), as_version=4)
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": folder}}).execute()
        for cell in nb.cells:  # TensorFlow's import notices on stderr are not worth keeping
            if cell.cell_type == "code":
                cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr")]
        nbformat.write(nb, os.path.join(folder, name))
        print(f"executed and saved notebooks/{name}")


if __name__ == "__main__":
    main()
