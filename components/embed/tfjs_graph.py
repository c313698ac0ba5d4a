"""A tfjs *graph* model (``model.json`` + weight shards) rebuilt from standard Keras layers.

A tfjs graph model is a frozen TensorFlow GraphDef written as JSON, with the constants
moved into a weights manifest. :func:`load_graph` reads both; :func:`build_keras` walks the
nodes an output needs and emits one standard Keras layer per computation:

* ``Conv2D``, ``DepthwiseConv2dNative`` and their fused forms (``_FusedConv2D``,
  ``FusedDepthwiseConv2dNative`` with ``BiasAdd`` and ``Relu`` / ``Relu6``) become
  ``Conv2D`` / ``DepthwiseConv2D``; a per-channel ``Mul`` / ``Add`` / ``BiasAdd`` /
  ``Sub`` by a constant right after a convolution (a frozen batch norm) is folded into
  its kernel and bias;
* ``Relu``, ``Relu6`` and the ``Minimum`` / ``Maximum`` of a clip become ``ReLU``
  (``max_value`` for the clip);
* ``Add`` / ``AddV2`` of two tensors: ``Add``; ``Mean`` over the spatial axes:
  ``GlobalAveragePooling2D``; ``Pad``: ``ZeroPadding2D``; ``AvgPool`` / ``MaxPool``;
  ``MatMul`` / ``_FusedMatMul``: ``Dense``; ``Sigmoid`` / ``Softmax``: ``Activation``;
  constant ``Mul`` / ``Add`` ops elsewhere: one 1x1 ``DepthwiseConv2D`` (per-channel affine).

Any other op, or an attribute outside this subset (``NCHW``, an activation that cannot
be expressed), raises :class:`UnsupportedGraphError` naming the node: a conversion is
exact or refused. :func:`run_reference` executes the same nodes literally with
TensorFlow ops, one by one, to check a conversion against.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

# How a tfjs manifest stores a tensor -> numpy dtype of the stored bytes.
_STORED = {"float32": np.float32, "int32": np.int32, "float16": np.float16, "uint8": np.uint8, "uint16": np.uint16}


class UnsupportedGraphError(ValueError):
    """The graph uses an op or attribute the converter does not handle."""


@dataclass
class TfjsGraph:
    """The nodes of a tfjs graph model and its constants.

    Attributes:
        nodes: node name -> GraphDef node (``op``, ``input``, ``attr``), in file order.
        weights: constant name -> array (dequantised to float32; int32 stays int32).
        signature: the model's signature (inputs / outputs), as stored.
    """

    nodes: dict[str, dict]
    weights: dict[str, np.ndarray]
    signature: dict = field(default_factory=dict)


def decode_weights(manifest: list[dict], data: bytes, where: str = "weights") -> dict[str, np.ndarray]:
    """Decodes a tfjs weights manifest's tensors, stored back to back in ``data``.

    float32 tensors may be stored as float32, float16 or quantized uint8 / uint16
    (``raw * scale + min``); int32 tensors as int32.

    Raises:
        ValueError: an unsupported dtype, or a byte count that does not match ``data``.
    """
    weights: dict[str, np.ndarray] = {}
    offset = 0
    for group in manifest:
        for spec in group["weights"]:
            name, shape = spec["name"], tuple(int(n) for n in spec["shape"])
            quant = spec.get("quantization")
            stored = quant["dtype"] if quant else spec["dtype"]
            if spec["dtype"] not in ("float32", "int32") or stored not in _STORED:
                raise ValueError(f"{where}: {name} has unsupported dtype {spec['dtype']!r} stored as {stored!r}")
            dtype = np.dtype(_STORED[stored]).newbyteorder("<")
            count = int(np.prod(shape, dtype=np.int64))
            nbytes = count * dtype.itemsize
            if offset + nbytes > len(data):
                raise ValueError(f"{where}: {len(data)} bytes, but the manifest needs more (ran out at {name})")
            raw = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)
            offset += nbytes
            if quant and stored in ("uint8", "uint16"):
                value = (raw.astype(np.float64) * quant["scale"] + quant["min"]).astype(np.float32)
            else:
                value = raw.astype(np.int32 if spec["dtype"] == "int32" else np.float32)
            weights[name] = value
    if offset != len(data):
        raise ValueError(f"{where}: {len(data)} bytes, but the manifest describes {offset}")
    return weights


def load_graph(model_json: Path) -> TfjsGraph:
    """Reads a tfjs graph model: ``model_json`` and the weight shards it names (beside it).

    Raises:
        UnsupportedGraphError: not a graph model.
        ValueError: weights that do not match the manifest.
    """
    model_json = Path(model_json)
    spec = json.loads(model_json.read_text())
    if spec.get("format") != "graph-model" or "node" not in spec.get("modelTopology", {}):
        raise UnsupportedGraphError(f"{model_json}: not a tfjs graph model (format {spec.get('format')!r})")
    manifest = spec["weightsManifest"]
    data = b"".join((model_json.parent / path).read_bytes() for group in manifest for path in group["paths"])
    weights = decode_weights(manifest, data, where=str(model_json))
    nodes = {node["name"]: node for node in spec["modelTopology"]["node"]}
    return TfjsGraph(nodes, weights, spec.get("signature", {}))


# ---------------------------------------------------------------------------- attributes


def _attr(node: dict, key: str, default=None):
    return node.get("attr", {}).get(key, default)


def _text(node: dict, key: str, default: str = "") -> str:
    value = _attr(node, key)
    return base64.b64decode(value["s"]).decode() if value and "s" in value else default


def _ints(node: dict, key: str, default: list[int]) -> list[int]:
    value = _attr(node, key)
    found = (value or {}).get("list", {}).get("i")
    return [int(i) for i in found] if found else default


def _bool(node: dict, key: str) -> bool:
    return bool((_attr(node, key) or {}).get("b", False))


def _fused_ops(node: dict) -> list[str]:
    value = (_attr(node, "fused_ops") or {}).get("list", {}).get("s", [])
    return [base64.b64decode(s).decode() for s in value]


def _inputs(node: dict) -> list[str]:
    # "name:1" is the second output of a node, "^name" a control dependency (no data).
    return [name for name in node.get("input", []) if not name.startswith("^")]


def _conv_params(node: dict) -> dict:
    name = node["name"]
    if _text(node, "data_format", "NHWC") != "NHWC":
        raise UnsupportedGraphError(f"{name}: data_format {_text(node, 'data_format')!r} (only NHWC)")
    strides = _ints(node, "strides", [1, 1, 1, 1])
    dilations = _ints(node, "dilations", [1, 1, 1, 1])
    padding = _text(node, "padding", "VALID")
    explicit = _ints(node, "explicit_paddings", [])
    if padding not in ("SAME", "VALID", "EXPLICIT"):
        raise UnsupportedGraphError(f"{name}: padding {padding!r}")
    if strides[0] != 1 or strides[3] != 1 or dilations[0] != 1 or dilations[3] != 1:
        raise UnsupportedGraphError(f"{name}: strides or dilations over batch / channels")
    return {"strides": (strides[1], strides[2]), "dilations": (dilations[1], dilations[2]),
            "padding": padding, "explicit": explicit}


# ---------------------------------------------------------------------------- Keras build


@dataclass(frozen=True)
class _Conv:
    """A convolution not yet emitted: constant ops after it can still fold into it."""

    kind: str  # "conv" | "depthwise"
    source: object  # Keras tensor
    kernel: np.ndarray
    bias: np.ndarray | None
    params: dict
    name: str

    @property
    def channels(self) -> int:
        return self.kernel.shape[3] if self.kind == "conv" else self.kernel.shape[2] * self.kernel.shape[3]

    def scaled(self, factor: np.ndarray) -> _Conv:
        factor = np.broadcast_to(np.asarray(factor, np.float64).reshape(-1), (self.channels,))
        if self.kind == "conv":
            kernel = self.kernel.astype(np.float64) * factor
        else:  # depthwise: output channel c * multiplier + m
            h, w, c, m = self.kernel.shape
            kernel = self.kernel.astype(np.float64) * factor.reshape(c, m)
        bias = None if self.bias is None else self.bias.astype(np.float64) * factor
        return replace(self, kernel=kernel.astype(np.float32), bias=None if bias is None else bias.astype(np.float32))

    def shifted(self, offset: np.ndarray) -> _Conv:
        offset = np.broadcast_to(np.asarray(offset, np.float64).reshape(-1), (self.channels,))
        base = np.zeros(self.channels) if self.bias is None else self.bias.astype(np.float64)
        return replace(self, bias=(base + offset).astype(np.float32))


@dataclass(frozen=True)
class _Clip:
    """``min(max(source, lo), hi)`` not yet emitted (Relu, then a Minimum / Maximum by constants)."""

    source: object  # Keras tensor
    lo: float
    hi: float
    name: str  # the Relu node (names the ReLU layer)
    last: str = ""  # the last Minimum / Maximum folded in (named in errors)


def _per_channel(value: np.ndarray) -> bool:
    return value.ndim == 0 or (value.ndim >= 1 and all(n == 1 for n in value.shape[:-1]))


def _scalar(value) -> float | None:
    return float(value.reshape(())) if isinstance(value, np.ndarray) and value.size == 1 else None


class _Builder:
    def __init__(self, graph: TfjsGraph, inputs: dict, prefix: str):
        from keras import layers

        self.graph, self.layers, self.prefix = graph, layers, prefix
        self.values: dict[str, object] = dict(inputs)
        self.emitted: dict[int, object] = {}
        self.visiting: set[str] = set()

    def layer_name(self, node_name: str) -> str:
        return self.prefix + node_name.replace("/", "_").replace(":", "_")

    # A value is a Keras tensor, a numpy constant, or a pending _Conv / _Clip.
    def tensor(self, value):
        if isinstance(value, np.ndarray):
            raise UnsupportedGraphError("a constant used where a tensor is needed")
        if isinstance(value, (_Conv, _Clip)):
            key = id(value)
            if key not in self.emitted:
                self.emitted[key] = (value, self._emit_conv(value) if isinstance(value, _Conv) else self._emit_clip(value))
            return self.emitted[key][1]
        return value

    def _emit_conv(self, conv: _Conv):
        layers, params = self.layers, conv.params
        x = conv.source
        padding = params["padding"].lower()
        if padding == "explicit":
            pads = params["explicit"]
            if len(pads) != 8 or any(pads[i] for i in (0, 1, 6, 7)):
                raise UnsupportedGraphError(f"{conv.name}: explicit paddings {pads}")
            x = layers.ZeroPadding2D(((pads[2], pads[3]), (pads[4], pads[5])), name=self.layer_name(conv.name) + "_pad")(x)
            padding = "valid"
        common = {"strides": params["strides"], "dilation_rate": params["dilations"], "padding": padding,
                  "use_bias": conv.bias is not None, "name": self.layer_name(conv.name)}
        h, w = conv.kernel.shape[:2]
        if conv.kind == "conv":
            layer = layers.Conv2D(conv.kernel.shape[3], (h, w), **common)
        else:
            layer = layers.DepthwiseConv2D((h, w), depth_multiplier=conv.kernel.shape[3], **common)
        out = layer(x)
        layer.set_weights([conv.kernel] + ([] if conv.bias is None else [conv.bias]))
        return out

    def _emit_clip(self, clip: _Clip):
        # Only clips a ReLU can express: a lower bound <= 0 after Relu changes nothing.
        if clip.lo > 0.0 or clip.hi < 0.0:
            raise UnsupportedGraphError(f"{clip.last or clip.name}: clip to [{clip.lo}, {clip.hi}] is not a ReLU")
        max_value = None if math.isinf(clip.hi) else clip.hi
        return self.layers.ReLU(max_value=max_value, name=self.layer_name(clip.name))(clip.source)

    def _affine(self, x, scale, offset, name: str) -> _Conv:
        """``x * scale + offset`` per channel: a pending 1x1 DepthwiseConv2D (more constants fold into it)."""
        tensor = self.tensor(x)
        channels = int(tensor.shape[-1])
        scale = np.broadcast_to(np.asarray(scale, np.float32).reshape(-1), (channels,))
        offset = np.broadcast_to(np.asarray(offset, np.float32).reshape(-1), (channels,))
        params = {"strides": (1, 1), "dilations": (1, 1), "padding": "VALID", "explicit": []}
        return _Conv("depthwise", tensor, scale.reshape(1, 1, channels, 1).copy(), offset.copy(), params, name)

    def value(self, name: str):
        name = name.split(":")[0] if name.endswith(":0") else name
        if name in self.values:
            return self.values[name]
        if name not in self.graph.nodes:
            raise UnsupportedGraphError(f"no node {name!r} in the graph")
        if name in self.visiting:
            raise UnsupportedGraphError(f"{name}: the graph has a cycle through this node")
        self.visiting.add(name)
        result = self._convert(self.graph.nodes[name])
        self.visiting.discard(name)
        self.values[name] = result
        return result

    def _convert(self, node: dict):
        op, name = node["op"], node["name"]
        args = [self.value(i) for i in _inputs(node)] if op != "Const" else []
        layers = self.layers
        if op == "Const":
            if name not in self.graph.weights:
                raise UnsupportedGraphError(f"{name}: constant missing from the weights manifest")
            return self.graph.weights[name]
        if op == "Placeholder":
            raise UnsupportedGraphError(f"{name}: graph input not given")
        if op in ("Identity", "StopGradient"):
            return args[0]
        if op in ("Conv2D", "DepthwiseConv2dNative", "_FusedConv2D", "FusedDepthwiseConv2dNative"):
            x, kernel = self.tensor(args[0]), args[1]
            if not isinstance(kernel, np.ndarray):
                raise UnsupportedGraphError(f"{name}: kernel is not a constant")
            kind = "conv" if op in ("Conv2D", "_FusedConv2D") else "depthwise"
            conv = _Conv(kind, x, kernel.astype(np.float32), None, _conv_params(node), name)
            if op.startswith(("_Fused", "Fused")):
                fused = _fused_ops(node)
                if not fused or fused[0] != "BiasAdd" or len(fused) > 2 or len(args) < 3:
                    raise UnsupportedGraphError(f"{name}: fused ops {fused}")
                conv = conv.shifted(args[2])
                if len(fused) == 2:
                    if fused[1] not in ("Relu", "Relu6"):
                        raise UnsupportedGraphError(f"{name}: fused activation {fused[1]!r}")
                    return _Clip(self.tensor(conv), 0.0, 6.0 if fused[1] == "Relu6" else math.inf, f"{name}/{fused[1]}")
            return conv
        if op in ("BiasAdd", "Add", "AddV2", "Sub", "Mul"):
            a, b = args
            if isinstance(a, np.ndarray) and op != "Sub":
                a, b = b, a
            if isinstance(b, np.ndarray):
                if not _per_channel(b):
                    raise UnsupportedGraphError(f"{name}: {op} by a constant of shape {b.shape} (only per channel)")
                if op == "Mul":
                    return a.scaled(b) if isinstance(a, _Conv) else self._affine(a, b, 0.0, name)
                offset = -b if op == "Sub" else b
                return a.shifted(offset) if isinstance(a, _Conv) else self._affine(a, 1.0, offset, name)
            if op in ("Add", "AddV2"):
                return layers.Add(name=self.layer_name(name))([self.tensor(a), self.tensor(b)])
            if op == "Mul":
                return layers.Multiply(name=self.layer_name(name))([self.tensor(a), self.tensor(b)])
            raise UnsupportedGraphError(f"{name}: {op} of two tensors")
        if op in ("Relu", "Relu6"):
            return _Clip(self.tensor(args[0]), 0.0, 6.0 if op == "Relu6" else math.inf, name)
        if op in ("Minimum", "Maximum"):
            a, b = args
            if isinstance(a, np.ndarray):
                a, b = b, a
            bound = _scalar(b)
            if not isinstance(a, _Clip) or bound is None:
                raise UnsupportedGraphError(f"{name}: {op} other than a clip of a Relu by a scalar")
            # min(clip(x, lo, hi), c) = clip(x, min(lo, c), min(hi, c)); max likewise.
            if op == "Minimum":
                return replace(a, lo=min(a.lo, bound), hi=min(a.hi, bound), last=name)
            return replace(a, lo=max(a.lo, bound), hi=max(a.hi, bound), last=name)
        if op == "Mean":
            axes = sorted(int(i) % 4 for i in np.asarray(args[1]).reshape(-1))
            if axes != [1, 2]:
                raise UnsupportedGraphError(f"{name}: Mean over axes {axes} (only the spatial axes 1, 2)")
            return layers.GlobalAveragePooling2D(keepdims=_bool(node, "keep_dims"),
                                                 name=self.layer_name(name))(self.tensor(args[0]))
        if op in ("Pad", "PadV2"):
            pads = np.asarray(args[1]).reshape(4, 2)
            if pads[0].any() or pads[3].any() or (op == "PadV2" and _scalar(args[2]) != 0.0):
                raise UnsupportedGraphError(f"{name}: padding other than zeros on the spatial axes")
            return layers.ZeroPadding2D(((int(pads[1, 0]), int(pads[1, 1])), (int(pads[2, 0]), int(pads[2, 1]))),
                                        name=self.layer_name(name))(self.tensor(args[0]))
        if op in ("AvgPool", "MaxPool"):
            ksize = _ints(node, "ksize", [1, 1, 1, 1])
            params = _conv_params(node)
            if params["padding"] == "EXPLICIT":
                raise UnsupportedGraphError(f"{name}: explicit padding in a pool")
            cls = layers.AveragePooling2D if op == "AvgPool" else layers.MaxPooling2D
            return cls((ksize[1], ksize[2]), strides=params["strides"], padding=params["padding"].lower(),
                       name=self.layer_name(name))(self.tensor(args[0]))
        if op in ("MatMul", "_FusedMatMul"):
            x, kernel = self.tensor(args[0]), args[1]
            if _bool(node, "transpose_a") or not isinstance(kernel, np.ndarray):
                raise UnsupportedGraphError(f"{name}: MatMul other than tensor x constant")
            if _bool(node, "transpose_b"):
                kernel = kernel.T
            fused = _fused_ops(node) if op == "_FusedMatMul" else []
            if fused and (fused[0] != "BiasAdd" or len(fused) > 2 or (len(fused) == 2 and fused[1] != "Relu")):
                raise UnsupportedGraphError(f"{name}: fused ops {fused}")
            dense = layers.Dense(kernel.shape[1], use_bias=bool(fused), activation="relu" if len(fused) == 2 else None,
                                 name=self.layer_name(name))
            out = dense(x)
            dense.set_weights([kernel.astype(np.float32)] + ([args[2].astype(np.float32)] if fused else []))
            return out
        if op in ("Sigmoid", "Softmax"):
            return layers.Activation(op.lower(), name=self.layer_name(name))(self.tensor(args[0]))
        raise UnsupportedGraphError(f"{name}: op {op!r} is not supported by the converter")


def build_keras(graph: TfjsGraph, inputs: dict, outputs: list[str], prefix: str = "") -> list:
    """Keras tensors computing the graph's ``outputs`` from ``inputs``.

    Args:
        graph: from :func:`load_graph`.
        inputs: placeholder node name -> Keras tensor fed to it.
        outputs: node names to compute (only the nodes they need are built).
        prefix: prepended to every layer name (node names, ``/`` -> ``_``).

    Raises:
        UnsupportedGraphError: an op or attribute outside the supported subset.
    """
    builder = _Builder(graph, inputs, prefix)
    return [builder.tensor(builder.value(name)) for name in outputs]


# ---------------------------------------------------------------------------- reference


def run_reference(graph: TfjsGraph, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
    """Executes the graph's nodes literally with TensorFlow ops (no folding), for checking a conversion."""
    import tensorflow as tf

    values: dict[str, object] = {name: tf.constant(value, tf.float32) for name, value in inputs.items()}

    def get(name: str):
        name = name[:-2] if name.endswith(":0") else name
        if name not in values:
            values[name] = run(graph.nodes[name])
        return values[name]

    def run(node: dict):
        op, a = node["op"], [get(i) for i in _inputs(node)] if node["op"] != "Const" else []
        if op == "Const":
            return tf.constant(graph.weights[node["name"]])
        if op in ("Identity", "StopGradient"):
            return a[0]
        if op in ("Conv2D", "_FusedConv2D", "DepthwiseConv2dNative", "FusedDepthwiseConv2dNative"):
            p = _conv_params(node)
            padding = p["padding"] if p["padding"] != "EXPLICIT" else list(zip(*[iter(p["explicit"])] * 2))
            strides, dilations = [1, *p["strides"], 1], [1, *p["dilations"], 1]
            if op in ("Conv2D", "_FusedConv2D"):
                out = tf.nn.conv2d(a[0], a[1], strides, padding, dilations=dilations)
            else:
                out = tf.nn.depthwise_conv2d(a[0], a[1], strides, padding, dilations=p["dilations"])
            for fused in _fused_ops(node):
                out = {"BiasAdd": lambda t: tf.nn.bias_add(t, a[2]), "Relu": tf.nn.relu, "Relu6": tf.nn.relu6}[fused](out)
            return out
        if op in ("MatMul", "_FusedMatMul"):
            out = tf.linalg.matmul(a[0], a[1], transpose_b=_bool(node, "transpose_b"))
            for fused in _fused_ops(node):
                out = {"BiasAdd": lambda t: tf.nn.bias_add(t, a[2]), "Relu": tf.nn.relu}[fused](out)
            return out
        simple = {"BiasAdd": tf.nn.bias_add, "Add": tf.add, "AddV2": tf.add, "Sub": tf.subtract, "Mul": tf.multiply,
                  "Minimum": tf.minimum, "Maximum": tf.maximum}
        if op in simple:
            return simple[op](a[0], a[1])
        if op in ("Relu", "Relu6", "Sigmoid", "Softmax"):
            return {"Relu": tf.nn.relu, "Relu6": tf.nn.relu6, "Sigmoid": tf.sigmoid, "Softmax": tf.nn.softmax}[op](a[0])
        if op == "Mean":
            return tf.reduce_mean(a[0], axis=a[1], keepdims=_bool(node, "keep_dims"))
        if op in ("Pad", "PadV2"):
            return tf.pad(a[0], a[1])
        if op in ("AvgPool", "MaxPool"):
            p, ksize = _conv_params(node), _ints(node, "ksize", [1, 1, 1, 1])
            pool = tf.nn.avg_pool2d if op == "AvgPool" else tf.nn.max_pool2d
            return pool(a[0], ksize, [1, *p["strides"], 1], p["padding"])
        raise UnsupportedGraphError(f"{node['name']}: op {op!r} has no reference")

    return [get(name).numpy() for name in outputs]
