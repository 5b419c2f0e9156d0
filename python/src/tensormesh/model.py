"""TF.js Layers models as the mesh carries them, mirroring src/compute/model.ts.

A model travels packed into one blob (``blob.model`` of an infer job, the
answer of ``GET /v1/jobs/:id/model`` for a train job)::

    0   8 bytes  magic "TMMODEL1"
    8   uint32   header length H, little-endian
    12  H bytes  UTF-8 JSON {modelTopology, weightSpecs, format?, generatedBy?, convertedBy?}
    ..  0-3 zero bytes, so the weights start at a multiple of 4
    ..  weight bytes: each spec's tensor in spec order, C order, little-endian

On disk a model is what TF.js writes (``model.save('file://dir')``):
``model.json`` with ``modelTopology`` and ``weightsManifest``
``[{paths, weights}]``, plus the weight files it lists. The checks here are
the node's (the same limits, the same refusals), so a model that packs here
is one the node accepts, and the error comes before an upload rather than
after it.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Dict, List, Optional, Tuple, Union

from .errors import TensormeshError

__all__ = [
    "ModelArtifacts",
    "pack_model",
    "unpack_model",
    "read_model_dir",
    "write_model_dir",
    "unpack_model_to_dir",
    "MODEL_MAGIC",
]

MODEL_MAGIC = b"TMMODEL1"
_PREAMBLE = len(MODEL_MAGIC) + 4

#: Limits of src/compute/model.ts, kept equal so both sides agree.
MAX_MODEL_HEADER_BYTES = 4 * 1024 * 1024
MAX_MODEL_WEIGHT_BYTES = 256 * 1024 * 1024
MAX_MODEL_WEIGHTS = 8192
MAX_WEIGHT_NAME_LENGTH = 512
MAX_WEIGHT_RANK = 8
MAX_WEIGHT_FILES = 1024
MODEL_WEIGHT_DTYPES = ("float32", "int32")
_ITEM_BYTES = 4

#: The weight file a written model folder holds, as tfjs-node names it.
WEIGHTS_FILE = "weights.bin"

PathLike = Union[str, "os.PathLike[str]"]


def _bad(what: str, code: str = "ERR_BAD_MODEL") -> TensormeshError:
    return TensormeshError(code, f"model: {what}")


@dataclass
class ModelArtifacts:
    """A Layers model: topology JSON, weight specs and the weights' bytes in spec order."""

    model_topology: Dict[str, Any]
    weight_specs: List[Dict[str, Any]]
    weight_data: bytes
    format: Optional[str] = None
    generated_by: Optional[str] = None
    converted_by: Optional[str] = None


def _check_string(value: Any, what: str, max_length: int = 256) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_length:
        raise _bad(f"{what} must be a string of at most {max_length} characters")
    return value


def _is_count(d: Any) -> bool:
    return isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 2**53 - 1


def check_weight_specs(specs: Any) -> Tuple[List[Dict[str, Any]], int]:
    """Weight specs checked one by one, as the node checks them; returns them and the bytes they need."""
    if not isinstance(specs, list):
        raise _bad("weightSpecs must be a list")
    if len(specs) > MAX_MODEL_WEIGHTS:
        raise _bad(f"{len(specs)} weight specs; at most {MAX_MODEL_WEIGHTS} are allowed", "ERR_LIMIT_EXCEEDED")
    total = 0
    out: List[Dict[str, Any]] = []
    for i, s in enumerate(specs):
        if not isinstance(s, dict):
            raise _bad(f"weightSpecs[{i}] is not an object")
        for key in s:
            # quantization and group change how bytes map to values: refuse rather than misread.
            if key not in ("name", "shape", "dtype"):
                raise _bad(f"weightSpecs[{i}] has key '{key}'; allowed: name, shape, dtype (no quantized weights)")
        name, shape, dtype = s.get("name"), s.get("shape"), s.get("dtype")
        if not isinstance(name, str) or not name or len(name) > MAX_WEIGHT_NAME_LENGTH:
            raise _bad(f"weightSpecs[{i}].name must be a non-empty string of at most {MAX_WEIGHT_NAME_LENGTH} characters")
        if dtype not in MODEL_WEIGHT_DTYPES:
            raise _bad(f"weightSpecs[{i}] ({name}) has dtype {json.dumps(dtype)}; allowed: {', '.join(MODEL_WEIGHT_DTYPES)}", "ERR_BAD_DTYPE")
        if not isinstance(shape, list) or len(shape) > MAX_WEIGHT_RANK or not all(_is_count(d) for d in shape):
            raise _bad(f"weightSpecs[{i}] ({name}) shape must be a list of at most {MAX_WEIGHT_RANK} non-negative integers")
        n = 1
        for d in shape:
            n *= d
        total += n * _ITEM_BYTES
        if total > MAX_MODEL_WEIGHT_BYTES:
            raise _bad(f"weights need more than {MAX_MODEL_WEIGHT_BYTES} bytes (at weightSpecs[{i}])", "ERR_LIMIT_EXCEEDED")
        out.append({"name": name, "shape": list(shape), "dtype": dtype})
    return out, total


def _align4(n: int) -> int:
    return (n + 3) & ~3


def pack_model(model: Union[ModelArtifacts, PathLike]) -> bytes:
    """Packs artifacts, or the model folder / ``model.json`` at a path, into the mesh's blob format.

    Validates as the node's ``unpackModel`` would, so a packed model always unpacks there.
    """
    a = model if isinstance(model, ModelArtifacts) else read_model_dir(model)
    if not isinstance(a.model_topology, dict):
        raise _bad("modelTopology must be a JSON object (a Layers model; graph models are not supported)")
    specs, need = check_weight_specs(a.weight_specs)
    weights = memoryview(a.weight_data).cast("B")
    if weights.nbytes != need:
        raise _bad(f"weightSpecs describe {need} bytes but weightData has {weights.nbytes}")
    header: Dict[str, Any] = {"modelTopology": a.model_topology, "weightSpecs": specs}
    for key, value in (("format", a.format), ("generatedBy", a.generated_by), ("convertedBy", a.converted_by)):
        checked = _check_string(value, key)
        if checked is not None:
            header[key] = checked
    try:
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as err:
        raise _bad(f"modelTopology is not plain JSON: {err}") from None
    if len(text) > MAX_MODEL_HEADER_BYTES:
        raise _bad(f"header is {len(text)} bytes; the limit is {MAX_MODEL_HEADER_BYTES}", "ERR_LIMIT_EXCEEDED")
    pad = _align4(_PREAMBLE + len(text)) - _PREAMBLE - len(text)
    return b"".join([MODEL_MAGIC, struct.pack("<I", len(text)), text, b"\0" * pad, weights])


def unpack_model(data: Union[bytes, bytearray, memoryview]) -> ModelArtifacts:
    """Packed bytes back to artifacts; every length is checked before it is used."""
    view = memoryview(data).cast("B")
    if view.nbytes < _PREAMBLE or bytes(view[: len(MODEL_MAGIC)]) != MODEL_MAGIC:
        raise _bad(f"not a packed model (no {MODEL_MAGIC.decode()!r} magic)")
    (length,) = struct.unpack_from("<I", view, len(MODEL_MAGIC))
    if length > MAX_MODEL_HEADER_BYTES:
        raise _bad(f"header declares {length} bytes; the limit is {MAX_MODEL_HEADER_BYTES}", "ERR_LIMIT_EXCEEDED")
    if _PREAMBLE + length > view.nbytes:
        raise _bad(f"header declares {length} bytes but only {view.nbytes - _PREAMBLE} follow")
    try:
        header = json.loads(bytes(view[_PREAMBLE:_PREAMBLE + length]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _bad("header is not UTF-8 JSON") from None
    if not isinstance(header, dict):
        raise _bad("header is not a JSON object")
    for key in header:
        if key not in ("modelTopology", "weightSpecs", "format", "generatedBy", "convertedBy"):
            raise _bad(f"header has unknown key '{key}'")
    if not isinstance(header.get("modelTopology"), dict):
        raise _bad("modelTopology must be a JSON object (a Layers model; graph models are not supported)")
    specs, need = check_weight_specs(header.get("weightSpecs"))
    at = _align4(_PREAMBLE + length)
    if view.nbytes != at + need:
        raise _bad(f"weightSpecs describe {need} weight bytes but {view.nbytes - at} follow the header")
    return ModelArtifacts(
        model_topology=header["modelTopology"],
        weight_specs=specs,
        weight_data=bytes(view[at:]),
        format=_check_string(header.get("format"), "format"),
        generated_by=_check_string(header.get("generatedBy"), "generatedBy"),
        converted_by=_check_string(header.get("convertedBy"), "convertedBy"),
    )


def _safe_relative(p: Any) -> bool:
    """A weight path that stays inside the model's folder: relative, and no '..' anywhere in it."""
    if not isinstance(p, str) or p == "" or "\0" in p:
        return False
    if PurePosixPath(p).is_absolute() or PureWindowsPath(p).is_absolute() or PureWindowsPath(p).drive or p.startswith(("/", "\\")):
        return False
    parts = p.replace("\\", "/").split("/")
    return ".." not in parts


def _model_json_path(path: PathLike) -> Path:
    p = Path(path)
    return p / "model.json" if p.is_dir() else p


def read_model_dir(path: PathLike) -> ModelArtifacts:
    """Reads a Layers model as TF.js writes it: a folder with ``model.json``, or that file's path.

    Weight files are read in manifest order and concatenated; a path that
    is absolute or contains ``..`` is refused, as the node's reader does.
    """
    json_path = _model_json_path(path)
    try:
        size = json_path.stat().st_size
    except OSError as err:
        raise _bad(f"cannot read {json_path}: {err.strerror or err}", "ERR_MODEL_FILE") from None
    if size > MAX_MODEL_HEADER_BYTES:
        raise _bad(f"{json_path} is {size} bytes; the limit is {MAX_MODEL_HEADER_BYTES}", "ERR_LIMIT_EXCEEDED")
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise _bad(f"{json_path} is not JSON: {err}") from None
    if not isinstance(doc, dict):
        raise _bad(f"{json_path} is not a JSON object")
    manifest = doc.get("weightsManifest", [])
    if not isinstance(manifest, list):
        raise _bad(f"{json_path}: weightsManifest must be a list")
    specs: List[Any] = []
    paths: List[str] = []
    for i, group in enumerate(manifest):
        if not isinstance(group, dict) or not isinstance(group.get("paths"), list) or not isinstance(group.get("weights"), list):
            raise _bad(f"{json_path}: weightsManifest[{i}] must be {{paths: [...], weights: [...]}}")
        for p in group["paths"]:
            if not _safe_relative(p):
                raise _bad(f"{json_path}: weight path {json.dumps(p)} must be a relative path inside the model's folder")
            paths.append(p)
        specs.extend(group["weights"])
    if len(paths) > MAX_WEIGHT_FILES:
        raise _bad(f"{len(paths)} weight files; at most {MAX_WEIGHT_FILES}", "ERR_LIMIT_EXCEEDED")
    checked, need = check_weight_specs(specs)
    weights = bytearray(need)
    at = 0
    folder = json_path.parent
    for p in paths:
        file = folder / p
        try:
            fsize = file.stat().st_size
            if at + fsize > need:
                raise _bad(f"weight files hold more than the {need} bytes the specs describe (at {p})")
            with open(file, "rb") as fh:
                got = fh.readinto(memoryview(weights)[at:at + fsize])
        except OSError as err:
            raise _bad(f"cannot read weight file {file}: {err.strerror or err}", "ERR_MODEL_FILE") from None
        at += got or 0
    if at != need:
        raise _bad(f"weight files hold {at} bytes but the specs describe {need}")
    artifacts = ModelArtifacts(
        model_topology=doc.get("modelTopology"),  # type: ignore[arg-type]
        weight_specs=checked,
        weight_data=bytes(weights),
        format=doc["format"] if isinstance(doc.get("format"), str) else None,
        generated_by=doc["generatedBy"] if isinstance(doc.get("generatedBy"), str) else None,
        converted_by=doc["convertedBy"] if isinstance(doc.get("convertedBy"), str) else None,
    )
    # The rest (topology, strings) is checked by a pack round trip, as the node does.
    return unpack_model(pack_model(artifacts))


def write_model_dir(out_dir: PathLike, model: Union[ModelArtifacts, bytes, bytearray, memoryview]) -> Path:
    """Writes ``model.json`` + ``weights.bin`` into ``out_dir`` the way TF.js writes a model.

    ``tf.loadLayersModel('file://DIR/model.json')`` and :func:`read_model_dir`
    read it back. Each file goes to a temporary name first and is renamed,
    so a reader never sees half a model. Returns the folder.
    """
    a = unpack_model(model) if not isinstance(model, ModelArtifacts) else unpack_model(pack_model(model))
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    doc = {
        "modelTopology": a.model_topology,
        "format": a.format if a.format is not None else "layers-model",
        "generatedBy": a.generated_by if a.generated_by is not None else "tensormesh",
        "convertedBy": a.converted_by,
        "weightsManifest": [{"paths": [WEIGHTS_FILE], "weights": a.weight_specs}],
    }
    weights_path = folder / WEIGHTS_FILE
    json_path = folder / "model.json"
    tmp = folder / (WEIGHTS_FILE + ".tmp")
    tmp.write_bytes(a.weight_data)
    os.replace(tmp, weights_path)
    tmp = folder / "model.json.tmp"
    tmp.write_text(json.dumps(doc, separators=(",", ":"), ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, json_path)
    return folder


def unpack_model_to_dir(data: Union[bytes, bytearray, memoryview], out_dir: PathLike) -> Path:
    """A packed model (a train job's answer) written out as a TF.js model folder; returns the folder."""
    return write_model_dir(out_dir, unpack_model(data))
