"""TensorBoard's custom-scalars layout (`keras_sngm.summary.CHARTS`): the quantities that
are read together drawn on one chart (the plain scalars dashboard gives every tag its
own). Open TensorBoard's "Custom Scalars" tab to see them."""

from keras_sngm.summary import EventWriter


def write(logdir):
    """Writes the layout into the event files of `logdir` (once per run is enough)."""
    writer = EventWriter(logdir)
    writer.layout()
    writer.close()
