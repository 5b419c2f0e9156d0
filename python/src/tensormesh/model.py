"""TF.js models as the mesh carries them, mirroring src/compute/model.ts.

Layers-models (``model.save()``, Keras JSON topology) and graph-models
(tensorflowjs_converter, ``format: "graph-model"``, a GraphDef with
``node``) alike; weights float32 or int32, or quantised by the converter to
uint8 / uint16 (``quantization: {dtype, scale, min}``, value = stored *
scale + min) or float16 (``quantization: {dtype: "float16"}``). Quantised
weights stay at their stored width here; TF.js dequantises when it loads.

A model travels packed into one blob (``blob.model`` of an infer job, the
answer of ``GET /v1/jobs/:id/model`` for a train job)::

    0   8 bytes  magic "TMMODEL1"
    8   uint32   header length H, little-endian
    12  H bytes  UTF-8 JSON {modelTopology, weightSpecs, format?, generatedBy?, convertedBy?}
    ..  0-3 zero bytes, so the weights start at a multiple of 4
    ..  weight bytes: each spec's tensor in spec order, C order, little-endian,
        4 bytes per element or its quantised width (1 for uint8, 2 for uint16 and float16)

On disk a model is what TF.js writes (``model.save('file://dir')``) or the
converter writes: ``model.json`` with ``modelTopology`` and
``weightsManifest`` ``[{paths, weights}]``, plus the weight files it lists.
The checks here are the node's (the same limits, the same refusals), so a
model that packs here is one the node accepts, and the error comes before
an upload rather than after it. The header JSON is written as the node's
``JSON.stringify`` writes it (number formatting, key order, escapes), so a
folder packs to the same bytes here and there, and so to the same CID.
"""

from __future__ import annotations

import json
import math
import os
import re
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
    "model_format",
    "stored_bytes",
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
#: Bytes per stored element of each quantised dtype (tfjs-core's DTYPE_VALUE_SIZE_MAP).
QUANTIZED_BYTES = {"uint8": 1, "uint16": 2, "float16": 2}
#: The two kinds of TF.js model the mesh runs.
MODEL_FORMATS = ("layers-model", "graph-model")

#: The weight file a written model folder holds, as tfjs-node names it.
WEIGHTS_FILE = "weights.bin"

PathLike = Union[str, "os.PathLike[str]"]


def _bad(what: str, code: str = "ERR_BAD_MODEL") -> TensormeshError:
    return TensormeshError(code, f"model: {what}")


@dataclass
class ModelArtifacts:
    """A TF.js model (layers or graph): topology JSON, weight specs and the weights' bytes in spec order.

    ``weight_data`` holds each weight at its stored width: 4 bytes per
    element, or 1 / 2 for a spec with ``quantization`` uint8 / uint16 and
    float16 (see :func:`stored_bytes`).
    """

    model_topology: Dict[str, Any]
    weight_specs: List[Dict[str, Any]]
    weight_data: bytes
    format: Optional[str] = None
    generated_by: Optional[str] = None
    converted_by: Optional[str] = None


# -- JSON as the node reads and writes it ----------------------------------------
#
# The node parses with JSON.parse and writes with JSON.stringify; the header
# bytes (and so a packed model's CID) depend on how numbers, keys and
# strings come out. _js_dumps writes what JSON.stringify writes for the value
# JSON.parse would have made of the same text, _js_loads reads what
# JSON.parse reads.

#: A key JS orders first, numerically (an array index: a canonical integer below 2**32 - 1).
_INDEX_KEY = re.compile(r"(?:0|[1-9][0-9]{0,9})\Z")
_MAX_INDEX = 2**32 - 2
_SURROGATE = re.compile("[\ud800-\udfff]")
_MAX_SAFE_INTEGER = 2**53 - 1


def _js_length(s: str) -> int:
    """A string's ``length`` in JS: UTF-16 code units."""
    return len(s) + sum(1 for c in s if ord(c) > 0xFFFF)


def _js_double(value: Any) -> Optional[float]:
    """A JSON number as the double JS holds for it (inf when it overflows); None for a non-number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _js_number(x: float) -> str:
    """Number::toString (ECMA-262 6.1.6.1.20): shortest round-trip digits, JS's choice of notation."""
    if x == 0:
        return "0"  # -0 too
    if x < 0:
        return "-" + _js_number(-x)
    mantissa, _, exp = repr(x).partition("e")  # repr: the shortest digits that round-trip, as JS's
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).lstrip("0")
    point = int(exp or 0) - len(frac)  # value = int(digits) * 10**point
    stripped = digits.rstrip("0")
    point += len(digits) - len(stripped)
    k, n = len(stripped), point + len(stripped)
    if k <= n <= 21:
        return stripped + "0" * (n - k)
    if 0 < n <= 21:
        return stripped[:n] + "." + stripped[n:]
    if -6 < n <= 0:
        return "0." + "0" * -n + stripped
    e = n - 1
    return stripped[0] + ("." + stripped[1:] if k > 1 else "") + "e" + ("+" if e >= 0 else "-") + str(abs(e))


def _js_string(s: str) -> str:
    """QuoteJSONString: json.dumps's escapes (the same set), lone surrogates as \\udXXX."""
    if not _SURROGATE.search(s):
        return json.dumps(s, ensure_ascii=False)
    # A pair given as two code points is one character in JS; what stays a surrogate is lone.
    s = s.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    return _SURROGATE.sub(lambda m: "\\u%04x" % ord(m.group(0)), json.dumps(s, ensure_ascii=False))


def _js_write(value: Any, out: List[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        if -_MAX_SAFE_INTEGER <= value <= _MAX_SAFE_INTEGER:
            out.append(str(value))
        else:  # JS holds it as the nearest double (and writes null for one past the doubles' range)
            x = _js_double(value)
            assert x is not None
            out.append(_js_number(x) if math.isfinite(x) else "null")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} is not a JSON number")
        out.append(_js_number(value))
    elif isinstance(value, str):
        out.append(_js_string(value))
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _js_write(item, out)
        out.append("]")
    elif isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise TypeError(f"object key {key!r} is not a string")
        # OrdinaryOwnPropertyKeys: array indices first, ascending, then the rest in insertion order.
        indices = sorted((k for k in value if _INDEX_KEY.match(k) and int(k) <= _MAX_INDEX), key=int)
        keys = indices + [k for k in value if not (_INDEX_KEY.match(k) and int(k) <= _MAX_INDEX)]
        out.append("{")
        for i, key in enumerate(keys):
            if i:
                out.append(",")
            out.append(_js_string(key))
            out.append(":")
            _js_write(value[key], out)
        out.append("}")
    else:
        raise TypeError(f"{type(value).__name__} is not JSON")


def _js_dumps(value: Any) -> str:
    """``JSON.stringify(value)``, for values JSON.parse could have made; TypeError/ValueError for others."""
    out: List[str] = []
    _js_write(value, out)
    return "".join(out)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _js_float(text: str) -> Optional[float]:
    x = float(text)
    # JSON.parse makes 1e400 Infinity, which JSON.stringify writes as null.
    return x if math.isfinite(x) else None


def _js_loads(text: str) -> Any:
    """``JSON.parse``: no NaN / Infinity; ValueError for anything it would refuse."""
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_js_float)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


# -- weight specs ----------------------------------------------------------------


def _show(value: Any) -> str:
    try:
        return _js_dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _check_string(value: Any, what: str, max_length: int = 256) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str) or _js_length(value) > max_length:
        raise _bad(f"{what} must be a string of at most {max_length} characters")
    return value


def _count(d: Any) -> Optional[int]:
    """A dimension as Number.isSafeInteger(d) && d >= 0 takes it (2.0 counts, as JSON.parse makes it 2); else None."""
    if isinstance(d, bool):
        return None
    if isinstance(d, int):
        return d if 0 <= d <= _MAX_SAFE_INTEGER else None
    if isinstance(d, float) and d.is_integer() and 0 <= d <= _MAX_SAFE_INTEGER:
        return int(d)
    return None


def _check_quantization(q: Any, dtype: str, what: str) -> Dict[str, Any]:
    if not isinstance(q, dict):
        raise _bad(f"{what}.quantization must be {{dtype, scale?, min?}}")
    # original_dtype: written by some converter versions; the spec's own dtype says the same.
    for key in q:
        if key not in ("dtype", "scale", "min", "original_dtype"):
            raise _bad(f"{what}.quantization has key '{key}'; allowed: dtype, scale, min")
    qd = q.get("dtype")
    if qd in ("uint8", "uint16"):
        scale, lo = _js_double(q.get("scale")), _js_double(q.get("min"))
        if scale is None or not math.isfinite(scale) or lo is None or not math.isfinite(lo):
            raise _bad(f"{what} is {qd}-quantised and needs finite numbers scale and min")
        return {"dtype": qd, "scale": q["scale"], "min": q["min"]}
    if qd == "float16":
        if dtype != "float32":
            raise _bad(f"{what} is a {dtype} weight; float16 quantisation applies to float32 weights only")
        return {"dtype": "float16"}
    shown = _show(qd) if "dtype" in q else "undefined"
    raise _bad(f"{what}.quantization.dtype is {shown}; allowed: uint8, uint16, float16", "ERR_BAD_DTYPE")


def _elements(shape: List[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def stored_bytes(spec: Dict[str, Any]) -> int:
    """Bytes one (checked) spec's weight takes in the packed data: 4 per element, or its quantised width."""
    q = spec.get("quantization")
    return _elements(spec["shape"]) * (_ITEM_BYTES if q is None else QUANTIZED_BYTES[q["dtype"]])


def check_weight_specs(specs: Any) -> Tuple[List[Dict[str, Any]], int]:
    """Weight specs checked one by one, as the node checks them; returns them and the bytes they take packed.

    Quantised weights count at their stored width; the limit
    (MAX_MODEL_WEIGHT_BYTES) applies to the weights as TF.js holds them
    once dequantised, 4 bytes per element, as on the node.
    """
    if not isinstance(specs, list):
        raise _bad("weightSpecs must be a list")
    if len(specs) > MAX_MODEL_WEIGHTS:
        raise _bad(f"{len(specs)} weight specs; at most {MAX_MODEL_WEIGHTS} are allowed", "ERR_LIMIT_EXCEEDED")
    total = 0
    decoded = 0
    out: List[Dict[str, Any]] = []
    for i, s in enumerate(specs):
        if not isinstance(s, dict):
            raise _bad(f"weightSpecs[{i}] is not an object")
        for key in s:
            # 'group' (optimizer weights) and anything newer change how bytes map to values: refuse rather than misread.
            if key not in ("name", "shape", "dtype", "quantization"):
                raise _bad(f"weightSpecs[{i}] has key '{key}'; allowed: name, shape, dtype, quantization")
        name, shape, dtype = s.get("name"), s.get("shape"), s.get("dtype")
        if not isinstance(name, str) or not name or _js_length(name) > MAX_WEIGHT_NAME_LENGTH:
            raise _bad(f"weightSpecs[{i}].name must be a non-empty string of at most {MAX_WEIGHT_NAME_LENGTH} characters")
        if not isinstance(dtype, str) or dtype not in MODEL_WEIGHT_DTYPES:
            shown = _show(dtype) if "dtype" in s else "undefined"
            raise _bad(f"weightSpecs[{i}] ({name}) has dtype {shown}; allowed: {', '.join(MODEL_WEIGHT_DTYPES)}", "ERR_BAD_DTYPE")
        dims = [_count(d) for d in shape] if isinstance(shape, list) else None
        if dims is None or len(dims) > MAX_WEIGHT_RANK or any(d is None for d in dims):
            raise _bad(f"weightSpecs[{i}] ({name}) shape must be a list of at most {MAX_WEIGHT_RANK} non-negative integers")
        spec: Dict[str, Any] = {"name": name, "shape": dims, "dtype": dtype}
        if "quantization" in s:
            spec["quantization"] = _check_quantization(s["quantization"], dtype, f"weightSpecs[{i}] ({name})")
        total += stored_bytes(spec)
        decoded += _elements(dims) * _ITEM_BYTES
        if decoded > MAX_MODEL_WEIGHT_BYTES:
            raise _bad(f"weights need more than {MAX_MODEL_WEIGHT_BYTES} bytes as float32 (at weightSpecs[{i}])", "ERR_LIMIT_EXCEEDED")
        out.append(spec)
    return out, total


def model_format(topology: Dict[str, Any], format: Optional[str] = None) -> str:
    """Which kind of model a topology is, as the node decides: ``format`` when it names one, else its shape.

    A GraphDef has ``node``; Keras JSON has ``class_name`` or ``model_config``.
    Raises ``ERR_UNSUPPORTED_MODEL`` for any other non-empty ``format``.
    """
    if format in MODEL_FORMATS:
        return format  # type: ignore[return-value]
    if format is not None and format != "":
        raise TensormeshError("ERR_UNSUPPORTED_MODEL", f"model: format '{format}' is not supported; allowed: {', '.join(MODEL_FORMATS)}")
    graph = isinstance(topology.get("node"), list) and "class_name" not in topology and "model_config" not in topology
    return "graph-model" if graph else "layers-model"


def _check_topology(t: Any) -> Dict[str, Any]:
    if not isinstance(t, dict):
        raise _bad("modelTopology must be a JSON object (a layers-model's Keras JSON or a graph-model's GraphDef)")
    return t


def _align4(n: int) -> int:
    return (n + 3) & ~3


def pack_model(model: Union[ModelArtifacts, PathLike]) -> bytes:
    """Packs artifacts, or the model folder / ``model.json`` at a path, into the mesh's blob format.

    Validates as the node's ``unpackModel`` would, so a packed model always
    unpacks there, and writes the bytes the node's ``packModel`` writes for
    the same model.
    """
    a = model if isinstance(model, ModelArtifacts) else read_model_dir(model)
    topology = _check_topology(a.model_topology)
    specs, need = check_weight_specs(a.weight_specs)
    weights = memoryview(a.weight_data).cast("B")
    if weights.nbytes != need:
        raise _bad(f"weightSpecs describe {need} bytes but weightData has {weights.nbytes}")
    header: Dict[str, Any] = {"modelTopology": topology, "weightSpecs": specs}
    for key, value in (("format", a.format), ("generatedBy", a.generated_by), ("convertedBy", a.converted_by)):
        checked = _check_string(value, key)
        if checked is not None:
            header[key] = checked
    try:
        text = _js_dumps(header).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as err:
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
        # utf-8-sig: the node's TextDecoder drops a leading BOM too.
        header = _js_loads(bytes(view[_PREAMBLE:_PREAMBLE + length]).decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError):
        raise _bad("header is not UTF-8 JSON") from None
    if not isinstance(header, dict):
        raise _bad("header is not a JSON object")
    for key in header:
        if key not in ("modelTopology", "weightSpecs", "format", "generatedBy", "convertedBy"):
            raise _bad(f"header has unknown key '{key}'")
    topology = _check_topology(header.get("modelTopology"))
    specs, need = check_weight_specs(header.get("weightSpecs"))
    at = _align4(_PREAMBLE + length)
    if view.nbytes != at + need:
        raise _bad(f"weightSpecs describe {need} weight bytes but {view.nbytes - at} follow the header")
    strings: Dict[str, Optional[str]] = {}
    for key in ("format", "generatedBy", "convertedBy"):
        if key in header and header[key] is None:
            raise _bad(f"{key} must be a string of at most 256 characters")  # null is not absent to the node
        strings[key] = _check_string(header.get(key), key)
    return ModelArtifacts(
        model_topology=topology,
        weight_specs=specs,
        weight_data=bytes(view[at:]),
        format=strings["format"],
        generated_by=strings["generatedBy"],
        converted_by=strings["convertedBy"],
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
    """Reads a model as TF.js or tensorflowjs_converter writes it: a folder with ``model.json``, or that file's path.

    Layers-models and graph-models alike, weights float32 / int32 or
    quantised (kept at their stored width). Weight files are read in
    manifest order and concatenated; a path that is absolute or contains
    ``..`` is refused (the node's reader refuses absolute paths and those
    whose normalised form leaves the folder).
    """
    json_path = _model_json_path(path)
    try:
        size = json_path.stat().st_size
    except OSError as err:
        raise _bad(f"cannot read {json_path}: {err.strerror or err}", "ERR_MODEL_FILE") from None
    if size > MAX_MODEL_HEADER_BYTES:
        raise _bad(f"{json_path} is {size} bytes; the limit is {MAX_MODEL_HEADER_BYTES}", "ERR_LIMIT_EXCEEDED")
    try:
        # errors="replace": what Node's readFile(path, 'utf8') makes of bytes that are not UTF-8.
        doc = _js_loads(json_path.read_bytes().decode("utf-8", errors="replace"))
    except (OSError, ValueError) as err:
        raise _bad(f"{json_path} is not JSON: {err}") from None
    if not isinstance(doc, dict):
        raise _bad(f"{json_path} is not a JSON object")
    manifest = doc.get("weightsManifest")
    if manifest is None:
        manifest = []
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

    ``tf.loadLayersModel('file://DIR/model.json')`` (``tf.loadGraphModel``
    for a graph-model) and :func:`read_model_dir` read it back; the bytes are
    those the node's ``writeModelDir`` writes. Each file goes to a temporary name first and is renamed,
    so a reader never sees half a model. Returns the folder.
    """
    a = unpack_model(model) if not isinstance(model, ModelArtifacts) else unpack_model(pack_model(model))
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    doc = {
        "modelTopology": a.model_topology,
        "format": a.format if a.format is not None else model_format(a.model_topology),
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
    tmp.write_bytes(_js_dumps(doc).encode("utf-8"))
    os.replace(tmp, json_path)
    return folder


def unpack_model_to_dir(data: Union[bytes, bytearray, memoryview], out_dir: PathLike) -> Path:
    """A packed model (a train job's answer) written out as a TF.js model folder; returns the folder."""
    return write_model_dir(out_dir, unpack_model(data))
