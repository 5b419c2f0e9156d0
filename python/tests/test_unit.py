"""Tests that need no mesh: tokens, the streamed multipart body, dtypes, models, errors."""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import struct
import sys
import types
import warnings
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

from conftest import Recorder, closed_port
from helpers import dense_model, graph_model, quantised_model, quantised_weights, small_weights
from tensormesh import CidRef, Job, JobRef, Mesh, TensormeshError, TensormeshWarning, pack_model, prepare_array, read_model_dir, unpack_model, write_model_dir
from tensormesh.arrays import MultipartBody, npy_header, read_npy_into
from tensormesh.client import _SSEParser
from tensormesh.progress import ProgressDisplay


def parse_multipart(content_type: str, body: bytes) -> Dict[str, bytes]:
    """The parts of a multipart/form-data body by name, through the standard library's MIME parser."""
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    assert msg.is_multipart()
    return {str(part.get_param("name", header="content-disposition")): bytes(part.get_payload(decode=True)) for part in msg.iter_parts()}


# -- token ---------------------------------------------------------------------


def sent_auth(rec: Recorder, **kwargs: Any) -> Any:
    Mesh(rec.url, **kwargs).node()
    return rec.requests[-1]["headers"].get("Authorization")


def test_token_precedence(recorder: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "api-token").write_text("from-file\n")
    monkeypatch.setenv("TENSORMESH_TOKEN", "from-env")
    assert sent_auth(recorder, token="from-arg", data_dir=tmp_path) == "Bearer from-arg"
    assert sent_auth(recorder, data_dir=tmp_path) == "Bearer from-env"
    monkeypatch.delenv("TENSORMESH_TOKEN")
    assert sent_auth(recorder, data_dir=tmp_path) == "Bearer from-file"
    # Nothing found: no header at all (the node does not enforce auth yet).
    assert sent_auth(recorder, data_dir=tmp_path / "missing") is None
    (tmp_path / "api-token").write_text("  \n")
    assert sent_auth(recorder, data_dir=tmp_path) is None


def test_token_default_data_dir_is_home(recorder: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TENSORMESH_TOKEN", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".tensormesh").mkdir()
    (tmp_path / ".tensormesh" / "api-token").write_text("home-token")
    assert sent_auth(recorder) == "Bearer home-token"


def test_token_sent_on_every_request(recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TENSORMESH_TOKEN", raising=False)
    recorder.body = json.dumps({"id": "j1", "op": "matmul", "state": "queued", "progress": {"done": 0, "total": 0}}).encode()
    m = Mesh(recorder.url, token="t0k")
    job = m.submit("matmul", {"a": np.ones((2, 2), "f4"), "b": np.ones((2, 2), "f4")})
    job.record()
    job.cancel()
    m.peers()
    assert [r["method"] for r in recorder.requests] == ["POST", "GET", "DELETE", "GET"]
    assert all(r["headers"].get("Authorization") == "Bearer t0k" for r in recorder.requests)


def test_bad_token_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TensormeshError) as e:
        Mesh("http://127.0.0.1:9", token="two words")
    assert e.value.code == "ERR_BAD_TOKEN"


# -- the multipart body ----------------------------------------------------------


def test_multipart_body_is_exact_and_parses(recorder: Recorder) -> None:
    recorder.body = json.dumps({"id": "j1", "op": "matmul", "state": "queued"}).encode()
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.arange(8, dtype=np.int32).reshape(4, 2)
    Mesh(recorder.url).submit("matmul", {"a": a, "b": b}, {"x": np.int64(3)}, verify={"replicas": 2})
    req = recorder.requests[-1]
    assert req["method"] == "POST" and req["path"] == "/v1/jobs"
    # An exact length and no chunked encoding.
    assert int(req["headers"]["Content-Length"]) == len(req["body"])
    assert "Transfer-Encoding" not in req["headers"]
    parts = parse_multipart(req["headers"]["Content-Type"], req["body"])
    assert json.loads(parts["spec"]) == {"op": "matmul", "params": {"x": 3}, "verify": {"replicas": 2}}
    np.testing.assert_array_equal(np.load(io.BytesIO(parts["a"])), a)
    np.testing.assert_array_equal(np.load(io.BytesIO(parts["b"])), b)


# -- inputs by reference ---------------------------------------------------------


CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


def sent_spec(rec: Recorder) -> Dict[str, Any]:
    req = rec.requests[-1]
    assert req["method"] == "POST" and req["path"] == "/v1/jobs"
    return dict(json.loads(parse_multipart(req["headers"]["Content-Type"], req["body"])["spec"]))


def test_references_go_in_the_spec_and_arrays_as_parts(recorder: Recorder) -> None:
    recorder.body = json.dumps({"id": "j2", "op": "matmul", "state": "queued"}).encode()
    mesh = Mesh(recorder.url)
    earlier = Job(mesh, {"id": "j1", "op": "map", "state": "succeeded"})  # finished: no request to wait for it
    forms = [
        ({"a": earlier}, {"a": {"job": "j1"}}),
        ({"a": JobRef(earlier)}, {"a": {"job": "j1"}}),
        ({"a": JobRef("j0")}, {"a": {"job": "j0"}}),
        ({"a": {"job": "j0"}}, {"a": {"job": "j0"}}),
        ({"a": {"job": earlier}}, {"a": {"job": "j1"}}),
        ({"a": CidRef(CID)}, {"a": {"cid": CID}}),
        ({"a": {"cid": CID}}, {"a": {"cid": CID}}),
    ]
    b = np.arange(6, dtype=np.float32).reshape(3, 2)
    for inputs, expected in forms:
        mesh.submit("matmul", {**inputs, "b": b}, {"k": 1})
        req = recorder.requests[-1]
        parts = parse_multipart(req["headers"]["Content-Type"], req["body"])
        assert set(parts) == {"spec", "b"}, inputs  # the reference is no part of its own
        assert json.loads(parts["spec"]) == {"op": "matmul", "params": {"k": 1}, "inputs": expected}
        np.testing.assert_array_equal(np.load(io.BytesIO(parts["b"])), b)
    # Only references: the body is the spec alone. Without any, the spec has no "inputs" (as before).
    mesh.submit("reduce", {"x": earlier}, {"op": "sum"})
    assert set(parse_multipart(recorder.requests[-1]["headers"]["Content-Type"], recorder.requests[-1]["body"])) == {"spec"}
    assert sent_spec(recorder) == {"op": "reduce", "params": {"op": "sum"}, "inputs": {"x": {"job": "j1"}}}
    mesh.submit("sort", {"x": b.ravel()})
    assert "inputs" not in sent_spec(recorder)
    assert len(recorder.requests) == len(forms) + 2  # nothing asked about the finished job


def test_shortcuts_take_references(recorder: Recorder) -> None:
    recorder.body = json.dumps({"id": "j2", "op": "reduce", "state": "queued"}).encode()
    mesh = Mesh(recorder.url)
    earlier = Job(mesh, {"id": "j1", "op": "map", "state": "succeeded"})
    with pytest.raises(TensormeshError):  # the recorder is no node: result() fails once the job is in
        mesh.reduce(earlier, "sum", axis=0, timeout=5)
    post = next(r for r in recorder.requests if r["method"] == "POST")
    spec = json.loads(parse_multipart(post["headers"]["Content-Type"], post["body"])["spec"])
    assert spec["inputs"] == {"x": {"job": "j1"}} and spec["params"] == {"op": "sum", "axis": 0}
    with pytest.raises(TensormeshError) as e:
        mesh.histogram(earlier, 8)
    assert e.value.code == "ERR_BAD_ARGUMENT" and "range=" in e.value.message


def test_a_running_job_is_waited_for_before_it_is_named(recorder: Recorder) -> None:
    node = FakeNode([view("running"), view("succeeded")], view("succeeded"), hold_open=False)
    try:
        recorder.body = json.dumps({"id": "j2", "op": "reduce", "state": "queued"}).encode()
        earlier = Job(Mesh(node.url), view("queued"))
        Mesh(recorder.url).submit("reduce", {"x": earlier})
        assert node.streams == 1 and earlier.state == "succeeded"
        assert sent_spec(recorder)["inputs"] == {"x": {"job": "job-1"}}
        # An id is sent as is: the node says whether that job is ready.
        Mesh(recorder.url).submit("reduce", {"x": JobRef("job-9")})
        assert node.streams == 1 and sent_spec(recorder)["inputs"] == {"x": {"job": "job-9"}}
    finally:
        node.close()


@pytest.mark.parametrize("value, says", [
    ({"job": "j1", "cid": CID}, "nothing else"),
    ({"job": "j1", "extra": 1}, "nothing else"),
    ({"job": ""}, "job id"),
    ({"job": "x" * 65}, "job id"),
    ({"job": 7}, "job id"),
    ({"cid": None}, "CID"),
    ({"cid": "b" * 129}, "CID"),
])
def test_bad_references_fail_before_any_request(recorder: Recorder, value: Dict[str, Any], says: str) -> None:
    with pytest.raises(TensormeshError) as e:
        Mesh(recorder.url).submit("reduce", {"x": value})
    assert e.value.code == "ERR_BAD_ARGUMENT" and says in e.value.message and "'x'" in e.value.message
    assert recorder.requests == []


def test_reference_objects() -> None:
    assert JobRef("j1") == JobRef("j1") and JobRef("j1").to_json() == {"job": "j1"}
    assert CidRef(CID).to_json() == {"cid": CID} and repr(CidRef(CID)) == f"CidRef({CID!r})"
    for bad in (None, "", 3):
        with pytest.raises(TensormeshError):
            JobRef(bad)  # type: ignore[arg-type]
    with pytest.raises(TensormeshError):
        CidRef(b"baf")  # type: ignore[arg-type]


def test_multipart_streams_views_of_the_array() -> None:
    """The body yields headers and memoryviews of the array itself: no tobytes(), no copy."""
    x = np.random.default_rng(0).random((1000, 3000), dtype=np.float32)  # 12 MB: three 4 MiB chunks
    body = MultipartBody()
    body.add_field("spec", "{}")
    body.add_array("x", x)
    pieces = list(body)
    views = [p for p in pieces if isinstance(p, memoryview)]
    assert sum(v.nbytes for v in views) == x.nbytes and len(views) == 3
    base_ptr = x.__array_interface__["data"][0]
    for v in views:
        arr = np.frombuffer(v, dtype=np.uint8)
        assert np.shares_memory(arr, x.view(np.uint8).reshape(-1))
    assert np.frombuffer(views[0], np.uint8).__array_interface__["data"][0] == base_ptr
    assert len(body) == sum(memoryview(p).nbytes for p in pieces)
    assert sum(len(p) for p in pieces if isinstance(p, bytes)) < 1024


def test_npy_header_matches_numpy() -> None:
    for arr in (np.zeros((2, 3), "<f4"), np.zeros((), "<i4"), np.zeros((0, 5), "<f4"), np.zeros(7, "|b1")):
        buf = io.BytesIO()
        np.save(buf, arr)
        assert buf.getvalue() == npy_header(arr) + arr.tobytes()


def test_read_npy_into_reads_in_chunks() -> None:
    arr = np.random.default_rng(1).random((33, 7)).astype("<f4")
    buf = io.BytesIO()
    np.save(buf, arr)
    stream = io.BytesIO(buf.getvalue())
    np.testing.assert_array_equal(read_npy_into(lambda n: stream.read(min(n, 5)), "test"), arr)
    cut = io.BytesIO(buf.getvalue()[:-3])
    with pytest.raises(TensormeshError) as e:
        read_npy_into(cut.read, "test")
    assert e.value.code == "ERR_TRUNCATED"


# -- dtypes ----------------------------------------------------------------------


def test_float64_is_converted_with_a_warning() -> None:
    with pytest.warns(TensormeshWarning, match="float64"):
        out = prepare_array("x", np.arange(4.0))
    assert out.dtype == np.dtype("<f4")
    with pytest.warns(TensormeshWarning), pytest.raises(TensormeshError) as e:
        prepare_array("x", np.array([1.0, 1e300]))
    assert e.value.code == "ERR_OUT_OF_RANGE"
    with pytest.warns(TensormeshWarning):  # inf and nan stay what they are
        assert np.isinf(prepare_array("x", np.array([np.inf]))).all()


def test_float64_warning_points_at_the_caller(recorder: Recorder) -> None:
    recorder.body = json.dumps({"id": "j1", "op": "map", "state": "queued"}).encode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Mesh(recorder.url).submit("map", {"x": np.ones(3)}, {"ops": []})
    assert [Path(w.filename).name for w in caught] == [Path(__file__).name]


def test_integer_and_bool_conversions() -> None:
    assert prepare_array("y", np.array([1, 2, 3], np.int64)).dtype == np.dtype("<i4")
    assert prepare_array("y", np.array([1, 2], np.uint32)).dtype == np.dtype("<i4")
    assert prepare_array("y", np.array([True, False])).dtype == np.dtype("|b1")  # the node reads it as int32 0/1
    assert prepare_array("y", np.array([1, 2], np.uint8)).dtype == np.dtype("|u1")
    assert prepare_array("y", np.array([1, 2], ">i2")).dtype == np.dtype("<i2")
    assert prepare_array("x", np.array([1, 2], np.float16)).dtype == np.dtype("<f4")
    big = prepare_array("x", np.array([1, 2], ">f4"))
    assert big.dtype == np.dtype("<f4") and big.tolist() == [1.0, 2.0]
    for too_big in (np.array([2**31], np.int64), np.array([-(2**31) - 1], np.int64), np.array([2**32], np.uint64)):
        with pytest.raises(TensormeshError) as e:
            prepare_array("y", too_big)
        assert e.value.code == "ERR_OUT_OF_RANGE" and "int32" in e.value.message


def test_layouts_become_c_order_without_needless_copies() -> None:
    x = np.arange(24, dtype=np.float32).reshape(4, 6)
    assert prepare_array("x", x) is x
    f = np.asfortranarray(x)
    out = prepare_array("x", f)
    assert out.flags.c_contiguous and np.array_equal(out, x)
    s = x[:, ::2]
    out = prepare_array("x", s)
    assert out.flags.c_contiguous and np.array_equal(out, s)
    assert prepare_array("x", np.float32(3)).shape == ()


def test_unsupported_dtypes_fail_before_any_request() -> None:
    sock, port = closed_port()
    try:
        mesh = Mesh(f"http://127.0.0.1:{port}")
        for bad in (np.ones(3, np.complex64), np.array(["a"]), np.array([object()]), np.zeros(2, "M8[s]")):
            with pytest.raises(TensormeshError) as e:
                mesh.submit("map", {"x": bad}, {"ops": []})
            # ERR_BAD_DTYPE, not ERR_UNREACHABLE: nothing was sent.
            assert e.value.code == "ERR_BAD_DTYPE" and e.value.status is None
        with pytest.raises(TensormeshError) as e:
            mesh.submit("map", {"x": np.array([2**40])}, {"ops": []})
        assert e.value.code == "ERR_OUT_OF_RANGE"
        for bad_name in ("bad name", "spec", "x" * 65):
            with pytest.raises(TensormeshError) as e:
                mesh.submit("map", {bad_name: np.ones(2, "f4")}, {"ops": []})
            assert e.value.code == "ERR_BAD_ARGUMENT"
    finally:
        sock.close()


# -- errors ----------------------------------------------------------------------


def test_unreachable_node_names_the_url() -> None:
    sock, port = closed_port()
    try:
        url = f"http://127.0.0.1:{port}"
        with pytest.raises(TensormeshError) as e:
            Mesh(url).node()
        assert e.value.code == "ERR_UNREACHABLE"
        assert url in e.value.message and e.value.status is None
        with pytest.raises(TensormeshError) as e:
            Mesh(url).matmul(np.ones((2, 2), "f4"), np.ones((2, 2), "f4"))
        assert e.value.code == "ERR_UNREACHABLE" and url in str(e.value)
    finally:
        sock.close()


def test_node_errors_carry_code_message_status(recorder: Recorder) -> None:
    recorder.status = 404
    recorder.body = json.dumps({"error": {"code": "ERR_JOB_NOT_FOUND", "message": "no job with id x"}}).encode()
    with pytest.raises(TensormeshError) as e:
        Mesh(recorder.url).job("x")
    assert (e.value.code, e.value.message, e.value.status) == ("ERR_JOB_NOT_FOUND", "no job with id x", 404)
    recorder.status = 502
    recorder.body = b"<html>bad gateway</html>"
    with pytest.raises(TensormeshError) as e:
        Mesh(recorder.url).node()
    assert e.value.code == "ERR_HTTP" and e.value.status == 502


# -- events and progress ------------------------------------------------------------


def test_sse_parser_handles_split_chunks() -> None:
    p = _SSEParser()
    stream = b'event: job\ndata: {"a":1}\n\n: comment\r\nevent: job\r\ndata: {"a":\ndata: 2}\r\n\r\n'
    got: List[Any] = []
    for i in range(len(stream)):
        got += p.feed(stream[i:i + 1])
    assert got == [("job", '{"a":1}'), ("job", '{"a":\n2}')]


def without_tqdm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # `import tqdm` now raises ImportError
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)


def test_progress_plain_lines_when_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    without_tqdm(monkeypatch)
    out = io.StringIO()
    d = ProgressDisplay("job-1", stream=out)
    for done in (0, 1, 1, 2):
        d.update({"op": "matmul", "state": "running", "progress": {"done": done, "total": 2}})
    d.close()
    assert out.getvalue().splitlines() == ["job-1 running 0/2 shards", "job-1 running 1/2 shards", "job-1 running 2/2 shards"]


def test_progress_rewrites_one_line_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    without_tqdm(monkeypatch)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    d = ProgressDisplay("job-1", stream=out)
    d.update({"op": "train", "state": "running", "progress": {"done": 1, "total": 4}})
    d.update({"op": "train", "state": "succeeded", "progress": {"done": 4, "total": 4}})
    d.close()
    text = out.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n") and text.count("\n") == 1
    assert "[" + "#" * 30 + "] 4/4 rounds, succeeded" in text


def test_progress_uses_tqdm_when_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    bars: List[Any] = []

    class FakeTqdm:
        def __init__(self, **kw: Any) -> None:
            self.total, self.n, self.closed, self.unit = kw.get("total"), 0, False, ""
            bars.append(self)

        def set_postfix_str(self, s: str, refresh: bool = True) -> None:
            self.postfix = s

        def refresh(self) -> None:
            pass

        def close(self) -> None:
            self.closed = True

    auto = types.ModuleType("tqdm.auto")
    auto.tqdm = FakeTqdm  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tqdm", types.ModuleType("tqdm"))
    monkeypatch.setitem(sys.modules, "tqdm.auto", auto)
    d = ProgressDisplay("job-1", stream=io.StringIO())
    d.update({"op": "train", "state": "running", "progress": {"done": 3, "total": 10}})
    d.close()
    assert (bars[0].n, bars[0].total, bars[0].postfix, bars[0].closed) == (3, 10, "running", True)


# -- models ------------------------------------------------------------------------


def test_pack_layout_and_round_trip(tmp_path: Path) -> None:
    folder = dense_model(tmp_path / "m", *small_weights())
    packed = pack_model(folder)
    assert packed[:8] == b"TMMODEL1"
    (hlen,) = struct.unpack_from("<I", packed, 8)
    header = json.loads(packed[12:12 + hlen])
    assert set(header) == {"modelTopology", "weightSpecs", "format", "generatedBy"}  # convertedBy null is left out, as the node does
    at = (12 + hlen + 3) & ~3
    assert packed[12 + hlen:at] == b"\0" * (at - 12 - hlen)
    assert packed[at:] == b"".join(np.asarray(t, "<f4").tobytes() for t in small_weights())
    # model.json path and folder pack the same; unpack -> write -> read gives the same model back.
    assert pack_model(folder / "model.json") == packed
    out = write_model_dir(tmp_path / "out", unpack_model(packed))
    doc = json.loads((out / "model.json").read_text())
    assert doc["weightsManifest"][0]["paths"] == ["weights.bin"]
    assert pack_model(read_model_dir(out)) == packed


@pytest.mark.parametrize("path", ["../outside.bin", "/etc/passwd", "a/../../b.bin", "sub/../w.bin", "..\\w.bin", "C:\\w.bin", ""])
def test_weight_paths_must_stay_inside(tmp_path: Path, path: str) -> None:
    folder = dense_model(tmp_path / "m", *small_weights(), split_files=False)
    doc = json.loads((folder / "model.json").read_text())
    doc["weightsManifest"][0]["paths"] = [path]
    (folder / "model.json").write_text(json.dumps(doc))
    with pytest.raises(TensormeshError) as e:
        pack_model(folder)
    assert e.value.code == "ERR_BAD_MODEL" and "inside the model's folder" in e.value.message


def test_unpack_refuses_bad_bytes(tmp_path: Path) -> None:
    packed = pack_model(dense_model(tmp_path / "m", *small_weights()))
    for bad in (b"NOTMODEL" + packed[8:], packed[:-4], packed + b"\0\0\0\0", packed[:10]):
        with pytest.raises(TensormeshError) as e:
            unpack_model(bad)
        assert e.value.code == "ERR_BAD_MODEL"


def test_model_weight_bytes_must_match_specs(tmp_path: Path) -> None:
    folder = dense_model(tmp_path / "m", *small_weights(), split_files=False)
    (folder / "weights.bin").write_bytes(b"\0" * 8)
    with pytest.raises(TensormeshError) as e:
        pack_model(folder)
    assert e.value.code == "ERR_BAD_MODEL" and "bytes" in e.value.message


def test_quantised_and_graph_models_pack_at_their_stored_width(tmp_path: Path) -> None:
    from tensormesh import model_format
    from tensormesh.model import stored_bytes

    packed = pack_model(quantised_model(tmp_path / "q"))
    a = unpack_model(packed)
    assert a.weight_data == b"".join(t.tobytes() for t in quantised_weights().values())
    assert [stored_bytes(s) for s in a.weight_specs] == [60, 20, 27, 6, 14, 5]
    assert [s.get("quantization", {}).get("dtype") for s in a.weight_specs] == [None, None, "uint8", "uint16", "float16", "uint8"]
    g = unpack_model(pack_model(graph_model(tmp_path / "g")))
    assert g.format == "graph-model" and g.converted_by == "TensorFlow.js Converter v1.7.4r1" and len(g.weight_data) == 12 + 6
    assert model_format(g.model_topology) == "graph-model" and model_format(a.model_topology) == "layers-model"
    # Written out without a format, a graph-model's model.json says graph-model (as the node's writeModelDir).
    g.format = None
    assert json.loads((write_model_dir(tmp_path / "gw", g) / "model.json").read_text())["format"] == "graph-model"
    with pytest.raises(TensormeshError) as e:
        model_format(g.model_topology, "saved-model")
    assert e.value.code == "ERR_UNSUPPORTED_MODEL"


@pytest.mark.parametrize("spec, code, says", [
    ({"name": "w", "shape": [2], "dtype": "int32", "quantization": {"dtype": "float16"}}, "ERR_BAD_MODEL", "float32 weights only"),
    ({"name": "w", "shape": [2], "dtype": "float32", "quantization": {"dtype": "uint8", "scale": 1}}, "ERR_BAD_MODEL", "scale and min"),
    ({"name": "w", "shape": [2], "dtype": "float32", "quantization": {"dtype": "uint8", "scale": True, "min": 0}}, "ERR_BAD_MODEL", "scale and min"),
    ({"name": "w", "shape": [2], "dtype": "float32", "quantization": {"dtype": "int8", "scale": 1, "min": 0}}, "ERR_BAD_DTYPE", "uint8, uint16, float16"),
    ({"name": "w", "shape": [2], "dtype": "float32", "quantization": {"dtype": "uint8", "scale": 1, "min": 0, "bits": 8}}, "ERR_BAD_MODEL", "'bits'"),
    ({"name": "w", "shape": [2], "dtype": "float32", "group": "opt"}, "ERR_BAD_MODEL", "'group'"),
    ({"name": "w", "shape": [2**26 + 1], "dtype": "float32", "quantization": {"dtype": "uint8", "scale": 1, "min": 0}}, "ERR_LIMIT_EXCEEDED", "as float32"),
])
def test_weight_specs_are_checked_as_the_node_checks_them(spec: Dict[str, Any], code: str, says: str) -> None:
    from tensormesh.model import check_weight_specs

    with pytest.raises(TensormeshError) as e:
        check_weight_specs([spec])
    assert e.value.code == code and says in e.value.message


def test_header_json_is_written_as_json_stringify_writes_it() -> None:
    from tensormesh.model import _js_dumps

    # Values checked against Node 22's JSON.stringify (tests/test_node_parity.py compares more against node itself).
    cases = {1.0: "1", -0.0: "0", 1e21: "1e+21", 1e20: "100000000000000000000", 1e-7: "1e-7", 1e-6: "0.000001", 1.5e-7: "1.5e-7",
             0.1 + 0.2: "0.30000000000000004", 5e-324: "5e-324", 123456789012345678901: "123456789012345680000", 2**53 + 1: "9007199254740992",
             10**400: "null", 1.7976931348623157e308: "1.7976931348623157e+308", -2.5e-10: "-2.5e-10", 100: "100", 3.0e15: "3000000000000000"}
    for value, text in cases.items():
        assert _js_dumps(value) == text, value
    assert _js_dumps({"b": 1, "10": 2, "2": 3, "01": 4, "4294967295": 5, "4294967294": 6}) == '{"2":3,"10":2,"4294967294":6,"b":1,"01":4,"4294967295":5}'
    assert _js_dumps(["\ud800", "\ud83d\ude00", "\u2028\x00\x7f", "\t\"\\/"]) == '["\\ud800","\U0001f600","\u2028\\u0000\x7f","\\t\\"\\\\/"]'
    with pytest.raises(ValueError):
        _js_dumps(float("nan"))


# -- following a job: a fake node's event stream ------------------------------------


class FakeNode:
    """Serves one job's record and event stream the way src/node/api.ts does (chunked SSE)."""

    def __init__(self, events: List[Dict[str, Any]], record: Dict[str, Any], hold_open: bool) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.release = threading.Event()
        self.streams = 0
        node = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path.endswith("/events"):
                    node.streams += 1
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for view in events:
                        data = f"event: job\ndata: {json.dumps(view)}\n\n".encode()
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                        self.wfile.flush()
                    if hold_open:
                        node.release.wait(timeout=30)  # a job that never changes again
                    self.wfile.write(b"0\r\n\r\n")
                    return
                body = json.dumps(record).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def view(state: str, **extra: Any) -> Dict[str, Any]:
    return {"id": "job-1", "op": "matmul", "state": state, "progress": {"done": 0, "total": 4}, **extra}


def test_wait_timeout_holds_while_the_stream_is_silent() -> None:
    import time

    node = FakeNode([view("running")], view("running"), hold_open=True)
    try:
        from tensormesh import Job

        job = Job(Mesh(node.url), view("queued"))
        t0 = time.monotonic()
        with pytest.raises(TensormeshError) as e:
            job.wait(timeout=0.3)
        assert e.value.code == "ERR_TIMEOUT" and "running" in e.value.message
        assert time.monotonic() - t0 < 10  # bounded by the timeout, not by the silent stream
    finally:
        node.close()


def test_wait_looks_again_when_the_stream_ends_early() -> None:
    failed = view("failed", error={"code": "ERR_VERIFY_FAILED", "message": "replicas disagree"})
    node = FakeNode([view("running")], failed, hold_open=False)
    try:
        from tensormesh import Job

        job = Job(Mesh(node.url), view("queued"))
        assert job.wait(timeout=30)["state"] == "failed"
        assert node.streams == 1
        with pytest.raises(TensormeshError) as e:
            job.result(timeout=30)
        assert e.value.code == "ERR_VERIFY_FAILED" and "replicas disagree" in e.value.message
    finally:
        node.close()
