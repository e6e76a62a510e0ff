"""DeepFM (Guo et al. 2017) in native Keras 3: ours (`deepfm`: linear + FM over shared embeddings
+ DNN) and DeepCTR-Torch's at its defaults (`deepctr_deepfm`, the paper's CTR model)."""

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


@keras.saving.register_keras_serializable(package="keras_sngm")
class FieldEmbedding(layers.Layer):
    """A table of `vocab` rows per field, as DeepCTR's one `nn.Embedding` per sparse
    feature, kept as one [fields * vocab, dim] weight: field f's id i is row f * vocab + i
    (one gather for all fields)."""

    def __init__(self, fields, vocab, dim, stddev=1e-4, l2=0.0, **kwargs):
        super().__init__(**kwargs)
        self.fields, self.vocab, self.dim, self.stddev, self.l2 = fields, vocab, dim, stddev, l2

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            shape=(self.fields * self.vocab, self.dim), name="embeddings",
            initializer=keras.initializers.RandomNormal(stddev=self.stddev),  # torch's nn.init.normal_(std=init_std)
            regularizer=keras.regularizers.L2(self.l2) if self.l2 else None)  # l2 * sum(w^2), as DeepCTR's

    def call(self, ids):  # [batch, fields] ids in [0, vocab) -> [batch, fields, dim]
        rows = ops.cast(ids, "int32") + ops.arange(self.fields, dtype="int32") * self.vocab
        return ops.take(self.embeddings, rows, axis=0)

    def get_config(self):
        return {**super().get_config(), "fields": self.fields, "vocab": self.vocab, "dim": self.dim,
                "stddev": self.stddev, "l2": self.l2}


@keras.saving.register_keras_serializable(package="keras_sngm")
class Bias(layers.Layer):
    """A learned scalar added to the logit (DeepCTR's PredictionLayer bias, zeros at start)."""

    def build(self, input_shape):
        self.bias = self.add_weight(shape=(1,), initializer="zeros", name="bias")

    def call(self, x):
        return x + self.bias


def _torch_linear_bound(fan_in):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): torch.nn.Linear's default init of its bias, and of
    its weight (kaiming_uniform with a=sqrt(5) gives the same bound)."""
    return keras.initializers.RandomUniform(-fan_in ** -0.5, fan_in ** -0.5)


def deepctr_deepfm(vocab=4096, embedding_dim=4, hidden=(256, 128), dropout=0.0, init_std=1e-4, l2_embedding=1e-5,
                   l2_linear=1e-5, l2_dnn=0.0):
    """DeepFM as DeepCTR-Torch 0.3.0 builds it at its defaults (`DeepFM(linear_feature_columns,
    dnn_feature_columns)` with 26 SparseFeat and 13 DenseFeat), for the paper's CTR runs:

    - a table per categorical field (`vocab` rows each: the field's hashed id, where
      DeepCTR label-encodes; the one documented difference) of `embedding_dim`, and one of
      width 1 for the linear part;
    - linear logit: the width-1 embeddings summed plus the raw dense values times a
      weight vector (no bias);
    - FM over the sparse embeddings only;
    - DNN over [flattened sparse embeddings (field-major), raw dense values]: Linear +
      ReLU per `hidden` width, then a Linear to 1 without bias;
    - logit = linear + FM + DNN + a scalar bias (its PredictionLayer; the sigmoid is in
      the loss, `from_logits`);
    - initializers: every embedding, the dense linear weight and the DNN weights N(0,
      init_std^2); the DNN biases and the last layer's weight torch's default
      U(+-1/sqrt(fan_in)); the bias 0;
    - regularizers as its `get_regularization_loss`: l2 * sum(w^2) over the whole
      embedding tables (l2_embedding) and the linear part's weights (l2_linear), and
      the DNN's weights (l2_dnn, 0 by default), added to the loss once per update.

    Inputs: {"dense": float [batch, 13], "categorical": int [batch, 26] ids in [0, vocab)}.
    """
    if vocab < 2:
        raise ValueError(f"`vocab` must be >= 2. Received: vocab={vocab!r}")
    normal = keras.initializers.RandomNormal(stddev=init_std)
    l2 = lambda v: keras.regularizers.L2(v) if v else None  # noqa: E731
    dense_in = keras.Input((NUM_DENSE,), name="dense")
    cat_in = keras.Input((NUM_CATEGORICAL,), dtype="int64", name="categorical")
    first = FieldEmbedding(NUM_CATEGORICAL, vocab, 1, init_std, l2_linear, name="linear_embedding")(cat_in)
    linear = layers.Add(name="linear")([
        ops.sum(first, axis=(1, 2))[:, None],
        layers.Dense(1, use_bias=False, kernel_initializer=normal, kernel_regularizer=l2(l2_linear),
                     name="linear_dense")(dense_in)])
    v = FieldEmbedding(NUM_CATEGORICAL, vocab, embedding_dim, init_std, l2_embedding, name="embedding")(cat_in)
    fm = FMInteraction(name="fm")(v)
    h = layers.Concatenate(axis=1)([layers.Flatten()(v), dense_in])
    width = NUM_CATEGORICAL * embedding_dim + NUM_DENSE
    for i, units in enumerate(hidden):
        h = layers.Dense(units, activation="relu", kernel_initializer=normal, bias_initializer=_torch_linear_bound(width),
                         kernel_regularizer=l2(l2_dnn), name=f"dnn_{i}")(h)
        if dropout:
            h = layers.Dropout(dropout)(h)
        width = units
    dnn = layers.Dense(1, use_bias=False, kernel_initializer=_torch_linear_bound(width), kernel_regularizer=l2(l2_dnn),
                       name="dnn_out")(h)
    logit = Bias(dtype="float32", name="logit")(layers.Add(dtype="float32", name="logit_sum")([linear, fm, dnn]))
    return keras.Model({"dense": dense_in, "categorical": cat_in}, logit, name="deepfm_deepctr")
