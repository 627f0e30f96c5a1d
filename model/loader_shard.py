"""Whole-shard reads: one store GET per array per shard, then a tight zstd decode loop.

zarr-python decodes a sharded read chunk by chunk through its async codec
pipeline, which on a loaded 2-core machine costs ~2x the zstd work itself. When
an array uses exactly the corpus's default layout — sharding with the index at
the end ([bytes little-endian, crc32c]) over [bytes little-endian, zstd] inner
chunks — the loader fetches the shard object with the array's own store (local,
S3, any fsspec URL) and decodes it here. The index checksum is verified, and any
other layout simply returns None so the caller uses zarr.
"""

from __future__ import annotations

import math

import google_crc32c
import numcodecs
import numpy as np
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

_EMPTY = np.uint64(2**64 - 1)
_ZSTD = numcodecs.Zstd()


class ShardDecodeError(ValueError):
    """A shard object is missing bytes or fails its index checksum."""


def _little(codec: object) -> bool:
    """Little-endian bytes (endian None: single-byte dtypes, where order does not apply)."""
    return isinstance(codec, BytesCodec) and (
        codec.endian is None or codec.endian.value == "little"
    )


def fast_path_supported(arr: zarr.Array) -> bool:
    codecs = arr.metadata.codecs
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return False
    shard = codecs[0]
    inner, index = shard.codecs, shard.index_codecs
    return (
        shard.index_location == ShardingCodecIndexLocation.end
        and len(inner) == 2
        and _little(inner[0])
        and isinstance(inner[1], ZstdCodec)
        and len(index) == 2
        and _little(index[0])
        and isinstance(index[1], Crc32cCodec)
        and np.dtype(arr.dtype).kind in "uif"
    )


def read_shard(arr: zarr.Array, shard: int) -> np.ndarray:
    """Shard `shard` along axis 0 (other axes whole), trimmed to the array's extent."""
    shard_shape = tuple(arr.shards)
    chunk_shape = tuple(arr.chunks)
    grid = tuple(s // c for s, c in zip(shard_shape, chunk_shape, strict=True))
    n_chunks = math.prod(grid)
    dtype = np.dtype(arr.dtype).newbyteorder("<")
    key = arr.metadata.encode_chunk_key((shard, *([0] * (len(shard_shape) - 1))))
    path = f"{arr.store_path.path}/{key}" if arr.store_path.path else key
    buf = sync(arr.store_path.store.get(path, prototype=default_buffer_prototype()))
    out = np.full(shard_shape, arr.fill_value, dtype=dtype)
    if buf is not None:
        raw = buf.to_bytes()
        index_size = 16 * n_chunks + 4
        if len(raw) < index_size:
            raise ShardDecodeError(f"{path}: {len(raw)} bytes cannot hold a {n_chunks}-chunk index")
        index_bytes, checksum = raw[-index_size:-4], raw[-4:]
        if google_crc32c.value(index_bytes) != int.from_bytes(checksum, "little"):
            raise ShardDecodeError(f"{path}: shard index checksum mismatch (truncated or corrupt)")
        index = np.frombuffer(index_bytes, dtype="<u8").reshape(n_chunks, 2)
        view = memoryview(raw)
        for flat, (offset, nbytes) in enumerate(index):
            if offset == _EMPTY:
                continue
            if offset + nbytes > len(raw) - index_size:
                raise ShardDecodeError(f"{path}: chunk {flat} points past the data")
            chunk = np.frombuffer(_ZSTD.decode(view[offset : offset + nbytes]), dtype=dtype)
            pos = np.unravel_index(flat, grid)
            sel = tuple(slice(p * c, (p + 1) * c) for p, c in zip(pos, chunk_shape, strict=True))
            out[sel] = chunk.reshape(chunk_shape)
    stop = min(shard_shape[0], arr.shape[0] - shard * shard_shape[0])
    return out[:stop].astype(np.dtype(arr.dtype), copy=False)
