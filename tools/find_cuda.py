"""Where the CUDA compiler, the CUDA runtime headers and NCCL are, for a GPU build of
Horovod (`make install GPU=1` calls it before building anything).

The choice, first match wins:
  1. `CUDA_HOME` (or `CUDA_PATH`), when set: that toolkit and nothing else;
  2. a system toolkit: the `nvcc` on PATH, else /usr/local/cuda;
  3. pip's NVIDIA wheels in the venv's site-packages (nvidia/cuda_nvcc, nvidia/cuda_runtime).
`--prefer pip` puts 3 before 2. A toolkit counts only with bin/nvcc and
include/cuda_runtime.h. NCCL: `NCCL_HOME` when set, else the toolkit's, the system's
(/usr/include/nccl.h), then pip's nvidia/nccl. The toolkit's CUDA major version must be
TensorFlow's (`--tf-cuda`, e.g. 12.5.1), or `--allow-mismatch` says you accept two CUDA
runtimes in one process.

    python tools/find_cuda.py [--site DIR ...] [--tf-cuda 12.5.1] [--prefer system|pip] [--shell]

Prints what it found (with --shell: `export HOROVOD_...` lines for tools/install_horovod.sh);
exit 2 with what is missing and how to provide it.
"""

import argparse
import glob
import os
import re
import shutil
import sys

SYSTEM_DIRS = ("/usr/local/cuda",)
SYSTEM_NCCL = (("/usr/include", "/usr/lib/x86_64-linux-gnu"), ("/usr/include", "/usr/lib64"),
               ("/usr/local/include", "/usr/local/lib"))


class NotFound(Exception):
    """What is missing and how to provide it."""


def toolkit_version(root):
    """"12.9" from include/cuda.h's CUDA_VERSION (12090), or None."""
    for header in (os.path.join(root, "include", "cuda.h"), *glob.glob(os.path.join(root, "targets", "*", "include",
                                                                                     "cuda.h"))):
        try:
            text = open(header, encoding="utf-8", errors="replace").read()
        except OSError:
            continue
        m = re.search(r"#define\s+CUDA_VERSION\s+(\d+)", text)
        if m:
            v = int(m.group(1))
            return f"{v // 1000}.{v % 1000 // 10}"
    return None


def _toolkit(root):
    """`root` as a toolkit (nvcc and the runtime headers), or the reason it is not one."""
    nvcc = os.path.join(root, "bin", "nvcc")
    if not os.access(nvcc, os.X_OK):
        return None, f"{root} has no bin/nvcc"
    if not glob.glob(os.path.join(root, "include", "cuda_runtime.h")) + glob.glob(
            os.path.join(root, "targets", "*", "include", "cuda_runtime.h")):
        return None, f"{root} has bin/nvcc but no include/cuda_runtime.h"
    return {"root": root, "nvcc": nvcc, "version": toolkit_version(root)}, None


def _pip_toolkit(site):
    """pip's wheels in one site-packages: nvidia/cuda_nvcc (bin/nvcc) with the headers of
    nvidia/cuda_runtime. CUDA 12's nvidia-cuda-nvcc-cu12 ships ptxas but no nvcc."""
    nvcc_root = os.path.join(site, "nvidia", "cuda_nvcc")
    if not os.path.isdir(nvcc_root):
        return None, f"{site} has no nvidia/cuda_nvcc (pip install nvidia-cuda-nvcc-cu12)"
    if not os.access(os.path.join(nvcc_root, "bin", "nvcc"), os.X_OK):
        return None, (f"{nvcc_root} has no bin/nvcc: CUDA 12's pip wheel (nvidia-cuda-nvcc-cu12) ships ptxas and "
                      "the headers but not the nvcc compiler driver")
    runtime = os.path.join(site, "nvidia", "cuda_runtime", "include", "cuda_runtime.h")
    if not os.path.exists(runtime):
        return None, f"{site} has no nvidia/cuda_runtime headers (pip install nvidia-cuda-runtime-cu12)"
    return {"root": nvcc_root, "nvcc": os.path.join(nvcc_root, "bin", "nvcc"),
            "version": toolkit_version(os.path.join(site, "nvidia", "cuda_runtime")) or toolkit_version(nvcc_root),
            "runtime_include": os.path.dirname(runtime)}, None


def _nccl(env, toolkit, sites):
    """(include dir, lib dir, where) of NCCL, or None."""
    roots = []
    if env.get("NCCL_HOME"):
        roots.append(("NCCL_HOME", os.path.join(env["NCCL_HOME"], "include"), os.path.join(env["NCCL_HOME"], "lib")))
    if toolkit:
        roots.append(("the toolkit", os.path.join(toolkit["root"], "include"), os.path.join(toolkit["root"], "lib64")))
    roots += [("the system", inc, lib) for inc, lib in SYSTEM_NCCL]
    roots += [("pip (nvidia-nccl-cu12)", os.path.join(s, "nvidia", "nccl", "include"), os.path.join(s, "nvidia", "nccl",
                                                                                                    "lib"))
              for s in sites]
    for where, inc, lib in roots:
        if os.path.exists(os.path.join(inc, "nccl.h")) and glob.glob(os.path.join(lib, "libnccl.so*")):
            return inc, lib, where
    return None


def locate(env, sites, path_nvcc=None, system_dirs=SYSTEM_DIRS, prefer="system", tf_cuda=None, allow_mismatch=False,
           need_nccl=True):
    """The toolkit and NCCL to build with, as a dict (`source`, `root`, `nvcc`, `version`,
    `nccl_include`, `nccl_lib`, `nccl_source`); NotFound says what is missing.

    Args:
        env: the environment (`CUDA_HOME`, `CUDA_PATH`, `NCCL_HOME`).
        sites: site-packages directories to search for pip's NVIDIA wheels.
        path_nvcc: the `nvcc` found on PATH, or None.
        system_dirs: system toolkit directories, in order.
        prefer: "system" (default) or "pip": which comes first after `CUDA_HOME`.
        tf_cuda: TensorFlow's CUDA version ("12.5.1"); the toolkit's major must match it.
        allow_mismatch: accept another major version.
        need_nccl: False to locate the compiler only.
    """
    tried = []
    explicit = env.get("CUDA_HOME") or env.get("CUDA_PATH")
    if explicit:
        found, why = _toolkit(explicit)
        if not found:
            raise NotFound(f"CUDA_HOME={explicit} is not a CUDA toolkit: {why}. Point CUDA_HOME at a toolkit "
                           "(the directory holding bin/nvcc), or unset it to search")
        chosen = {**found, "source": "CUDA_HOME"}
    else:
        system = [os.path.dirname(os.path.dirname(os.path.realpath(path_nvcc)))] if path_nvcc else []
        system += [d for d in system_dirs if d not in system]
        order = [("system", d) for d in system] + [("pip", s) for s in sites]
        if prefer == "pip":
            order = [o for o in order if o[0] == "pip"] + [o for o in order if o[0] == "system"]
        chosen = None
        for source, where in order:
            found, why = (_toolkit if source == "system" else _pip_toolkit)(where)
            if found:
                chosen = {**found, "source": source}
                break
            tried.append(why)
        if chosen is None:
            raise NotFound("no CUDA compiler (nvcc) for Horovod's GPU kernels: " + "; ".join(tried or ["nothing to try"])
                           + ". Install a CUDA toolkit of TensorFlow's major version (e.g. NVIDIA's cuda-toolkit-12 "
                           "package) and set CUDA_HOME to it, or build without GPU=1")
    if tf_cuda and chosen["version"] and chosen["version"].split(".")[0] != str(tf_cuda).split(".")[0] \
            and not allow_mismatch:
        raise NotFound(f"the CUDA toolkit at {chosen['root']} ({chosen['source']}) is CUDA {chosen['version']}, but "
                       f"TensorFlow was built with CUDA {tf_cuda}: set CUDA_HOME to a CUDA {tf_cuda.split('.')[0]} "
                       "toolkit (or accept two CUDA runtimes in one process: --allow-mismatch, SNGM_CUDA_MISMATCH=1 for make)")
    if not need_nccl:
        return chosen
    nccl = _nccl(env, chosen, sites)
    if nccl is None:
        raise NotFound("no NCCL (nccl.h and libnccl.so): pip install nvidia-nccl-cu12 (tensorflow[and-cuda] brings it), "
                       "or set NCCL_HOME to an NCCL installation")
    chosen["nccl_include"], chosen["nccl_lib"], chosen["nccl_source"] = nccl
    return chosen


def shell(found):
    """`export` lines for Horovod's setup.py (pip's NCCL has only libnccl.so.2: link it shared)."""
    lines = {"HOROVOD_CUDA_HOME": found["root"], "HOROVOD_NCCL_INCLUDE": found["nccl_include"],
             "HOROVOD_NCCL_LIB": found["nccl_lib"], "HOROVOD_NCCL_LINK": "SHARED",
             "HOROVOD_GPU_OPERATIONS": "NCCL", "CUDA_VERSION_FOUND": found["version"] or "unknown"}
    return "".join(f"export {k}='{v}'\n" for k, v in lines.items())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--site", action="append", default=[], help="a site-packages to search for pip's wheels "
                        "(default: this Python's)")
    parser.add_argument("--tf-cuda", help="TensorFlow's CUDA version, e.g. 12.5.1 (tf.sysconfig.get_build_info())")
    parser.add_argument("--prefer", choices=("system", "pip"), default="system", help="which comes first after CUDA_HOME")
    parser.add_argument("--allow-mismatch", action="store_true", help="accept a toolkit of another CUDA major version")
    parser.add_argument("--shell", action="store_true", help="print export lines for tools/install_horovod.sh")
    parser.add_argument("--compiler-only", action="store_true",
                        help="check the compiler only (before TensorFlow's wheels, which bring NCCL, are installed)")
    args = parser.parse_args(argv)
    import site as site_module

    sites = args.site or site_module.getsitepackages()
    try:
        found = locate(dict(os.environ), sites, shutil.which("nvcc"), prefer=args.prefer, tf_cuda=args.tf_cuda,
                       allow_mismatch=args.allow_mismatch, need_nccl=not args.compiler_only)
    except NotFound as e:
        print(f"find_cuda: error: {e}", file=sys.stderr)
        return 2
    if args.shell:
        sys.stdout.write(shell(found))
    else:
        print(f"CUDA {found['version']} from {found['source']}: {found['nvcc']}")
        if "nccl_source" in found:
            print(f"NCCL from {found['nccl_source']}: {found['nccl_include']}, {found['nccl_lib']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
