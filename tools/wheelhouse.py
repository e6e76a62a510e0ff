"""`make wheelhouse`: on a machine with network, one folder with every wheel a GPU host that
has its own JAX or PyTorch (and numpy) lacks, for that host's Python and platform:

  - keras-sngm, built from this checkout;
  - Keras and the small packages it needs (absl-py, rich, namex, h5py, optree, ml-dtypes, ...);
  - TensorBoard's event writer (tensorboard and protobuf: what the trainers' and the
    callback's event files need; its server's dependencies are left out);
  - Pillow, the JPEG decoder of CIFAR-10's JPEG copy (`make gpu-paper`), for a host without
    one (pip leaves a host's own Pillow as it is).

numpy is left out: every host with JAX or PyTorch has it. The folder is written whole or
not at all: the wheels go to a temporary folder beside it, which replaces it at the end;
when pip fails (offline, say), its error is shown and nothing is left behind. The offline
host then runs (the README):

    pip install --no-index --find-links wheelhouse keras-sngm
    pip install --no-index --find-links wheelhouse --no-deps tensorboard protobuf pillow

    python tools/wheelhouse.py [--python-version 3.12] [--platform manylinux_2_28_x86_64] [--out wheelhouse]
"""

import argparse
import glob
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The versions the test suite proves; on a host with an older manylinux, name its platform.
KERAS, TENSORBOARD, PILLOW = "keras==3.15.1", "tensorboard==2.21.0", "pillow==13.0.0"
HOSTS_HAVE = ("numpy",)  # dependencies every JAX or PyTorch host already has
LIMIT_MB = 28  # of the 64 MiB a lent GPU host takes


def pip(*args):
    """pip with this Python; its output shown only when it fails. False on failure."""
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
    return proc.returncode == 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--python-version", default="3.12", help="the GPU host's Python (default 3.12)")
    p.add_argument("--platform", default="manylinux_2_28_x86_64",
                   help="its wheel platform, e.g. manylinux_2_28_aarch64 (default manylinux_2_28_x86_64)")
    p.add_argument("--out", default=os.path.join(ROOT, "wheelhouse"))
    a = p.parse_args(argv)
    out = os.path.abspath(a.out)
    arch = "aarch64" if a.platform.endswith("aarch64") else "x86_64"
    target = ["--only-binary=:all:", "--python-version", a.python_version, "--implementation", "cp"]
    for platform in (a.platform, f"manylinux_2_17_{arch}", f"manylinux2014_{arch}"):  # (older tags still install)
        target += ["--platform", platform]
    tmp = tempfile.mkdtemp(prefix=".wheelhouse-", dir=os.path.dirname(out))
    try:
        ok = (pip("wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp, ROOT)
              and pip("download", "-q", "-d", tmp, *target, KERAS)
              and pip("download", "-q", "-d", tmp, "--no-deps", *target, TENSORBOARD,
                      f"protobuf=={importlib.metadata.version('protobuf')}", PILLOW))
        if not ok:
            print("make wheelhouse: error: pip could not fetch every wheel (above); nothing was written",
                  file=sys.stderr)
            return 1
        for name in HOSTS_HAVE:
            for path in glob.glob(os.path.join(tmp, f"{name}-*.whl")):
                os.remove(path)
        wheels = sorted(os.listdir(tmp))
        size = sum(os.path.getsize(os.path.join(tmp, w)) for w in wheels) / 2**20
        old = out + ".old"
        if os.path.exists(out):
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n".join(f"  {w}" for w in wheels))
    print(f"wrote {len(wheels)} wheels, {size:.1f} MB, to {out}" +
          (f" (more than the {LIMIT_MB} MB aimed at)" if size > LIMIT_MB else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
