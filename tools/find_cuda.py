"""Where a GPU build of Horovod finds CUDA and NCCL (`make install GPU=1` runs it).

    python tools/find_cuda.py --site-packages .venv/lib/python3.11/site-packages --farm .venv/cuda-from-wheels

prints shell assignments (CUDA_SOURCE, CUDA_VERSION, NCCL_VERSION and the HOROVOD_*
variables Horovod's CMake reads) for `tools/install_horovod.sh` to evaluate. The choice:

1. `CUDA_HOME` (or `CUDA_PATH`), when set: that toolkit, and it must hold `bin/nvcc`
   (the override);
2. else a system CUDA: `nvcc` on PATH, or `/usr/local/cuda/bin/nvcc`;
3. else the pip wheels `tensorflow[and-cuda]` brings (nvidia-cuda-nvcc-cu12,
   nvidia-cuda-runtime-cu12, nvidia-nccl-cu12): they are laid out as one toolkit in
   `--farm` (symbolic links: bin, nvvm, include, lib64), since nvcc looks for headers
   beside itself. The wheels ship only shared libraries, so the CUDA runtime and NCCL are
   linked dynamically;
4. else it fails, saying what is missing and how to provide it.

NCCL is the system's when a system CUDA is used and `nccl.h` is found beside it or in
/usr/include, else the nvidia-nccl-cu12 wheel's. Versions are read from the headers
(`CUDART_VERSION` in cuda_runtime_api.h, `NCCL_MAJOR/MINOR/PATCH` in nccl.h), so the
wheel cache can be keyed by them without running anything.
"""

import argparse
import os
import re
import shutil
import sys


class NoCuda(RuntimeError):
    """No usable CUDA compiler or NCCL: the message says what is missing and how to provide it."""


def header_version(path, names):
    """The integer values of `#define NAME value` for `names` in the header at `path`."""
    text = open(path, errors="replace").read()
    out = []
    for name in names:
        m = re.search(rf"#define\s+{name}\s+(\d+)", text)
        if not m:
            raise NoCuda(f"{path} defines no {name}: not a CUDA/NCCL header this script knows")
        out.append(int(m.group(1)))
    return out


def cuda_version(include):
    (v,) = header_version(os.path.join(include, "cuda_runtime_api.h"), ["CUDART_VERSION"])
    return f"{v // 1000}.{v % 1000 // 10}"


def nccl_version(include):
    return ".".join(map(str, header_version(os.path.join(include, "nccl.h"), ["NCCL_MAJOR", "NCCL_MINOR", "NCCL_PATCH"])))


def _wheel(site, *parts):
    return os.path.join(site, "nvidia", *parts)


def _system_root(env):
    if env.get("CUDA_HOME") or env.get("CUDA_PATH"):
        root = env.get("CUDA_HOME") or env.get("CUDA_PATH")
        if not os.path.isfile(os.path.join(root, "bin", "nvcc")):
            raise NoCuda(f"CUDA_HOME={root} holds no bin/nvcc: point it at a CUDA toolkit, or unset it to use a "
                         f"system CUDA or the pip wheels")
        return root, "env"
    nvcc = shutil.which("nvcc", path=env.get("PATH", ""))
    if not nvcc:  # the toolkit's default place (SNGM_SYSTEM_CUDA: another one, for the tests' fake layouts)
        default = os.path.join(env.get("SNGM_SYSTEM_CUDA", "/usr/local/cuda"), "bin", "nvcc")
        nvcc = default if os.path.isfile(default) else None
    if nvcc:
        return os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "system"
    return None, None


def _link_tree(sources, target):
    """Symbolic links in `target` to every entry of each folder in `sources` (the first wins)."""
    os.makedirs(target, exist_ok=True)
    for source in sources:
        for name in sorted(os.listdir(source)):
            link = os.path.join(target, name)
            if not os.path.lexists(link):
                os.symlink(os.path.join(source, name), link)


def _farm(site, farm):
    """One CUDA toolkit layout in `farm` from the nvidia wheels in `site`."""
    nvcc, runtime = _wheel(site, "cuda_nvcc"), _wheel(site, "cuda_runtime")
    if os.path.isdir(farm):
        shutil.rmtree(farm)
    _link_tree([os.path.join(nvcc, "bin")], os.path.join(farm, "bin"))
    if os.path.isdir(os.path.join(nvcc, "nvvm")):
        os.symlink(os.path.join(nvcc, "nvvm"), os.path.join(farm, "nvvm"))
    _link_tree([d for d in (os.path.join(nvcc, "include"), os.path.join(runtime, "include")) if os.path.isdir(d)],
               os.path.join(farm, "include"))
    lib = os.path.join(farm, "lib64")
    _link_tree([os.path.join(runtime, "lib")], lib)
    for name in os.listdir(os.path.join(runtime, "lib")):  # libcudart.so.12 -> libcudart.so, for the linker
        m = re.match(r"^(lib\w+\.so)\.\d+$", name)
        if m and not os.path.lexists(os.path.join(lib, m.group(1))):
            os.symlink(name, os.path.join(lib, m.group(1)))
    return farm


def _nccl_from_wheel(site, farm):
    include, lib = _wheel(site, "nccl", "include"), _wheel(site, "nccl", "lib")
    if not os.path.isfile(os.path.join(include, "nccl.h")):
        return None
    target = os.path.join(farm, "nccl")
    os.makedirs(os.path.join(target, "lib"), exist_ok=True)
    for name in os.listdir(lib):
        os.symlink(os.path.join(lib, name), os.path.join(target, "lib", name))
        m = re.match(r"^(libnccl\.so)\.\d+$", name)
        if m:
            os.symlink(name, os.path.join(target, "lib", m.group(1)))
    return include, os.path.join(target, "lib")


def locate(env, site, farm):
    """The build settings, as a dict of shell variables. Raises NoCuda."""
    root, source = _system_root(env)
    if root is None:
        nvcc = _wheel(site, "cuda_nvcc", "bin", "nvcc")
        header = _wheel(site, "cuda_runtime", "include", "cuda_runtime_api.h")
        if not (os.path.isfile(nvcc) and os.path.isfile(header)):
            missing = [p for p in (nvcc, header) if not os.path.isfile(p)]
            raise NoCuda("no usable CUDA compiler: CUDA_HOME is not set, there is no nvcc on PATH or in "
                         f"/usr/local/cuda, and the pip wheels are not in {site} (missing: {', '.join(missing)}). "
                         "Provide one: `make install GPU=1` installs tensorflow[and-cuda], which brings the wheels "
                         "(nvidia-cuda-nvcc-cu12, nvidia-cuda-runtime-cu12, nvidia-nccl-cu12); or install a CUDA "
                         "toolkit (nvcc on PATH); or set CUDA_HOME=/path/to/cuda")
        root, source = _farm(site, farm), "pip"
    out = {"CUDA_SOURCE": source, "HOROVOD_CUDA_HOME": root, "CUDA_VERSION": cuda_version(os.path.join(root, "include")),
           "CUDA_RUNTIME": "Shared" if source == "pip" else "Static"}
    system_nccl = [d for d in (os.path.join(root, "include"), "/usr/include") if os.path.isfile(os.path.join(d, "nccl.h"))]
    if source != "pip" and system_nccl:
        out.update(NCCL_SOURCE="system", NCCL_VERSION=nccl_version(system_nccl[0]), HOROVOD_NCCL_INCLUDE=system_nccl[0])
    else:
        os.makedirs(farm, exist_ok=True)
        found = _nccl_from_wheel(site, farm)
        if found is None:
            raise NoCuda(f"no NCCL: no nccl.h beside {root} or in /usr/include, and no nvidia-nccl-cu12 wheel in {site}. "
                         f"Install it (pip install nvidia-nccl-cu12, which tensorflow[and-cuda] brings) or a system "
                         f"NCCL (libnccl-dev)")
        include, lib = found
        out.update(NCCL_SOURCE="pip", NCCL_VERSION=nccl_version(include), HOROVOD_NCCL_INCLUDE=include,
                   HOROVOD_NCCL_LIB=lib, HOROVOD_NCCL_LINK="SHARED")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--site-packages", required=True, help="the venv's site-packages (where the wheels are)")
    parser.add_argument("--farm", required=True, help="where to lay the wheels out as one toolkit")
    args = parser.parse_args(argv)
    try:
        found = locate(dict(os.environ), os.path.abspath(args.site_packages), os.path.abspath(args.farm))
    except NoCuda as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    for key, value in found.items():
        print(f"{key}='{value}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
