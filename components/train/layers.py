"""Custom Keras layers of the training networks (all serialisable in ``.keras`` files).

Keras 3 dropped ``LocallyConnected2D``; the thesis's extended head (fig. 4.9) needs
locally connected layers whose weights are shared inside small regions, so
``RegionLocallyConnected2D`` is written here with ``keras.ops`` only (any backend).
"""

from __future__ import annotations

import math

import keras
from keras import ops

__all__ = ["RegionLocallyConnected2D"]


@keras.saving.register_keras_serializable(package="faces")
class RegionLocallyConnected2D(keras.layers.Layer):
    """2-D convolution whose kernel is shared only inside ``region_size`` blocks of positions.

    The output map (same size as the input, stride 1, zero 'same' padding) is cut
    into a grid of ``region_size[0] x region_size[1]`` blocks of positions, row-major
    from the top-left; every block has its own ``kernel_size`` kernel and bias, used at
    every position of that block. ``region_size=1`` is a fully locally connected layer
    (one kernel per position, the old ``LocallyConnected2D`` with 'same' padding);
    a region as large as the map is an ordinary ``Conv2D``. When the map size is not
    a multiple of the region size the last row / column of blocks is smaller.

    Weights: ``kernel`` of shape ``(rows, cols, kh * kw * C_in, filters)`` with
    ``rows = ceil(H / rh)``, ``cols = ceil(W / rw)``; the patch vector is ordered
    ``(dy, dx, c)``, i.e. ``kernel[r, s].reshape(kh, kw, C_in, filters)`` is the
    ``Conv2D`` kernel of block ``(r, s)``. ``bias`` of shape ``(rows, cols, filters)``.

    Args:
        filters: Output channels.
        kernel_size: Odd int or pair (odd keeps 'same' padding symmetric).
        region_size: Positions per weight-sharing block, int or pair.
        use_bias: Add a per-block bias.
        bias_initializer: Keras initializer for the bias.
        activation: Optional activation applied to the output.
    """

    def __init__(self, filters: int, kernel_size=3, region_size=1, use_bias: bool = True,
                 bias_initializer="zeros", activation=None, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.region_size = _pair(region_size, "region_size")
        if any(k % 2 == 0 for k in self.kernel_size):
            raise ValueError(f"kernel_size must be odd for 'same' padding, got {self.kernel_size}")
        self.use_bias = bool(use_bias)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.activation = keras.activations.get(activation)

    def build(self, input_shape):
        height, width, channels = input_shape[1], input_shape[2], input_shape[3]
        if height is None or width is None or channels is None:
            raise ValueError(f"{self.name}: needs a fixed spatial size and channel count, got {input_shape}")
        self.rows = math.ceil(height / self.region_size[0])
        self.cols = math.ceil(width / self.region_size[1])
        kh, kw = self.kernel_size
        patch = kh * kw * channels
        # Glorot-uniform for one block's (patch, filters) kernel: the fans of a block,
        # not of the whole weight tensor, set the scale.
        limit = math.sqrt(6.0 / (patch + self.filters))
        self.kernel = self.add_weight(
            name="kernel", shape=(self.rows, self.cols, patch, self.filters),
            initializer=keras.initializers.RandomUniform(-limit, limit))
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.rows, self.cols, self.filters),
                                        initializer=self.bias_initializer)
        self.input_hw = (height, width)

    def call(self, inputs):
        kh, kw = self.kernel_size
        rh, rw = self.region_size
        height, width = self.input_hw
        padded = ops.pad(inputs, [[0, 0], [kh // 2, kh // 2], [kw // 2, kw // 2], [0, 0]])
        # Patch vectors in (dy, dx, c) order, built from shifted views (no backend patch op).
        shifted = [padded[:, dy:dy + height, dx:dx + width, :] for dy in range(kh) for dx in range(kw)]
        patches = ops.concatenate(shifted, axis=-1)  # (N, H, W, kh*kw*C)
        pad_h, pad_w = self.rows * rh - height, self.cols * rw - width
        if pad_h or pad_w:
            patches = ops.pad(patches, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])
        depth = patches.shape[-1]
        blocks = ops.reshape(patches, (-1, self.rows, rh, self.cols, rw, depth))
        # n: batch, r/b: block row/col, a/s: position inside the block, d: patch, f: filter.
        out = ops.einsum("nrabsd,rbdf->nrabsf", blocks, self.kernel)
        out = ops.reshape(out, (-1, self.rows * rh, self.cols * rw, self.filters))
        if self.use_bias:
            # Spread each block's bias over its positions (TF cannot broadcast 6-D tensors).
            out = out + ops.repeat(ops.repeat(self.bias, rh, axis=0), rw, axis=1)
        out = out[:, :height, :width, :]
        return self.activation(out) if self.activation is not None else out

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], input_shape[2], self.filters)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": list(self.kernel_size),
            "region_size": list(self.region_size),
            "use_bias": self.use_bias,
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "activation": keras.activations.serialize(self.activation) if self.activation is not None else None,
        }


def _pair(value, what: str) -> tuple[int, int]:
    pair = (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{what} must be a positive int or a pair of them, got {value!r}")
    return pair
