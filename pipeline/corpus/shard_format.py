"""The corpus's shard byte format as the fast path reads it, defined once.

`pipeline/corpus/store.py` writes every band-group array through zarr with one layout:
sharding, index at the end ([bytes little-endian, crc32c]) over [bytes little-endian,
zstd] inner chunks. `fast_path_supported` says whether an array has it; `parse_index`
and `locate` read its index: (offset, nbytes) little-endian uint64 per inner chunk in C
order, (2**64 - 1, 2**64 - 1) for a chunk never written (read as the fill value), then
the crc32c of those entries. The compiled kernels in `shard_kernel.py` perform the same
checks in one call and report them as codes that `index_error` words the same way, and
`benchmarks/loader.py` reads its decode floor through `parse_index` too.
"""

from __future__ import annotations

import google_crc32c
import numpy as np
import zarr
from terracube.pipeline.corpus.shard_geometry import ShardLayout
from terracube.pipeline.corpus.shard_kernel import BAD_CHECKSUM, NO_INDEX, PAST_DATA, SHORT_READ
from terracube.pipeline.corpus.zarr_adapter import codec_name
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec

EMPTY = 2**64 - 1
"""Index entry of an inner chunk that was never written."""


class ShardDecodeError(ValueError):
    """A shard object is missing bytes or fails its index checksum or a chunk decode."""


class ShardMissingError(ShardDecodeError):
    """A shard file or inner chunk of a format-2 store (complete shards) is not there:
    damage, which zarr's own reads would return as the fill value. Callers must not fall
    back to zarr for it."""


def _little(codec: object) -> bool:
    """Little-endian bytes (endian None: single-byte dtypes, where order does not apply)."""
    return isinstance(codec, BytesCodec) and codec_name(codec.endian) in (None, "little")


def fast_path_supported(arr: zarr.Array) -> bool:
    if arr.metadata.zarr_format != 3:  # zarr v2 arrays have no sharding codec
        return False
    codecs = arr.metadata.codecs
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return False
    shard = codecs[0]
    inner, index = shard.codecs, shard.index_codecs
    return (
        codec_name(shard.index_location) == "end"
        and len(inner) == 2
        and _little(inner[0])
        and isinstance(inner[1], ZstdCodec)
        and len(index) == 2
        and _little(index[0])
        and isinstance(index[1], Crc32cCodec)
        and np.dtype(arr.dtype).kind in "uif"
    )


def parse_index(path: str, raw: bytes | memoryview, layout: ShardLayout) -> np.ndarray:
    """The (n_chunks, 2) uint64 (offset, nbytes) entries of a shard's index bytes, after
    checking their size and crc32c."""
    if len(raw) != layout.index_bytes:
        raise ShardDecodeError(
            f"{path}: {len(raw)} bytes cannot hold a {layout.n_chunks}-chunk index"
        )
    if google_crc32c.value(bytes(raw[:-4])) != int.from_bytes(raw[-4:], "little"):
        raise ShardDecodeError(f"{path}: shard index checksum mismatch (truncated or corrupt)")
    return np.frombuffer(raw[:-4], dtype="<u8").reshape(-1, 2)


def locate(
    path: str, index: np.ndarray, flats: np.ndarray, data_end: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(written mask, byte offsets, byte sizes) of inner chunks `flats` (offsets and sizes
    of the written ones only, in `flats` order); a chunk past `data_end` is damage."""
    entries = index[flats]
    present = entries[:, 0] != EMPTY
    offsets = entries[present, 0].astype(np.int64)
    sizes = entries[present, 1].astype(np.int64)
    if data_end is not None and len(offsets) and int((offsets + sizes).max()) > data_end:
        raise ShardDecodeError(f"{path}: a chunk ends past the data, before the index")
    return present, offsets, sizes


def index_error(code: int, detail: int, layout: ShardLayout) -> str:
    """The words for a compiled kernel's index status code (as `parse_index` says them)."""
    if code == NO_INDEX:
        return f"{detail} bytes cannot hold a {layout.n_chunks}-chunk index"
    if code == BAD_CHECKSUM:
        return "shard index checksum mismatch (truncated or corrupt)"
    if code == PAST_DATA:
        return "a chunk ends past the data, before the index"
    assert code == SHORT_READ, code
    return f"short read of the shard index ({detail} bytes)"
