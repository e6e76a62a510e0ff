"""The package as a PyPI user gets it: `python -m build` makes the sdist and, from it, the
wheel; the wheel installs into a fresh venv with only its `[tensorflow]` extra, and the
README's quick start runs there, in a project that has a `trainers` module of its own."""

import glob
import os
import subprocess
import sys
import zipfile

import pytest

from helpers import ROOT

# The versions the suite tests; without them pip would take the newest TensorFlow.
CONSTRAINTS = "tensorflow==2.21.0\nkeras==3.15.1\n"


def readme_quick_start():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    start = text.index("```python", text.index("## Quick start")) + len("```python")
    return text[start:text.index("```", start)]


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), ROOT], capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_build_makes_an_sdist_and_a_wheel_without_a_top_level_trainers(dist):
    import keras_sngm

    (sdist,) = glob.glob(str(dist / "*.tar.gz"))
    (wheel,) = glob.glob(str(dist / "*.whl"))
    assert os.path.basename(wheel) == f"keras_sngm-{keras_sngm.__version__}-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    info = f"keras_sngm-{keras_sngm.__version__}.dist-info"
    assert {n.split("/")[0] for n in names} == {"keras_sngm", "keras_sngm_trainers", info}
    for module in ("keras_sngm/callbacks.py", "keras_sngm_trainers/cli.py", "keras_sngm_trainers/data/criteo.py",
                   "keras_sngm_trainers/planning/model.py", f"{info}/licenses/LICENSE"):
        assert module in names, module
    metadata = zipfile.ZipFile(wheel).read(f"{info}/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata
    assert "sngm-train = keras_sngm_trainers.cli:main" in zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
    import tarfile

    members = tarfile.open(sdist).getnames()
    for name in ("LICENSE", "CHANGELOG.md", "CITATION.cff", "trainers/cli.py", "keras_sngm/sngm.py"):
        assert any(m.endswith("/" + name) for m in members), name


@pytest.mark.slow
def test_the_wheel_alone_runs_the_readme_quick_start_beside_a_users_trainers_module(dist, tmp_path):
    (wheel,) = glob.glob(str(dist / "*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip, python = str(venv / "bin" / "pip"), str(venv / "bin" / "python")
    (tmp_path / "constraints.txt").write_text(CONSTRAINTS)
    proc = subprocess.run([pip, "install", "-q", f"{wheel}[tensorflow]", "-c", str(tmp_path / "constraints.txt")],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    project = tmp_path / "project"
    project.mkdir()
    (project / "trainers.py").write_text("MINE = True\n")  # a user's own module of that name
    (project / "quick_start.py").write_text(readme_quick_start() + "\nimport trainers\nassert trainers.MINE\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KERAS_BACKEND")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    proc = subprocess.run([python, "quick_start.py"], cwd=project, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    accuracy = float(proc.stdout.split("final accuracy")[-1])
    assert accuracy > 0.85, proc.stdout[-2000:]
    from test_callback import read_events

    scalars, _, charts = read_events(project / "logs" / "sngm" / "train")
    assert len(scalars["diagnostics/noise_scale"]) == 16 and len(charts) == 3  # 64 updates, every 4th
    # The installed code is the wheel's, not this checkout's; the command is installed too.
    where = subprocess.run([python, "-c", "import keras_sngm, keras_sngm_trainers.cli as c; print(keras_sngm.__file__,"
                            " c.__file__)"], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert where.returncode == 0 and str(venv) in where.stdout and ROOT not in where.stdout, where.stdout
    cli = subprocess.run([str(venv / "bin" / "sngm-train"), "resnet", "--help"], cwd=project, env=env,
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0 and "--batch-size" in cli.stdout, cli.stderr[-2000:]
