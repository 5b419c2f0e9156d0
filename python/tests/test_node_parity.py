"""The Python client against the node's own code, without a testnet.

Needs the project's Node 22 (node_modules/.bin/node: `npm ci`). Models:
one `node` process packs every model folder with src/compute/model.ts
(readModelDir + packModel) and writes them back out with writeModelDir,
and the Python side must produce the same bytes, or refuse what the node
refuses with the same code and message. `npm run examples:models` adds the
two real nsfwjs models (a uint8-quantised layers-model and a graph-model)
when they are there. Jobs: the node's POST /v1/jobs reader
(src/node/api/job-request.ts) reads the body `Mesh.submit` builds, input
references included.
"""

from __future__ import annotations

import json
import math
import struct
import subprocess
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest

from conftest import ROOT, Recorder, _node_binary
from helpers import ODD_JSON, dense_model, graph_model, quantised_model, quantised_weights, small_weights, write_model_json
from tensormesh import CidRef, Job, JobRef, Mesh, TensormeshError, pack_model, read_model_dir, unpack_model, write_model_dir
from tensormesh.model import _js_dumps

#: Packs each folder as the node does; writes PACKED, or the error's code and message as ERR; then writeModelDir's files.
NODE_SCRIPT = r"""
import { pathToFileURL } from 'node:url'
import { readFile, writeFile } from 'node:fs/promises'
const [modelTs, jobsFile] = process.argv.slice(2)
const { packModel, readModelDir, unpackModel, writeModelDir } = await import(pathToFileURL(modelTs).href)
const jobs = JSON.parse(await readFile(jobsFile, 'utf8'))
for (const job of jobs) {
  let packed
  try {
    packed = packModel(await readModelDir(job.json))
  } catch (err) {
    await writeFile(job.err, JSON.stringify({ code: err.code, message: err.message }))
    continue
  }
  await writeFile(job.packed, packed)
  await writeModelDir(job.written, unpackModel(packed))
}
const numbers = JSON.parse(await readFile(jobsFile + '.numbers', 'utf8'))
await writeFile(jobsFile + '.stringified', JSON.stringify(numbers))
"""

EXAMPLES = ROOT / "examples" / "models"


def bad_quantised(folder: Path, change: Any) -> Path:
    """quantised_model with its model.json's specs changed by ``change(specs)``."""
    quantised_model(folder, odd=False)
    doc = json.loads((folder / "model.json").read_text())
    specs = doc["weightsManifest"][0]["weights"] + doc["weightsManifest"][1]["weights"]
    change(specs)
    write_model_json(folder, doc)
    return folder


BAD: Dict[str, Any] = {
    "float16-int32": lambda s: s[1].update(quantization={"dtype": "float16"}),
    "unknown-quantization-key": lambda s: s[2]["quantization"].update(bits=8),
    "uint8-without-scale": lambda s: s[2]["quantization"].pop("scale"),
    "quantization-null": lambda s: s[2].update(quantization=None),
    "int8-quantization": lambda s: s[2]["quantization"].update(dtype="int8"),
    "bool-weight": lambda s: s[0].update(dtype="bool"),
    "group-key": lambda s: s[0].update(group="optimizer"),
    "fractional-dim": lambda s: s[0].update(shape=[3, 5.5]),
}


@pytest.fixture(scope="module")
def node_side(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    node = _node_binary()
    root = tmp_path_factory.mktemp("parity")
    folders: Dict[str, Path] = {
        "dense": dense_model(root / "dense", *small_weights()),
        "quantised": quantised_model(root / "quantised"),
        "graph": graph_model(root / "graph"),
    }
    for name in ("mobilenet-v2", "mobilenet-v2-graph"):
        if (EXAMPLES / name / "model.json").exists():
            folders[name] = EXAMPLES / name
    for name, change in BAD.items():
        folders["bad-" + name] = bad_quantised(root / ("bad-" + name), change)
    out = root / "out"
    out.mkdir()
    jobs = [{"name": n, "json": str(f / "model.json"), "packed": str(out / f"{n}.bin"), "err": str(out / f"{n}.err"), "written": str(out / f"{n}-written")}
            for n, f in folders.items()]
    (out / "jobs.json").write_text(json.dumps(jobs))
    rng = np.random.default_rng(3)
    numbers = [float(x) for x in rng.normal(size=500) * 10.0 ** rng.integers(-30, 30, size=500)]
    numbers += [float(x) for x in rng.random(200)] + [float(np.float32(x)) for x in rng.normal(size=200)]
    numbers += [1e21, 1e-7, 1e-6, 123e-20, 2**53, 2**53 + 2, 0.1 + 0.2, 5e-324, 2.2250738585072014e-308]
    (out / "jobs.json.numbers").write_text(json.dumps(numbers))
    script = root / "pack.mjs"
    script.write_text(NODE_SCRIPT)
    run = subprocess.run([node, str(script), str(ROOT / "src" / "compute" / "model.ts"), str(out / "jobs.json")],
                         cwd=str(ROOT), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-4000:]
    return {"folders": folders, "jobs": {j["name"]: j for j in jobs}, "numbers": numbers, "stringified": (out / "jobs.json.stringified").read_text()}


GOOD = ["dense", "quantised", "graph", "mobilenet-v2", "mobilenet-v2-graph"]


@pytest.mark.parametrize("name", GOOD)
def test_packs_as_the_node_packs(node_side: Dict[str, Any], name: str, tmp_path: Path) -> None:
    if name not in node_side["folders"]:
        pytest.skip(f"examples/models/{name} is missing: run `npm run examples:models`")
    job = node_side["jobs"][name]
    assert not Path(job["err"]).exists(), Path(job["err"]).read_text() if Path(job["err"]).exists() else ""
    theirs = Path(job["packed"]).read_bytes()
    ours = pack_model(node_side["folders"][name])
    assert len(ours) == len(theirs)
    assert ours == theirs
    # Unpacked and packed again, and written out as a folder: still the node's bytes.
    assert pack_model(unpack_model(ours)) == theirs
    written = write_model_dir(tmp_path / "w", unpack_model(ours))
    for file in ("model.json", "weights.bin"):
        assert (written / file).read_bytes() == (Path(job["written"]) / file).read_bytes(), file
    assert read_model_dir(written).weight_data == unpack_model(theirs).weight_data


@pytest.mark.parametrize("name", sorted(BAD))
def test_refuses_what_the_node_refuses(node_side: Dict[str, Any], name: str) -> None:
    job = node_side["jobs"]["bad-" + name]
    theirs = json.loads(Path(job["err"]).read_text())
    with pytest.raises(TensormeshError) as e:
        pack_model(node_side["folders"]["bad-" + name])
    assert (e.value.code, e.value.message) == (theirs["code"], theirs["message"])


def test_numbers_are_written_as_json_stringify_writes_them(node_side: Dict[str, Any]) -> None:
    assert _js_dumps(node_side["numbers"]) == node_side["stringified"]


def test_quantised_weights_keep_their_stored_width(node_side: Dict[str, Any]) -> None:
    packed = pack_model(node_side["folders"]["quantised"])
    (hlen,) = struct.unpack_from("<I", packed, 8)
    header = json.loads(packed[12:12 + hlen])
    at = (12 + hlen + 3) & ~3
    assert packed[at:] == b"".join(t.tobytes() for t in quantised_weights().values())
    specs = header["weightSpecs"]
    # Normalised as the node does: quantization {dtype, scale, min} (original_dtype dropped), {dtype} for float16.
    assert specs[2]["quantization"] == {"dtype": "uint8", "scale": 0.006666756611244351, "min": -0.87334511607301}
    assert list(specs[2]["quantization"]) == ["dtype", "scale", "min"]
    assert specs[4]["quantization"] == {"dtype": "float16"} and specs[1]["shape"] == [5]
    odd = header["modelTopology"]["odd"]
    assert list(odd)[:4] == ["2", "10", "4294967294", "b"]  # array indices first, as JS orders keys
    assert odd["numbers"][17:19] == [None, None] and odd["strings"][3] == "\ud800"
    assert json.loads(ODD_JSON, parse_constant=lambda c: math.nan)["dup"] == odd["dup"] == 2


#: Reads a recorded POST /v1/jobs body with the node's readJobRequest; prints what it made of it as JSON.
REQUEST_SCRIPT = r"""
import { pathToFileURL } from 'node:url'
import { readFileSync } from 'node:fs'
import { Readable } from 'node:stream'
const [jobRequestTs, bodyFile, contentType] = process.argv.slice(2)
const { readJobRequest } = await import(pathToFileURL(jobRequestTs).href)
const body = readFileSync(bodyFile)
const req = Readable.from([body])
req.headers = { 'content-type': contentType, 'content-length': String(body.byteLength) }
const refs = []
const spec = await readJobRequest(req, 1 << 30, async () => { throw new Error('no blobs here') }, async (name, ref) => {
  refs.push([name, ref])
  return { dtype: 'float32', shape: [1], data: new Float32Array(1) }
})
const inputs = Object.fromEntries(Object.entries(spec.inputs).map(([k, t]) => [k, { dtype: t.dtype, shape: t.shape, data: Array.from(t.data) }]))
console.log(JSON.stringify({ op: spec.op, params: spec.params, refs, inputs }))
"""


def test_the_node_reads_references_as_the_client_sends_them(recorder: Recorder, tmp_path: Path) -> None:
    node = _node_binary()
    recorder.body = json.dumps({"id": "j3", "op": "matmul", "state": "queued"}).encode()
    mesh = Mesh(recorder.url)
    earlier = Job(mesh, {"id": "j1", "op": "map", "state": "succeeded"})
    cid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    b = np.arange(6, dtype=np.float32).reshape(3, 2)
    mesh.submit("matmul", {"a": earlier, "b": b, "c": JobRef("j0"), "d": CidRef(cid), "e": {"cid": cid}}, {"k": 2})
    req = recorder.requests[-1]
    (tmp_path / "body.bin").write_bytes(req["body"])
    (tmp_path / "read.mjs").write_text(REQUEST_SCRIPT)
    run = subprocess.run([node, str(tmp_path / "read.mjs"), str(ROOT / "src" / "node" / "api" / "job-request.ts"), str(tmp_path / "body.bin"), req["headers"]["Content-Type"]],
                         cwd=str(ROOT), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-4000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["op"] == "matmul" and got["params"] == {"k": 2}
    assert got["refs"] == [["a", {"job": "j1"}], ["c", {"job": "j0"}], ["d", {"cid": cid}], ["e", {"cid": cid}]]
    assert sorted(got["inputs"]) == ["a", "b", "c", "d", "e"]
    assert got["inputs"]["b"] == {"dtype": "float32", "shape": [3, 2], "data": b.ravel().tolist()}
