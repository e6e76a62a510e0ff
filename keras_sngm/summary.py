"""TensorBoard event files on every Keras backend: scalars, histograms and the
custom-scalars layout, written with TensorBoard's own protocol buffers and event-file
writer (no TensorFlow needed, so JAX and PyTorch users get the same files).

The tags, with the description TensorBoard shows under each chart, are the ones the
`sngm-train` trainers write too, so one layout serves both: `step/*` (what an update used)
and `diagnostics/*` (the optimizer state and the noise estimates after it). Step n is the
n-th optimizer update.
"""

import os
import time

import numpy as np

DIAGNOSTICS = {
    "grad_norm": "||g_t||: global norm of the averaged gradient this update used (after L2 weight decay)",
    "momentum_norm": "||u_t||: norm of the momentum after this update (at most momentum_norm_bound where the "
                     "optimizer has one)",
    "momentum_norm_bound": "the bound on ||u_t|| the update rule guarantees: 1/(1-beta) for SNGM (Lemma 2), "
                           "sqrt(S)/(1-beta) over S variables for BlockSNGM (Lemma 2 per block); LARS and momentum "
                           "SGD have none, and write none",
    "update_norm": "||w_t - w_(t+1)||: the step this update took (for SNGM lr*||u_t||, its effective learning rate)",
    "skipped_steps": "updates skipped so far for a non-finite gradient, after this update",
    "effective_lr": "lr/(1-beta): momentum SGD's effective learning rate for this update",
    "temperature": "lr/(B(1-beta)): the SGD temperature of this update (Smith et al. 2020)",
    "loss_scale": "float16 dynamic loss scale after this update",
    "overflow_skips": "updates skipped so far for a float16 overflow, after this update",
    "noise_g2": "|G|^2: unbiased estimate of the squared norm of the true gradient (moving average, after this "
                "update)",
    "noise_trace_sigma": "tr(Sigma): unbiased estimate of the per-example gradient variance (moving average, after "
                         "this update)",
    "noise_scale": "B_simple = tr(Sigma)/|G|^2 after this update: the critical batch estimate (McCandlish et al. "
                   "2018); compare step/batch_size",
    "gradient_diversity_bound": "1 + B_simple: Yin et al.'s bound on the batch up to which an update's progress "
                                "grows linearly, after this update",
    "block_grad_norms": "per-variable gradient norms this update used (one value per trainable variable)",
    "trust_ratios": "LARS trust ratios this update used (one value per trainable variable)",
}

STEP = {
    "batch_size": "global batch of this update (examples, all workers)",
    "examples": "examples seen after this update (all workers)",
    "learning_rate": "the learning rate this update used",
    "examples_per_sec": "throughput since the previous point (examples per second, all workers)",
}

# TensorBoard's "Custom Scalars" tab: what is read together, on one chart each.
CHARTS = {
    "large batch": [
        ("B_simple (critical batch estimate) and the batch in use", ["^diagnostics/noise_scale$", "^step/batch_size$"]),
        ("||u|| and its bound (SNGM: Lemma 2, 1/(1-beta))", ["^diagnostics/momentum_norm$", "^diagnostics/momentum_norm_bound$"]),
        ("learning rate, the step taken ||w_t - w_(t+1)|| and momentum SGD's lr/(1-beta)",
         ["^step/learning_rate$", "^diagnostics/update_norm$", "^diagnostics/effective_lr$"]),
    ],
}


def layout():
    """The custom-scalars `Layout` protocol buffer of `CHARTS`."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    return layout_pb2.Layout(category=[
        layout_pb2.Category(title=title, chart=[
            layout_pb2.Chart(title=name, multiline=layout_pb2.MultilineChartContent(tag=tags)) for name, tags in charts])
        for title, charts in CHARTS.items()])


class EventWriter:
    """Appends summaries to one TensorBoard event file in `logdir` (made if missing).

    Args:
        logdir: the run's directory, e.g. `<log_dir>/train`.
    """

    def __init__(self, logdir):
        try:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
        except ModuleNotFoundError as e:
            raise ImportError("writing TensorBoard events needs the tensorboard package: pip install tensorboard") from e
        self._writer = EventFileWriter(logdir)

    def _add(self, step, summary):
        from tensorboard.compat.proto import event_pb2

        self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

    def scalar(self, tag, value, step, description=None):
        from tensorboard.plugins.scalar import summary_v2

        self._add(step, summary_v2.scalar_pb(tag, float(value), description=description))

    def histogram(self, tag, values, step, description=None):
        from tensorboard.plugins.histogram import summary_v2

        self._add(step, summary_v2.histogram_pb(tag, np.asarray(values, dtype=np.float64), description=description))

    def layout(self):
        """The custom-scalars layout (once per run is enough; TensorBoard reads it at step 0)."""
        from tensorboard.compat.proto import summary_pb2, tensor_pb2, types_pb2
        from tensorboard.plugins.custom_scalar import metadata

        # (as tensorboard's custom_scalar.summary.pb builds it, which needs TensorFlow)
        tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[layout().SerializeToString()])
        value = summary_pb2.Summary.Value(tag=metadata.CONFIG_SUMMARY_TAG, tensor=tensor,
                                          metadata=metadata.create_summary_metadata())
        self._add(0, summary_pb2.Summary(value=[value]))

    def flush(self):
        self._writer.flush()

    def close(self):
        self._writer.close()


def check_writable(log_dir, run="train"):
    """Makes `log_dir/run` and proves a file can be written there; ValueError naming
    `log_dir` if not."""
    try:
        os.makedirs(os.path.join(log_dir, run), exist_ok=True)
        probe = os.path.join(log_dir, run, f".sngm-write-check-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("")
        os.remove(probe)
    except OSError as e:
        raise ValueError(f"`log_dir` must be a directory that can be written. Received: log_dir={log_dir!r} "
                         f"({e.strerror or e})") from None
