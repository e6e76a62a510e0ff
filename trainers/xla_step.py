"""`--xla`: the forward and backward pass compiled by XLA, the update outside it.

Horovod's allreduce is not an XLA op, so Keras' whole-step `jit_compile=True` cannot
hold the update. This train step compiles what can be compiled (the model call, the
loss, the gradients, batch-norm statistics) as one `tf.function(jit_compile=True)` and
leaves `optimizer.apply` outside: the Horovod averaging, then the optimizers' own
XLA-compiled update. Otherwise it does what Keras' TensorFlow `train_step` does.
"""

import keras
import tensorflow as tf


def compile_forward_backward(model):
    """Replaces `model.train_step` with the split one (call after `model.compile`)."""

    def loss_and_gradients(x, y, sample_weight):
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            scaled = model.optimizer.scale_loss(loss)  # float16: the dynamic loss scale
        grads = tape.gradient(scaled, model.trainable_weights)
        return loss, y_pred, [tf.convert_to_tensor(g) if g is not None else None for g in grads]

    compiled = tf.function(loss_and_gradients, jit_compile=True)

    def train_step(data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        loss, y_pred, grads = compiled(x, y, sample_weight)
        batch = tf.shape(tf.nest.flatten(x)[0])[0]
        model._loss_tracker.update_state(loss, sample_weight=batch)
        model.optimizer.apply_gradients(zip(grads, model.trainable_weights))  # HVD: the allreduce, outside XLA
        return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    model.train_step = train_step
