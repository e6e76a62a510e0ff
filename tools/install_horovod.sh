#!/usr/bin/env bash
# Build Horovod 0.28.1 from its PyPI sdist against the installed TensorFlow, with Gloo.
#
# Horovod's last release predates TF 2.21. It builds with one change:
# its optional XLA ops (xla_mpi_ops.cc) include XLA headers that need highwayhash,
# which TF 2.21 does not ship, so we drop that one source file from the TF target.
# A GPU build needs a second: tools/patch_horovod_stream.py (TF 2.21 no longer exports the
# function Horovod's GPU ops take each op's CUDA stream from).
#
# Environment:
#   PIP, PYTHON          the venv's pip and python (the Makefile sets them)
#   HOROVOD_GPU=1        also build NCCL GPU operations (GPU hosts). tools/find_cuda.py picks the
#                        CUDA compiler and NCCL first (CUDA_HOME, else a system toolkit, else pip's
#                        nvidia wheels; SNGM_CUDA_PREFER=pip puts pip first) and fails before any
#                        build if there is none, or if its CUDA major is not TensorFlow's
#                        (SNGM_CUDA_MISMATCH=1 accepts that)
#   SNGM_WHEEL_CACHE     where the built wheel is kept, keyed by the TF version, so a
#                        fresh .venv on the same machine skips the 8-minute build
#                        (default ~/.cache/keras-sngm/wheels; set empty to disable)
set -euo pipefail
# Our HOROVOD_GPU=1 means "build the NCCL operations"; Horovod's own build reads HOROVOD_GPU as
# the GPU kind (CUDA or ROCM) and stops at "Unknown HOROVOD_GPU type: 1". Take ours, then unset it.
gpu=${HOROVOD_GPU:-0}
unset HOROVOD_GPU
PIP=${PIP:-pip}
PYTHON=${PYTHON:-python}
HVD_VERSION=0.28.1

check() {
    # Fail loudly unless horovodrun reports TensorFlow and Gloo as built.
    local cb
    cb=$("$(dirname "$PYTHON")/horovodrun" -cb 2>&1) || { echo "$cb"; echo "ERROR: horovodrun -cb failed" >&2; exit 1; }
    echo "$cb"
    grep -q "\[X\] TensorFlow" <<<"$cb" || { echo "ERROR: Horovod was built without TensorFlow support" >&2; exit 1; }
    grep -q "\[X\] Gloo" <<<"$cb" || { echo "ERROR: Horovod was built without Gloo" >&2; exit 1; }
    if [ "$gpu" = 1 ]; then
        grep -q "\[X\] NCCL" <<<"$cb" || { echo "ERROR: Horovod was built without NCCL" >&2; exit 1; }
    fi
    # -cb marks a framework [X] when `import horovod.<framework>` succeeds; horovod.torch's Python
    # files ship in every wheel and import (with a warning) without their compiled library, so -cb
    # lists PyTorch whenever torch is installed. What was built is the libraries themselves:
    "$PYTHON" - <<'PY' || exit 1
import glob, os, sys
import horovod
root = os.path.dirname(horovod.__file__)
built = {fw: bool(glob.glob(os.path.join(root, fw, "mpi_lib*.so"))) for fw in ("tensorflow", "torch", "mxnet")}
print("Horovod's compiled framework libraries:", ", ".join(fw for fw, ok in built.items() if ok) or "none",
      "(what -cb shows as [X] beyond these is only importable Python)")
if not built["tensorflow"] or built["torch"] or built["mxnet"]:
    sys.exit(f"ERROR: expected the TensorFlow library only (HOROVOD_WITHOUT_PYTORCH=1, HOROVOD_WITHOUT_MXNET=1): {built}")
PY
}

tf_version=$("$PYTHON" -c "import tensorflow as tf; print(tf.__version__)")
py_tag=$("$PYTHON" -c "import sys; print(f'cp{sys.version_info[0]}{sys.version_info[1]}')")
# Installed already (a rerun, or a script newer than its stamp): only the checks.
# (-cb's output is taken whole before grep: under pipefail, `grep -q` leaving early can fail
# the pipe with horovodrun's SIGPIPE.)
if "$PYTHON" -c "import horovod.tensorflow" 2>/dev/null && { [ "$gpu" != 1 ] ||
        grep -q "\[X\] NCCL" <<<"$("$(dirname "$PYTHON")/horovodrun" -cb 2>&1)"; }; then
    echo "Horovod already installed"; check; exit 0
fi
gpu_tag=cpu
if [ "$gpu" = 1 ]; then
    # Before any build: the compiler and NCCL, and TensorFlow's CUDA version to match.
    tf_cuda=$("$PYTHON" -c "import tensorflow as tf; print(tf.sysconfig.get_build_info().get('cuda_version') or '')")
    if [ -z "$tf_cuda" ]; then
        echo "ERROR: HOROVOD_GPU=1 needs a CUDA build of TensorFlow; TensorFlow $tf_version here has none" \
             "(make install GPU=1 installs TF_PACKAGE='tensorflow[and-cuda]==2.21.0')" >&2
        exit 2
    fi
    site=$("$PYTHON" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    found=$("$PYTHON" "$(dirname "$0")/find_cuda.py" --site "$site" --tf-cuda "$tf_cuda" --shell \
            ${SNGM_CUDA_PREFER:+--prefer "$SNGM_CUDA_PREFER"} ${SNGM_CUDA_MISMATCH:+--allow-mismatch}) || exit 2
    eval "$found"   # HOROVOD_CUDA_HOME, HOROVOD_NCCL_INCLUDE/LIB/LINK, HOROVOD_GPU_OPERATIONS, CUDA_VERSION_FOUND
    export HOROVOD_GPU=CUDA
    # pip's NCCL ships only libnccl.so.2, and CMake's find_library wants libnccl.so: link that
    # name to it, beside it in the venv (else in a temporary folder, which then ends up in the
    # library's RUNPATH). At run time the loader finds libnccl.so.2 beside the venv's nvidia
    # wheels through the rpath (mpi_lib.so is in site-packages/horovod/tensorflow/).
    if [ ! -e "$HOROVOD_NCCL_LIB/libnccl.so" ]; then
        if ! ln -s libnccl.so.2 "$HOROVOD_NCCL_LIB/libnccl.so" 2>/dev/null; then
            nccl_link=$(mktemp -d)
            ln -s "$HOROVOD_NCCL_LIB/libnccl.so.2" "$nccl_link/libnccl.so"
            export HOROVOD_NCCL_LIB=$nccl_link
        fi
    fi
    export LDFLAGS="${LDFLAGS:-} -Wl,-rpath,\$ORIGIN/../../nvidia/nccl/lib"
    gpu_tag=nccl-cuda$CUDA_VERSION_FOUND
fi
# One cached wheel per Horovod, TensorFlow, Python, and CPU or NCCL with its CUDA version.
cache=${SNGM_WHEEL_CACHE-$HOME/.cache/keras-sngm/wheels}/horovod-$HVD_VERSION-tf$tf_version-$py_tag-$gpu_tag


export HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
       HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1
# Horovod's CMake files predate CMake 4; harmless with CMake 3.
export CMAKE_POLICY_VERSION_MINIMUM=3.5
export MAKEFLAGS="-j$(nproc)"

if ! ls "$cache"/horovod-*.whl >/dev/null 2>&1; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    "$PIP" download -q --no-deps --no-binary :all: "horovod==$HVD_VERSION" -d "$work"
    tar -xzf "$work/horovod-$HVD_VERSION.tar.gz" -C "$work"
    src="$work/horovod-$HVD_VERSION"
    # Change 1: drop the optional XLA ops from the TensorFlow target.
    sed -i '/xla_mpi_ops\.cc/d' "$src/horovod/tensorflow/CMakeLists.txt"
    # Change 2 (GPU builds): the TensorFlow ops get each op's CUDA stream from
    # stream_executor::gpu::AsGpuStreamValue, which newer TensorFlow no longer exports (the
    # import fails with an undefined symbol). Where the installed TensorFlow's Stream has
    # platform_specific_handle() (a virtual call, no symbol needed), define it from that.
    if [ "$gpu" = 1 ]; then
        "$PYTHON" "$(dirname "$0")/patch_horovod_stream.py" "$src/horovod/tensorflow/mpi_ops.cc"
    fi
    echo "Building Horovod $HVD_VERSION against TensorFlow $tf_version (about 8 minutes on 2 cores)..."
    "$PIP" install -q cloudpickle psutil pyyaml packaging
    mkdir -p "$cache"
    "$PIP" wheel --no-build-isolation --no-deps -w "$cache" "$src"
fi
"$PIP" install -q cloudpickle psutil pyyaml packaging
"$PIP" install -q --no-deps --force-reinstall "$cache"/horovod-*.whl
# A wheel that fails the check (e.g. it does not import) leaves the cache, so no later install takes it.
( check ) || { echo "removing the cached wheel in $cache" >&2; rm -rf "$cache"; exit 1; }
