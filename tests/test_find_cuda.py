"""tools/find_cuda.py, the CUDA location for `make install GPU=1`, on fake layouts made
here: pip's NVIDIA wheels only, a system toolkit, both, and neither."""

import os
import subprocess
import sys

import pytest

from helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, "tools"))
import find_cuda  # noqa: E402


def toolkit(root, version, nvcc=True):
    """A fake toolkit: bin/nvcc (executable), include/cuda_runtime.h, include/cuda.h."""
    os.makedirs(os.path.join(root, "bin"), exist_ok=True)
    os.makedirs(os.path.join(root, "include"), exist_ok=True)
    if nvcc:
        path = os.path.join(root, "bin", "nvcc")
        with open(path, "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(path, 0o755)
    major, minor = version.split(".")
    for name, text in (("cuda_runtime.h", ""), ("cuda.h", f"#define CUDA_VERSION {int(major) * 1000 + int(minor) * 10}\n")):
        with open(os.path.join(root, "include", name), "w") as f:
            f.write(text)
    return str(root)


def pip_wheels(site, version="12.9", nvcc=True, nccl=True):
    """site-packages/nvidia/{cuda_nvcc,cuda_runtime,nccl} as pip lays them out."""
    nvidia = os.path.join(site, "nvidia")
    toolkit(os.path.join(nvidia, "cuda_nvcc"), version, nvcc=nvcc)
    toolkit(os.path.join(nvidia, "cuda_runtime"), version, nvcc=False)
    if nccl:
        for sub, name in (("include", "nccl.h"), ("lib", "libnccl.so.2")):
            os.makedirs(os.path.join(nvidia, "nccl", sub), exist_ok=True)
            open(os.path.join(nvidia, "nccl", sub, name), "w").close()
    return str(site)


def locate(tmp_path, **kw):
    kw.setdefault("system_dirs", [str(tmp_path / "no-system-cuda")])
    kw.setdefault("env", {})
    return find_cuda.locate(kw.pop("env"), kw.pop("sites", []), **kw)


def test_pip_wheels_only(tmp_path):
    site = pip_wheels(tmp_path / "site")
    found = locate(tmp_path, sites=[site], tf_cuda="12.5.1")
    assert (found["source"], found["version"], found["nccl_source"]) == ("pip", "12.9", "pip (nvidia-nccl-cu12)")
    assert found["nvcc"] == os.path.join(site, "nvidia", "cuda_nvcc", "bin", "nvcc")
    exports = find_cuda.shell(found)
    assert f"export HOROVOD_NCCL_INCLUDE='{site}/nvidia/nccl/include'" in exports
    assert "export HOROVOD_NCCL_LINK='SHARED'" in exports and "export HOROVOD_GPU_OPERATIONS='NCCL'" in exports


def test_cuda_12_pip_wheels_have_no_nvcc_and_say_so(tmp_path):
    site = pip_wheels(tmp_path / "site", nvcc=False)  # what nvidia-cuda-nvcc-cu12 really ships
    with pytest.raises(find_cuda.NotFound, match="ships ptxas and the headers but not the nvcc compiler driver"):
        locate(tmp_path, sites=[site])


def test_a_system_toolkit_wins_and_the_choice_can_be_overridden(tmp_path):
    site = pip_wheels(tmp_path / "site", version="12.9")
    system = toolkit(tmp_path / "cuda-12.4", "12.4")
    found = locate(tmp_path, sites=[site], system_dirs=[system])
    assert (found["source"], found["version"], found["root"]) == ("system", "12.4", system)
    assert found["nccl_source"] == "pip (nvidia-nccl-cu12)"  # the toolkit has none of its own
    # nvcc on PATH comes before /usr/local/cuda
    other = toolkit(tmp_path / "cuda-12.6", "12.6")
    assert locate(tmp_path, sites=[site], system_dirs=[system], path_nvcc=os.path.join(other, "bin", "nvcc"))[
        "version"] == "12.6"
    assert locate(tmp_path, sites=[site], system_dirs=[system], prefer="pip")["source"] == "pip"
    explicit = toolkit(tmp_path / "mine", "12.1")
    found = locate(tmp_path, env={"CUDA_HOME": explicit}, sites=[site], system_dirs=[system])
    assert (found["source"], found["version"]) == ("CUDA_HOME", "12.1")
    with pytest.raises(find_cuda.NotFound, match=f"CUDA_HOME={tmp_path / 'empty'} is not a CUDA toolkit"):
        locate(tmp_path, env={"CUDA_HOME": str(tmp_path / "empty")}, sites=[site], system_dirs=[system])


def test_neither_and_a_mismatched_major_fail_with_what_to_do(tmp_path):
    with pytest.raises(find_cuda.NotFound, match="no CUDA compiler .* set CUDA_HOME to it, or build without GPU=1"):
        locate(tmp_path, sites=[str(tmp_path / "empty-site")])
    system = toolkit(tmp_path / "cuda-13.0", "13.0")
    with pytest.raises(find_cuda.NotFound, match="is CUDA 13.0, but TensorFlow was built with CUDA 12.5.1"):
        locate(tmp_path, system_dirs=[system], tf_cuda="12.5.1", need_nccl=False)
    assert locate(tmp_path, system_dirs=[system], tf_cuda="12.5.1", allow_mismatch=True,
                  need_nccl=False)["version"] == "13.0"
    with pytest.raises(find_cuda.NotFound, match="no NCCL .* pip install nvidia-nccl-cu12"):
        locate(tmp_path, system_dirs=[system], env={"NCCL_HOME": str(tmp_path / "none")},
               sites=[str(tmp_path / "empty-site")]) if not os.path.exists("/usr/include/nccl.h") else \
            pytest.skip("this host has a system NCCL")


def test_the_command_and_make_install_gpu_fail_before_building(tmp_path):
    """exit 2 and one line naming what is missing; `make install GPU=1` stops at its
    preflight, before creating a venv or downloading anything."""
    env = {**os.environ, "CUDA_HOME": str(tmp_path / "not-a-toolkit")}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "find_cuda.py"), "--compiler-only"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("find_cuda: error: CUDA_HOME=")
    proc = subprocess.run(["make", "-C", ROOT, "install", "GPU=1", f"VENV={tmp_path / 'venv'}"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "find_cuda: error: CUDA_HOME=" in proc.stderr, proc.stdout + proc.stderr
    assert not (tmp_path / "venv").exists()
