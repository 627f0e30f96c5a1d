"""The streaming loader against a small structured corpus written with the Corpus API."""

from __future__ import annotations

import math
import shutil
from collections import Counter
from itertools import islice
from pathlib import Path

import google_crc32c
import numpy as np
import pytest
import torch
from terracube.catalog.registry import BAND_GROUPS, MODALITIES, WORLDCOVER_CLASSES
from terracube.model.data.loader import CorpusStream, LoaderItem
from terracube.model.data.pixel_stats import (
    STATS_ATTR,
    GroupNormalizer,
    compute_stats,
    group_normalizer,
    stats_command,
)
from terracube.model.data.plan import (
    BatchPlan,
    LoaderParams,
    Slot,
    TokenShape,
    buffer_shuffle,
    draw_geometry,
    round_robin,
)
from terracube.model.data.stream import StreamingLoader
from terracube.model.data.transport import pack, unpack
from terracube.model.nn.batch import validate_batch
from terracube.model.nn.groups import decode_only_groups
from terracube.pipeline.corpus import shard_kernel
from terracube.pipeline.corpus import shard_reader as loader_shard
from terracube.pipeline.corpus.shard_geometry import ShardLayout, byte_runs, window_chunks
from terracube.pipeline.corpus.shard_reader import ShardDecodeError, ShardReader, read_shard
from terracube.pipeline.corpus.store import Corpus, InnerChunking
from terracube.pipeline.corpus.zstd_into import ZstdInto
from torch.utils.data import DataLoader

from tests.loader.corpus_fixture import (
    MISSING_PERIOD,
    N_SAMPLES,
    NOTHING_DONE,
    S1_EMPTY,
    sample_data,
    write_loader_corpus,
)

ELIGIBLE = sorted(set(range(N_SAMPLES)) - {NOTHING_DONE})
SMALL = LoaderParams(batch_size=2, crop_sizes=(16, 32), patch_sizes=(4, 8), token_budget=1200)


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("loader") / "corpus.zarr"
    write_loader_corpus(path)
    return path


@pytest.fixture(scope="module")
def stats_path(corpus_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stats") / "corpus.zarr"
    shutil.copytree(corpus_path, path)
    stats_command(path)
    return path


def _identity(item: LoaderItem) -> LoaderItem:
    return item


# --------------------------------------------------------------------------- split


def test_every_sample_once_per_epoch_across_two_ranks_of_two_workers(corpus_path: Path) -> None:
    seen: Counter[int] = Counter()
    for rank in range(2):
        dataset = CorpusStream(corpus_path, SMALL, rank=rank, world_size=2)
        loader = DataLoader(dataset, batch_size=None, num_workers=2, collate_fn=_identity)
        for item in loader:
            seen.update(item.samples)
            assert len(item.samples) == item.batch.batch_size
    assert sorted(seen) == ELIGIBLE  # 6 shards over 4 slots; the nothing-done sample skipped
    assert set(seen.values()) == {1}


def test_equalize_gives_every_rank_the_same_batch_count_and_no_repeats(
    corpus_path: Path,
) -> None:
    params = LoaderParams(**{**SMALL.__dict__, "equalize": True, "drop_last": True})
    counts, seen = [], Counter()
    for rank in range(3):
        dataset = CorpusStream(corpus_path, params, rank=rank, world_size=3)
        items = list(dataset.iter_plans(dataset.plans(0, 0, 1)))
        counts.append(len(items))
        assert dataset.batches_in_epoch(0, 1) == len(items)
        for item in items:
            assert len(item.samples) == params.batch_size
            seen.update(item.samples)
    assert len(set(counts)) == 1 and counts[0] >= 1
    assert set(seen.values()) == {1} and set(seen) <= set(ELIGIBLE)


def test_round_robin_matches_a_dataloader_skipping_exhausted_workers() -> None:
    assert round_robin([2, 1, 3]) == [(0, 0), (1, 0), (2, 0), (0, 1), (2, 1), (2, 2)]
    assert round_robin([2, 1, 3], limit=4) == [(0, 0), (1, 0), (2, 0), (0, 1)]


def test_buffer_shuffle_is_a_permutation_that_never_runs_ahead_of_the_buffer() -> None:
    shards = [list(range(k * 4, k * 4 + 4)) for k in range(5)]
    out = buffer_shuffle(shards, 3, np.random.default_rng(1))
    assert sorted(out) == list(range(20))
    for position, sample in enumerate(out):
        assert sample <= position + 3  # only samples already read can be emitted
    assert out != list(range(20))


# --------------------------------------------------------------------------- geometry


def test_geometry_respects_the_token_budget_and_shrinks_time_for_big_crops() -> None:
    shape = TokenShape(temporal_groups=5, static_groups=2, n_periods=12)
    params = LoaderParams(crop_sizes=(32, 64, 128), patch_sizes=(4, 8), token_budget=2048)
    by_crop: dict[tuple[int, int], set[int]] = {}
    for j in range(300):
        geo = draw_geometry(params, shape, 0, j)
        assert geo.crop % geo.patch == 0
        assert shape.tokens(geo.crop, geo.patch, geo.timesteps) <= params.token_budget
        # as many timesteps as fit: one more would break the budget (or exceed the periods)
        assert (
            geo.timesteps == 12
            or shape.tokens(geo.crop, geo.patch, geo.timesteps + 1) > params.token_budget
        )
        by_crop.setdefault((geo.crop, geo.patch), set()).add(geo.timesteps)
    assert by_crop[(32, 8)] == {12}
    assert by_crop[(64, 8)] == {6}  # 64 tokens/group: (2048 // 64 - 2) // 5
    assert by_crop[(128, 8)] == {1}
    assert (128, 4) not in by_crop  # 1024 tokens x 7 groups cannot fit


def test_batches_from_the_store_stay_under_the_budget(corpus_path: Path) -> None:
    dataset = CorpusStream(corpus_path, SMALL)
    for item in dataset:
        b = item.batch
        validate_batch(b)
        h, w = b.grid
        tokens = sum(b.data[g].shape[1] * h * w for g in b.groups)
        assert tokens <= SMALL.token_budget


def test_a_budget_that_fits_nothing_names_the_setting(corpus_path: Path) -> None:
    params = LoaderParams(crop_sizes=(64,), patch_sizes=(4,), token_budget=100)
    with pytest.raises(ValueError, match="token_budget=100"):
        CorpusStream(corpus_path, params)
    with pytest.raises(ValueError, match="multiple of 4"):
        LoaderParams(crop_sizes=(30,))


# --------------------------------------------------------------------------- values


def _expected(plan: BatchPlan, b: int, group: str, stats: dict | None):
    """What the loader must give for sample b of `plan`: recomputed from the fixture."""
    sample = plan.samples[b]
    g = BAND_GROUPS[group]
    temporal = MODALITIES[g.modality].temporal
    record = sample_data(sample)
    assert record is not None
    raw = record.groups.get(group)
    f = int(g.resolution // 10)
    t0, t = plan.starts[b], plan.geometry.timesteps
    side = plan.geometry.crop // f
    y, x = plan.offsets[b][0] // f, plan.offsets[b][1] // f
    n_t = t if temporal else 1
    if raw is None:  # modality not done
        return None, np.zeros((n_t, plan.geometry.crop, plan.geometry.crop), bool)
    if not temporal:
        raw = raw[None]
        fraction = np.array([record.valid_fraction[group]])
    else:
        raw = raw[t0 : t0 + t]
        fraction = record.valid_fraction[group][t0 : t0 + t]
    raw = raw[:, :, y : y + side, x : x + side]
    nodata = g.nodata
    bad = np.isnan(raw) if np.isnan(nodata) else raw == nodata
    ok = ~bad.any(axis=1) & (fraction > 0)[:, None, None]
    norm = g.bands[0].normalization
    if norm.kind == "onehot":
        codes = sorted(WORLDCOVER_CLASSES)
        chans = np.stack([raw[:, 0] == c for c in codes], axis=1).astype(np.float32)
    else:
        mean = np.array([bd.normalization.mean for bd in g.bands])
        std = np.array([bd.normalization.std for bd in g.bands])
        if norm.kind == "standard" and stats is not None:
            mean = np.array(stats["groups"][group]["mean"])
            std = np.array(stats["groups"][group]["std"])
        chans = (raw.astype(np.float64) - mean[:, None, None]) / std[:, None, None]
    chans = np.where(ok[:, None], chans, 0.0)
    chans = chans.repeat(f, axis=-2).repeat(f, axis=-1)
    ok = ok.repeat(f, axis=-2).repeat(f, axis=-1)
    return chans, ok


@pytest.mark.parametrize("with_stats", [False, True])
def test_batch_values_are_the_cropped_normalised_upsampled_store(
    corpus_path: Path, stats_path: Path, with_stats: bool
) -> None:
    path = stats_path if with_stats else corpus_path
    stats = Corpus.open(path).group.attrs.get(STATS_ATTR) if with_stats else None
    dataset = CorpusStream(path, SMALL)
    assert dataset.fast_path_arrays >= set(dataset.groups)
    plans = dataset.plans(0, 0, 1)
    checked_missing = set()
    for plan, item in zip(plans, dataset.iter_plans(plans), strict=True):
        assert item.samples == plan.samples
        assert item.fallbacks == 0  # every value below came through the compiled path
        for b, sample in enumerate(plan.samples):
            for group in dataset.groups:
                chans, ok = _expected(plan, b, group, stats)
                got_valid = item.batch.valid[group][b].numpy()
                np.testing.assert_array_equal(got_valid, ok, err_msg=f"{group} sample {sample}")
                got = item.batch.data[group][b].numpy()
                if chans is None:
                    assert not got.any()
                    checked_missing.add(group)
                else:
                    np.testing.assert_allclose(got, chans, rtol=1e-5, atol=1e-5)
            months = item.batch.months[b].numpy()
            starts = sample_data(sample).period_starts[plan.starts[b] :][: len(months)]
            assert list(months) == [int(str(d)[5:7]) - 1 for d in starts]
    assert checked_missing >= {"landsat", "s1"}  # pending everywhere, empty for S1_EMPTY
    assert S1_EMPTY in {s for p in plans for s in p.samples}
    assert dataset.fallbacks == 0


def test_a_failing_fast_path_is_counted_and_zarr_gives_the_same_values(
    corpus_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The value tests above assert zero fallbacks: here is why that can fail. With the
    compiled shard read broken, zarr reads the same windows and every fallback is counted."""
    dataset = CorpusStream(corpus_path, SMALL)
    plans = dataset.plans(0, 0, 1)
    want = list(dataset.iter_plans(plans))

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("fast path broken on purpose")

    monkeypatch.setattr(loader_shard.ShardReader, "fetch", broken)
    fallback = CorpusStream(corpus_path, SMALL)
    got = list(fallback.iter_plans(plans))
    assert fallback.fallbacks == sum(i.fallbacks for i in got) > 0
    for a, b in zip(got, want, strict=True):
        for g in a.raw.groups:
            assert torch.equal(a.raw.raw[g], b.raw.raw[g]), g


def test_missing_timestep_masks_the_period(corpus_path: Path) -> None:
    dataset = CorpusStream(corpus_path, SMALL)
    sample, period = MISSING_PERIOD
    for item in dataset:
        if sample in item.samples:
            b = item.samples.index(sample)
            plan = next(p for p in dataset.plans(0, 0, 1) if p.index == item.index)
            t = period - plan.starts[b]
            for group in ("s2_10m", "s2_20m", "s2_40m"):
                valid = item.batch.valid[group][b]
                if 0 <= t < valid.shape[0]:
                    assert not valid[t].any()
                assert valid.any()  # other periods keep their pixels
            return
    pytest.fail("the sample with a missing period was never loaded")


def test_masking_runs_in_the_worker_and_never_encodes_maps(corpus_path: Path) -> None:
    dataset = CorpusStream(corpus_path, SMALL)
    for item in dataset:
        assert len(item.views) == 2
        for view in item.views:
            for g in decode_only_groups():
                assert not view.encode[g].any()
            for g in item.batch.groups:
                assert not (view.encode[g] & view.decode[g]).any()
                assert not (view.encode[g] & ~item.batch.token_valid(g)).any()
        assert any(view.encode[g].any() for view in item.views for g in item.batch.groups)


# --------------------------------------------------------------------------- stats


def test_stats_match_a_direct_numpy_computation(stats_path: Path) -> None:
    stats = compute_stats(stats_path)
    assert (
        Corpus.open(stats_path).group.attrs[STATS_ATTR]["groups"]["s2_10m"]["mean"]
        == (stats["groups"]["s2_10m"]["mean"])
    )
    records = [sample_data(i) for i in range(N_SAMPLES)]
    for group in ("s2_10m", "s2_40m", "s1", "osm", "worldcover"):
        g = BAND_GROUPS[group]
        for b, band in enumerate(g.bands):
            values = []
            for r in records:
                if r is None or group not in r.groups:
                    continue
                arr = r.groups[group]
                fraction = np.atleast_1d(r.valid_fraction[group])
                arr = arr[fraction > 0] if arr.ndim == 4 else arr[None]
                v = arr[:, b].ravel().astype(np.float64)
                values.append(v[~np.isnan(v)] if np.isnan(band.nodata) else v[v != band.nodata])
            v = np.concatenate(values)
            s = stats["groups"][group]
            assert s["count"][b] == v.size
            np.testing.assert_allclose(s["mean"][b], v.mean(), rtol=1e-12)
            np.testing.assert_allclose(s["std"][b], v.std(), rtol=1e-9)
    assert stats["groups"]["landsat"]["count"] == [0] * 8  # never built


def test_registry_defaults_without_stats_and_corpus_stats_with_them(stats_path: Path) -> None:
    stats = Corpus.open(stats_path).group.attrs[STATS_ATTR]
    default = group_normalizer("s2_10m", None)
    assert default.mean[0] == BAND_GROUPS["s2_10m"].bands[0].normalization.mean
    tuned = group_normalizer("s2_10m", stats)
    assert tuned.mean[0] == pytest.approx(stats["groups"]["s2_10m"]["mean"][0])
    osm = group_normalizer("osm", stats)  # coverage percent: fixed /100, never corpus stats
    x = np.full((1, 30, 2, 2), 50, np.uint8)
    np.testing.assert_allclose(osm(x, osm.pixel_valid(x)), 0.5)


# --------------------------------------------------------------------------- failures


def _shard_file(path: Path, group: str, shard: int) -> Path:
    return path / group / "c" / str(shard) / "0" / "0" / "0" / "0"


def _garble_chunk(path: Path, group: str, sample: int, period: int) -> None:
    """Overwrite the bytes of every inner chunk of one (sample, timestep) (the shard index
    stays valid)."""
    corpus = Corpus.open(path)
    arr = corpus.array(group)
    layout = ShardLayout(tuple(arr.shards), tuple(arr.chunks))
    shard, local = divmod(sample, arr.shards[0])
    target = _shard_file(path, group, shard)
    raw = bytearray(target.read_bytes())
    index = np.frombuffer(bytes(raw[-layout.index_bytes : -4]), "<u8").reshape(-1, 2)
    first = local * layout.strides[0] + period * layout.strides[1]
    for offset, nbytes in index[first : first + layout.strides[1]].tolist():
        raw[offset : offset + nbytes] = b"\xff" * nbytes
    target.write_bytes(bytes(raw))


def _one_epoch(path: Path) -> tuple[dict[int, LoaderItem], StreamingLoader]:
    dataset = CorpusStream(path, SMALL)
    loader = StreamingLoader(dataset)
    items = {}
    for item in islice(loader, dataset.batches_in_epoch(0, 0)):
        items.update({s: item for s in item.samples})
    assert sorted(items) == ELIGIBLE
    return items, loader


def test_a_truncated_shard_is_skipped_and_counted(corpus_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "corpus.zarr"
    shutil.copytree(corpus_path, path)
    target = _shard_file(path, "s2_10m", 0)  # samples 0 and 1
    target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])
    items, loader = _one_epoch(path)
    for sample, item in items.items():
        b = item.samples.index(sample)
        valid = item.batch.valid["s2_10m"][b]
        if sample in (0, 1):
            assert not valid.any() and not item.batch.data["s2_10m"][b].any()
            assert item.batch.valid["s2_20m"][b].any()  # other groups intact
        else:
            assert valid.any()
    assert loader.decode_errors == 2
    assert loader.fallbacks >= 1  # the damaged shard was tried through zarr too


def test_only_the_chunks_of_a_window_are_decoded(corpus_path: Path, tmp_path: Path) -> None:
    """A garbled chunk inside a sample's timestep window breaks that sample only; one outside
    every window is never decoded, so nothing breaks."""
    windows = {}
    dataset = CorpusStream(corpus_path, SMALL)
    for plan in dataset.plans(0, 0, 1):
        for b, sample in enumerate(plan.samples):
            windows[sample] = range(plan.starts[b], plan.starts[b] + plan.geometry.timesteps)
    outside = [(s, t) for s, w in windows.items() for t in range(4) if t not in w and s != 1]
    assert outside, "SMALL should give some sample fewer timesteps than periods"
    for case, (sample, period) in (
        ("inside", (0, windows[0].start)),
        ("outside", outside[0]),
    ):
        path = tmp_path / case / "corpus.zarr"
        shutil.copytree(corpus_path, path)
        _garble_chunk(path, "s2_10m", sample, period)
        items, loader = _one_epoch(path)
        for s, item in items.items():
            b = item.samples.index(s)
            broken = case == "inside" and s == sample
            assert bool(item.batch.valid["s2_10m"][b].any()) is not broken, (case, s)
            assert item.batch.valid["s2_20m"][b].any()
        assert loader.decode_errors == (1 if case == "inside" else 0)


def test_window_chunks_cover_a_window_exactly_once() -> None:
    whole = ShardLayout((2, 4, 4, 256, 256), (1, 1, 4, 256, 256))
    plan = window_chunks(whole, 1, ((1, 3), (0, 4), (10, 42), (20, 52)))
    assert plan.flats.tolist() == [5, 6]  # sample 1 x 4 periods + period 1, 2
    assert plan.copies[0][0] == (slice(0, 1), slice(0, 4), slice(10, 42), slice(20, 52))
    assert plan.copies[1][1] == (slice(1, 2), slice(0, 4), slice(0, 32), slice(0, 32))
    assert plan.extent == (2, 4, 32, 32)
    tiled = ShardLayout((2, 4, 4, 256, 256), (1, 1, 4, 64, 64))
    window = ((2, 3), (0, 4), (60, 130), (0, 64))
    plan = window_chunks(tiled, 0, window)
    assert plan.flats.tolist() == [2 * 16 + r * 4 for r in (0, 1, 2)]  # rows 0..2, column 0
    covered = np.zeros((1, 4, 70, 64), int)
    for _, target in plan.copies:
        covered[target] += 1
    assert (covered == 1).all()
    with pytest.raises(ValueError, match="leaves the shard"):
        window_chunks(whole, 0, ((3, 5), (0, 4), (0, 8), (0, 8)))


def test_byte_runs_merge_close_chunks_and_place_each_in_the_buffer() -> None:
    offsets = np.array([100, 0, 55, 10**6, 50])
    sizes = np.array([100, 50, 35, 5, 5])
    starts, stops, positions = byte_runs(offsets, sizes, gap=8)
    assert starts.tolist() == [0, 100, 10**6]
    assert stops.tolist() == [90, 200, 10**6 + 5]
    # runs lie back to back in the buffer: [0, 90) [90, 190) [190, 195)
    assert positions.tolist() == [90, 0, 55, 190, 50]
    assert len(byte_runs(offsets, sizes, gap=0)[0]) == 3  # 0..50, 50..55, 55..90 touch
    starts, stops, positions = byte_runs(offsets, sizes, gap=10)
    assert stops.tolist() == [200, 10**6 + 5]  # the 10-byte gap 90..100 is read too
    assert positions.tolist() == [100, 0, 55, 200, 50]


@pytest.mark.parametrize(("spatial", "native"), [(None, True), (32, True), (32, False)])
def test_window_reads_equal_zarr_selections(
    tmp_path: Path, spatial: int | None, native: bool
) -> None:
    """Fast-path windows equal zarr's own selections, through libzstd and through the
    numcodecs fallback alike."""
    path = tmp_path / "corpus.zarr"
    corpus = write_loader_corpus(path, n_samples=4, chunking=InnerChunking(1, spatial))
    rng = np.random.default_rng(3)
    for group in corpus.params.groups:
        arr = corpus.array(group)
        reader = ShardReader(arr, ZstdInto(native=native))
        for k, span in enumerate(corpus.shards):
            windows = {}
            for local in range(len(span)):
                window = []
                for extent in arr.shape[1:]:
                    a = int(rng.integers(0, extent))
                    window.append((a, int(rng.integers(a + 1, extent + 1))))
                windows[local] = tuple(window)
            got, nbytes = reader.read(k, windows)
            assert nbytes > 0 or group == "landsat"  # landsat is never written: all fill
            for local, window in windows.items():
                want = np.asarray(arr[(span.start + local, *(slice(a, b) for a, b in window))])
                np.testing.assert_array_equal(got[local], want, err_msg=f"{group} {window}")
            np.testing.assert_array_equal(read_shard(arr, k), arr[span.start : span.stop])
    for name in [f"{g}_valid_fraction" for g in corpus.params.groups] + ["period_start"]:
        arr = corpus.array(name)  # one-chunk shards: the single-read path
        for k, span in enumerate(corpus.shards):
            np.testing.assert_array_equal(read_shard(arr, k), arr[span.start : span.stop])


def test_the_compiled_decode_never_reads_past_its_buffer(tmp_path: Path) -> None:
    """The read buffer is sized when chunks are located; should it be smaller at decode
    time, the kernel refuses the read instead of writing past it."""
    path = tmp_path / "corpus.zarr"
    corpus = write_loader_corpus(path, n_samples=4, chunking=InnerChunking(1, 32))
    reader = ShardReader(corpus.array("s2_10m"))
    if not reader._native:
        pytest.skip("libzstd cannot be linked here")
    (encoded,) = reader.fetch(0, {0: ((0, 1), (0, 4), (0, 40), (0, 40))}).values()
    reader._read_buffer = np.empty(1, np.uint8)
    with pytest.raises(ShardDecodeError, match="short read"):
        encoded.copy_to(np.empty(encoded.shape, dtype=encoded.dtype))


def test_windows_past_the_open_file_cap_reopen_their_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader holds at most MAX_OPEN_SHARDS files open for pending windows; the windows
    of later shards reopen their file when decoded, with the same values."""
    monkeypatch.setattr(loader_shard, "MAX_OPEN_SHARDS", 1)
    path = tmp_path / "corpus.zarr"
    corpus = write_loader_corpus(path, n_samples=4, chunking=InnerChunking(1, 32))
    arr = corpus.array("s2_10m")
    reader = ShardReader(arr)
    window = ((0, 2), (0, 4), (10, 70), (5, 37))
    pending = [reader.fetch(k, {0: window}) for k in range(len(corpus.shards))]
    assert len(pending) >= 2
    held = [isinstance(p[0].buffer, loader_shard.OpenShard) for p in pending]
    assert held == [True] + [False] * (len(pending) - 1)
    for k, span in enumerate(corpus.shards):
        want = arr[(span.start, *(slice(a, b) for a, b in window))]
        np.testing.assert_array_equal(np.asarray(pending[k][0]), want)


@pytest.mark.parametrize("native", [True, False])
def test_a_corrupt_chunk_names_its_shard_and_chunk(tmp_path: Path, native: bool) -> None:
    """A chunk whose bytes are damaged (its index intact) fails its window's decode with
    the shard file and chunk slot, in the compiled path and in the Python path."""
    path = tmp_path / "corpus.zarr"
    corpus = write_loader_corpus(path, n_samples=4, chunking=InnerChunking(1, 32))
    arr = corpus.array("s2_10m")
    reader = ShardReader(arr, ZstdInto(native=native))
    window = ((0, 1), (0, 4), (0, 64), (0, 64))
    (encoded,) = reader.fetch(0, {0: window}).values()
    shard_file = Path(reader._root_prefix + encoded.path)
    raw = bytearray(shard_file.read_bytes())
    first = int(encoded.positions[0])
    raw[first : first + 8] = b"\xff" * 8  # the first frame's magic number and header
    shard_file.write_bytes(bytes(raw))
    with pytest.raises(ShardDecodeError, match=rf"{encoded.path}: chunk {encoded.plan.flats[0]}"):
        encoded.copy_to(np.empty(encoded.shape, dtype=encoded.dtype))


def _damage_index(raw: bytes, index_bytes: int, how: str) -> bytes:
    """A shard file's bytes with its index damaged one way."""
    data_end = len(raw) - index_bytes
    if how == "too short":
        return raw[: index_bytes - 1]
    if how == "checksum":
        flipped = bytearray(raw)
        flipped[data_end] ^= 0x01
        return bytes(flipped)
    entries = np.frombuffer(raw[data_end:-4], "<u8").reshape(-1, 2).copy()
    assert entries[0, 0] != 2**64 - 1  # the window's first chunk is written
    entries[0, 1] = data_end - entries[0, 0] + 1  # one byte into the index; crc32c valid
    body = entries.tobytes()
    return raw[:data_end] + body + google_crc32c.value(body).to_bytes(4, "little")


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("too short", "8195 bytes cannot hold a 512-chunk index"),
        ("checksum", "shard index checksum mismatch"),
        ("past the data", "a chunk ends past the data"),
    ],
)
def test_a_damaged_shard_index_names_the_file_and_the_damage(
    tmp_path: Path, native: bool, how: str, message: str
) -> None:
    """Locating chunks checks the index (compiled and Python paths alike): its size, its
    crc32c and every located chunk's extent, and says which file failed how."""
    path = tmp_path / "corpus.zarr"
    corpus = write_loader_corpus(path, n_samples=4, chunking=InnerChunking(1, 32))
    reader = ShardReader(corpus.array("s2_10m"), ZstdInto(native=native))
    shard_file = Path(reader._root_prefix + reader._path(0))
    assert reader.layout.n_chunks == 512
    raw = shard_file.read_bytes()
    shard_file.write_bytes(_damage_index(raw, reader.layout.index_bytes, how))
    window = ((0, 2), (0, 4), (0, 64), (0, 64))
    with pytest.raises(ShardDecodeError, match=rf"{shard_file}: {message}"):
        reader.fetch(0, {0: window, 1: window})


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("too short", "19 bytes cannot hold a shard index"),
        ("checksum", "shard index checksum mismatch"),
        ("past the data", "a chunk ends past the data"),
        ("frame", "fails to decode"),
    ],
)
def test_a_damaged_metadata_shard_names_the_file_and_the_damage(
    tmp_path: Path, native: bool, how: str, message: str
) -> None:
    """One-chunk shards (per-sample metadata, read whole in one call) are checked the same
    way, and a damaged frame is reported, not decoded into garbage."""
    path = tmp_path / "corpus.zarr"
    corpus = write_loader_corpus(path, n_samples=4)
    reader = ShardReader(corpus.array("period_start"), ZstdInto(native=native))
    assert reader.layout.n_chunks == 1
    shard_file = Path(reader._root_prefix + reader._path(0))
    raw = shard_file.read_bytes()
    if how == "frame":
        damaged = b"\xff" * 8 + raw[8:]  # the frame's magic number and header
    else:
        damaged = _damage_index(raw, reader.layout.index_bytes, how)
    shard_file.write_bytes(damaged)
    with pytest.raises(ShardDecodeError, match=rf"{shard_file}: {message}"):
        reader.read_whole(0)


def test_compiled_crc32c_equals_google_crc32c() -> None:
    rng = np.random.default_rng(5)
    for n in (0, 1, 7, 8, 9, 16, 100, 1540, 12_292):
        data = rng.integers(0, 256, n, dtype=np.uint8)
        assert shard_kernel.crc32c(data) == google_crc32c.value(data.tobytes()), n


@pytest.mark.parametrize(
    ("dtype", "nodata"),
    [("uint16", (0.0, 0.0, 7.0)), ("uint8", (0.0, 0.0, 0.0)), ("float32", (math.nan, -1.5, 0.0))],
)
def test_compiled_pixel_validity_equals_the_numpy_comparison(
    dtype: str, nodata: tuple[float, ...]
) -> None:
    """The compiled pass (contiguous input) and numpy's comparisons (any other layout) agree,
    per band nodata and NaN included, and both clear absent rows."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, (3, 2, 3, 9, 9)).astype(dtype)
    for band, value in enumerate(nodata):
        hit = rng.random((3, 2, 9, 9)) < 0.1
        x[:, :, band][hit] = value
    norm = GroupNormalizer("test", "standard", np.zeros(3), np.ones(3), nodata)
    present = np.broadcast_to((rng.random((3, 2)) < 0.7)[..., None, None], (3, 2, 9, 9))
    compiled = norm.pixel_valid(x, present[..., 0, 0])
    fortran = np.asfortranarray(x)  # not C-contiguous: numpy's path
    assert not fortran.flags.c_contiguous
    strided = norm.pixel_valid(fortran, present[..., 0, 0])
    want = present.copy()
    for band, value in enumerate(nodata):
        want &= ~np.isnan(x[:, :, band]) if math.isnan(value) else x[:, :, band] != value
    np.testing.assert_array_equal(compiled, want)
    np.testing.assert_array_equal(strided, want)
    assert 0 < want.sum() < want.size


def test_normaliser_writes_into_a_given_buffer_and_refuses_a_wrong_one() -> None:
    norm = group_normalizer("s2_10m", None)
    x = np.full((1, 4, 2, 2), 2200, np.uint16)
    x[0, :, 0, 0] = 0
    out = np.empty((1, 4, 2, 2), np.float32)
    assert norm(x, norm.pixel_valid(x), out=out) is out
    mean, std = norm.mean[0], norm.std[0]
    assert out[0, 0, 1, 1] == np.float32((np.float32(2200) - mean) / std)
    assert out[0, 0, 0, 0] == 0.0
    with pytest.raises(ValueError, match="needs float32"):
        norm(x, norm.pixel_valid(x), out=np.empty((1, 3, 2, 2), np.float32))


# --------------------------------------------------------------------------- resume


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


def test_window_reads_through_a_non_local_store_equal_zarr() -> None:
    """The store path (range requests through zarr's async store API, as on S3) on a
    MemoryStore array with the corpus's codecs, including a never-written shard."""
    import zarr
    from zarr.codecs import ZstdCodec
    from zarr.storage import MemoryStore

    arr = zarr.create_array(
        MemoryStore(),
        shape=(6, 3, 2, 16, 16),
        chunks=(1, 1, 2, 8, 8),
        shards=(2, 3, 2, 16, 16),
        dtype="uint16",
        fill_value=7,
        compressors=(ZstdCodec(level=3),),
    )
    values = np.arange(arr.size, dtype=np.uint16).reshape(arr.shape)
    arr[:4] = values[:4]  # shard 2 (samples 4, 5) stays unwritten
    reader = ShardReader(arr)
    window = ((1, 3), (0, 2), (5, 13), (0, 9))
    for k in range(3):
        got, nbytes = reader.read(k, {0: window, 1: window})
        for local in (0, 1):
            want = arr[(2 * k + local, *(slice(a, b) for a, b in window))]
            np.testing.assert_array_equal(got[local], want)
        assert (nbytes > 0) == (k < 2)
        np.testing.assert_array_equal(read_shard(arr, k), arr[2 * k : 2 * k + 2])
    assert (got[0] == 7).all()
    # a one-chunk shard (per-sample metadata) comes whole, in one request
    meta = zarr.create_array(
        MemoryStore(),
        shape=(5, 3),
        chunks=(2, 3),
        shards=(2, 3),
        dtype="float32",
        fill_value=-1,
        compressors=(ZstdCodec(level=3),),
    )
    meta[:2] = np.arange(6, dtype=np.float32).reshape(2, 3)  # shards 1, 2 stay unwritten
    for k in range(3):
        np.testing.assert_array_equal(read_shard(meta, k), meta[2 * k : 2 * k + 2])


def test_workers_inherit_every_compiled_kernel_specialisation(corpus_path: Path) -> None:
    """`compile_kernels` (run before the workers fork) covers every type signature an epoch
    uses, so no worker compiles at its first batch."""
    from terracube.model.data import validity as validity_kernel
    from terracube.model.data.kernels import compile_kernels
    from terracube.model.train import masking_kernel
    from terracube.pipeline.corpus import shard_geometry, shard_kernel

    compile_kernels()
    kernels = [
        masking_kernel.mask_views,
        validity_kernel.pooled_validity,
        validity_kernel.pixel_validity,
        shard_geometry._chunk_boxes,
        shard_kernel.decode_window,
        shard_kernel.locate_chunks,
        shard_kernel.read_lone_chunk,
    ]
    before = [len(k.signatures) for k in kernels]
    dataset = CorpusStream(corpus_path, SMALL)
    assert list(dataset.iter_plans(dataset.plans(0, 0, 1)))
    assert [len(k.signatures) for k in kernels] == before
