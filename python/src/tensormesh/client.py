"""The client: :class:`Mesh` talks to one node's HTTP API, :class:`Job` follows one job.

The node that receives a job coordinates it; this client only ever talks to
that node (src/node/api.ts). Every call is a plain HTTP request except
:meth:`Job.wait`, which follows the job's server-sent event stream, so a
waiting client costs the node one idle connection, not a poll a second.
"""

from __future__ import annotations

import json
import os
import re
import time
from contextlib import closing
from pathlib import Path
from types import TracebackType
from typing import Any, Dict, Generator, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Type, Union

import numpy as np
import requests
import urllib3

from .arrays import MultipartBody, check_input_name, prepare_array, read_npy_into
from .errors import TensormeshError
from .model import ModelArtifacts, pack_model, unpack_model_to_dir
from .progress import ProgressDisplay

__all__ = ["Mesh", "Job", "JobRef", "CidRef", "Progress", "TopK", "resolve_token", "TERMINAL_STATES"]

JobView = Dict[str, Any]
PathLike = Union[str, "os.PathLike[str]"]

#: States a job never leaves.
TERMINAL_STATES = ("succeeded", "failed", "cancelled")

#: The node's largest POST /v1/jobs body (MAX_JOB_BODY_BYTES, src/node/job-request.ts).
#: Checked here too: a body over it is answered 413 while it is still being
#: sent, which on the client side looks like a reset connection.
MAX_JOB_BODY_BYTES = 1024 * 1024 * 1024 + 1024 * 1024

#: A CID as the node names blobs (CIDv1, base32): what the CLI takes as a model by address.
_CID = re.compile(r"^baf[a-z2-7]+$")
#: A bearer token must fit in one header line.
_TOKEN = re.compile(r"^[\x21-\x7e]+$")

_CONNECT_TIMEOUT_S = 10.0

#: Longest job id and CID an input reference may carry (src/node/api/job-request.ts).
MAX_REF_JOB_ID = 64
MAX_REF_CID = 128

#: "Use the Mesh's own timeout" for Mesh.request's read_timeout (None already means "no bound").
_DEFAULT: Any = object()


class Progress(NamedTuple):
    """A job's progress: shards done of total, or for a train job rounds done of total."""

    done: int
    total: int


class TopK(NamedTuple):
    """:meth:`Mesh.topk`'s answer: per query, the k best items' indices and cosine similarities, best first."""

    indices: np.ndarray
    scores: np.ndarray


def resolve_token(token: Optional[str] = None, data_dir: Optional[PathLike] = None) -> Optional[str]:
    """The API token to send: ``token``, else ``$TENSORMESH_TOKEN``, else ``DATA_DIR/api-token``.

    ``data_dir`` defaults to ``~/.tensormesh``, the node's own default, so a
    client on the node's machine finds the token the node wrote. Empty
    values count as unset. ``None`` means none was found and no
    Authorization header is sent (the node does not enforce auth yet).
    """
    if token:
        return _check_token(token, "token=")
    env = os.environ.get("TENSORMESH_TOKEN", "").strip()
    if env:
        return _check_token(env, "$TENSORMESH_TOKEN")
    try:
        base = Path(data_dir).expanduser() if data_dir is not None else Path.home() / ".tensormesh"
    except RuntimeError:  # no home directory to expand
        return None
    path = base / "api-token"
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, UnicodeDecodeError) as err:
        # A token file we cannot read is a misconfiguration; sending no token would hide it.
        raise TensormeshError("ERR_TOKEN_FILE", f"cannot read the API token file {path}: {err}") from None
    return _check_token(text, str(path)) if text else None


def _check_token(token: str, source: str) -> str:
    if not _TOKEN.match(token):
        raise TensormeshError("ERR_BAD_TOKEN", f"the API token from {source} must be printable ASCII without spaces")
    return token


def _normalise_url(url: str) -> str:
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays in params (``k=np.int64(5)``) become plain JSON."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _dumps(value: Any, what: str) -> str:
    try:
        return json.dumps(value, default=_json_default, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as err:
        raise TensormeshError("ERR_BAD_ARGUMENT", f"{what} must be plain JSON (numbers, strings, lists, dicts; no NaN): {err}") from None


def _reason(err: BaseException) -> str:
    """The useful end of a requests/urllib3 error chain: '[Errno 111] Connection refused'."""
    text = str(err)
    m = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    if m:
        return m.group(0).strip()
    for name in ("RemoteDisconnected", "ConnectionResetError", "BrokenPipeError", "timed out"):
        if name in text:
            return name
    return text


def _finished(view: Optional[JobView]) -> bool:
    return view is not None and view.get("state") in TERMINAL_STATES


class _SSEParser:
    """Server-sent events (the WHATWG grammar: event/data fields, blank line ends an event)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._event: Optional[str] = None
        self._data: List[str] = []

    def feed(self, chunk: bytes) -> List[Tuple[str, str]]:
        self._buf += chunk
        out: List[Tuple[str, str]] = []
        start = 0
        while True:
            end = self._buf.find(b"\n", start)
            if end < 0:
                break
            line = bytes(self._buf[start:end])
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data:
                    out.append((self._event or "message", "\n".join(self._data)))
                self._event, self._data = None, []
                continue
            if line.startswith(b":"):
                continue
            field, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if field == b"event":
                self._event = value.decode("utf-8")
            elif field == b"data":
                self._data.append(value.decode("utf-8"))
        del self._buf[:start]
        return out


def _socket_of(res: requests.Response) -> Any:
    """The socket under a streamed response, to tighten its timeout as a deadline nears (best effort)."""
    conn = getattr(res.raw, "_connection", None) or getattr(res.raw, "connection", None)
    return getattr(conn, "sock", None)


class JobRef:
    """A job input that is an earlier job's result on the node the new job goes to.

    ``JobRef(job)`` takes a :class:`Job` or a job id. The node uses the
    result where it is (it never comes back to the client); the job must be
    one of that node's and must have succeeded. A :class:`Job` given here (or
    as the input itself) is waited for first; an id is sent as is. In the
    job spec it is ``{"job": ID}``.
    """

    __slots__ = ("id", "job")

    def __init__(self, job: Union[str, "Job"]) -> None:
        if isinstance(job, Job):
            self.id: str = job.id
            self.job: Optional[Job] = job
        elif isinstance(job, str) and 0 < len(job) <= MAX_REF_JOB_ID:
            self.id, self.job = job, None
        else:
            raise TensormeshError("ERR_BAD_ARGUMENT", f"JobRef takes a Job or a job id (a string of 1 to {MAX_REF_JOB_ID} characters), not {job!r:.80}")

    def to_json(self) -> Dict[str, str]:
        return {"job": self.id}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobRef) and other.id == self.id

    def __hash__(self) -> int:
        return hash(("job", self.id))

    def __repr__(self) -> str:
        return f"JobRef({self.id!r})"


class CidRef:
    """A job input that is a ``.npy`` the mesh stores (``PUT /v1/blobs``), by its CID: ``{"cid": CID}`` in the spec.

    The node reads it from its own store, else from a peer that has it.
    """

    __slots__ = ("cid",)

    def __init__(self, cid: str) -> None:
        if not isinstance(cid, str) or not 0 < len(cid) <= MAX_REF_CID:
            raise TensormeshError("ERR_BAD_ARGUMENT", f"CidRef takes a CID (a string of 1 to {MAX_REF_CID} characters), not {cid!r:.80}")
        self.cid = cid

    def to_json(self) -> Dict[str, str]:
        return {"cid": self.cid}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CidRef) and other.cid == self.cid

    def __hash__(self) -> int:
        return hash(("cid", self.cid))

    def __repr__(self) -> str:
        return f"CidRef({self.cid!r})"


def _input_ref(name: str, value: Any) -> Union[JobRef, CidRef, None]:
    """An input given by reference (a Job, JobRef, CidRef, ``{"job": ID}``, ``{"cid": CID}``); None for a tensor.

    A mapping is a reference when it has a "job" or "cid" key, and then it
    must have that one key only, as the node reads it.
    """
    if isinstance(value, (JobRef, CidRef)):
        return value
    if isinstance(value, Job):
        return JobRef(value)
    if not isinstance(value, Mapping) or ("job" not in value and "cid" not in value):
        return None
    if len(value) != 1:
        keys = ", ".join(str(k) for k in list(value)[:4])
        raise TensormeshError("ERR_BAD_ARGUMENT", f"input {name!r}: a reference is {{'job': ID}} or {{'cid': CID}}, nothing else (got {keys})")
    try:
        return JobRef(value["job"]) if "job" in value else CidRef(value["cid"])
    except TensormeshError as err:
        raise TensormeshError(err.code, f"input {name!r}: {err.message}") from None


def is_input_ref(value: Any) -> bool:
    """Whether ``submit`` takes ``value`` as an input by reference rather than as an array."""
    try:
        return _input_ref("x", value) is not None
    except TensormeshError:
        return True  # a malformed reference is still one; submit says what is wrong with it


class Mesh:
    """A tensormesh node's HTTP API: submit jobs with numpy inputs, get numpy results.

    ``url`` is the node's API address (``tensormesh start`` prints it; the
    default is the node's default). The token is ``token``, else
    ``$TENSORMESH_TOKEN``, else the file ``DATA_DIR/api-token`` (``data_dir``
    defaults to ``~/.tensormesh``); when one is found every request carries
    ``Authorization: Bearer TOKEN``, when none is, none is sent.
    ``timeout`` bounds the wait for any one answer of a plain request
    (seconds; ``None`` for no bound); waiting for a job has its own.

    Environment proxies and ``~/.netrc`` are ignored (``trust_env`` off):
    the node is local, and netrc credentials would replace the token.
    """

    url: str

    def __init__(
        self,
        url: str = "http://127.0.0.1:7070",
        token: Optional[str] = None,
        data_dir: Optional[PathLike] = None,
        *,
        timeout: Optional[float] = 300.0,
    ) -> None:
        from . import __version__

        self.url = _normalise_url(url)
        self.timeout = timeout
        self._session = requests.Session()
        self._session.trust_env = False
        self._session.headers["User-Agent"] = f"tensormesh-python/{__version__}"
        found = resolve_token(token, data_dir)
        if found is not None:
            self._session.headers["Authorization"] = f"Bearer {found}"

    def __repr__(self) -> str:
        return f"Mesh({self.url!r})"

    # -- plumbing -------------------------------------------------------------

    def close(self) -> None:
        """Closes the pooled connections."""
        self._session.close()

    def __enter__(self) -> "Mesh":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        data: Any = None,
        headers: Optional[Mapping[str, str]] = None,
        stream: bool = False,
        read_timeout: Optional[float] = _DEFAULT,
    ) -> requests.Response:
        """One API request; a 4xx/5xx answer or a failure to connect raises :class:`TensormeshError`."""
        url = self.url + path
        timeout = (_CONNECT_TIMEOUT_S, self.timeout if read_timeout is _DEFAULT else read_timeout)
        try:
            res = self._session.request(method, url, data=data, headers=dict(headers or {}), stream=stream, timeout=timeout)
        except requests.exceptions.ConnectTimeout as err:
            raise TensormeshError("ERR_UNREACHABLE", f"cannot reach the node API at {self.url}: connect timed out ({_reason(err)})") from None
        except requests.exceptions.Timeout as err:
            raise TensormeshError("ERR_TIMEOUT", f"{method} {url}: no answer within {timeout[1]} s ({_reason(err)})") from None
        except requests.exceptions.ConnectionError as err:
            raise TensormeshError("ERR_UNREACHABLE", f"cannot reach the node API at {self.url}: {_reason(err)}") from None
        except requests.exceptions.RequestException as err:
            raise TensormeshError("ERR_HTTP", f"{method} {url}: {err}") from None
        if res.status_code >= 400:
            with closing(res):
                code, message = "ERR_HTTP", f"{method} {path} answered {res.status_code}"
                try:
                    body = res.json()
                    error = body.get("error") if isinstance(body, dict) else None
                    if isinstance(error, dict):
                        code = str(error.get("code") or code)
                        message = str(error.get("message") or message)
                except (ValueError, requests.exceptions.RequestException):
                    pass
            raise TensormeshError(code, message, res.status_code)
        return res

    def _json(self, method: str, path: str) -> Any:
        res = self.request(method, path)
        try:
            return res.json()
        except ValueError:
            raise TensormeshError("ERR_BAD_ANSWER", f"{method} {path}: the node's answer is not JSON") from None

    # -- the API --------------------------------------------------------------

    def node(self) -> Dict[str, Any]:
        """This node (``GET /v1/node``): peer id, backend, cores, GFLOPS, load, operators ..."""
        return dict(self._json("GET", "/v1/node"))

    def peers(self) -> List[Dict[str, Any]]:
        """The other peers this node sees (``GET /v1/peers``), one dict each."""
        return list(self._json("GET", "/v1/peers"))

    def jobs(self) -> List[JobView]:
        """Every job this node coordinates, as records (``GET /v1/jobs``)."""
        return list(self._json("GET", "/v1/jobs"))

    def job(self, job_id: str) -> "Job":
        """A :class:`Job` for an existing job id (one submitted earlier, or by someone else)."""
        return Job(self, self._json("GET", f"/v1/jobs/{_quote(job_id)}"))

    def submit(
        self,
        op: str,
        inputs: Optional[Mapping[str, Any]] = None,
        params: Optional[Mapping[str, Any]] = None,
        verify: Optional[Mapping[str, Any]] = None,
        schedule: Optional[Mapping[str, Any]] = None,
        *,
        model: Union[PathLike, bytes, bytearray, memoryview, ModelArtifacts, None] = None,
    ) -> "Job":
        """Submits a job and returns once the node has accepted it (its 202).

        ``inputs`` maps input names to numpy arrays (converted as
        :mod:`tensormesh.arrays` describes, all before anything is sent) and
        goes as multipart ``.npy`` parts, streamed from the arrays' memory.
        An input may instead be a reference, sent in the spec's ``inputs``
        and resolved by the node: an earlier job's result there (a
        :class:`Job`, ``JobRef(job_or_id)`` or ``{"job": ID}``) or a stored
        ``.npy`` (``CidRef(cid)`` or ``{"cid": CID}``). A :class:`Job` is
        waited for before the request (the node takes only a job that has
        succeeded, and only one of its own: 404 ``ERR_JOB_NOT_FOUND`` else).
        ``params``, ``verify`` and ``schedule`` are the job spec's objects
        (README.md lists each operator's). ``model`` is for infer and train jobs: a
        model folder or ``model.json`` path (packed here, sent as part
        ``blob.model`` as the CLI does), packed bytes, or the CID of a model
        the mesh holds.
        """
        if not isinstance(op, str) or not op:
            raise TensormeshError("ERR_BAD_ARGUMENT", "op must be an operator name such as 'matmul'")
        arrays: List[Tuple[str, np.ndarray]] = []
        refs: Dict[str, Union[JobRef, CidRef]] = {}
        for name, value in (inputs or {}).items():
            check_input_name(name)
            ref = _input_ref(name, value)
            if ref is None:
                arrays.append((name, prepare_array(name, value)))
            else:
                refs[name] = ref
        spec: Dict[str, Any] = {"op": op, "params": dict(params or {})}
        if refs:
            spec["inputs"] = {name: ref.to_json() for name, ref in refs.items()}
        if verify is not None:
            spec["verify"] = dict(verify)
        if schedule is not None:
            spec["schedule"] = dict(schedule)
        packed: Optional[Union[bytes, bytearray, memoryview]] = None
        if model is not None:
            if isinstance(model, (bytes, bytearray, memoryview)):
                packed = model
            elif isinstance(model, str) and _CID.match(model) and not os.path.exists(model):
                spec["blobs"] = {"model": {"cid": model}}
            else:
                packed = pack_model(model)
        body = MultipartBody()
        body.add_field("spec", _dumps(spec, "the job spec (params, verify, schedule)"), "application/json")
        if packed is not None:
            body.add_bytes("blob.model", packed, "model.tmmodel")
        for name, arr in arrays:
            body.add_array(name, arr)
        size = len(body)
        if size > MAX_JOB_BODY_BYTES:
            raise TensormeshError(
                "ERR_LIMIT_EXCEEDED",
                f"the job's inputs make a {size}-byte request; the node takes at most {MAX_JOB_BODY_BYTES} (split the work into several jobs)",
            )
        for ref in refs.values():
            if isinstance(ref, JobRef) and ref.job is not None:
                ref.job.wait()  # once everything here has been checked
        res = self.request("POST", "/v1/jobs", data=body, headers={"Content-Type": body.content_type})
        try:
            view = res.json()
        except ValueError:
            view = None
        if not isinstance(view, dict) or "id" not in view:
            raise TensormeshError("ERR_BAD_ANSWER", f"POST /v1/jobs at {self.url} answered {res.status_code} without a job record")
        return Job(self, view)

    # -- shortcuts: submit, wait, return the answer ---------------------------

    def _run(self, op: str, inputs: Mapping[str, Any], params: Mapping[str, Any], opts: Mapping[str, Any], model: Any = None, out_dir: Optional[PathLike] = None) -> Any:
        timeout = opts.get("timeout")
        progress = bool(opts.get("progress", False))
        # `with`: an interrupted wait (Ctrl-C, a timeout) cancels the job on the mesh.
        with self.submit(op, inputs, params, opts.get("verify"), opts.get("schedule"), model=model) as job:
            return job.result(out_dir, timeout=timeout, progress=progress)

    def matmul(self, a: Any, b: Any, **opts: Any) -> np.ndarray:
        """``a @ b`` for float32 ``a`` [m, k] and ``b`` [k, n]; rows of ``a`` are spread over the mesh.

        Every shortcut takes ``verify=``, ``schedule=``, ``timeout=`` (seconds
        to wait for the job) and ``progress=`` (show a progress bar).
        """
        return self._run("matmul", {"a": a, "b": b}, {}, opts)  # type: ignore[no-any-return]

    def map(self, x: Any, ops: Union[str, Sequence[Any]], **opts: Any) -> np.ndarray:
        """Elementwise steps applied in order; float32 of ``x``'s shape.

        ``ops`` are steps as the node takes them (``{"op": "mul", "value": 2}``,
        ``{"op": "relu"}``) or shorter: ``("mul", 2)`` and ``"relu"``.
        Scalar ops: add, sub, mul, div; unary: relu, sigmoid, tanh, exp, log,
        sqrt, abs, square.
        """
        return self._run("map", {"x": x}, {"ops": _map_steps(ops)}, opts)  # type: ignore[no-any-return]

    def reduce(self, x: Any, op: str = "sum", axis: Optional[int] = None, **opts: Any) -> np.ndarray:
        """sum, mean, max or min over ``axis`` 0 (shape ``x.shape[1:]``) or all elements (``None``: a 0-d array).

        sum and mean answer float32; max and min keep ``x``'s dtype (int32 for integer input).
        """
        if axis not in (None, 0):
            raise TensormeshError("ERR_BAD_AXIS", f"axis {axis!r} is not supported; the node reduces along axis 0 or over all elements (None)")
        params: Dict[str, Any] = {"op": op}
        if axis is not None:
            params["axis"] = 0
        return self._run("reduce", {"x": x}, params, opts)  # type: ignore[no-any-return]

    def sort(self, x: Any, **opts: Any) -> np.ndarray:
        """``np.sort(x)`` for float32 ``x`` [n]: ascending, NaN last, bit for bit."""
        return self._run("sort", {"x": x}, {}, opts)  # type: ignore[no-any-return]

    def topk(self, queries: Any, items: Any, k: int, **opts: Any) -> TopK:
        """Cosine-similarity top-k: for each query [q, d] the ``k`` most similar of ``items`` [n, d].

        Returns ``TopK(indices, scores)``: int64 [q, k] item indices and
        float32 [q, k] similarities, best first, ties to the lower index. (The
        node answers one float32 [q, k, 2] tensor of (index, similarity);
        ``submit('topk', ...)`` gives that as is.)
        """
        out = self._run("topk", {"queries": queries, "items": items}, {"k": int(k)}, opts)
        return TopK(indices=out[..., 0].astype(np.int64), scores=np.ascontiguousarray(out[..., 1]))

    def histogram(self, x: Any, bins: int = 10, range: Optional[Tuple[float, float]] = None, **opts: Any) -> np.ndarray:
        """``np.histogram(x, bins, range)[0]``: int32 counts in ``bins`` equal bins, last bin closed.

        ``bins`` must be a number (the node cuts equal-width bins). Without
        ``range`` it is ``(x.min(), x.max())`` as numpy takes it, computed
        here. The edges are ``np.linspace(lo, hi, bins + 1)``.
        """
        if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)):
            raise TensormeshError("ERR_BAD_ARGUMENT", "bins must be an integer (the node cuts equal-width bins)")
        if range is None:
            if is_input_ref(x):
                raise TensormeshError("ERR_BAD_ARGUMENT", "histogram of an input by reference needs range=(min, max): the data is not here to measure")
            arr = np.asarray(x)
            if arr.size == 0:
                lo, hi = 0.0, 1.0
            else:
                lo, hi = float(arr.min()), float(arr.max())
            if not (np.isfinite(lo) and np.isfinite(hi)):
                raise TensormeshError("ERR_BAD_ARGUMENT", f"autodetected range [{lo}, {hi}] is not finite; pass range=")
            if lo == hi:
                lo, hi = lo - 0.5, hi + 0.5
        else:
            lo, hi = float(range[0]), float(range[1])
        return self._run("histogram", {"x": x}, {"bins": int(bins), "min": lo, "max": hi}, opts)  # type: ignore[no-any-return]

    def infer(self, x: Any, model_dir: Union[PathLike, bytes, ModelArtifacts], batch_size: Optional[int] = None, **opts: Any) -> np.ndarray:
        """A TF.js model's predictions for ``x`` [n, ...model input], float32 [n, ...model output].

        Layers-models and graph-models, float32 or quantised weights (uint8,
        uint16, float16), as tensorflowjs_converter writes them.

        ``model_dir``: a folder holding ``model.json`` and its weight files,
        or a ``model.json`` path; it is packed here and sent with the job as
        part ``blob.model``, as the CLI does. Packed bytes, a
        :class:`ModelArtifacts` or the CID of a model the mesh already holds
        work too.
        """
        params: Dict[str, Any] = {}
        if batch_size is not None:
            params["batchSize"] = int(batch_size)
        return self._run("infer", {"x": x}, params, opts, model=model_dir)  # type: ignore[no-any-return]

    def train(
        self,
        x: Any,
        y: Any,
        x_test: Any,
        y_test: Any,
        *,
        out_dir: PathLike,
        model: Union[PathLike, bytes, ModelArtifacts, None] = None,
        loss: Optional[str] = None,
        batch_size: Optional[int] = None,
        epochs: Optional[int] = None,
        sync: Optional[Mapping[str, Any]] = None,
        layers: Optional[Sequence[int]] = None,
        activation: Optional[str] = None,
        rounds: Optional[int] = None,
        learning_rate: Optional[float] = None,
        optimizer: Union[str, Mapping[str, Any], None] = None,
        seed: Optional[int] = None,
        **opts: Any,
    ) -> Path:
        """Trains a model data-parallel across the mesh and writes it to ``out_dir``; returns that folder.

        ``x`` [n, ...model input] and ``y`` to train on, ``x_test``/``y_test``
        held out (the job's metrics measure them each epoch).

        With ``model`` (a TF.js layers-model folder or ``model.json``, packed
        here and sent as part ``blob.model`` as the CLI does; packed bytes or
        a :class:`ModelArtifacts` too): mini-batch training of that model.
        ``loss`` (sparseCategoricalCrossentropy, categoricalCrossentropy,
        binaryCrossentropy, meanSquaredError), ``optimizer`` a name or
        ``{"name": "adam", "learningRate": 0.001, ...}``, ``batch_size``,
        ``epochs``, ``seed``, and ``sync``: ``{"mode": "step"}`` (the
        default: one optimizer step per global batch) or ``{"mode": "local",
        "steps": H, "outerLearningRate": 0.7, "outerMomentum": 0.9}``
        (DiLoCo). A model.json without weights starts from its layers'
        initialisers, seeded by ``seed``.

        Without ``model``: the MLP shorthand, full-batch. Unset params take
        the node's defaults: layers [784, 128, 10] (input width first,
        classes last), activation relu, 50 rounds, learning rate 0.005, adam,
        seed 1.

        The folder holds ``model.json`` and ``weights.bin`` as TF.js writes
        them. For the metrics, use ``submit('train', ...)`` and the job's
        record.
        """
        params: Dict[str, Any] = {}
        if model is not None:
            mlp_only = [k for k, v in (("layers", layers), ("activation", activation), ("rounds", rounds), ("learning_rate", learning_rate)) if v is not None]
            if mlp_only:
                raise TensormeshError("ERR_BAD_ARGUMENT", f"train: {', '.join(mlp_only)} belong to the MLP shorthand; with a model, set the learning rate in optimizer={{'name': ..., 'learningRate': ...}}")
            for key, value in (("loss", loss), ("optimizer", None if optimizer is None else (optimizer if isinstance(optimizer, str) else dict(optimizer))),
                               ("batchSize", batch_size), ("epochs", epochs), ("seed", seed), ("sync", None if sync is None else dict(sync))):
                if value is not None:
                    params[key] = value
        else:
            model_only = [k for k, v in (("loss", loss), ("batch_size", batch_size), ("epochs", epochs), ("sync", sync)) if v is not None]
            if model_only:
                raise TensormeshError("ERR_BAD_ARGUMENT", f"train: {', '.join(model_only)} need a model=; the MLP shorthand takes layers, activation, rounds, learning_rate, optimizer, seed")
            for key, value in (("layers", None if layers is None else [int(w) for w in layers]), ("activation", activation), ("rounds", rounds),
                               ("learningRate", learning_rate), ("optimizer", optimizer), ("seed", seed)):
                if value is not None:
                    params[key] = value
        inputs = {"x": x, "y": y, "xTest": x_test, "yTest": y_test}
        return self._run("train", inputs, params, opts, model=model, out_dir=out_dir)  # type: ignore[no-any-return]


def _quote(job_id: str) -> str:
    from urllib.parse import quote

    return quote(str(job_id), safe="")


def _map_steps(ops: Union[str, Sequence[Any], Mapping[str, Any]]) -> List[Dict[str, Any]]:
    if isinstance(ops, (str, Mapping)):
        ops = [ops]
    steps: List[Dict[str, Any]] = []
    for step in ops:
        if isinstance(step, str):
            steps.append({"op": step})
        elif isinstance(step, Mapping):
            steps.append(dict(step))
        elif isinstance(step, (tuple, list)) and len(step) == 2 and isinstance(step[0], str):
            steps.append({"op": step[0], "value": float(step[1])})
        else:
            raise TensormeshError("ERR_BAD_ARGUMENT", f"map step {step!r} must be 'relu', ('mul', 2) or {{'op': 'mul', 'value': 2}}")
    return steps


class Job:
    """One job on the node it was submitted to.

    ``state`` and ``progress`` ask the node each time until the job has
    finished (a finished job never changes, so then they answer from the
    last record). ``with mesh.submit(...) as job:`` cancels the job when
    the block raises, so an exception or Ctrl-C does not leave work
    running on the mesh.
    """

    def __init__(self, mesh: Mesh, view: JobView) -> None:
        self._mesh = mesh
        self._view: JobView = view
        self.id: str = str(view["id"])
        self.op: str = str(view.get("op", ""))

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.op} {self._view.get('state')}>"

    def __enter__(self) -> "Job":
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        if exc_type is not None and not _finished(self._view):
            try:
                self.cancel()
            except TensormeshError:
                pass  # the original exception matters more than a failed cancel

    @property
    def _path(self) -> str:
        return f"/v1/jobs/{_quote(self.id)}"

    def record(self) -> JobView:
        """The job's full record (``GET /v1/jobs/:id``): state, progress, shards, bids, metrics ..."""
        self._view = self._mesh._json("GET", self._path)
        return dict(self._view)

    def _current(self) -> JobView:
        return self._view if _finished(self._view) else self.record()

    @property
    def state(self) -> str:
        """queued, running, succeeded, failed or cancelled (asked of the node)."""
        return str(self._current()["state"])

    @property
    def progress(self) -> Progress:
        """Shards done of total (rounds for a train job), asked of the node."""
        p = self._current().get("progress") or {}
        return Progress(int(p.get("done", 0)), int(p.get("total", 0)))

    def cancel(self) -> JobView:
        """Cancels the job and its shards on the peers (``DELETE /v1/jobs/:id``); returns the record."""
        self._view = self._mesh._json("DELETE", self._path)
        return dict(self._view)

    def wait(self, progress: bool = False, timeout: Optional[float] = None) -> JobView:
        """Blocks until the job has finished, following its event stream; returns the final record.

        It does not raise for a failed or cancelled job (``result()`` does);
        it raises :class:`TensormeshError` ``ERR_TIMEOUT`` when ``timeout``
        seconds pass first (the job keeps running; cancel it or wait again).
        ``progress=True`` shows a progress bar on stderr.
        """
        if _finished(self._view):
            return dict(self._view)
        display = ProgressDisplay(self.id) if progress else None
        try:
            last = self._view
            for view in self.events(timeout=timeout):
                last = view
                if display is not None:
                    display.update(view)
            return dict(last)
        finally:
            if display is not None:
                display.close()

    def events(self, timeout: Optional[float] = None) -> Iterator[JobView]:
        """Yields the job's record each time it changes (at most ten a second), ending once it has finished.

        This is ``GET /v1/jobs/:id/events`` (server-sent events); breaking
        out of the loop closes the stream. ``timeout`` bounds the whole
        iteration (``ERR_TIMEOUT``). A finished job yields its record once.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if _finished(self._view):
            yield dict(self._view)
            return
        # The stream ends when the job does; if it ends early (a proxy, a restart), look and follow again.
        for _attempt in range(5):
            with closing(self._stream(deadline)) as stream:  # closed now, not at garbage collection
                for view in stream:
                    yield view
                    if _finished(view):
                        return
            view = self.record()
            if _finished(view):
                yield view
                return
        raise TensormeshError("ERR_STREAM_CLOSED", f"the event stream of job {self.id} keeps ending before the job does")

    def _timeout_error(self) -> TensormeshError:
        return TensormeshError("ERR_TIMEOUT", f"job {self.id} is still {self._view.get('state')} after the wait's timeout")

    def _stream(self, deadline: Optional[float]) -> Generator[JobView, None, None]:
        """The records of one ``GET /v1/jobs/:id/events`` connection, until it ends."""
        if deadline is not None and time.monotonic() >= deadline:
            raise self._timeout_error()
        remaining = None if deadline is None else max(0.001, deadline - time.monotonic())
        res = self._mesh.request("GET", self._path + "/events", headers={"Accept": "text/event-stream"}, stream=True, read_timeout=remaining)
        parser = _SSEParser()
        with closing(res):
            sock = _socket_of(res)
            try:
                for chunk in res.iter_content(chunk_size=None):
                    for event, data in parser.feed(chunk):
                        if event != "job":
                            continue
                        view: JobView = json.loads(data)
                        self._view = view
                        yield dict(view)
                        if _finished(view):
                            return
                    if deadline is not None:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise self._timeout_error()
                        if sock is not None:
                            # Each read may wait only as long as the whole wait has left.
                            sock.settimeout(left)
            except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as err:
                if deadline is not None and time.monotonic() >= deadline - 0.01:
                    raise self._timeout_error() from None
                if isinstance(err, requests.exceptions.ChunkedEncodingError):
                    return  # the stream broke off; events() looks at the record
                raise TensormeshError("ERR_UNREACHABLE", f"lost the event stream of job {self.id} from {self._mesh.url}: {_reason(err)}") from None

    def _raise_unless_succeeded(self, view: JobView) -> None:
        if view.get("state") == "succeeded":
            return
        error = view.get("error") or {}
        code = str(error.get("code") or f"ERR_JOB_{str(view.get('state')).upper()}")
        raise TensormeshError(code, f"job {self.id} {view.get('state')}: {error.get('message') or 'no reason given'}")

    def result(self, out_dir: Optional[PathLike] = None, *, timeout: Optional[float] = None, progress: bool = False) -> Any:
        """Waits for the job and returns its answer: a numpy array, or for a train job the model folder.

        A train job's model is written to ``out_dir`` as TF.js writes one
        (``model.json`` + ``weights.bin``) and the folder's ``Path`` is
        returned; ``out_dir`` is required then and refused otherwise. A job
        that ends failed or cancelled raises :class:`TensormeshError` with
        the job's own error code (``ERR_CANCELLED``, ``ERR_VERIFY_FAILED`` ...).
        """
        view = self.wait(progress=progress, timeout=timeout)
        self._raise_unless_succeeded(view)
        if view.get("op") == "train" or view.get("model") is not None:
            if out_dir is None:
                raise TensormeshError("ERR_BAD_ARGUMENT", f"job {self.id} is a train job: its result is a model folder; pass out_dir=")
            res = self._mesh.request("GET", self._path + "/model")
            with closing(res):
                return unpack_model_to_dir(res.content, out_dir)
        if out_dir is not None:
            raise TensormeshError("ERR_BAD_ARGUMENT", f"out_dir is for train jobs; job {self.id} is a {view.get('op')} job whose result is an array")
        res = self._mesh.request("GET", self._path + "/result", stream=True)
        with closing(res):
            try:
                return read_npy_into(res.raw.read, f"result of job {self.id}")
            except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as err:
                # raw.read surfaces urllib3's own errors (ProtocolError, ReadTimeoutError), not requests'.
                raise TensormeshError("ERR_UNREACHABLE", f"lost the result of job {self.id} from {self._mesh.url}: {_reason(err)}") from None
