"""The worker's compact batch: materialising it gives exactly the 10 m normalised batch."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from terracube.catalog.registry import band_group
from terracube.model.data.assemble import RawBatch, group_factor, widen_uint16_bits
from terracube.model.data.loader import CorpusStream
from terracube.model.data.pixel_stats import group_normalizer, valid_values
from terracube.model.data.plan import LoaderParams
from terracube.model.nn.batch import validate_batch

from tests.loader.corpus_fixture import write_loader_corpus

PARAMS = LoaderParams(batch_size=2, crop_sizes=(16, 32), patch_sizes=(4, 8), token_budget=1200)


@pytest.fixture(scope="module")
def items(tmp_path_factory: pytest.TempPathFactory) -> list:
    path = tmp_path_factory.mktemp("raw") / "corpus.zarr"
    write_loader_corpus(path)
    return list(CorpusStream(path, PARAMS))


def test_raw_batch_is_storage_dtype_at_native_resolution(items: list) -> None:
    for item in items:
        raw = item.raw
        for g in raw.groups:
            side = raw.crop // group_factor(g)
            assert raw.raw[g].shape[-2:] == (side, side), g
            assert raw.valid[g].shape[-2:] == (side, side), g
            assert str(raw.raw[g].dtype) == f"torch.{band_group(g).dtype}", g
        batch = item.batch
        validate_batch(batch)
        for g in raw.groups:
            assert batch.data[g].shape[-1] == raw.crop


def test_materialised_batch_equals_numpy_normalise_then_repeat(items: list) -> None:
    """The numpy normaliser (the path before this split) on the same raw values, then a
    nearest repeat: bit-identical, validity included."""
    for item in items:
        raw, batch = item.raw, item.batch
        for g in raw.groups:
            norm = item.normalizers[g]
            values = raw.raw[g].numpy()
            ok = raw.valid[g].numpy()
            f = group_factor(g)
            want = norm(values, ok).repeat(f, axis=-2).repeat(f, axis=-1)
            np.testing.assert_array_equal(batch.data[g].numpy(), want, err_msg=g)
            np.testing.assert_array_equal(
                batch.valid[g].numpy(), ok.repeat(f, axis=-2).repeat(f, axis=-1), err_msg=g
            )
            expected_ok = np.ones(ok.shape, bool)
            for band, nodata in enumerate(norm.nodata):
                expected_ok &= valid_values(values[:, :, band], nodata)
            assert not (ok & ~expected_ok).any(), f"{g}: a nodata pixel is marked valid"


@pytest.mark.parametrize("patch", [1, 2, 4, 8])
def test_token_validity_at_native_resolution_equals_the_upsampled_grid(
    items: list, patch: int
) -> None:
    """Including patches finer than the native pixel (p=1, 2 for 40 m)."""
    for item in items[:3]:
        raw = item.raw
        raw = RawBatch(raw.raw, raw.valid, raw.months, patch_size=patch, crop=raw.crop)
        batch = raw.materialize(item.normalizers)
        for g in raw.groups:
            assert torch.equal(raw.token_valid(g), batch.token_valid(g)), (g, patch)


def test_random_validity_pools_identically() -> None:
    """Random masks at every native factor, including odd valid counts per patch."""
    gen = torch.Generator().manual_seed(0)
    for g, f in (("s2_10m", 1), ("s2_20m", 2), ("s2_40m", 4)):
        side = 32 // f
        valid = torch.rand(3, 2, side, side, generator=gen) < 0.5
        bands = len(group_normalizer(g, None).mean)
        raw = torch.zeros(3, 2, bands, side, side, dtype=torch.uint16)
        for p in (1, 2, 4, 8):
            rb = RawBatch({g: raw}, {g: valid}, torch.zeros(3, 2, dtype=torch.int64), p, 32)
            batch = rb.materialize({g: group_normalizer(g, None)})
            assert torch.equal(rb.token_valid(g), batch.token_valid(g)), (g, p)


def test_uint16_bits_widen_to_their_unsigned_values() -> None:
    values = np.array([0, 1, 32767, 32768, 40000, 65535], dtype=np.uint16)
    bits = torch.from_numpy(values.view(np.int16))
    assert widen_uint16_bits(bits).tolist() == values.astype(np.int64).tolist()


def test_apply_torch_is_bit_identical_to_numpy_for_every_group() -> None:
    rng = np.random.default_rng(1)
    for g in ("s2_10m", "s1", "landsat", "worldcover", "osm"):
        norm = group_normalizer(g, None)
        bands = 1 if norm.kind == "onehot" else len(norm.mean)
        shape = (2, 3, bands, 8, 8)
        if g == "s1":
            x = rng.normal(-14, 4, shape).astype(np.float32)
        elif g == "worldcover":
            x = rng.choice(np.array((*norm.classes, 0), np.uint8), shape)
        elif g == "osm":
            x = rng.integers(0, 101, shape).astype(np.uint8)
        else:
            x = rng.integers(0, 65536, shape).astype(np.uint16)
        ok = rng.random((2, 3, 8, 8)) < 0.8
        want = norm(x, ok)
        got = norm.apply_torch(torch.from_numpy(x), torch.from_numpy(ok)).numpy()
        np.testing.assert_array_equal(got, want, err_msg=g)


def test_items_leave_the_cpu_batch_behind_when_pickled(items: list) -> None:
    item = items[0]
    _ = item.batch
    again = pickle.loads(pickle.dumps(item))
    assert again._cpu is None
    assert torch.equal(again.batch.data["s2_10m"], item.batch.data["s2_10m"])
