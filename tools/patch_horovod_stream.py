"""Make Horovod 0.28.1's TensorFlow GPU ops load against a TensorFlow that no longer exports
`stream_executor::gpu::AsGpuStreamValue` (TF 2.21 among them).

horovod/tensorflow/mpi_ops.cc declares that function and calls it for each op's CUDA stream.
A GPU build then links, but `import horovod.tensorflow` fails with
`undefined symbol: ...AsGpuStreamValue...`. TensorFlow's `Stream` now gives the same handle
through the virtual `platform_specific_handle().stream`, which needs no exported symbol. This
script replaces the declaration with an inline definition from it, when the installed
TensorFlow's `stream.h` has that method; otherwise it changes nothing (older TensorFlow still
exports the function).

    python tools/patch_horovod_stream.py SRC/horovod/tensorflow/mpi_ops.cc [--tf-include DIR]

Exit 0 when patched or not needed (it says which), 2 when the source is not the one expected.
"""

import argparse
import os
import re
import sys

# The declaration in Horovod 0.28.1 (its namespaces are closed in the opposite order of the
# comments; only the tokens matter here).
DECLARATION = re.compile(
    r"namespace\s+stream_executor\s*\{\s*namespace\s+gpu\s*\{\s*"
    r"GpuStreamHandle\s+AsGpuStreamValue\s*\(\s*Stream\s*\*\s*stream\s*\)\s*;\s*"
    r"\}[^\n]*\n\s*\}[^\n]*\n")
STREAM_INCLUDE = re.compile(r"#if TENSORFLOW_VERSION >= 2011000000\s*\n#include \"tensorflow/compiler/xla/stream_executor/"
                            r"stream\.h\"\s*\n#else\s*\n#include \"tensorflow/stream_executor/stream\.h\"\s*\n"
                            r"#endif[^\n]*\n")
MARK = "keras-sngm: AsGpuStreamValue from platform_specific_handle"
DEFINITION = f"""// {MARK} (TensorFlow no longer exports the function).
#include "tensorflow/compiler/xla/stream_executor/stream.h"
namespace stream_executor {{
namespace gpu {{
inline GpuStreamHandle AsGpuStreamValue(Stream* stream) {{
  return static_cast<GpuStreamHandle>(stream->platform_specific_handle().stream);
}}
}} // namespace gpu
}} // namespace stream_executor
"""


def tf_include():
    """The installed TensorFlow's include folder, found without importing TensorFlow."""
    import importlib.util

    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("patch_horovod_stream: error: TensorFlow is not installed (pass --tf-include)")
    return os.path.join(spec.submodule_search_locations[0], "include")


def needed(include_dir):
    """True when the TensorFlow headers' Stream has platform_specific_handle()."""
    for rel in ("xla/stream_executor/stream.h", "tensorflow/compiler/xla/stream_executor/stream.h"):
        path = os.path.join(include_dir, rel)
        if os.path.exists(path) and "platform_specific_handle" in open(path, encoding="utf-8").read():
            return True
    return False


def patch(text):
    """`text` with the declaration (and the version-dependent include after it) replaced by the
    inline definition. Raises ValueError when the declaration is not there."""
    m = DECLARATION.search(text)
    if not m:
        raise ValueError("the declaration of stream_executor::gpu::AsGpuStreamValue was not found "
                         "(is this Horovod 0.28.1's horovod/tensorflow/mpi_ops.cc?)")
    rest = STREAM_INCLUDE.sub("", text[m.end():], count=1)
    return text[:m.start()] + DEFINITION + rest


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="horovod/tensorflow/mpi_ops.cc of the unpacked sdist")
    parser.add_argument("--tf-include", help="TensorFlow's include folder (default: the installed TensorFlow's)")
    args = parser.parse_args(argv)
    include_dir = args.tf_include or tf_include()
    if not needed(include_dir):
        print(f"patch_horovod_stream: not needed (no platform_specific_handle in {include_dir})")
        return 0
    try:
        text = open(args.source, encoding="utf-8").read()
        if MARK in text:
            print(f"patch_horovod_stream: {args.source}: already patched")
            return 0
        new = patch(text)
    except (OSError, ValueError) as e:
        print(f"patch_horovod_stream: error: {args.source}: {e}", file=sys.stderr)
        return 2
    open(args.source, "w", encoding="utf-8").write(new)
    uses = new.count("AsGpuStreamValue(") - 1
    print(f"patch_horovod_stream: {args.source}: AsGpuStreamValue defined from platform_specific_handle "
          f"({uses} calls)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
