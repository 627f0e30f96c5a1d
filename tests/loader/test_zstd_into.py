"""zstd decoding into caller memory: libzstd through ctypes and the numcodecs fallback agree."""

from __future__ import annotations

import numcodecs
import numpy as np
import pytest
from terracube.pipeline.corpus.zstd_into import ZstdFrameError, ZstdInto


@pytest.fixture(params=[True, False], ids=["libzstd", "numcodecs"])
def zstd(request: pytest.FixtureRequest) -> ZstdInto:
    """Both decoding paths; the libzstd one is skipped where the library cannot be loaded."""
    decoder = ZstdInto(native=request.param)
    if request.param and not decoder.native:
        pytest.skip("libzstd cannot be loaded here")
    return decoder


def _frames(
    n: int, shape: tuple[int, ...]
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    values = [rng.integers(0, 2000, shape).astype(np.uint16) for _ in range(n)]
    codec = numcodecs.Zstd(level=3)
    encoded = [codec.encode(v) for v in values]
    sizes = np.array([len(e) for e in encoded], dtype=np.int64)
    starts = np.concatenate([[7], 7 + np.cumsum(sizes)[:-1]])  # 7 junk bytes in front
    src = np.frombuffer(b"garbage" + b"".join(encoded), dtype=np.uint8).copy()
    return src, values, starts, sizes


def test_rows_and_single_frames_decode_exactly(zstd: ZstdInto) -> None:
    src, values, starts, sizes = _frames(5, (3, 16, 16))
    dst = np.zeros((7, 3, 16, 16), np.uint16)
    zstd.decode_rows(src, starts, sizes, dst, rows=np.array([6, 0, 2, 3, 1]))
    for value, row in zip(values, [6, 0, 2, 3, 1], strict=True):
        np.testing.assert_array_equal(dst[row], value)
    assert not dst[4].any() and not dst[5].any()  # rows nobody named are untouched
    scratch = np.empty((3, 16, 16), np.uint16)
    decode = zstd.frame_decoder(src, scratch)
    for value, start, size in zip(values, starts.tolist(), sizes.tolist(), strict=True):
        decode(start, size)
        np.testing.assert_array_equal(scratch, value)


def test_a_bad_frame_or_a_wrong_size_is_an_error_not_garbage(zstd: ZstdInto) -> None:
    src, _, starts, sizes = _frames(2, (4, 8))
    decode = zstd.frame_decoder(src, np.empty((4, 8), np.uint16))
    with pytest.raises(ZstdFrameError):
        decode(0, int(sizes[0]))  # starts inside the junk: no frame there
    with pytest.raises(ZstdFrameError):
        zstd.frame_decoder(src, np.empty((4, 9), np.uint16))(int(starts[0]), int(sizes[0]))
    with pytest.raises(ZstdFrameError):
        zstd.frame_decoder(src, np.empty((4, 7), np.uint16))(int(starts[0]), int(sizes[0]))
    with pytest.raises(ValueError, match="outside"):
        decode(int(starts[1]), int(sizes[1]) + 1)  # runs past the end of the source
    with pytest.raises(ZstdFrameError):
        truncated = src.copy()
        truncated[int(starts[1]) + 5 :] = 0
        zstd.frame_decoder(truncated, np.empty((4, 8), np.uint16))(int(starts[1]), int(sizes[1]))


def test_a_lone_frame_decodes_from_bytes_or_fails_loudly(zstd: ZstdInto) -> None:
    src, values, starts, sizes = _frames(2, (4, 8))
    raw = src.tobytes()
    out = np.empty((4, 8), np.uint16)
    zstd.decode_frame(raw, int(starts[1]), int(sizes[1]), out)
    np.testing.assert_array_equal(out, values[1])
    with pytest.raises(ZstdFrameError):
        zstd.decode_frame(raw, 0, int(sizes[0]), out)  # the junk before the first frame
    with pytest.raises(ZstdFrameError):
        zstd.decode_frame(raw, int(starts[0]), int(sizes[0]), np.empty((4, 9), np.uint16))
    with pytest.raises(ValueError, match="outside"):
        zstd.decode_frame(raw, int(starts[1]), int(sizes[1]) + 1, out)
