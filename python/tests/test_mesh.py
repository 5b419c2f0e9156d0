"""The client against a real three-node testnet: every shortcut against numpy, jobs, errors, a 256 MiB upload."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

from helpers import dense_forward, dense_model, small_weights
from tensormesh import Mesh, TensormeshError, TensormeshWarning

#: Every wait on the mesh is bounded by this (seconds); the jobs here take well under a second or two.
T = 120


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# -- the node -----------------------------------------------------------------------


def test_node_and_peers(mesh: Mesh, testnet: List[Dict[str, Any]]) -> None:
    info = mesh.node()
    assert info["peerId"] == testnet[0]["peerId"]
    assert "matmul" in info["operators"]
    peers = mesh.peers()
    assert {p["peerId"] for p in peers} == {n["peerId"] for n in testnet[1:]}


# -- shortcuts against numpy ------------------------------------------------------------


def test_matmul(mesh: Mesh) -> None:
    a = rng(1).normal(size=(300, 64)).astype(np.float32)
    b = rng(2).normal(size=(64, 40)).astype(np.float32)
    c = mesh.matmul(a, b, timeout=T)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    assert c.dtype == np.float32 and c.shape == (300, 40)
    assert np.abs(c - ref).max() <= 1e-4 * np.abs(ref).max()


def test_tiny_matmul_exact(mesh: Mesh) -> None:
    a = np.array([[1, 2], [3, 4]], np.float32)
    np.testing.assert_array_equal(mesh.matmul(a, a, timeout=T), a @ a)


def test_map(mesh: Mesh) -> None:
    x = rng(3).normal(size=(1000, 17)).astype(np.float32)
    out = mesh.map(x, [("mul", 2), ("add", -0.5), "tanh", "square", {"op": "div", "value": 3}], timeout=T)
    ref = np.tanh(2 * x.astype(np.float64) - 0.5) ** 2 / 3
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    # int32 input is computed and answered as float32.
    xi = np.arange(-6, 6, dtype=np.int32).reshape(4, 3)
    np.testing.assert_allclose(mesh.map(xi, ["relu", "sqrt"], timeout=T), np.sqrt(np.maximum(xi, 0)), rtol=1e-5)


@pytest.mark.parametrize("op", ["sum", "mean", "max", "min"])
@pytest.mark.parametrize("axis", [None, 0])
def test_reduce(mesh: Mesh, op: str, axis: Any) -> None:
    x = rng(4).normal(size=(2000, 8)).astype(np.float32)
    out = mesh.reduce(x, op, axis=axis, timeout=T)
    ref = getattr(np, op)(x.astype(np.float64), axis=axis)
    assert out.shape == np.shape(ref) and out.dtype == np.float32
    if op in ("max", "min"):
        np.testing.assert_array_equal(out, ref)  # an element of x: exact
    else:
        scale = getattr(np, op)(np.abs(x.astype(np.float64)), axis=axis)
        assert np.all(np.abs(out - ref) <= 1e-5 * scale)


def test_reduce_int32_keeps_dtype_for_max(mesh: Mesh) -> None:
    x = rng(5).integers(-1000, 1000, size=(500, 3)).astype(np.int32)
    out = mesh.reduce(x, "max", axis=0, timeout=T)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, x.max(axis=0))
    assert float(mesh.reduce(x, "sum", timeout=T)) == float(x.sum())


def test_sort_is_exact(mesh: Mesh) -> None:
    x = rng(6).normal(size=100_000).astype(np.float32)
    x[[5, 500, 50_000]] = np.nan
    out = mesh.sort(x, timeout=T)
    ref = np.sort(x)
    assert out.dtype == np.float32 and out.shape == x.shape
    assert np.array_equal(out, ref, equal_nan=True)
    finite = ~np.isnan(ref)
    np.testing.assert_array_equal(out[finite].view(np.uint32), ref[finite].view(np.uint32))


def test_topk_is_exact(mesh: Mesh) -> None:
    queries = rng(7).normal(size=(8, 16)).astype(np.float32)
    items = rng(8).normal(size=(3000, 16)).astype(np.float32)
    k = 10
    got = mesh.topk(queries, items, k, timeout=T)
    q64, i64 = queries.astype(np.float64), items.astype(np.float64)
    sims = (q64 @ i64.T) / (np.maximum(np.linalg.norm(q64, axis=1), 1e-12)[:, None] * np.maximum(np.linalg.norm(i64, axis=1), 1e-12)[None, :])
    idx = np.arange(items.shape[0])
    ref = np.stack([np.lexsort((idx, -sims[r]))[:k] for r in range(queries.shape[0])])
    assert got.indices.shape == (8, k) and got.indices.dtype == np.int64
    np.testing.assert_array_equal(got.indices, ref)
    np.testing.assert_allclose(got.scores, np.take_along_axis(sims, ref, axis=1), atol=1e-5)
    # submit gives the node's own [q, k, 2] tensor.
    raw = mesh.submit("topk", {"queries": queries, "items": items}, {"k": k}).result(timeout=T)
    assert raw.shape == (8, k, 2)
    np.testing.assert_array_equal(raw[..., 0], ref)


def test_histogram_counts_are_exact(mesh: Mesh) -> None:
    x = rng(9).normal(size=200_000).astype(np.float32)
    out = mesh.histogram(x, 64, (-4, 4), timeout=T)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, np.histogram(x, 64, (-4, 4))[0])
    # numpy's range when none is given: (min, max), the max counted in the last bin.
    np.testing.assert_array_equal(mesh.histogram(x, 20, timeout=T), np.histogram(x, 20)[0])
    xi = rng(10).integers(0, 100, size=(1000, 4)).astype(np.int32)
    np.testing.assert_array_equal(mesh.histogram(xi, 10, (0, 100), timeout=T), np.histogram(xi, 10, (0, 100))[0])


def test_infer_matches_numpy(mesh: Mesh, tmp_path: Path) -> None:
    weights = small_weights(11)
    folder = dense_model(tmp_path / "model", *weights)
    x = rng(12).normal(size=(500, 3)).astype(np.float32)
    ref = dense_forward(x, *weights)
    out = mesh.infer(x, folder, batch_size=64, timeout=T)
    assert out.dtype == np.float32 and out.shape == (500, 2)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    # A model.json path works the same.
    np.testing.assert_allclose(mesh.infer(x[:10], folder / "model.json", timeout=T), ref[:10], atol=1e-5)


def blobs(seed: int, n: int) -> Any:
    """Two well separated Gaussian blobs in 2-D: a problem any MLP gets right."""
    r = rng(seed)
    y = r.integers(0, 2, size=n)
    centres = np.array([[-2.0, -2.0], [2.0, 2.0]])
    x = centres[y] + r.normal(scale=0.7, size=(n, 2))
    return x.astype(np.float32), y.astype(np.int64)


def test_train_separable(mesh: Mesh, tmp_path: Path) -> None:
    x, y = blobs(13, 400)
    xt, yt = blobs(14, 200)
    params = {"layers": [2, 8, 2], "activation": "tanh", "rounds": 25, "learningRate": 0.05, "optimizer": "adam", "seed": 3}
    with mesh.submit("train", {"x": x, "y": y, "xTest": xt, "yTest": yt}, params) as job:
        folder = job.result(tmp_path / "model", timeout=T)
    assert folder == tmp_path / "model"
    record = job.record()
    assert record["state"] == "succeeded" and record["progress"] == {"done": 25, "total": 25}
    assert len(record["metrics"]["rounds"]) == 25
    assert record["metrics"]["accuracy"] >= 0.95
    doc = json.loads((folder / "model.json").read_text())
    specs = doc["weightsManifest"][0]["weights"]
    assert [s["shape"] for s in specs] == [[2, 8], [8], [8, 2], [2]]
    # The written weights give the accuracy the job measured.
    flat = np.fromfile(folder / doc["weightsManifest"][0]["paths"][0], dtype="<f4")
    w1, b1, w2, b2 = np.split(flat, np.cumsum([16, 8, 16]))
    z = np.tanh(xt @ w1.reshape(2, 8) + b1) @ w2.reshape(8, 2) + b2
    assert abs(float((z.argmax(1) == yt).mean()) - record["metrics"]["accuracy"]) <= 2 / len(yt)


def test_train_shortcut_returns_the_folder(mesh: Mesh, tmp_path: Path) -> None:
    x, y = blobs(15, 100)
    folder = mesh.train(x, y, x[:20], y[:20], layers=[2, 4, 2], rounds=2, out_dir=tmp_path / "m", timeout=T)
    assert folder == tmp_path / "m"
    assert json.loads((folder / "model.json").read_text())["format"] == "layers-model"
    assert (folder / "weights.bin").stat().st_size == (2 * 4 + 4 + 4 * 2 + 2) * 4


def test_train_a_model_json_in_local_mode(mesh: Mesh, tmp_path: Path) -> None:
    """A layers-model without weights, DiLoCo rounds; numpy scores the written weights as the job did."""
    (tmp_path / "net").mkdir()
    topology = {"class_name": "Sequential", "config": {"name": "tiny", "layers": [
        {"class_name": "Dense", "config": {"name": "out", "units": 2, "activation": "softmax", "batch_input_shape": [None, 2], "use_bias": True,
                                            "kernel_initializer": {"class_name": "GlorotUniform", "config": {"seed": None}},
                                            "bias_initializer": {"class_name": "Zeros", "config": {}}}}]}}
    (tmp_path / "net" / "model.json").write_text(json.dumps({"format": "layers-model", "modelTopology": topology}))
    x, y = blobs(17, 400)
    xt, yt = blobs(18, 200)
    with pytest.raises(TensormeshError) as err:
        mesh.train(x, y, xt, yt, model=tmp_path / "net", rounds=3, out_dir=tmp_path / "bad")
    assert err.value.code == "ERR_BAD_ARGUMENT"
    folder = mesh.train(x, y, xt, yt, model=tmp_path / "net", loss="sparseCategoricalCrossentropy", optimizer={"name": "adam", "learningRate": 0.05},
                        batch_size=20, epochs=2, seed=4, sync={"mode": "local", "steps": 5, "replicas": 2}, out_dir=tmp_path / "m", timeout=T)
    doc = json.loads((folder / "model.json").read_text())
    flat = np.fromfile(folder / doc["weightsManifest"][0]["paths"][0], dtype="<f4")
    w, b = flat[:4].reshape(2, 2), flat[4:]
    accuracy = float(((xt @ w + b).argmax(1) == yt).mean())
    assert accuracy >= 0.95


# -- jobs ----------------------------------------------------------------------------


def test_job_record_state_progress(mesh: Mesh, capsys: pytest.CaptureFixture) -> None:
    a = rng(16).normal(size=(64, 8)).astype(np.float32)
    job = mesh.submit("matmul", {"a": a, "b": a.T.copy()})
    assert job.op == "matmul" and job.id
    final = job.wait(progress=True, timeout=T)
    assert final["state"] == "succeeded" and job.state == "succeeded"
    assert job.progress.done == job.progress.total > 0
    assert job.record()["output"] == {"dtype": "float32", "shape": [64, 64]}
    err = capsys.readouterr().err
    assert f"{job.id} succeeded" in err  # stderr is not a terminal here: plain lines
    assert any(j["id"] == job.id for j in mesh.jobs())
    assert mesh.job(job.id).state == "succeeded"
    with pytest.raises(TensormeshError) as e:
        job.result(out_dir="nowhere")
    assert e.value.code == "ERR_BAD_ARGUMENT"


def test_shape_mismatch_error(mesh: Mesh) -> None:
    with pytest.raises(TensormeshError) as e:
        mesh.matmul(np.ones((3, 4), np.float32), np.ones((5, 2), np.float32), timeout=T)
    assert e.value.code == "ERR_SHAPE_MISMATCH" and e.value.status == 400
    assert "a's columns (4) must equal b's rows (5)" in e.value.message


def test_unknown_job(mesh: Mesh) -> None:
    with pytest.raises(TensormeshError) as e:
        mesh.job("no-such-job")
    assert e.value.code == "ERR_JOB_NOT_FOUND" and e.value.status == 404


def long_training(mesh: Mesh) -> Any:
    """A train job of 10,000 rounds: minutes of work, so it is surely still running when cancelled."""
    x, y = blobs(17, 64)
    return mesh.submit("train", {"x": x, "y": y, "xTest": x, "yTest": y}, {"layers": [2, 4, 2], "rounds": 10_000})


def test_cancel(mesh: Mesh) -> None:
    job = long_training(mesh)
    for view in job.events(timeout=T):  # until the job reports its first round: it is running
        if view["state"] == "running" and view["progress"]["done"] >= 1:
            break
    assert job.state == "running"
    assert job.cancel()["state"] == "cancelled"
    assert job.wait(timeout=T)["state"] == "cancelled"
    assert job.state == "cancelled"
    with pytest.raises(TensormeshError) as e:
        job.result(timeout=T)
    assert e.value.code == "ERR_CANCELLED"


def test_with_block_cancels_on_error(mesh: Mesh) -> None:
    with pytest.raises(RuntimeError, match="user code failed"):
        with long_training(mesh) as job:
            raise RuntimeError("user code failed")
    assert job.state == "cancelled"
    assert job.record()["error"]["code"] == "ERR_CANCELLED"


def test_wait_timeout_is_bounded(mesh: Mesh) -> None:
    with long_training(mesh) as job:
        with pytest.raises(TensormeshError) as e:
            job.wait(timeout=0.5)
        assert e.value.code == "ERR_TIMEOUT"
        job.cancel()


# -- inputs ------------------------------------------------------------------------------


def test_float64_warns_and_computes(mesh: Mesh) -> None:
    a = rng(18).normal(size=(20, 6))
    b = rng(19).normal(size=(6, 5))
    with pytest.warns(TensormeshWarning, match="float64 converted to float32"):
        c = mesh.matmul(a, b, timeout=T)
    ref = a @ b
    assert np.abs(c - ref).max() <= 1e-4 * np.abs(ref).max()


def test_fortran_order_and_strided_inputs(mesh: Mesh) -> None:
    a = np.asfortranarray(rng(20).normal(size=(50, 30)).astype(np.float32))
    wide = rng(21).normal(size=(30, 80)).astype(np.float32)
    b = wide[:, ::4]  # a strided view: not contiguous
    assert a.flags.f_contiguous and not a.flags.c_contiguous and not b.flags.c_contiguous
    c = mesh.matmul(a, b, timeout=T)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    assert np.abs(c - ref).max() <= 1e-4 * np.abs(ref).max()


def test_bool_input_counts(mesh: Mesh) -> None:
    x = rng(22).random((1000, 5)) > 0.3
    np.testing.assert_array_equal(mesh.reduce(x, "sum", axis=0, timeout=T), x.sum(axis=0))


def test_256mib_upload_is_streamed(mesh: Mesh) -> None:
    """A 256 MiB float32 input goes up without the client copying it: tracemalloc's peak stays small."""
    x = rng(23).random((65536, 1024), dtype=np.float32)
    assert x.nbytes == 256 * 1024 * 1024
    tracemalloc.start()
    try:
        # numpy's allocations are traced: an 8 MiB array shows in the peak.
        probe = np.ones(1024 * 1024, np.float64)
        del probe
        assert tracemalloc.get_traced_memory()[1] >= 8 * 1024 * 1024
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        job = mesh.submit("reduce", {"x": x}, {"op": "sum", "axis": 0})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    added = peak - before
    print(f"256 MiB upload: Python-side peak grew by {added} bytes")
    assert added < 8 * 1024 * 1024, f"uploading 256 MiB added {added} bytes to Python's peak"
    with job:
        out = job.result(timeout=T)
    np.testing.assert_allclose(out, x.sum(axis=0, dtype=np.float64), rtol=1e-5)


def test_api_needs_the_token(testnet: List[Dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No token (none given, none in the environment, an empty data dir) and a wrong one are both 401; the right one from TENSORMESH_TOKEN works."""
    api = testnet[0]["api"]
    monkeypatch.delenv("TENSORMESH_TOKEN", raising=False)
    for kwargs in ({"data_dir": str(tmp_path)}, {"token": "0" * 64, "data_dir": str(tmp_path)}):
        with pytest.raises(TensormeshError) as err:
            Mesh(api, **kwargs).node()
        assert err.value.code == "ERR_UNAUTHORIZED"
        assert err.value.status == 401
    monkeypatch.setenv("TENSORMESH_TOKEN", testnet[0]["token"])
    assert Mesh(api, data_dir=str(tmp_path)).node()["peerId"] == testnet[0]["peerId"]
