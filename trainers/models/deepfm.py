"""DeepFM (Guo et al. 2017) in native Keras 3: linear + FM over shared embeddings + DNN."""

import keras
from keras import layers, ops

NUM_DENSE, NUM_CATEGORICAL = 13, 26


@keras.saving.register_keras_serializable(package="keras_sngm")
class FMInteraction(layers.Layer):
    """Second-order FM term: 0.5 * sum_k ((sum_i v_ik)^2 - sum_i v_ik^2)."""

    def call(self, v):  # v: [batch, fields, k]
        square_of_sum = ops.square(ops.sum(v, axis=1))
        sum_of_square = ops.sum(ops.square(v), axis=1)
        return 0.5 * ops.sum(square_of_sum - sum_of_square, axis=1, keepdims=True)


@keras.saving.register_keras_serializable(package="keras_sngm")
class DenseFieldEmbedding(layers.Layer):
    """Each dense field i gets a vector e_i, scaled by the field's value: x_i * e_i."""

    def __init__(self, fields, dim, **kwargs):
        super().__init__(**kwargs)
        self.fields, self.dim = fields, dim

    def build(self, input_shape):
        self.embeddings = self.add_weight(shape=(self.fields, self.dim), initializer="glorot_uniform", name="embeddings")

    def call(self, x):  # [batch, fields] -> [batch, fields, dim]
        return ops.expand_dims(x, -1) * self.embeddings

    def get_config(self):
        return {**super().get_config(), "fields": self.fields, "dim": self.dim}


def deepfm(hash_space=2**18, embedding_dim=16, hidden=(400, 400, 400), dropout=0.0):
    """Inputs: {"dense": float [batch, 13], "categorical": int [batch, 26] hashed ids}."""
    if hash_space < 2:
        raise ValueError(f"`hash_space` must be >= 2. Received: hash_space={hash_space!r}")
    dense_in = keras.Input((NUM_DENSE,), name="dense")
    cat_in = keras.Input((NUM_CATEGORICAL,), dtype="int64", name="categorical")
    # First order: a weight per hashed category and per dense field.
    linear = layers.Add(name="linear")([
        ops.sum(layers.Embedding(hash_space, 1, name="linear_embedding")(cat_in), axis=1),
        layers.Dense(1, name="linear_dense")(dense_in),
    ])
    # Shared embeddings feed both the FM and the DNN.
    cat_v = layers.Embedding(hash_space, embedding_dim, embeddings_initializer=keras.initializers.RandomNormal(stddev=0.01),
                             name="embedding")(cat_in)
    dense_v = DenseFieldEmbedding(NUM_DENSE, embedding_dim, name="dense_embedding")(dense_in)
    v = layers.Concatenate(axis=1)([dense_v, cat_v])
    fm = FMInteraction(name="fm")(v)
    h = layers.Flatten()(v)
    for i, units in enumerate(hidden):
        h = layers.Dense(units, activation="relu", name=f"dnn_{i}")(h)
        if dropout:
            h = layers.Dropout(dropout)(h)
    dnn = layers.Dense(1, name="dnn_out")(h)
    logit = layers.Add(dtype="float32", name="logit")([linear, fm, dnn])  # float32 under mixed precision
    return keras.Model({"dense": dense_in, "categorical": cat_in}, logit, name="deepfm")
