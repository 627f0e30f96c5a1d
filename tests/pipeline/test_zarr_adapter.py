"""What terracube relies on in zarr-python beyond its public API, pinned in one place.

`pipeline/corpus/zarr_adapter.py` is the only module that imports `zarr.core`; these
tests fail first when a zarr upgrade changes what it wraps, instead of a loader worker
failing mid-epoch.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import zarr
from terracube.pipeline.corpus.zarr_adapter import (
    RangeByteRequest,
    SuffixByteRequest,
    codec_name,
    default_buffer_prototype,
    io_loop,
    run_sync,
)
from zarr.codecs import BytesCodec, ShardingCodec
from zarr.storage import LocalStore


def test_run_sync_runs_on_zarrs_own_loop_thread() -> None:
    loop = io_loop()
    assert loop is not None and loop.is_running()

    async def where() -> tuple[asyncio.AbstractEventLoop, str]:
        return asyncio.get_running_loop(), threading.current_thread().name

    running, thread = run_sync(where())
    assert running is loop  # the loop the stores' sessions are bound to
    assert thread != threading.current_thread().name


def test_coroutines_submitted_to_the_io_loop_finish() -> None:
    """The prefetcher's path: run_coroutine_threadsafe on `io_loop()`."""
    loop = io_loop()
    assert loop is not None

    async def value() -> int:
        await asyncio.sleep(0)
        return 7

    assert asyncio.run_coroutine_threadsafe(value(), loop).result(timeout=10) == 7


def test_store_reads_with_byte_ranges_through_the_public_prototype(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    data = bytes(range(256)) * 4
    (tmp_path / "blob").write_bytes(data)
    proto = default_buffer_prototype()

    async def read() -> tuple[bytes, bytes]:
        suffix = await store.get("blob", prototype=proto, byte_range=SuffixByteRequest(10))
        middle = await store.get("blob", prototype=proto, byte_range=RangeByteRequest(5, 9))
        assert suffix is not None and middle is not None
        return suffix.to_bytes(), middle.to_bytes()

    assert run_sync(read()) == (data[-10:], data[5:9])


def test_codec_fields_read_as_strings_whatever_their_type(tmp_path: Path) -> None:
    """zarr <= 3.2: enums (`Endian.little`, `ShardingCodecIndexLocation.end`); 3.3+: str."""
    arr = zarr.create_array(
        LocalStore(tmp_path), name="a", shape=(4, 8), chunks=(1, 8), shards=(2, 8), dtype="u2"
    )
    arr[:] = np.arange(32, dtype="u2").reshape(4, 8)
    (sharding,) = arr.metadata.codecs  # type: ignore[union-attr]
    assert isinstance(sharding, ShardingCodec)
    assert codec_name(sharding.index_location) == "end"
    inner = sharding.codecs[0]
    assert isinstance(inner, BytesCodec) and codec_name(inner.endian) == "little"
    assert codec_name("little") == "little" and codec_name(None) is None
