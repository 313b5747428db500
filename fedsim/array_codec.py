"""Flower's ``Array`` to and from NumPy without ``np.save``/``np.load`` per call.

An ``Array`` holds an array as the bytes of a ``.npy`` file. Flower writes them with
``np.save`` and reads them with ``np.load``, which parse the header (``ast.literal_eval``)
every time: about 0.1-0.2 ms per array, paid for every array of every message, by the client
loading the global model, by the reply checks and by the aggregation. With many small clients
(a few ms of training each) that is a large share of a client call (docs/engine.md, "Many
small clients").

The replacements give the same results: ``from_numpy_ndarray`` writes the very bytes
``np.save`` would (the header is built by ``numpy.lib.format``, cached per dtype, shape and
order), and ``numpy`` returns a new writable array equal to ``np.load``'s. Anything the fast
path does not know (a newer ``.npy`` version, an object dtype) goes to Flower's own code.
Applied only on the Flower versions and source it was written against (``fedsim.compat``).
"""

from __future__ import annotations

import functools
import io
import math
from functools import lru_cache

import numpy as np
from numpy.lib import format as npy

_MAGIC = b"\x93NUMPY\x01\x00"  # .npy version 1.0, the one np.save writes for these arrays
_INSTALLED = False


@lru_cache(maxsize=4096)
def _header(descr: str, fortran_order: bool, shape: tuple[int, ...]) -> bytes:
    """The .npy 1.0 header np.save writes for an array of this dtype, order and shape."""
    buffer = io.BytesIO()
    npy.write_array_header_1_0(
        buffer, {"descr": descr, "fortran_order": fortran_order, "shape": shape}
    )
    return buffer.getvalue()


@lru_cache(maxsize=4096)
def _layout(head: bytes) -> tuple[np.dtype, bool, tuple[int, ...], int] | None:
    """(dtype, fortran order, shape, data offset) of a .npy 1.0 file starting with ``head``
    (its first 10 bytes and its header), or None for what the fast path leaves to np.load."""
    buffer = io.BytesIO(head)
    if npy.read_magic(buffer) != (1, 0):
        return None
    shape, fortran_order, dtype = npy.read_array_header_1_0(buffer)
    if dtype.hasobject:
        return None
    return dtype, fortran_order, tuple(shape), buffer.tell()


def encode(ndarray: np.ndarray) -> bytes | None:
    """The bytes ``np.save(buffer, ndarray, allow_pickle=False)`` writes, or None where
    np.save would write another .npy version (a header over 64 KiB) or a structured dtype."""
    header = npy.header_data_from_array_1_0(ndarray)
    if not isinstance(header["descr"], str):
        return None  # a structured dtype: np.save's own path
    try:
        head = _header(header["descr"], header["fortran_order"], tuple(header["shape"]))
    except (ValueError, UnicodeEncodeError):
        return None
    if header["fortran_order"]:
        return head + ndarray.tobytes(order="F")
    if ndarray.flags.c_contiguous:  # one copy of the data, not two (tobytes, then +)
        return b"".join((head, memoryview(ndarray.reshape(-1).view(np.uint8))))
    return head + ndarray.tobytes(order="C")


def _view(data: bytes) -> np.ndarray | None:
    """A read-only array over ``data``'s buffer (no copy), or None (see ``decode``)."""
    if not data.startswith(_MAGIC) or len(data) < 10:
        return None
    header_len = int.from_bytes(data[8:10], "little")
    layout = _layout(bytes(data[: 10 + header_len]))
    if layout is None:
        return None
    dtype, fortran_order, shape, offset = layout
    count = math.prod(shape)
    if len(data) - offset != count * dtype.itemsize:
        return None  # truncated or padded: np.load says what is wrong
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran_order else "C")


def decode(data: bytes) -> np.ndarray | None:
    """A new writable array equal to ``np.load(BytesIO(data))``, or None where the fast
    path does not apply (the caller then uses np.load)."""
    view = _view(data)
    if view is None:
        return None
    return view.copy(order="F" if view.flags.f_contiguous and view.ndim > 1 else "C")


def read_only(array) -> np.ndarray:
    """An ``Array``'s values without a copy, read-only (for sums and checks that only
    read); ``array.numpy()`` where the fast path does not apply."""
    if array.stype == "numpy.ndarray":
        view = _view(array.data)
        if view is not None:
            return view
    return array.numpy()


def install() -> None:
    """Route Flower's ``Array.from_numpy_ndarray`` and ``Array.numpy`` through the codec
    (idempotent; only on the pinned Flower, ``fedsim.compat``)."""
    global _INSTALLED
    if _INSTALLED:
        return
    _INSTALLED = True
    from fedsim.compat import may_patch

    if not may_patch("flwr-array-codec"):
        return
    from flwr.app import Array
    from flwr.app.message.array import SType

    slow_numpy, slow_from_numpy = Array.numpy, Array.from_numpy_ndarray.__func__

    def from_numpy_ndarray(cls, ndarray: np.ndarray) -> Array:
        data = None
        if isinstance(ndarray, np.ndarray) and not ndarray.dtype.hasobject:
            data = encode(ndarray)
        if data is None:
            return slow_from_numpy(cls, ndarray)
        shape = tuple(ndarray.shape)
        return Array(dtype=str(ndarray.dtype), shape=shape, stype=SType.NUMPY, data=data)

    def numpy(self) -> np.ndarray:
        if self.stype == SType.NUMPY:
            fast = decode(self.data)
            if fast is not None:
                return fast
        return slow_numpy(self)

    # __wrapped__ (functools.wraps) keeps inspect.getsource, hence compat's fingerprint,
    # on Flower's code after the patch
    Array.from_numpy_ndarray = classmethod(functools.wraps(slow_from_numpy)(from_numpy_ndarray))
    Array.numpy = functools.wraps(slow_numpy)(numpy)
