"""The DeepBleed 3D VNet (Sharrock et al. 2020), layer for layer.

Layer names follow the published checkpoint's object graph
(``down_1/convolution`` -> ``down_1_convolution``) so weights map by name.
Inside each block ONE 5x5x5 convolution layer is applied repeatedly (shared
weights), exactly as the published model does; the published weights do not
fit any other arrangement.
"""
import keras
from keras import layers

# (block, channels at width 16, number of shared-convolution applications)
DOWN_BLOCKS = [("down_1", 32, 2), ("down_2", 64, 3), ("down_3", 128, 3), ("down_4", 256, 3)]
UP_BLOCKS = [("up_4", 256, 3), ("up_3", 128, 3), ("up_2", 64, 2), ("up_1", 32, 1)]
PUBLISHED_WIDTH = 16


class RepeatChannels(layers.Layer):
    """``x`` repeated ``n`` times along channels (the input block's residual)."""

    def __init__(self, n, **kwargs):
        super().__init__(**kwargs)
        self.n = n

    def call(self, x):
        return keras.ops.repeat(x, self.n, axis=-1)

    def get_config(self):
        return {**super().get_config(), "n": self.n}


def _conv(channels, kernel, name, stride=1):
    return layers.Conv3D(
        channels, kernel, strides=stride, padding="same" if stride == 1 else "valid",
        activation="relu", kernel_initializer="he_normal", name=name,
    )


def _repeat(conv, x, n, dropout, name):
    for i in range(n):
        x = conv(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"{name}_dropout_{i}")(x)
    return x


def build_vnet(width=PUBLISHED_WIDTH, input_shape=(None, None, None, 1), dropout=0.0,
               dropout_blocks=("down_4", "up_4"), kernel_size=5, name="deepbleed_vnet"):
    """Build the VNet; ``width`` is the input block's channel count (16 published).

    The network is fully convolutional: any input whose sides are multiples of 16
    works (128^3 volumes and the paper's 64^3/32^3 patches alike). ``dropout`` is
    applied after every shared convolution of ``dropout_blocks`` (the deepest
    ones, as in the paper's training); dropout layers hold no weights.
    """
    scale = width / PUBLISHED_WIDTH
    x_in = keras.Input(shape=input_shape, name="ct")
    a = _conv(width, kernel_size, "input_layer_convolution")(x_in)
    x = layers.Add(name="input_layer_add")([a, RepeatChannels(width, name="input_layer_repeat")(x_in)])

    skips = [x]
    for block, channels, n in DOWN_BLOCKS:
        c = int(channels * scale)
        d = _conv(c, 2, f"{block}_downsample", stride=2)(x)
        y = _repeat(_conv(c, kernel_size, f"{block}_convolution"), d, n,
                    dropout if block in dropout_blocks else 0.0, block)
        x = layers.Add(name=f"{block}_add")([y, d])
        skips.append(x)

    skips.pop()  # the deepest output is the bottom of the V, not a skip
    for block, channels, n in UP_BLOCKS:
        c = int(channels * scale)
        u = layers.Conv3DTranspose(c // 2, 2, strides=2, padding="valid", activation="relu",
                                   kernel_initializer="he_normal", name=f"{block}_upsample")(x)
        cat = layers.Concatenate(name=f"{block}_concat")([u, skips.pop()])
        y = _repeat(_conv(c, kernel_size, f"{block}_convolution"), cat, n,
                    dropout if block in dropout_blocks else 0.0, block)
        x = layers.Add(name=f"{block}_add")([y, cat])

    x = layers.Conv3D(2, 1, activation="relu", kernel_initializer="he_normal", name="outblock_final")(x)
    out = layers.Conv3D(1, 1, activation="sigmoid", kernel_initializer="he_normal",
                        name="outblock_binary", dtype="float32")(x)
    return keras.Model(x_in, out, name=name)


def weight_layers(model):
    """Checkpoint object path -> Keras layer, for every layer that holds weights."""
    mapping = {"input_layer/convolution": model.get_layer("input_layer_convolution")}
    for block, _, _ in DOWN_BLOCKS:
        for part in ("downsample", "convolution"):
            mapping[f"{block}/{part}"] = model.get_layer(f"{block}_{part}")
    for block, _, _ in UP_BLOCKS:
        for part in ("upsample", "convolution"):
            mapping[f"{block}/{part}"] = model.get_layer(f"{block}_{part}")
    for part in ("final", "binary"):
        mapping[f"outblock/{part}"] = model.get_layer(f"outblock_{part}")
    return mapping
