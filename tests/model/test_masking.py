"""Masking machinery and the "group_split" strategy: exact counts, decode-only maps,
missing data, determinism, transport. The default strategy: test_masking_cross.py."""

from __future__ import annotations

import pickle

import pytest
import torch
from terracube.model.data.transport import pack, unpack
from terracube.model.nn.groups import all_groups, decode_only_groups, encodable_groups
from terracube.model.nn.synthetic import synthetic_batch
from terracube.model.train.masking import MaskingParams, ViewMasks, mask_batch, sample_view_masks
from torch.utils.data import DataLoader, IterableDataset

GROUP_SPLIT = MaskingParams(strategy="group_split")


def random_token_valid(batch_size: int, seed: int) -> dict[str, torch.Tensor]:
    """Every group on a 3x3 grid x 2 timesteps; ~10% invalid tokens and some whole
    groups absent per sample, but always >= 2 valid tokens when a group is present."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in all_groups():
        t = 2 if name in encodable_groups() else 1
        valid = torch.rand(batch_size, t, 3, 3, generator=g) > 0.1
        valid[:, 0, 0, :2] = True
        absent = torch.rand(batch_size, generator=g) < 0.3
        valid[absent] = False
        out[name] = valid
    return out


def per_sample_counts(masks: ViewMasks, token_valid: dict[str, torch.Tensor]):
    for name, valid in token_valid.items():
        n = valid.flatten(1).sum(1)
        enc = masks.encode[name].flatten(1).sum(1)
        dec = masks.decode[name].flatten(1).sum(1)
        yield name, n, enc, dec


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_counts_are_exact_and_groups_are_chosen_within_bounds(seed: int) -> None:
    token_valid = random_token_valid(batch_size=64, seed=seed)
    masks = sample_view_masks(token_valid, torch.Generator().manual_seed(seed), GROUP_SPLIT)
    b = 64
    enc_groups = torch.zeros(b, dtype=torch.long)
    dec_groups = torch.zeros(b, dtype=torch.long)
    present_enc = torch.zeros(b, dtype=torch.long)
    present_all = torch.zeros(b, dtype=torch.long)
    for name, n, enc, dec in per_sample_counts(masks, token_valid):
        valid = token_valid[name]
        assert not (masks.encode[name] & masks.decode[name]).any(), "encode/decode overlap"
        assert not (masks.encode[name] & ~valid).any(), "invalid token encoded"
        assert not (masks.decode[name] & ~valid).any(), "invalid token decoded"
        # each (sample, group) is exactly one of: unused, encode-only, decode-only, 50/50
        both = (enc > 0) & (dec > 0)
        assert torch.equal(enc[both], n[both] - n[both] // 2)
        assert torch.equal(dec[both], n[both] // 2)
        assert torch.equal(enc[(enc > 0) & ~both], n[(enc > 0) & ~both])
        assert torch.equal(dec[(dec > 0) & ~both], n[(dec > 0) & ~both])
        enc_groups += (enc > 0).long()
        dec_groups += (dec > 0).long()
        present_all += (n > 0).long()
        if name in encodable_groups():
            present_enc += (n > 0).long()
        else:
            assert not masks.encode[name].any(), f"decode-only {name} encoded"
    assert (enc_groups >= present_enc.clamp(max=2)).all()
    assert (enc_groups <= present_enc).all()
    has_context = present_enc > 0
    assert (dec_groups[has_context] >= 1).all()
    assert (dec_groups <= present_all).all()
    assert (dec_groups[~has_context] == 0).all()


def test_number_of_encoded_groups_is_uniform_over_two_to_all() -> None:
    token_valid = {
        g: torch.ones(4000, 1 if g in decode_only_groups() else 2, 2, 2, dtype=torch.bool)
        for g in all_groups()
    }
    masks = sample_view_masks(token_valid, torch.Generator().manual_seed(0), GROUP_SPLIT)
    n_enc = sum((masks.encode[g].flatten(1).any(1)).long() for g in encodable_groups())
    counts = torch.bincount(n_enc, minlength=6)
    assert counts[:2].sum() == 0  # never fewer than 2 of the 5 encodable groups
    freq = counts[2:].float() / 4000
    assert torch.allclose(freq, torch.full((4,), 0.25), atol=0.03), freq
    # decode-only maps are decoded in some samples, never encoded
    for g in decode_only_groups():
        assert masks.decode[g].any() and not masks.encode[g].any()


def test_missing_timesteps_and_modalities_are_never_masked_in() -> None:
    batch = synthetic_batch(batch_size=3, timesteps=3, size=8, patch_size=2)
    batch.valid["s2_10m"][0, 1] = False  # sample 0, timestep 1 missing
    batch.valid["landsat"][2] = False  # sample 2 has no Landsat
    batch.valid["worldcover"][1, :, :4] = False  # nodata rows of the map
    for view in mask_batch(batch, torch.Generator().manual_seed(5), num_views=4):
        assert not view.encode["s2_10m"][0, 1].any() and not view.decode["s2_10m"][0, 1].any()
        assert not view.encode["landsat"][2].any() and not view.decode["landsat"][2].any()
        assert not view.decode["worldcover"][1, :, :2].any()
        assert view.encode["s2_10m"].shape == (3, 3, 4, 4)


def test_single_encodable_group_is_split_in_half() -> None:
    token_valid = {"s2_10m": torch.ones(5, 2, 2, 2, dtype=torch.bool)}
    masks = sample_view_masks(token_valid, torch.Generator().manual_seed(0))
    assert torch.equal(masks.encode["s2_10m"].flatten(1).sum(1), torch.full((5,), 4))
    assert torch.equal(masks.decode["s2_10m"].flatten(1).sum(1), torch.full((5,), 4))


def test_seeded_generator_is_deterministic() -> None:
    token_valid = random_token_valid(batch_size=16, seed=0)
    a = sample_view_masks(token_valid, torch.Generator().manual_seed(7))
    b = sample_view_masks(token_valid, torch.Generator().manual_seed(7))
    c = sample_view_masks(token_valid, torch.Generator().manual_seed(8))
    assert all(torch.equal(a.encode[g], b.encode[g]) for g in all_groups())
    assert not all(torch.equal(a.encode[g], c.encode[g]) for g in all_groups())


class _MaskingDataset(IterableDataset):
    def __iter__(self):
        generator = torch.Generator().manual_seed(11)
        batch = synthetic_batch(batch_size=2, timesteps=2, size=8, patch_size=4)
        views = mask_batch(batch, generator)
        yield {g: torch.stack([v.encode[g] for v in views]) for g in batch.groups}


def test_masking_runs_inside_a_dataloader_worker() -> None:
    (from_worker,) = list(DataLoader(_MaskingDataset(), batch_size=None, num_workers=1))
    (in_process,) = list(_MaskingDataset())
    assert all(torch.equal(from_worker[g], in_process[g]) for g in in_process)


def test_split_picks_every_valid_token_equally_often() -> None:
    """The split is a uniformly random subset: no position is favoured (a sampling bug
    would favour early or late tokens). 9 valid tokens of 10: 5 encoded, 4 decoded."""
    valid = torch.ones(6000, 1, 2, 5, dtype=torch.bool)
    valid[:, 0, 1, 4] = False
    masks = sample_view_masks({"s2_10m": valid}, torch.Generator().manual_seed(3), GROUP_SPLIT)
    encode = masks.encode["s2_10m"].float().mean(0).flatten()
    decode = masks.decode["s2_10m"].float().mean(0).flatten()
    assert encode[9] == 0 and decode[9] == 0
    assert torch.allclose(encode[:9], torch.full((9,), 5 / 9), atol=0.03), encode
    assert torch.allclose(decode[:9], torch.full((9,), 4 / 9), atol=0.03), decode


def test_views_travel_as_one_tensor_each_and_come_back_equal() -> None:
    """A worker sends each view's masks as the one array they are views of (not two tensors
    per group); the views rebuilt on the other side equal the originals."""
    batch = synthetic_batch(batch_size=3, timesteps=2, size=8, patch_size=2)
    views = mask_batch(batch, torch.Generator().manual_seed(4))
    packed = pack(views)
    assert all(v._counts is not None for v in views)  # the host counts travel too
    assert len(packed.layout) == 2 * len(views)  # per view: its masks and its counts
    back = unpack(packed)
    for original, copy in zip(views, back, strict=True):
        for g in batch.groups:
            assert torch.equal(original.encode[g], copy.encode[g])
            assert torch.equal(original.decode[g], copy.decode[g])
            assert torch.equal(copy.counts[g][0], copy.encode[g].flatten(1).sum(1))
            assert torch.equal(copy.counts[g][1], copy.decode[g].flatten(1).sum(1))
    # masks built from separate tensors pickle group by group, and equally round-trip
    loose = ViewMasks(
        {"s2_10m": views[0].encode["s2_10m"].clone()}, {"s2_10m": views[0].decode["s2_10m"].clone()}
    )
    again = pickle.loads(pickle.dumps(loose))
    assert torch.equal(again.encode["s2_10m"], loose.encode["s2_10m"]) and again.flat is None
