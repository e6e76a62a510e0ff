"""`make wheelhouse`: the folder an offline GPU host installs from. Offline, pip's error and
no folder; with the package registries, under 28 MB (Pillow included), and a fresh Python 3.12 with only
JAX (what a JAX GPU host has) installs keras-sngm from it with the README's commands
(`--no-index`), takes an SNGM step, imports the trainers, and writes a TensorBoard event file."""

import glob
import os
import subprocess
import sys

import pytest

from helpers import ROOT

SCRIPT = os.path.join(ROOT, "tools", "wheelhouse.py")


def test_offline_it_shows_pips_error_and_leaves_nothing(tmp_path):
    out = tmp_path / "wheelhouse"
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ""}  # no source at all
    proc = subprocess.run([sys.executable, SCRIPT, "--out", str(out)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "ERROR" in proc.stderr and "nothing was written" in proc.stderr  # pip's own words, then ours
    assert sorted(os.listdir(tmp_path)) == []  # no folder, no half-written temporary one


def python312():
    """A Python >= 3.12 (a GPU host's), 3.12 first, and its version."""
    found = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[2-9]*/bin/python3")))
    jax_venv = os.path.join(ROOT, ".venv-jax", "bin", "python")
    for candidate in found + ([jax_venv] if os.path.exists(jax_venv) else []):
        version = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True).stdout.strip()
        return candidate, version
    pytest.skip("no Python >= 3.12 here (the GPU hosts' Python): `make test` finds one for .venv-jax")


@pytest.mark.slow
def test_an_offline_host_installs_from_it(tmp_path):
    out, (python, version) = tmp_path / "wheelhouse", python312()
    proc = subprocess.run([sys.executable, SCRIPT, "--out", str(out), "--python-version", version],
                          capture_output=True, text=True, timeout=900)
    if proc.returncode and "nothing was written" in proc.stderr and "Could not find" not in proc.stderr:
        pytest.skip(f"the package registries are out of reach: {proc.stderr.splitlines()[-2][:200]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    size_mb = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    assert size_mb < 28 and f"{size_mb:.1f} MB" in proc.stdout, proc.stdout
    names = {f.name.split("-")[0].lower() for f in out.iterdir()}
    assert {"keras_sngm", "keras", "tensorboard", "protobuf", "h5py", "optree", "absl_py", "pillow"} <= names, names
    assert "numpy" not in names  # every JAX or PyTorch host has it
    host = tmp_path / "host"
    subprocess.run([python, "-m", "venv", "--without-pip", str(host)], check=True)
    subprocess.run([python, "-m", "pip", "--python", str(host / "bin" / "python"), "install", "-q",
                    "jax[cpu]==0.11.2"], check=True, capture_output=True, timeout=900)  # what a JAX host already has
    pip = [python, "-m", "pip", "--python", str(host / "bin" / "python"), "install", "-q", "--no-index",
           "--find-links", str(out)]
    for extra in (["keras-sngm"], ["--no-deps", "tensorboard", "protobuf", "pillow"]):  # the README's two lines
        proc = subprocess.run([*pip, *extra], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    check = ("import keras, keras_sngm, keras_sngm_trainers.cli; from keras_sngm.summary import EventWriter; "
             "v = keras.Variable([3.0, 4.0]); keras_sngm.SNGM(0.5, momentum=0.0).apply([v * 1.0], [v]); "
             "assert abs(float(v[0]) - 2.7) < 1e-6, v; "
             "w = EventWriter('logs'); w.scalar('step/learning_rate', 0.1, 1); w.flush(); "
             "import io, PIL.Image; b = io.BytesIO(); PIL.Image.new('RGB', (4, 4), (9, 9, 9)).save(b, 'JPEG'); "
             "assert PIL.Image.open(b).size == (4, 4); print(keras.__version__)")
    proc = subprocess.run([str(host / "bin" / "python"), "-c", check], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "KERAS_BACKEND": "jax"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "3.15.1" and glob.glob(str(tmp_path / "logs" / "events.out.tfevents.*"))
