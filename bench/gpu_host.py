"""The host `make bench-gpu` runs on: its GPUs, driver, CUDA, TensorFlow and Horovod, and the
published ResNet-50 figure its GPU class is compared with.

Imports no TensorFlow itself: `facts()` asks a child process, so the parent stays light and
a host without a GPU is told so in seconds.
"""

import json
import os
import platform
import shutil
import subprocess
import sys

# NVIDIA's DeepLearningExamples publish no TensorFlow 2 ResNet-50; the nearest is their
# TensorFlow 1 ResNet-50 v1.5 (NVIDIA/DeepLearningExamples,
# TensorFlow/Classification/ConvNets/resnet50v1.5/README.md, "Training performance results",
# TensorFlow 20.06-tf1-py3 NGC container, synthetic or ImageNet data averaged over an epoch):
# images/s on 1 GPU, mixed precision + XLA, batch 256 per GPU.
DLE_SOURCE = ("NVIDIA DeepLearningExamples, TensorFlow/Classification/ConvNets/resnet50v1.5/README.md, "
              "Training performance results (TF 20.06-tf1 NGC container), 1 GPU, batch 256, mixed precision + XLA")
DLE_RESNET50 = (("A100", "DGX A100, 1x A100 40GB", 2375), ("V100", "DGX-2, 1x V100 32GB", 1300))
# Classes they never measured, with the nearest class they did (newer GPUs: the newest published).
NEAREST = {"H100": "A100", "H200": "A100", "H20": "A100", "GH200": "A100", "B200": "A100", "L40": "A100",
           "L4": "V100", "A10": "V100", "A30": "A100", "T4": "V100", "RTX": "V100"}

CHILD = r"""
import json, os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf, keras
out = {"tensorflow": tf.__version__, "keras": keras.__version__, "gpus": []}
info = tf.sysconfig.get_build_info()
out["tf_cuda"], out["tf_cudnn"] = info.get("cuda_version", ""), info.get("cudnn_version", "")
for g in tf.config.list_physical_devices("GPU"):
    d = tf.config.experimental.get_device_details(g)
    out["gpus"].append({"name": d.get("device_name", g.name), "compute_capability": d.get("compute_capability")})
try:
    import horovod, horovod.tensorflow as hvd
    out["horovod"] = horovod.__version__
    out["horovod_ops"] = [n for n, ok in (("NCCL", hvd.nccl_built()), ("Gloo", hvd.gloo_built()),
                                          ("MPI", hvd.mpi_built())) if ok]
except Exception as e:  # noqa: BLE001 - the facts say what is missing
    out["horovod"], out["horovod_ops"] = f"not importable ({type(e).__name__})", []
print("FACTS " + json.dumps(out))
"""


def nvidia_smi():
    """[{name, driver, memory}] from nvidia-smi, or [] where it is absent or fails."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    rows = [[c.strip() for c in line.split(",")] for line in out.stdout.splitlines() if line.count(",") >= 2]
    return [{"name": r[0], "driver": r[1], "memory": r[2]} for r in rows] if out.returncode == 0 else []


def facts(python=sys.executable, env=None):
    """What the tables' heading says about the host (TensorFlow's view in a child process)."""
    proc = subprocess.run([python, "-c", CHILD], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})
    line = [x for x in proc.stdout.splitlines() if x.startswith("FACTS ")]
    if not line:
        raise RuntimeError(f"could not read TensorFlow's view of the host:\n{proc.stderr[-2000:]}")
    out = json.loads(line[-1][6:])
    smi = nvidia_smi()
    out.update(host=platform.node(), cpus=os.cpu_count(), cpu=_cpu_model(), nvidia_smi=smi,
               driver=smi[0]["driver"] if smi else "")
    return out


def _cpu_model():
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def dle_reference(gpu_name):
    """(the published class, its images/s, whether it is this GPU's own class) for ResNet-50
    with mixed precision + XLA, or None for a name no rule covers."""
    name = (gpu_name or "").upper()
    for key, label, rate in DLE_RESNET50:
        if key in name:
            return label, rate, True
    for key in sorted(NEAREST, key=len, reverse=True):
        if key in name:
            label, rate = next((lab, r) for k, lab, r in DLE_RESNET50 if k == NEAREST[key])
            return label, rate, False
    return None
