"""A screenshot of TensorBoard's "Custom Scalars" tab, taken in headless Chromium, for the
README (`make screenshot`).

It runs the README's quick start in a temporary directory (SNGM with
SNGMDiagnostics), serves its event files with TensorBoard on a free local port, and has
Chromium render the tab. It needs `chromium` (Debian: apt-get install chromium).

    .venv/bin/python tools/tensorboard_screenshot.py OUT.png [--logdir DIR]
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quick_start(workdir):
    """Runs the README's quick start in `workdir`; returns its log directory."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    start = text.index("```python", text.index("## Quick start")) + len("```python")
    with open(os.path.join(workdir, "quick_start.py"), "w") as f:
        f.write(text[start:text.index("```", start)])
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run([sys.executable, "quick_start.py"], cwd=workdir, env=env, check=True, stdout=subprocess.DEVNULL)
    return os.path.join(workdir, "logs")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="the PNG to write")
    parser.add_argument("--logdir", help="event files to show (default: a fresh run of the README's quick start)")
    parser.add_argument("--size", default="1400,1300", help="window width,height in pixels")
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    tensorboard = shutil.which("tensorboard")
    if not chromium or not tensorboard:
        missing = "chromium (apt-get install chromium)" if not chromium else "tensorboard (pip install tensorboard)"
        print(f"tensorboard_screenshot: error: {missing} is not on PATH", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        logdir = args.logdir or quick_start(tmp)
        port = free_port()
        server = subprocess.Popen([tensorboard, "--logdir", logdir, "--port", str(port), "--host", "127.0.0.1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(120):
                try:
                    urllib.request.urlopen(f"{url}/data/plugins_listing", timeout=2)
                    break
                except OSError:
                    time.sleep(0.5)
            else:
                raise SystemExit(f"tensorboard_screenshot: error: TensorBoard did not answer on {url}")
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                            f"--user-data-dir={os.path.join(tmp, 'chromium')}", f"--window-size={args.size}",
                            "--virtual-time-budget=20000", f"--screenshot={os.path.abspath(args.out)}",
                            f"{url}/?darkMode=false#custom_scalars"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
