"""ResNets: CIFAR depth 6n+2 (He et al. 2016, sec. 4.2) and ImageNet ResNet-18/34/50."""

import keras
from keras import layers

# Batch-norm settings of the reference implementations.
BN = dict(momentum=0.9, epsilon=1e-5)


@keras.saving.register_keras_serializable(package="keras_sngm")
class ChannelPad(layers.Layer):
    """Option-A shortcut: zero-pads the channel axis (no parameters)."""

    def __init__(self, extra, **kwargs):
        super().__init__(**kwargs)
        self.extra = int(extra)

    def call(self, x):
        return keras.ops.pad(x, [[0, 0], [0, 0], [0, 0], [self.extra // 2, self.extra - self.extra // 2]])

    def compute_output_shape(self, shape):
        return (*shape[:3], shape[3] + self.extra)

    def get_config(self):
        return {**super().get_config(), "extra": self.extra}


def _conv(filters, kernel, stride=1, name=None):
    return layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                         kernel_initializer="he_normal", name=name)


def _basic_block(x, filters, stride, shortcut, name):
    y = _conv(filters, 3, stride, f"{name}_conv1")(x)
    y = layers.BatchNormalization(**BN, name=f"{name}_bn1")(y)
    y = layers.ReLU()(y)
    y = _conv(filters, 3, 1, f"{name}_conv2")(y)
    y = layers.BatchNormalization(**BN, name=f"{name}_bn2")(y)
    if stride != 1 or x.shape[-1] != filters:
        if shortcut == "A":  # subsample + zero channels: the CIFAR paper's choice
            x = layers.MaxPooling2D(1, strides=stride, name=f"{name}_subsample")(x)
            x = ChannelPad(filters - x.shape[-1], name=f"{name}_pad")(x)
        else:  # "B": 1x1 projection
            x = _conv(filters, 1, stride, f"{name}_proj")(x)
            x = layers.BatchNormalization(**BN, name=f"{name}_proj_bn")(x)
    return layers.ReLU()(layers.Add()([x, y]))


def _bottleneck_block(x, filters, stride, shortcut, name):
    y = _conv(filters, 1, 1, f"{name}_conv1")(x)
    y = layers.ReLU()(layers.BatchNormalization(**BN, name=f"{name}_bn1")(y))
    y = _conv(filters, 3, stride, f"{name}_conv2")(y)
    y = layers.ReLU()(layers.BatchNormalization(**BN, name=f"{name}_bn2")(y))
    y = _conv(4 * filters, 1, 1, f"{name}_conv3")(y)
    y = layers.BatchNormalization(**BN, name=f"{name}_bn3")(y)
    if stride != 1 or x.shape[-1] != 4 * filters:
        x = _conv(4 * filters, 1, stride, f"{name}_proj")(x)
        x = layers.BatchNormalization(**BN, name=f"{name}_proj_bn")(x)
    return layers.ReLU()(layers.Add()([x, y]))


def cifar_resnet(depth=20, num_classes=10, input_shape=(32, 32, 3)):
    """ResNet-`depth` for 32x32 images: depth = 6n + 2 (20, 32, 44, 56, 110, ...)."""
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110). Received: depth={depth!r}")
    n = (depth - 2) // 6
    inputs = keras.Input(input_shape)
    x = _conv(16, 3, 1, "stem_conv")(inputs)
    x = layers.ReLU()(layers.BatchNormalization(**BN, name="stem_bn")(x))
    for stage, filters in enumerate((16, 32, 64)):
        for b in range(n):
            x = _basic_block(x, filters, 2 if (b == 0 and stage > 0) else 1, "A", f"s{stage + 1}b{b + 1}")
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(num_classes, kernel_initializer="he_normal", dtype="float32", name="fc")(x)  # float32 logits
    return keras.Model(inputs, outputs, name=f"resnet{depth}_cifar")


IMAGENET = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3))}


def imagenet_resnet(depth=50, num_classes=1000, input_shape=(224, 224, 3)):
    """ResNet-18/34/50 with projection shortcuts (He et al. 2016, table 1)."""
    if depth not in IMAGENET:
        raise ValueError(f"ImageNet ResNet depth must be one of {sorted(IMAGENET)}. Received: depth={depth!r}")
    kind, blocks = IMAGENET[depth]
    block = _basic_block if kind == "basic" else _bottleneck_block
    inputs = keras.Input(input_shape)
    x = _conv(64, 7, 2, "stem_conv")(inputs)
    x = layers.ReLU()(layers.BatchNormalization(**BN, name="stem_bn")(x))
    x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    for stage, (filters, n) in enumerate(zip((64, 128, 256, 512), blocks)):
        for b in range(n):
            x = block(x, filters, 2 if (b == 0 and stage > 0) else 1, "B", f"s{stage + 1}b{b + 1}")
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(num_classes, dtype="float32", name="fc")(x)  # float32 logits under mixed precision
    return keras.Model(inputs, outputs, name=f"resnet{depth}")


def build(depth, num_classes, image_size):
    """CIFAR ResNet for small images (<= 64 px), ImageNet ResNet otherwise."""
    if image_size <= 64:
        return cifar_resnet(depth, num_classes, (image_size, image_size, 3))
    return imagenet_resnet(depth, num_classes, (image_size, image_size, 3))
