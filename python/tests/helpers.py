"""Test helpers: TF.js models written by hand (Dense, quantised, graph), and the Dense forward pass in numpy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np


def dense_model(folder: Path, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray, split_files: bool = True) -> Path:
    """A two-layer Dense model (relu, softmax) written by hand as TF.js writes one."""
    folder.mkdir(parents=True, exist_ok=True)

    def layer(name: str, units: int, activation: str, first: bool) -> Dict[str, Any]:
        config: Dict[str, Any] = {
            "units": units, "activation": activation, "use_bias": True, "name": name, "trainable": True,
            "kernel_initializer": {"class_name": "VarianceScaling", "config": {"scale": 1, "mode": "fan_avg", "distribution": "uniform", "seed": None}},
            "bias_initializer": {"class_name": "Zeros", "config": {}},
            "kernel_regularizer": None, "bias_regularizer": None, "activity_regularizer": None, "kernel_constraint": None, "bias_constraint": None,
        }
        if first:
            config["batch_input_shape"] = [None, int(w1.shape[0])]
            config["dtype"] = "float32"
        return {"class_name": "Dense", "config": config}

    topology = {"class_name": "Sequential", "config": {"name": "hand_made", "layers": [layer("dense_Dense1", w1.shape[1], "relu", True), layer("dense_Dense2", w2.shape[1], "softmax", False)]}}
    specs = [
        {"name": "dense_Dense1/kernel", "shape": list(w1.shape), "dtype": "float32"},
        {"name": "dense_Dense1/bias", "shape": list(b1.shape), "dtype": "float32"},
        {"name": "dense_Dense2/kernel", "shape": list(w2.shape), "dtype": "float32"},
        {"name": "dense_Dense2/bias", "shape": list(b2.shape), "dtype": "float32"},
    ]
    data = [np.asarray(t, "<f4").tobytes() for t in (w1, b1, w2, b2)]
    if split_files:
        # Two groups of two files, as the converter shards weights.
        (folder / "group1-shard1of2.bin").write_bytes(data[0])
        (folder / "group1-shard2of2.bin").write_bytes(data[1])
        (folder / "group2-shard1of1.bin").write_bytes(data[2] + data[3])
        manifest = [{"paths": ["group1-shard1of2.bin", "group1-shard2of2.bin"], "weights": specs[:2]}, {"paths": ["group2-shard1of1.bin"], "weights": specs[2:]}]
    else:
        (folder / "weights.bin").write_bytes(b"".join(data))
        manifest = [{"paths": ["weights.bin"], "weights": specs}]
    (folder / "model.json").write_text(json.dumps({"modelTopology": topology, "format": "layers-model", "generatedBy": "hand", "convertedBy": None, "weightsManifest": manifest}))
    return folder


def small_weights(seed: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(3, 4)).astype("f4"), rng.normal(size=4).astype("f4"), rng.normal(size=(4, 2)).astype("f4"), rng.normal(size=2).astype("f4")


def dense_forward(x: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> np.ndarray:
    """The model's output in float64: softmax(relu(x W1 + b1) W2 + b2)."""
    h = np.maximum(x.astype(np.float64) @ w1 + b1, 0)
    z = h @ w2 + b2
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


#: JSON text whose JSON.parse -> JSON.stringify round trip is easy to get wrong: number notation
#: (1.0, -0.0, 1e21, 1e-7, 1e400, integers past 2**53), key order (array indices first), escapes.
ODD_JSON = (
    '{"b": 1, "10": 2, "2": 3, "01": 4, "-1": 5, "4294967295": 6, "4294967294": 7, "1.5": 8, "a": 9,'
    ' "numbers": [1.0, -0.0, 0, -0, 1e21, 1e20, 123456789012345678901, 9007199254740993, 1e-7, 0.000001, 1.5e-6,'
    ' 0.1, 100, 1E2, 2.5e+3, 5e-324, 1.7976931348623157e308, 1e400, -1e400, 3.14159, -2.5e-10, 12345678901234567890123],'
    ' "strings": ["\\u00e9\\u6f22\\ud83d\\ude00", "\\u2028\\u2029", "\\u0000\\u001f\\u007f", "\\ud800", "tab\\there\\/\\"\\\\",'
    ' "\u00e9 raw", "\\b\\f\\n\\r"],'
    ' "dup": 1, "dup": 2, "nested": {"z": [], "y": {}, "x": [null, true, false]}}'
)


def write_model_json(folder: Path, doc: Dict[str, Any], odd: bool = False) -> None:
    """model.json for ``doc``; with ``odd``, ``modelTopology["odd"]`` is ODD_JSON's raw text."""
    text = json.dumps(doc)
    if odd:
        text = text.replace('"@ODD@"', ODD_JSON, 1)
    (folder / "model.json").write_text(text, encoding="utf-8")


def quantised_weights(seed: int = 1) -> Dict[str, np.ndarray]:
    """Stored weights as the converter writes them: float32, int32, uint8, uint16, float16 (odd sizes)."""
    rng = np.random.default_rng(seed)
    return {
        "dense/kernel": rng.normal(size=(3, 5)).astype("<f4"),
        "dense/bias": rng.integers(-9, 9, size=5).astype("<i4"),
        "conv/kernel": rng.integers(0, 256, size=(3, 3, 1, 3)).astype("u1"),   # 27 bytes: the next weight starts unaligned
        "conv/bias": rng.integers(0, 65536, size=3).astype("<u2"),
        "bn/gamma": rng.normal(size=7).astype("<f2"),
        "shape/const": rng.integers(0, 256, size=5).astype("u1"),              # int32, uint8-quantised
    }


def quantised_specs(weights: Dict[str, np.ndarray]) -> Any:
    return [
        {"name": "dense/kernel", "shape": list(weights["dense/kernel"].shape), "dtype": "float32"},
        {"name": "dense/bias", "shape": [5.0], "dtype": "int32"},  # 5.0: JSON.parse makes it 5
        {"name": "conv/kernel", "shape": [3, 3, 1, 3], "dtype": "float32",
         "quantization": {"min": -0.87334511607301, "scale": 0.006666756611244351, "dtype": "uint8", "original_dtype": "float32"}},
        {"name": "conv/bias", "shape": [3], "dtype": "float32", "quantization": {"dtype": "uint16", "scale": 1e-5, "min": -1}},
        {"name": "bn/gamma", "shape": [7], "dtype": "float32", "quantization": {"dtype": "float16"}},
        {"name": "shape/const", "shape": [5], "dtype": "int32", "quantization": {"scale": 1.0, "min": -128, "dtype": "uint8"}},
    ]


def quantised_model(folder: Path, odd: bool = True) -> Path:
    """A layers-model with every weight form the node packs, in three files of two manifest groups."""
    folder.mkdir(parents=True, exist_ok=True)
    w = quantised_weights()
    data = [t.tobytes() for t in w.values()]
    blob = b"".join(data)
    (folder / "group1-shard1of2.bin").write_bytes(blob[:50])  # a file boundary inside a weight
    (folder / "group1-shard2of2.bin").write_bytes(blob[50:len(b"".join(data[:3]))])
    (folder / "group2-shard1of1.bin").write_bytes(b"".join(data[3:]))
    specs = quantised_specs(w)
    topology = {"class_name": "Sequential", "config": {"name": "q", "layers": []}, "keras_version": "2.2.4", "odd": "@ODD@"}
    doc = {"modelTopology": topology, "format": "layers-model", "generatedBy": "keras v2.2.4", "convertedBy": "TensorFlow.js Converter v1.7.4r1",
           "weightsManifest": [{"paths": ["group1-shard1of2.bin", "group1-shard2of2.bin"], "weights": specs[:3]},
                               {"paths": ["group2-shard1of1.bin"], "weights": specs[3:]}]}
    write_model_json(folder, doc, odd)
    return folder


def graph_model(folder: Path) -> Path:
    """A tiny graph-model as tensorflowjs_converter writes one (no format on the topology, `node` list, quantised weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    kernel = rng.integers(0, 256, size=(4, 3)).astype("u1")
    bias = rng.normal(size=3).astype("<f2")
    (folder / "group1-shard1of1.bin").write_bytes(kernel.tobytes() + bias.tobytes())
    node = [
        {"name": "x", "op": "Placeholder", "attr": {"dtype": {"type": "DT_FLOAT"}, "shape": {"shape": {"dim": [{"size": "-1"}, {"size": "4"}]}}}},
        {"name": "w", "op": "Const", "attr": {"dtype": {"type": "DT_FLOAT"}, "value": {"tensor": {"dtype": "DT_FLOAT", "tensorShape": {"dim": [{"size": "4"}, {"size": "3"}]}}}}},
        {"name": "b", "op": "Const", "attr": {"dtype": {"type": "DT_FLOAT"}, "value": {"tensor": {"dtype": "DT_FLOAT", "tensorShape": {"dim": [{"size": "3"}]}}}}},
        {"name": "mm", "op": "MatMul", "input": ["x", "w"], "attr": {"transpose_a": {"b": False}, "transpose_b": {"b": False}, "T": {"type": "DT_FLOAT"}}},
        {"name": "y", "op": "BiasAdd", "input": ["mm", "b"], "attr": {"T": {"type": "DT_FLOAT"}, "data_format": {"s": "TkhXQw=="}}},
    ]
    doc = {
        "format": "graph-model", "generatedBy": "2.2.0", "convertedBy": "TensorFlow.js Converter v1.7.4r1",
        "userDefinedMetadata": {"signature": {"inputs": {"x:0": {"name": "x:0"}}}},
        "modelTopology": {"node": node, "library": {}, "versions": {"producer": 175}},
        "weightsManifest": [{"paths": ["group1-shard1of1.bin"], "weights": [
            {"name": "w", "shape": [4, 3], "dtype": "float32", "quantization": {"dtype": "uint8", "min": -0.5, "scale": 0.00392156862745098, "original_dtype": "float32"}},
            {"name": "b", "shape": [3], "dtype": "float32", "quantization": {"dtype": "float16", "original_dtype": "float32"}},
        ]}],
    }
    write_model_json(folder, doc)
    return folder
