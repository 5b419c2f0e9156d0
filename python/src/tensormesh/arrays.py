"""Turning numpy arrays into what the node reads, and reading its answers back.

The node reads ``.npy`` tensors of two dtypes only, float32 and int32, in C
order and little-endian (src/compute/npy.ts). Rather than let it refuse an
array after a possibly long upload, every input is brought to one of those
here, before any request:

=================================  ==============================================
input dtype                        sent as
=================================  ==============================================
float32                            as is (a big-endian array is byte-swapped)
float64                            float32, with a :class:`TensormeshWarning`;
                                   finite values beyond float32's range are an
                                   error (they would become infinity)
float16                            float32 (exact, no warning)
int32                              as is
bool, int8, uint8, int16, uint16   as is, 1 or 2 bytes an element: the node
                                   reads these .npy dtypes itself as int32
                                   (bool as 0 and 1, the way numpy's ``sum``
                                   counts a bool array), so no copy is made
                                   here and the upload stays small
int64, uint32, uint64              int32 when every value fits, else
                                   ``ERR_OUT_OF_RANGE`` (numpy's own cast would
                                   wrap around silently)
anything else (complex, object,    :class:`TensormeshError` ``ERR_BAD_DTYPE``
strings, datetimes, structured)
=================================  ==============================================

Integers are never turned into floats: operators that need float32 (matmul,
sort, topk, train's ``x``) refuse int32 themselves with ``ERR_BAD_DTYPE``,
which is clearer than a silent cast that loses precision above 2**24.
Non-contiguous and Fortran-order arrays are copied to C order (the node
refuses Fortran order, and a strided view has no flat bytes to send).
"""

from __future__ import annotations

import io
import os
import re
import warnings
from typing import Any, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import TensormeshError, TensormeshWarning

__all__ = ["prepare_array", "npy_header", "MultipartBody", "INPUT_NAME"]

#: Input names the node accepts (src/node/job-request.ts).
INPUT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

_FLOAT32_MAX = float(np.finfo(np.float32).max)
_INT32 = np.iinfo(np.int32)
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

#: How much of an array each write hands to the socket: big enough that
#: per-call overhead vanishes, small enough that nothing here ever holds
#: more than a view of it.
CHUNK_BYTES = 4 * 1024 * 1024


def _user_stacklevel() -> int:
    """The ``warnings.warn`` stacklevel of the first frame outside this package.

    Shortcuts and ``submit`` reach the conversion at different depths; the
    warning should point at the caller's line either way.
    """
    import sys

    level = 1
    frame = sys._getframe(1)
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == _PACKAGE_DIR:
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def _c_order(arr: np.ndarray, dtype: Any) -> np.ndarray:
    """``arr`` as a C-contiguous array of ``dtype``, copied only when it is not one already.

    Not ``np.ascontiguousarray``: that turns a 0-d array into a 1-d one.
    """
    return np.asarray(arr, dtype=dtype, order="C")


def prepare_array(name: str, value: Any) -> np.ndarray:
    """Returns ``value`` as a C-contiguous little-endian array of a dtype the node reads.

    No copy is made when the array already is one (the common case, and the
    one that matters for large inputs); otherwise see the module's table.
    Raises :class:`TensormeshError` for what cannot be sent.
    """
    arr = np.asarray(value)
    kind = arr.dtype.kind
    if arr.dtype.fields is not None or kind not in "fiub":
        raise TensormeshError(
            "ERR_BAD_DTYPE",
            f"input {name!r} is {arr.dtype} (shape {arr.shape}); the mesh takes float32 or int32 "
            "(float64, float16, bool and other integer widths are accepted too; see tensormesh.arrays)",
        )
    if kind == "f":
        if arr.dtype.itemsize == 8:
            warnings.warn(
                f"input {name!r}: float64 converted to float32 (the mesh computes in float32); "
                "pass float32 to avoid this copy",
                TensormeshWarning,
                stacklevel=_user_stacklevel(),
            )
            with np.errstate(over="ignore"):
                out = _c_order(arr, "<f4")
            if out.size and not np.isfinite(out).all():
                overflow = np.isfinite(arr) & ~np.isfinite(out.reshape(arr.shape))
                if overflow.any():
                    at = int(np.flatnonzero(overflow.reshape(-1))[0])
                    raise TensormeshError(
                        "ERR_OUT_OF_RANGE",
                        f"input {name!r}: element {at} ({arr.reshape(-1)[at]!r}) is beyond float32's range",
                    )
            return out
        if arr.dtype.itemsize in (2, 4):
            return _c_order(arr, "<f4")
        raise TensormeshError("ERR_BAD_DTYPE", f"input {name!r} is {arr.dtype}; the mesh takes float32 (or float64, converted)")
    if kind == "b" or arr.dtype.itemsize <= 2:
        # bool, (u)int8, (u)int16: .npy dtypes the node reads as int32 itself.
        return _c_order(arr, arr.dtype.newbyteorder("<"))
    if arr.dtype.itemsize == 4 and kind == "i":
        return _c_order(arr, "<i4")
    if arr.size:
        lo, hi = arr.min(), arr.max()
        if lo < _INT32.min or hi > _INT32.max:
            raise TensormeshError(
                "ERR_OUT_OF_RANGE",
                f"input {name!r} is {arr.dtype} with values from {lo} to {hi}; the mesh takes int32 "
                f"({_INT32.min} to {_INT32.max}), so it cannot be sent without losing values",
            )
    return _c_order(arr, "<i4")


def npy_header(arr: np.ndarray) -> bytes:
    """The ``.npy`` preamble and header for ``arr``, as numpy itself writes them.

    Only the header: the data travels as views of the array, never copied
    into a ``.npy`` byte string.
    """
    d = np.lib.format.header_data_from_array_1_0(arr)
    buf = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buf, d)
    except ValueError:
        # A header over 65535 bytes (a shape with thousands of dims) needs format 2.0.
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, d)
    return buf.getvalue()


def _array_chunks(arr: np.ndarray) -> Iterator[memoryview]:
    """``arr``'s bytes as memoryview slices of at most CHUNK_BYTES: views, not copies."""
    flat = arr.reshape(-1).view(np.uint8).data
    for at in range(0, flat.nbytes, CHUNK_BYTES):
        yield flat[at:at + CHUNK_BYTES]


Buffer = Union[bytes, bytearray, memoryview]


class _Part:
    __slots__ = ("head", "pieces", "size", "array")

    def __init__(self, head: bytes, pieces: Sequence[Buffer], array: Optional[np.ndarray] = None) -> None:
        self.head = head
        self.pieces = pieces
        self.array = array
        self.size = len(head) + sum(memoryview(p).nbytes for p in pieces) + (array.nbytes if array is not None else 0)


class MultipartBody:
    """A ``multipart/form-data`` body that is iterated, not built.

    ``len(body)`` is its exact size, so requests sends a ``Content-Length``
    and no chunked encoding (the node checks the declared length against its
    limit before it reads anything). Iterating yields the part headers, each
    array's ``.npy`` header, and then the array's own memory as memoryview
    slices: uploading a 1 GiB array allocates kilobytes, not a gigabyte.
    The body can be iterated more than once (a retried request re-sends it).
    """

    def __init__(self, boundary: Optional[str] = None) -> None:
        self.boundary = boundary or ("tensormesh-" + os.urandom(16).hex())
        self._parts: List[_Part] = []

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def _head(self, name: str, filename: Optional[str], content_type: str) -> bytes:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name) or (filename is not None and not re.fullmatch(r"[A-Za-z0-9_.\-]+", filename)):
            # Names go into a quoted header; anything else could break out of it.
            raise TensormeshError("ERR_BAD_ARGUMENT", f"part name {name!r} must be letters, digits, '_', '.' or '-'")
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        return (
            f"--{self.boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {content_type}\r\n\r\n"
        ).encode("ascii")

    def add_field(self, name: str, value: str, content_type: str = "text/plain; charset=utf-8") -> None:
        """A text part (the job's JSON ``spec``)."""
        self._parts.append(_Part(self._head(name, None, content_type), [value.encode("utf-8")]))

    def add_bytes(self, name: str, data: Buffer, filename: str) -> None:
        """A file part of opaque bytes (a packed model as ``blob.model``)."""
        self._parts.append(_Part(self._head(name, filename, "application/octet-stream"), [data]))

    def add_array(self, name: str, arr: np.ndarray) -> None:
        """A file part holding ``arr`` as ``.npy``; ``arr`` must be C-contiguous (see prepare_array)."""
        if not arr.flags.c_contiguous:
            raise TensormeshError("ERR_BAD_ARGUMENT", f"input {name!r} must be C-contiguous here (prepare_array makes it so)")
        self._parts.append(_Part(self._head(name, f"{name}.npy", "application/octet-stream"), [npy_header(arr)], arr))

    def _tail(self) -> bytes:
        return f"--{self.boundary}--\r\n".encode("ascii")

    def __len__(self) -> int:
        # Each part is followed by CRLF before the next delimiter.
        return sum(p.size + 2 for p in self._parts) + len(self._tail())

    def __iter__(self) -> Iterator[Buffer]:
        for p in self._parts:
            yield p.head
            yield from p.pieces
            if p.array is not None:
                yield from _array_chunks(p.array)
            yield b"\r\n"
        yield self._tail()


def check_input_name(name: str) -> None:
    """Refuses names the node would refuse, before anything is sent."""
    if not isinstance(name, str) or not INPUT_NAME.match(name):
        raise TensormeshError("ERR_BAD_ARGUMENT", f"input name {name!r} must be an identifier of at most 64 characters (a, b, x, xTest ...)")
    if name == "spec":
        # The multipart part "spec" is the job spec itself; the node would drop an input of that name.
        raise TensormeshError("ERR_BAD_ARGUMENT", "an input cannot be named 'spec' (the job spec's own part)")


def read_npy_into(read: Any, name: str, expected_bytes: Optional[int] = None) -> np.ndarray:
    """Reads one ``.npy`` from a ``read(n)`` callable straight into a fresh array.

    The node's answer goes into the array's own memory a chunk at a time,
    so a 256 MiB result costs 256 MiB, not that plus a bytes copy.
    """

    class _Reader:
        def read(self, n: int) -> bytes:
            return _read_exact(read, n, name)

    reader = _Reader()
    version = np.lib.format.read_magic(reader)  # type: ignore[arg-type]
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(reader)  # type: ignore[arg-type]
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(reader)  # type: ignore[arg-type]
    else:  # pragma: no cover - read_magic already refuses others
        raise TensormeshError("ERR_BAD_NPY", f"{name}: .npy version {version} is not supported")
    if dtype.hasobject or dtype.kind not in "fiub":
        raise TensormeshError("ERR_BAD_NPY", f"{name}: the node sent dtype {dtype}, which this client does not read")
    out = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
    flat = out.reshape(-1, order="A").view(np.uint8).data if out.size else memoryview(bytearray())
    at = 0
    while at < flat.nbytes:
        chunk = read(min(CHUNK_BYTES, flat.nbytes - at))
        if not chunk:
            raise TensormeshError("ERR_TRUNCATED", f"{name}: the answer ended after {at} of {flat.nbytes} data bytes")
        flat[at:at + len(chunk)] = chunk
        at += len(chunk)
    return out


def _read_exact(read: Any, n: int, name: str) -> bytes:
    parts: List[bytes] = []
    got = 0
    while got < n:
        chunk = read(n - got)
        if not chunk:
            raise TensormeshError("ERR_TRUNCATED", f"{name}: the answer ended inside the .npy header")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def normalise_inputs(inputs: Optional[Mapping[str, Any]]) -> List[Tuple[str, np.ndarray]]:
    """Checks names and converts every input, all before the first byte is sent."""
    out: List[Tuple[str, np.ndarray]] = []
    for name, value in (inputs or {}).items():
        check_input_name(name)
        out.append((name, prepare_array(name, value)))
    return out
