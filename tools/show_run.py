"""Prints what TensorBoard will show for a run directory, read back from its event
files with TensorBoard's own reader: each diagnostics/* and step/* tag with its number
of points, its last value and its description.

    .venv/bin/python tools/show_run.py runs/demo
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.util.tensor_util import make_ndarray  # noqa: E402  (TensorBoard's own: no TensorFlow needed)


def main(run_dir):
    rows = {}
    train = os.path.join(run_dir, "train")
    for name in sorted(os.listdir(train)):
        acc = EventAccumulator(os.path.join(train, name), size_guidance={"tensors": 0})
        acc.Reload()
        for tag in acc.Tags()["tensors"]:
            if tag.startswith(("diagnostics/", "step/")):
                events = acc.Tensors(tag)
                value = make_ndarray(events[-1].tensor_proto)
                shown = f"{float(value):.4g}" if value.ndim == 0 else f"histogram ({value.shape[0]} buckets)"
                rows[tag] = (len(events), events[-1].step, shown, acc.SummaryMetadata(tag).summary_description)
    if not rows:
        print(f"no step-level or diagnostics points in {train}")
        return 1
    print(f"{'tag':<40} {'points':>6} {'last step':>9}  {'last value':<12} description")
    for tag, (n, step, shown, about) in sorted(rows.items()):
        print(f"{tag:<40} {n:>6} {step:>9}  {shown:<12} {about}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
