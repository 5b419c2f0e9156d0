"""Test helpers: a TF.js Dense model written by hand, and its forward pass in numpy."""

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
