"""tools/patch_horovod_stream.py on Horovod 0.28.1's own mpi_ops.cc (from its PyPI sdist):
the declaration TensorFlow 2.21 no longer backs becomes an inline definition that compiles
against the installed TensorFlow's headers; every call site is kept; a second run, an older
TensorFlow and a source of another shape are each handled as they should be."""

import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from helpers import ROOT

SCRIPT = os.path.join(ROOT, "tools", "patch_horovod_stream.py")
DECLARATION = "GpuStreamHandle AsGpuStreamValue(Stream* stream);"


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=120)


def tf_include():
    import importlib.util

    spec = importlib.util.find_spec("tensorflow")
    if spec is None:
        pytest.skip("TensorFlow is not installed")
    return os.path.join(spec.submodule_search_locations[0], "include")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """horovod/tensorflow/mpi_ops.cc of the Horovod 0.28.1 sdist, as the install script gets it."""
    work = tmp_path_factory.mktemp("hvd")
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                           "horovod==0.28.1", "-d", str(work)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.skip(f"the Horovod 0.28.1 sdist could not be downloaded from the package index: {proc.stderr[-300:]}")
    with tarfile.open(work / "horovod-0.28.1.tar.gz") as tar:
        member = tar.getmember("horovod-0.28.1/horovod/tensorflow/mpi_ops.cc")
        return tar.extractfile(member).read().decode("utf-8")


def test_the_declaration_becomes_a_definition_that_compiles_against_tensorflows_headers(source, tmp_path):
    include = tf_include()
    target = tmp_path / "mpi_ops.cc"
    target.write_text(source)
    proc = run(target, "--tf-include", include)
    assert proc.returncode == 0 and "defined from platform_specific_handle (12 calls)" in proc.stdout, proc.stderr
    patched = target.read_text()
    assert DECLARATION in source and DECLARATION not in patched
    calls = source.count("stream_executor::gpu::AsGpuStreamValue(")
    assert calls == 12 and patched.count("stream_executor::gpu::AsGpuStreamValue(") == calls
    assert patched.count('#include "tensorflow/compiler/xla/stream_executor/stream.h"') == 1
    assert '#include "tensorflow/stream_executor/stream.h"' not in patched
    # Only the lines around the declaration changed.
    removed = [line for line in source.splitlines() if line not in patched.splitlines()]
    assert len(removed) <= 6, removed
    # What was inserted compiles against the installed TensorFlow (a CUDA stream is an opaque
    # pointer; no CUDA headers needed).
    if shutil.which("g++") is None:
        pytest.skip("no g++ to compile the definition with")
    start = patched.index("// keras-sngm: AsGpuStreamValue")
    end = patched.index("} // namespace stream_executor", start) + len("} // namespace stream_executor")
    unit = tmp_path / "unit.cc"
    unit.write_text("struct CUstream_st;\nusing GpuStreamHandle = CUstream_st*;\n" + patched[start:end] +
                    "\nGpuStreamHandle probe(stream_executor::Stream* s) {\n"
                    "  return stream_executor::gpu::AsGpuStreamValue(s);\n}\n")
    cc = subprocess.run(["g++", "-std=c++17", "-fsyntax-only", "-w", f"-I{include}", str(unit)], capture_output=True,
                        text=True, timeout=300)
    assert cc.returncode == 0, cc.stderr[-3000:]
    # A second run leaves it as it is.
    again = run(target, "--tf-include", include)
    assert again.returncode == 0 and "already patched" in again.stdout and target.read_text() == patched


def test_an_older_tensorflow_and_another_source_are_left_alone(source, tmp_path):
    old = tmp_path / "old-include" / "xla" / "stream_executor"
    old.mkdir(parents=True)
    (old / "stream.h").write_text("class Stream { public: virtual bool ok() const = 0; };\n")
    target = tmp_path / "mpi_ops.cc"
    target.write_text(source)
    proc = run(target, "--tf-include", tmp_path / "old-include")
    assert proc.returncode == 0 and "not needed" in proc.stdout and target.read_text() == source
    other = tmp_path / "other.cc"
    other.write_text("int main() { return 0; }\n")
    proc = run(other, "--tf-include", tf_include())
    assert proc.returncode == 2 and "the declaration of stream_executor::gpu::AsGpuStreamValue was not found" in proc.stderr
    assert other.read_text() == "int main() { return 0; }\n"
