"""TensorBoard's custom-scalars layout: the quantities that are read together drawn on
one chart (the plain scalars dashboard gives every tag its own). Open TensorBoard's
"Custom Scalars" tab to see them."""

import tensorflow as tf
from tensorboard.plugins.custom_scalar import layout_pb2, metadata

CHARTS = {
    "large batch": [
        ("B_simple (critical batch estimate) and the batch in use", ["^diagnostics/noise_scale$", "^step/batch_size$"]),
        ("||u|| and its Lemma 2 bound 1/(1-beta)", ["^diagnostics/momentum_norm$", "^diagnostics/momentum_norm_bound$"]),
        ("learning rate, the step taken ||w_t - w_(t+1)|| and momentum SGD's lr/(1-beta)",
         ["^step/learning_rate$", "^diagnostics/update_norm$", "^diagnostics/effective_lr$"]),
    ],
}


def layout():
    return layout_pb2.Layout(category=[
        layout_pb2.Category(title=title, chart=[
            layout_pb2.Chart(title=name, multiline=layout_pb2.MultilineChartContent(tag=tags)) for name, tags in charts])
        for title, charts in CHARTS.items()])


def write(logdir):
    """Writes the layout into the event files of `logdir` (once per run is enough)."""
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        tf.summary.write(metadata.CONFIG_SUMMARY_TAG, tf.constant(layout().SerializeToString()), step=0,
                         metadata=metadata.create_summary_metadata())
    writer.flush()
    writer.close()
