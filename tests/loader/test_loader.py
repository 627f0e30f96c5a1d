"""The streaming loader against a small structured corpus written with the Corpus API."""

from __future__ import annotations

import shutil
from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from terracube.catalog.registry import BAND_GROUPS, MODALITIES, WORLDCOVER_CLASSES
from terracube.model.data.loader import CorpusStream, LoaderItem
from terracube.model.data.pixel_stats import (
    STATS_ATTR,
    compute_stats,
    group_normalizer,
)
from terracube.model.data.plan import (
    BatchPlan,
    LoaderParams,
    TokenShape,
    buffer_shuffle,
    draw_geometry,
    round_robin,
)
from terracube.model.data.stream import StreamingLoader
from terracube.model.nn.batch import validate_batch
from terracube.model.nn.groups import decode_only_groups
from terracube.pipeline.corpus import shard_kernel
from terracube.pipeline.corpus import shard_reader as loader_shard
from terracube.pipeline.corpus.shard_geometry import ShardLayout
from terracube.pipeline.corpus.store import Corpus
from torch.utils.data import DataLoader

from tests.loader.corpus_fixture import (
    MISSING_PERIOD,
    N_SAMPLES,
    NOTHING_DONE,
    S1_EMPTY,
    sample_data,
)

ELIGIBLE = sorted(set(range(N_SAMPLES)) - {NOTHING_DONE})
SMALL = LoaderParams(batch_size=2, crop_sizes=(16, 32), patch_sizes=(4, 8), token_budget=1200)


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


def test_workers_inherit_every_compiled_kernel_specialisation(corpus_path: Path) -> None:
    """`compile_kernels` (run before the workers fork) covers every type signature an epoch
    uses, so no worker compiles at its first batch."""
    from terracube.model.data import validity as validity_kernel
    from terracube.model.data.kernels import compile_kernels
    from terracube.model.train import masking_kernel
    from terracube.pipeline.corpus import shard_geometry

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
