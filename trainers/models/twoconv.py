"""A two-convolution CIFAR net: the kind of small model the paper's Figure 1 (journal
version) trains to show MSGD losing as the batch grows. Cheap enough for CPU studies
with hundreds of large-batch updates."""

import keras
from keras import layers


def build(num_classes=10, image_size=32, filters=(16, 32), hidden=128, kernel=3):
    """conv3x3(16)-ReLU-maxpool2 -> conv3x3(32)-ReLU-maxpool2 -> dense(128)-ReLU -> dense."""
    inputs = keras.Input((image_size, image_size, 3))
    x = inputs
    for i, f in enumerate(filters):
        x = layers.Conv2D(f, kernel, padding="same", activation="relu", kernel_initializer="he_normal", name=f"conv{i + 1}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(hidden, activation="relu", kernel_initializer="he_normal", name="fc1")(x)
    outputs = layers.Dense(num_classes, dtype="float32", name="fc2")(x)  # float32 logits under mixed precision
    return keras.Model(inputs, outputs, name="twoconv")
