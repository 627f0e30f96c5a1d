"""Resuming a stream exactly, seeds, and batches carried through shared memory."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import pytest
import torch
from terracube.model.data.loader import CorpusStream, LoaderItem
from terracube.model.data.plan import (
    LoaderParams,
    Slot,
)
from terracube.model.data.stream import StreamingLoader
from terracube.model.data.transport import pack, unpack

from tests.loader.corpus_fixture import (
    N_SAMPLES,
    NOTHING_DONE,
)

ELIGIBLE = sorted(set(range(N_SAMPLES)) - {NOTHING_DONE})
SMALL = LoaderParams(batch_size=2, crop_sizes=(16, 32), patch_sizes=(4, 8), token_budget=1200)


def _signature(item: LoaderItem) -> tuple:
    return (
        item.epoch,
        item.index,
        item.samples,
        item.batch.patch_size,
        tuple(item.batch.data["s2_10m"].shape),
        float(item.batch.data["s2_10m"].sum()),
        tuple(int(v.encode["s2_10m"].sum()) for v in item.views),
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_restoring_the_position_resumes_the_stream_exactly(corpus_path: Path, workers: int) -> None:
    n_first, n_total = 4, 9  # crosses the epoch boundary (6 batches per epoch)
    reference = StreamingLoader(CorpusStream(corpus_path, SMALL), num_workers=workers)
    it = iter(reference)
    expected = [_signature(next(it)) for _ in range(n_total)]
    assert expected[6][0] == 1 and expected[0][:3] != expected[6][:3]

    first = StreamingLoader(CorpusStream(corpus_path, SMALL), num_workers=workers)
    it = iter(first)
    got = [_signature(next(it)) for _ in range(n_first)]
    state = first.state_dict()
    assert all(isinstance(v, int) for v in state.values())
    second = StreamingLoader(CorpusStream(corpus_path, SMALL), num_workers=workers)
    second.load_state_dict(state)
    it = iter(second)
    got += [_signature(next(it)) for _ in range(n_total - n_first)]
    assert got == expected


def test_seed_changes_the_stream_and_a_mismatched_resume_is_refused(corpus_path: Path) -> None:
    a = [i.samples for i in CorpusStream(corpus_path, SMALL)]
    b = [
        i.samples for i in CorpusStream(corpus_path, LoaderParams(**{**SMALL.__dict__, "seed": 7}))
    ]
    assert a == [i.samples for i in CorpusStream(corpus_path, SMALL)]
    assert a != b
    loader = StreamingLoader(CorpusStream(corpus_path, SMALL), num_workers=2)
    state = {**loader.state_dict(), "num_workers": 3}
    with pytest.raises(ValueError, match="num_workers=3"):
        loader.load_state_dict(state)


def test_slot_rejects_a_rank_outside_the_world() -> None:
    with pytest.raises(ValueError, match="rank=2"):
        Slot(rank=2, world_size=2)


def test_pack_round_trips_every_tensor_through_one_shared_buffer(corpus_path: Path) -> None:
    item = next(iter(CorpusStream(corpus_path, SMALL)))
    extra = {"scalar": torch.tensor(3.5), "strided": torch.arange(12).reshape(3, 4).T}
    arena = item.raw.raw["s2_10m"]
    packed = pack((item, extra), arena=arena)
    assert packed.buffers[1].is_shared()  # the arena is shared only when a worker builds it
    got, got_extra = unpack(packed)
    assert got.samples == item.samples and got.index == item.index
    assert got._cpu is None  # the materialised batch never travels
    for g in item.raw.groups:
        assert torch.equal(got.raw.raw[g], item.raw.raw[g])
        assert torch.equal(got.raw.valid[g], item.raw.valid[g])
        assert got.raw.valid[g].dtype == torch.bool
        assert torch.equal(got.batch.data[g], item.batch.data[g])
        for view, want in zip(got.views, item.views, strict=True):
            assert torch.equal(view.encode[g], want.encode[g])
            assert torch.equal(view.decode[g], want.decode[g])
        # storage values and validity stay in the arena they were built in: views, not copies
        assert got.raw.raw[g].untyped_storage().data_ptr() == arena.untyped_storage().data_ptr()
        assert got.raw.valid[g].untyped_storage().data_ptr() == packed.buffers[0].data_ptr()
    assert torch.equal(got.raw.months, item.raw.months)
    assert got_extra["scalar"].item() == 3.5
    assert torch.equal(got_extra["strided"], extra["strided"])
    assert got_extra["strided"].untyped_storage().data_ptr() == packed.buffers[1].data_ptr()
    with pytest.raises(ValueError, match="without grad"):
        pack(torch.ones(2, requires_grad=True))


def _same_batches(a: LoaderItem, b: LoaderItem) -> None:
    assert (a.epoch, a.index, a.samples) == (b.epoch, b.index, b.samples)
    for g in a.raw.groups:
        assert torch.equal(a.raw.raw[g], b.raw.raw[g]), g
        assert torch.equal(a.raw.valid[g], b.raw.valid[g]), g
        for va, vb in zip(a.views, b.views, strict=True):
            assert torch.equal(va.encode[g], vb.encode[g]) and torch.equal(
                va.decode[g], vb.decode[g]
            )
    assert torch.equal(a.raw.months, b.raw.months)


def test_ring_slots_are_reused_and_batches_held_long_stay_intact(corpus_path: Path) -> None:
    """Workers build batches in reusable shared slots; a slot is reused only after the
    consumer dropped every view of it. Batches held across many later ones (more than the
    ring has slots) keep their values: the worker falls back to fresh memory meanwhile."""
    n = 3 * CorpusStream(corpus_path, SMALL).batches_in_epoch(0, 1)
    want = list(islice(StreamingLoader(CorpusStream(corpus_path, SMALL)), n))
    loader = StreamingLoader(CorpusStream(corpus_path, SMALL), num_workers=1)
    stream = iter(loader)
    in_ring = 0
    for k in range(n // 2):  # dropped right away: slots come back
        item = next(stream)
        ring = loader.dataset.ring  # set up when the workers start
        assert ring is not None
        start = ring.memory.data_ptr()
        inside = start <= item.raw.raw["s2_10m"].data_ptr() < start + ring.memory.numel()
        in_ring += inside
        _same_batches(item, want[k])
        del item
    assert in_ring >= n // 2 - 1  # at most the first batch races the ring's setup
    held = [next(stream) for _ in range(n // 2, n)]  # all held: more than the ring's slots
    assert len(held) > ring.per_worker
    for k, item in zip(range(n // 2, n), held, strict=True):
        _same_batches(item, want[k])
    loader.close()


def test_too_little_shared_memory_falls_back_to_a_segment_per_batch(
    corpus_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A ring that would not fit /dev/shm (where a full tmpfs kills with SIGBUS) is not
    created: the loader warns, names the fix, and sends the same batches the slow way."""
    import terracube.model.data.stream as loader_stream

    monkeypatch.setattr(loader_stream, "shared_memory_free_bytes", lambda path="": 1_000_000)
    n = CorpusStream(corpus_path, SMALL).batches_in_epoch(0, 1)
    want = list(islice(StreamingLoader(CorpusStream(corpus_path, SMALL)), n))
    loader = StreamingLoader(CorpusStream(corpus_path, SMALL), num_workers=1)
    with caplog.at_level("WARNING", logger="terracube.model.data.stream"):
        got = list(islice(loader, n))
    assert loader.dataset.ring is None
    assert "--shm-size" in caplog.text
    for a, b in zip(got, want, strict=True):
        _same_batches(a, b)
    loader.close()
