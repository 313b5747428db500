"""fedsim.array_codec: Flower's Array written and read without np.save/np.load per call,
to the very bytes np.save writes and the arrays np.load returns."""

from __future__ import annotations

import io

import numpy as np
import pytest
from flwr.app import Array

from fedsim import array_codec

CASES = {
    "float32 matrix": np.arange(12, dtype=np.float32).reshape(3, 4),
    "fortran order": np.asfortranarray(np.ones((3, 4))),
    "strided view": np.arange(24).reshape(2, 3, 4)[:, ::2],
    "transposed": np.random.default_rng(0).random((5, 7)).T,
    "0-d": np.array(3.0),
    "empty": np.zeros((0, 5), np.int8),
    "bool": np.array([True, False]),
    "big-endian": np.arange(6, dtype=">i4"),
    "structured": np.zeros((2,), dtype=[("a", "<f4"), ("b", "<i8")]),
}


def _saved(values: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, values, allow_pickle=False)
    return buffer.getvalue()


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_codec_writes_np_saves_bytes_and_reads_np_loads_array(name):
    array_codec.install()
    values = CASES[name]
    data = _saved(values)
    assert Array(values).data == data  # through Flower's constructor, patched
    encoded = array_codec.encode(values)
    assert encoded is None or encoded == data  # None: left to np.save (structured dtypes)
    loaded, fast = np.load(io.BytesIO(data)), Array(values).numpy()
    assert fast.dtype == loaded.dtype and fast.shape == loaded.shape
    assert np.array_equal(fast, loaded) and fast.flags.writeable
    assert fast.flags.f_contiguous == loaded.flags.f_contiguous
    fast[...] = 0  # a copy: the message's bytes stay as they were
    assert Array(values).data == data


def test_what_the_fast_path_does_not_know_goes_to_numpy():
    truncated = _saved(np.arange(10.0))[:-8]
    assert array_codec.decode(truncated) is None
    assert array_codec.decode(b"not an npy file") is None
