"""The streaming loader over s3:// (a local moto S3 server): the same batches as from disk.

The remote path fetches every group's shard index, chunk ranges and per-sample metadata of
a shard in one concurrent wave, so it is exercised on a real S3 API here, in the training
process and in a forked DataLoader worker (fsspec and zarr event loops across fork).
"""

from __future__ import annotations

import uuid
from itertools import islice
from pathlib import Path

import pytest
import s3fs
import torch
from terracube.model.data.loader import CorpusStream, LoaderItem
from terracube.model.data.plan import LoaderParams
from terracube.model.data.stream import StreamingLoader

from tests.loader.corpus_fixture import write_loader_corpus
from tests.services.s3 import S3Store

SMALL = LoaderParams(batch_size=2, crop_sizes=(16, 32), patch_sizes=(4, 8), token_budget=1200)


def _same(a: LoaderItem, b: LoaderItem) -> None:
    assert (a.epoch, a.index, a.samples) == (b.epoch, b.index, b.samples)
    assert a.decode_errors == b.decode_errors == 0
    assert a.fallbacks == b.fallbacks == 0
    for g in a.raw.groups:
        assert torch.equal(a.raw.raw[g], b.raw.raw[g]), g
        assert torch.equal(a.raw.valid[g], b.raw.valid[g]), g
        for va, vb in zip(a.views, b.views, strict=True):
            assert torch.equal(va.encode[g], vb.encode[g]), g
            assert torch.equal(va.decode[g], vb.decode[g]), g
    assert torch.equal(a.raw.months, b.raw.months)


@pytest.mark.services
@pytest.mark.parametrize(("workers", "prefetch"), [(0, 2), (1, 2), (0, 0)])
def test_loader_over_s3_gives_the_batches_it_gives_from_disk(
    s3_store: S3Store, tmp_path: Path, workers: int, prefetch: int
) -> None:
    """Prefetched shards (fetched ahead in one concurrent wave each), shards read array by
    array when needed (prefetch 0), in the process and in a forked worker: all equal."""
    local = tmp_path / "corpus.zarr"
    write_loader_corpus(local)
    url = s3_store.url(f"loader-{uuid.uuid4().hex}/corpus.zarr")
    s3fs.S3FileSystem(**s3_store.storage_options).put(
        str(local), url.removeprefix("s3://"), recursive=True
    )
    n = 2 * CorpusStream(local, SMALL).batches_in_epoch(0, max(1, workers))
    want = list(islice(StreamingLoader(CorpusStream(local, SMALL), num_workers=workers), n))
    remote = CorpusStream(
        url, SMALL, storage_options=s3_store.storage_options, prefetch_shards=prefetch
    )
    loader = StreamingLoader(remote, num_workers=workers)
    got = list(islice(loader, n))
    if workers == 0:  # the fast path read it, through the store API (not zarr selections)
        assert remote.fast_path_arrays >= set(remote.groups)
        assert not any(r.local for r in remote._readers.values())
    for a, b in zip(got, want, strict=True):
        _same(a, b)
    assert loader.fallbacks == 0
    loader.close()
