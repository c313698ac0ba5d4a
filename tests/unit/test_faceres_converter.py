"""The tfjs graph converter reproduces a graph's arithmetic; FaceRes's wrapper keeps the model contract.

A small synthetic tfjs graph model (written as ``model.json`` + a weights shard, float16
and uint8-quantised constants included) holds every op pattern the converter folds or
maps: a convolution with a frozen batch norm (Mul, Add) and a Relu clipped by
Minimum / Maximum, a strided depthwise convolution, fused convolutions with BiasAdd +
Relu6 / Relu, a Pad, a residual AddV2, a constant affine on a non-convolution, the
spatial Mean and a fused MatMul. The Keras model built from standard layers must match
the graph executed node by node with TensorFlow ops.
"""

from __future__ import annotations

import base64
import json
import urllib.error

import numpy as np
import pytest

from components.embed import faceres
from components.embed.tfjs_graph import (
    UnsupportedGraphError,
    build_keras,
    decode_weights,
    load_graph,
    run_reference,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _s(text: str) -> dict:
    return {"s": base64.b64encode(text.encode()).decode()}


def _ints(*values: int) -> dict:
    return {"list": {"i": [str(v) for v in values]}}


def _conv_attr(stride: int, padding: str = "SAME", fused: list[str] | None = None) -> dict:
    attr = {"strides": _ints(1, stride, stride, 1), "padding": _s(padding), "data_format": _s("NHWC"),
            "dilations": _ints(1, 1, 1, 1)}
    if fused:
        attr["fused_ops"] = {"list": {"s": [base64.b64encode(op.encode()).decode() for op in fused]}}
        attr["num_args"] = {"i": "1"}
    return attr


def _write_graph(folder, nodes: list[dict], constants: dict[str, np.ndarray], quantise: dict[str, str],
                 outputs: list[str]):
    """Writes a tfjs graph model: nodes (Const nodes added for ``constants``), one weights shard."""
    manifest, data = [], b""
    for name, value in constants.items():
        spec = {"name": name, "shape": list(value.shape), "dtype": "int32" if value.dtype == np.int32 else "float32"}
        how = quantise.get(name)
        if how == "float16":
            spec["quantization"] = {"dtype": "float16", "original_dtype": "float32"}
            data += value.astype("<f2").tobytes()
        elif how == "uint8":
            lo, scale = float(value.min()), float(value.max() - value.min()) / 255 or 1.0
            raw = np.round((value - lo) / scale).astype(np.uint8)
            spec["quantization"] = {"dtype": "uint8", "min": lo, "scale": scale}
            data += raw.tobytes()
        else:
            data += value.astype("<i4" if value.dtype == np.int32 else "<f4").tobytes()
        manifest.append(spec)
    const_nodes = [{"name": name, "op": "Const", "attr": {"dtype": {"type": "DT_FLOAT"}}} for name in constants]
    (folder / "tiny.bin").write_bytes(data)
    model = {"format": "graph-model", "modelTopology": {"node": const_nodes + nodes},
             "signature": {"outputs": {name: {"name": name} for name in outputs}},
             "weightsManifest": [{"paths": ["tiny.bin"], "weights": manifest}]}
    (folder / "tiny.json").write_text(json.dumps(model))
    return folder / "tiny.json"


def _tiny_graph(folder):
    rng = np.random.default_rng(0)
    w = lambda *shape: rng.normal(0.0, 0.5, shape).astype(np.float32)  # noqa: E731
    constants = {
        "c1/k": w(3, 3, 3, 8), "c1/mul": np.abs(w(8)) + 0.5, "c1/sub": w(8), "six": np.array(6.0, np.float32),
        "zero": np.array(0.0, np.float32),
        "dw/k": w(3, 3, 8, 1),
        "f1/k": w(1, 1, 8, 8), "f1/b": w(8),
        "fdw/k": w(3, 3, 8, 2), "fdw/b": w(16),
        "pad/paddings": np.array([[0, 0], [1, 1], [1, 1], [0, 0]], np.int32),
        "c2/k": w(3, 3, 16, 8),
        "aff/mul": w(8), "aff/add": w(8),
        "axes": np.array([1, 2], np.int32),
        "fc/k": w(8, 5), "fc/b": w(5),
    }
    quantise = {"c1/k": "float16", "dw/k": "float16", "fc/k": "uint8", "c2/k": "uint8"}
    nodes = [
        {"name": "input", "op": "Placeholder"},
        {"name": "c1/conv", "op": "Conv2D", "input": ["input", "c1/k"], "attr": _conv_attr(2)},
        {"name": "c1/bn_mul", "op": "Mul", "input": ["c1/conv", "c1/mul"]},
        {"name": "c1/bn_add", "op": "Add", "input": ["c1/bn_mul", "c1/sub"]},
        {"name": "c1/relu", "op": "Relu", "input": ["c1/bn_add"]},
        {"name": "c1/min", "op": "Minimum", "input": ["c1/relu", "six"]},
        {"name": "c1/clip", "op": "Maximum", "input": ["c1/min", "zero"]},
        {"name": "dw/conv", "op": "DepthwiseConv2dNative", "input": ["c1/clip", "dw/k"], "attr": _conv_attr(2)},
        {"name": "dw/relu6", "op": "Relu6", "input": ["dw/conv"]},
        {"name": "f1/conv", "op": "_FusedConv2D", "input": ["dw/relu6", "f1/k", "f1/b"],
         "attr": _conv_attr(1, fused=["BiasAdd", "Relu6"])},
        {"name": "fdw/conv", "op": "FusedDepthwiseConv2dNative", "input": ["f1/conv", "fdw/k", "fdw/b"],
         "attr": _conv_attr(1, fused=["BiasAdd", "Relu"])},
        {"name": "pad", "op": "Pad", "input": ["fdw/conv", "pad/paddings"]},
        {"name": "c2/conv", "op": "Conv2D", "input": ["pad", "c2/k"], "attr": _conv_attr(1, "VALID")},
        {"name": "res", "op": "AddV2", "input": ["c2/conv", "f1/conv"]},
        {"name": "aff/mul_op", "op": "Mul", "input": ["res", "aff/mul"]},
        {"name": "aff/add_op", "op": "Add", "input": ["aff/add", "aff/mul_op"]},
        {"name": "pool/Mean", "op": "Mean", "input": ["aff/add_op", "axes"], "attr": {"keep_dims": {"b": False}}},
        {"name": "fc/Relu", "op": "_FusedMatMul", "input": ["pool/Mean", "fc/k", "fc/b"],
         "attr": {"fused_ops": {"list": {"s": [base64.b64encode(b"BiasAdd").decode(),
                                               base64.b64encode(b"Relu").decode()]}}}},
    ]
    return _write_graph(folder, nodes, constants, quantise, ["pool/Mean", "fc/Relu"])


def test_converter_reproduces_the_graph_arithmetic(tmp_path):
    import keras

    graph = load_graph(_tiny_graph(tmp_path))
    assert graph.weights["c1/k"].dtype == np.float32 and graph.weights["axes"].dtype == np.int32
    inputs = keras.Input((17, 17, 3), name="x")
    pooled, fc = build_keras(graph, {"input": inputs}, ["pool/Mean", "fc/Relu"], prefix="t_")
    model = keras.Model(inputs, [pooled, fc])
    kinds = [type(layer).__name__ for layer in model.layers]
    # Batch norm folded into the convolution; the clip is one ReLU; no custom layers.
    assert kinds.count("Conv2D") == 3 and kinds.count("DepthwiseConv2D") == 3 and "Multiply" not in kinds
    assert model.get_layer("t_c1_conv").use_bias and model.get_layer("t_c1_relu").max_value == 6.0
    assert {type(layer).__module__.split(".")[0] for layer in model.layers} == {"keras"}

    x = np.random.default_rng(1).uniform(-2.0, 2.0, (3, 17, 17, 3)).astype(np.float32)
    got = model.predict_on_batch(x)
    want = run_reference(graph, {"input": x}, ["pool/Mean", "fc/Relu"])
    for g, r in zip(got, want):
        assert g.shape == r.shape and np.abs(r).max() > 0.1
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)
    # The reference is not trivially the same computation: a wrong fold would show.
    assert not np.allclose(want[0], run_reference(graph, {"input": x[:, ::-1]}, ["pool/Mean"])[0], atol=1e-3)


def test_converter_refuses_what_it_cannot_express(tmp_path):
    import keras

    constants = {"k": np.ones((1, 1, 3, 3), np.float32), "one": np.array(1.0, np.float32)}
    nodes = [{"name": "input", "op": "Placeholder"},
             {"name": "conv", "op": "Conv2D", "input": ["input", "k"], "attr": _conv_attr(1)},
             {"name": "relu", "op": "Relu", "input": ["conv"]},
             {"name": "floor", "op": "Maximum", "input": ["relu", "one"]},
             {"name": "odd", "op": "Erf", "input": ["conv"]}]
    graph = load_graph(_write_graph(tmp_path, nodes, constants, {}, ["floor"]))
    with pytest.raises(UnsupportedGraphError, match="floor: clip to"):
        build_keras(graph, {"input": keras.Input((4, 4, 3))}, ["floor"])
    with pytest.raises(UnsupportedGraphError, match="odd: op 'Erf'"):
        build_keras(graph, {"input": keras.Input((4, 4, 3))}, ["odd"])
    with pytest.raises(ValueError, match="describes"):
        decode_weights([{"weights": [{"name": "k", "shape": [2], "dtype": "float32"}]}], b"\0" * 12)


def test_faceres_wrapper_resizes_swaps_channels_subtracts_the_mean_and_normalises(tmp_path):
    """The contract around the graph, with a stand-in graph (input_1 -> spatial Mean) of the real names."""
    nodes = [{"name": faceres.INPUT_NODE, "op": "Placeholder"},
             {"name": faceres.OUTPUT_NODE, "op": "Mean", "input": [faceres.INPUT_NODE, "axes"],
              "attr": {"keep_dims": {"b": False}}}]
    path = _write_graph(tmp_path, nodes, {"axes": np.array([1, 2], np.int32)}, {}, [faceres.OUTPUT_NODE])
    model = faceres.build(path)
    assert model.input_shape == (None, 150, 150, 3) and model.get_layer("resize").output.shape[1:3] == (224, 224)

    colours = np.array([[200, 30, 90], [10, 250, 120]], np.float32)
    crops = np.broadcast_to(colours[:, None, None, :], (2, 150, 150, 3)).copy()
    got = model.predict_on_batch(crops)
    bgr = colours[:, ::-1] - np.array(faceres.CAFFE_MEAN_BGR, np.float32)
    # float32 mean over 224x224 values: ~1e-4 of summation error (the real graph averages 7x7).
    np.testing.assert_allclose(got, bgr / np.linalg.norm(bgr, axis=1, keepdims=True), atol=3e-4)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)

    # Saved and loaded with plain keras.saving.load_model: built-in layers only.
    import keras

    model.save(tmp_path / "wrapped.keras")
    again = keras.saving.load_model(tmp_path / "wrapped.keras", compile=False)
    np.testing.assert_allclose(again.predict_on_batch(crops), got, atol=1e-6)


def test_fetch_fails_in_one_line_on_a_bad_download(tmp_path, monkeypatch):
    from components.embed.weights import WeightsChecksumError

    fake = tmp_path / "fake.tgz"
    fake.write_bytes(b"not the release")
    monkeypatch.setattr(faceres, "TARBALL_URL", fake.as_uri())
    with pytest.raises(WeightsChecksumError, match="sha256 mismatch") as caught:
        faceres.fetch(tmp_path / "cache")
    assert "\n" not in str(caught.value)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == []  # nothing half-written is left

    def refuse(*args, **kwargs):
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setattr(faceres.urllib.request, "urlopen", refuse)
    with pytest.raises(faceres.DownloadError, match=r"cannot download file:.*Connection refused") as caught:
        faceres.fetch(tmp_path / "cache")
    assert "\n" not in str(caught.value)
