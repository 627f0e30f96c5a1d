"""OlmoEarth v1's `modality_cross_random` masking (the default), against the rates and
rules of the reference (allenai/olmoearth_pretrain train/masking.py)."""

from __future__ import annotations

import pytest
import torch
from terracube.model.nn.groups import all_groups, decode_only_groups, encodable_groups
from terracube.model.nn.synthetic import synthetic_batch
from terracube.model.train.masking import MaskingParams, mask_batch, sample_view_masks


def full_validity(batch: int, timesteps: int, side: int) -> dict[str, torch.Tensor]:
    return {
        g: torch.ones(
            batch, 1 if g in decode_only_groups() else timesteps, side, side, dtype=torch.bool
        )
        for g in all_groups()
    }


def expected_fractions(token_valid: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Analytic rates with every token valid: n encodable groups of P present ones;
    P(group encoded) = E[k_enc] / n with k_enc uniform on 2..n, P(decoded) = E[k_dec] / P
    with k_dec uniform on 1..P; an encodable token is encoded 0.5 P(enc) and decoded
    0.5 (1 - P(enc) (1 - P(dec))); a map token is decoded 0.5."""
    n, total = len(encodable_groups()), len(all_groups())
    p_enc = (2 + n) / 2 / n
    p_dec = (1 + total) / 2 / total
    per_sample = {g: v[0].numel() for g, v in token_valid.items()}
    tokens = sum(per_sample.values())
    maps = sum(per_sample[g] for g in decode_only_groups())
    encodable = tokens - maps
    encoded = 0.5 * p_enc * encodable / tokens
    decoded = (0.5 * (1 - p_enc * (1 - p_dec)) * encodable + 0.5 * maps) / tokens
    return encoded, decoded


def test_encoded_and_decoded_fractions_equal_the_recipe_within_sampling_error() -> None:
    token_valid = full_validity(3000, timesteps=4, side=4)
    masks = sample_view_masks(token_valid, torch.Generator().manual_seed(0))
    tokens = sum(v[0].numel() for v in token_valid.values())
    enc = sum(masks.encode[g].flatten(1).sum(1) for g in all_groups()).double() / tokens
    dec = sum(masks.decode[g].flatten(1).sum(1) for g in all_groups()).double() / tokens
    want_enc, want_dec = expected_fractions(token_valid)
    # 5 encodable groups of 7, maps 2 x 16 of 352 tokens: 0.35 x 320/352 and 0.35 + 0.15 x 32/352
    assert want_enc == pytest.approx(0.35 * 320 / 352) and want_dec == pytest.approx(
        0.35 + 0.15 * 32 / 352
    )
    for got, want in ((enc, want_enc), (dec, want_dec)):
        error = 4 * got.std().item() / len(got) ** 0.5
        assert abs(got.mean().item() - want) < error, (got.mean().item(), want, error)
    # the group_split strategy encodes far more: the recipes are told apart by this test
    old = sample_view_masks(
        token_valid, torch.Generator().manual_seed(0), MaskingParams(strategy="group_split")
    )
    old_enc = sum(old.encode[g].flatten(1).sum(1) for g in all_groups()).double() / tokens
    assert old_enc.mean().item() > want_enc + 0.1


def test_single_group_modalities_keep_one_half_or_the_other_never_neither() -> None:
    """Landsat and S1 are one group each, so their base split is exactly half/half; chosen
    for encoding they keep the encoded half (and the decoded one if also chosen for
    decoding); not chosen they keep only the decoded half (the reference's rule)."""
    token_valid = full_validity(2000, timesteps=2, side=4)
    masks = sample_view_masks(token_valid, torch.Generator().manual_seed(1))
    for g in ("landsat", "s1"):
        half = token_valid[g][0].numel() // 2
        enc = masks.encode[g].flatten(1).sum(1)
        dec = masks.decode[g].flatten(1).sum(1)
        assert set(enc.tolist()) == {0, half} and set(dec.tolist()) == {0, half}
        assert not ((enc == 0) & (dec == 0)).any()
        assert ((enc == half) & (dec == 0)).any() and ((enc == half) & (dec == half)).any()
        assert ((enc == 0) & (dec == half)).any()


def test_maps_are_never_encoded_and_always_keep_their_decoded_half() -> None:
    batch = synthetic_batch(batch_size=64, timesteps=3, size=16, patch_size=4, valid_fraction=0.8)
    for view in mask_batch(batch, torch.Generator().manual_seed(2), num_views=3):
        for g in decode_only_groups():
            assert not view.encode[g].any()
            valid = batch.token_valid(g).flatten(1).sum(1)
            decoded = view.decode[g].flatten(1).sum(1)
            has_context = sum(view.encode[e].flatten(1).sum(1) for e in encodable_groups()) > 0
            assert torch.equal(decoded[has_context] > 0, valid[has_context] > 0)
        for g in batch.groups:
            valid = batch.token_valid(g)
            assert not (view.encode[g] & view.decode[g]).any()
            assert not ((view.encode[g] | view.decode[g]) & ~valid).any()


def test_two_present_groups_encode_the_first_and_decode_the_second() -> None:
    token_valid = {
        "s2_10m": torch.ones(50, 2, 2, 2, dtype=torch.bool),
        "worldcover": torch.ones(50, 1, 2, 2, dtype=torch.bool),
    }
    masks = sample_view_masks(token_valid, torch.Generator().manual_seed(3))
    assert torch.equal(masks.encode["s2_10m"].flatten(1).sum(1), torch.full((50,), 4))
    assert not masks.decode["s2_10m"].any()
    assert torch.equal(masks.decode["worldcover"].flatten(1).sum(1), torch.full((50,), 2))


def test_a_lone_group_is_redrawn_over_its_valid_tokens() -> None:
    """One present group: encoded, nothing decoded, so the sample is re-drawn over its
    valid tokens (floor of each ratio; the reference's fallback)."""
    valid = torch.ones(20, 2, 2, 2, dtype=torch.bool)
    valid[:, 1, 1, 1] = False  # 7 valid tokens: 3 encoded, 3 decoded, 1 neither
    masks = sample_view_masks({"s1": valid}, torch.Generator().manual_seed(4))
    assert torch.equal(masks.encode["s1"].flatten(1).sum(1), torch.full((20,), 3))
    assert torch.equal(masks.decode["s1"].flatten(1).sum(1), torch.full((20,), 3))
    assert not (masks.encode["s1"] | masks.decode["s1"])[:, 1, 1, 1].any()


def test_samples_without_an_encodable_token_get_no_tokens() -> None:
    token_valid = full_validity(4, timesteps=2, side=2)
    for g in encodable_groups():
        token_valid[g][1] = False
    masks = sample_view_masks(token_valid, torch.Generator().manual_seed(5))
    assert not any(masks.encode[g][1].any() or masks.decode[g][1].any() for g in all_groups())
    for b in (0, 2, 3):
        assert any(masks.encode[g][b].any() for g in encodable_groups())


def test_ratios_are_parameters_and_bad_ones_are_refused() -> None:
    token_valid = full_validity(500, timesteps=2, side=4)
    params = MaskingParams(encode_ratio=0.25, decode_ratio=0.25)
    masks = sample_view_masks(token_valid, torch.Generator().manual_seed(6), params)
    half = sample_view_masks(token_valid, torch.Generator().manual_seed(6))
    fewer = sum(masks.encode[g].sum() for g in all_groups())
    assert fewer < 0.6 * sum(half.encode[g].sum() for g in all_groups())
    with pytest.raises(ValueError, match="encode_ratio \\+ decode_ratio"):
        MaskingParams(encode_ratio=0.7, decode_ratio=0.5)
    with pytest.raises(ValueError, match="choose one of"):
        MaskingParams(strategy="random")  # type: ignore[arg-type]
