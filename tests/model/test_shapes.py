"""Shape and token-count invariants of LatentMIM for every size and patch size."""

from __future__ import annotations

from functools import cache

import pytest
import torch
from terracube.model.nn.batch import Batch, validate_batch
from terracube.model.nn.encoder import SIZES, count_parameters, model_size
from terracube.model.nn.groups import (
    all_groups,
    decode_only_groups,
    encodable_groups,
    group_channels,
)
from terracube.model.nn.olmoearth import LatentMIM, LatentMIMConfig
from terracube.model.nn.synthetic import synthetic_batch
from terracube.model.train.masking import mask_batch

GRID_PX = {1: 4, 2: 8, 4: 8, 8: 16}
"""Smallest crop that still gives a multi-token grid, to keep CPU tests fast."""


@cache
def seeded_model(size: str) -> LatentMIM:
    torch.manual_seed(0)
    return LatentMIM(LatentMIMConfig(size=size))


def test_group_channels_follow_the_registry() -> None:
    assert group_channels("s2_10m") == 4
    assert group_channels("s2_20m") == 6
    assert group_channels("s2_40m") == 2
    assert group_channels("s1") == 2
    assert group_channels("landsat") == 8
    assert group_channels("worldcover") == 11  # one channel per WorldCover class code
    assert group_channels("osm") == 30
    assert decode_only_groups() == ("worldcover", "osm")
    assert encodable_groups() == ("s2_10m", "s2_20m", "s2_40m", "s1", "landsat")
    assert set(all_groups()) == set(encodable_groups()) | set(decode_only_groups())


@pytest.mark.parametrize(
    ("size", "dim", "depth", "heads"),
    [("nano", 128, 4, 8), ("tiny", 192, 12, 3), ("base", 768, 12, 12), ("large", 1024, 24, 16)],
)
def test_size_registry_and_encoder_parameter_count(
    size: str, dim: int, depth: int, heads: int
) -> None:
    spec = model_size(size)
    assert (spec.dim, spec.depth, spec.heads) == (dim, depth, heads)
    with torch.device("meta"):  # construct without allocating or initialising weights
        model = LatentMIM(LatentMIMConfig(size=size))
    # pre-LN block: qkv + proj 4d^2+4d, MLP(4x) 8d^2+5d, two LayerNorms 4d; final LayerNorm 2d
    assert count_parameters(model.encoder) == depth * (12 * dim * dim + 13 * dim) + 2 * dim
    assert len(model.decoder.blocks) == spec.decoder_depth
    assert model.encoder.blocks[0].attn.heads == heads


@pytest.mark.parametrize(("size", "low", "high"), [("base", 84e6, 87e6), ("large", 300e6, 305e6)])
def test_base_and_large_are_vit_b_and_vit_l_sized(size: str, low: float, high: float) -> None:
    # ViT-B/16 has ~86M and ViT-L/16 ~304M parameters, almost all in the transformer blocks
    with torch.device("meta"):
        model = LatentMIM(LatentMIMConfig(size=size))
    assert low < count_parameters(model.encoder) < high
    assert SIZES[size].decoder_depth < SIZES[size].depth


@pytest.mark.parametrize("size", ["nano", "tiny"])
@pytest.mark.parametrize("patch_size", [1, 2, 4, 8])
def test_encode_token_counts_and_pooling(size: str, patch_size: int) -> None:
    hw = GRID_PX[patch_size]
    batch = synthetic_batch(batch_size=2, timesteps=2, size=hw, patch_size=patch_size)
    model = seeded_model(size).eval()
    dim = model_size(size).dim
    with torch.no_grad():
        pooled, tokens = model.encode(batch)
    g = hw // patch_size
    assert pooled.shape == (2, dim)
    assert set(tokens) == set(all_groups())
    for name, out in tokens.items():
        t = 2 if name in encodable_groups() else 1
        assert out.shape == (2, t, g, g, dim)
        encoded = out.abs().sum(-1) > 0
        if name in encodable_groups():
            assert torch.equal(encoded, batch.token_valid(name))
        else:
            assert not encoded.any(), f"decode-only group {name} was encoded"
    stacked = torch.cat([tokens[n].reshape(2, -1, dim) for n in encodable_groups()], dim=1)
    assert stacked.shape[1] == 5 * 2 * g * g
    torch.testing.assert_close(pooled, stacked.mean(dim=1))


@pytest.mark.parametrize("size", ["nano", "tiny"])
@pytest.mark.parametrize("patch_size", [1, 2, 4, 8])
def test_forward_counts_match_masks(size: str, patch_size: int) -> None:
    hw = GRID_PX[patch_size]
    batch = synthetic_batch(
        batch_size=2, timesteps=2, size=hw, patch_size=patch_size, valid_fraction=0.8
    )
    views = mask_batch(batch, torch.Generator().manual_seed(3))
    out = seeded_model(size).train()(batch, views)
    want_enc = sum(int(m.sum()) for v in views for m in v.encode.values())
    want_dec = sum(int(m.sum()) for v in views for m in v.decode.values())
    assert int(out["encoded_tokens"]) == want_enc
    assert int(out["decoded_tokens"]) == want_dec
    assert out["pooled_views"].shape == (2, 2, model_size(size).dim)
    assert torch.isfinite(out["loss"]) and out["loss"] > 0


def test_group_absent_for_one_sample_produces_no_tokens_and_no_leak() -> None:
    torch.manual_seed(0)
    batch = synthetic_batch(batch_size=2, timesteps=2, size=8, patch_size=4)
    batch.valid["s1"][0] = False  # sample 0 has no Sentinel-1 at all
    model = LatentMIM().eval()
    with torch.no_grad():
        pooled, tokens = model.encode(batch)
        assert not tokens["s1"][0].any()
        assert tokens["s1"][1].abs().sum(-1).gt(0).all()
        # changing the (invalid) S1 pixels of sample 0 changes nothing
        batch.data["s1"][0] = 1e6
        pooled_poisoned, _ = model.encode(batch)
        # and sample 0 encodes as if S1 were absent from the batch altogether
        without = Batch(
            data={g: x for g, x in batch.data.items() if g != "s1"},
            valid={g: v for g, v in batch.valid.items() if g != "s1"},
            months=batch.months,
            patch_size=4,
        )
        pooled_without, tokens_without = model.encode(without)
    assert "s1" not in tokens_without
    torch.testing.assert_close(pooled_poisoned, pooled)
    torch.testing.assert_close(pooled_without[0], pooled[0], atol=1e-5, rtol=1e-5)


def test_nan_nodata_pixels_never_reach_the_model() -> None:
    batch = synthetic_batch(
        batch_size=1, timesteps=1, size=8, patch_size=4, groups=["s2_10m", "s1"]
    )
    batch.data["s1"][..., :4, :] = float("nan")
    batch.valid["s1"][..., :4, :] = False
    pooled, tokens = LatentMIM().eval().encode(batch)
    assert torch.isfinite(pooled).all()
    assert torch.isfinite(tokens["s1"]).all()
    assert not tokens["s1"][0, 0, 0].any() and tokens["s1"][0, 0, 1].abs().sum(-1).gt(0).all()


def test_bad_batches_get_clear_errors() -> None:
    batch = synthetic_batch(batch_size=1, timesteps=2, size=8, patch_size=4, groups=["s2_10m"])
    bad = Batch({"s2_10m": batch.data["s2_10m"][:, :, :3]}, batch.valid, batch.months, patch_size=4)
    with pytest.raises(ValueError, match=r"s2_10m.*C=4"):
        validate_batch(bad)
    with pytest.raises(ValueError, match="patch_size=3"):
        validate_batch(Batch(batch.data, batch.valid, batch.months, patch_size=3))
    with pytest.raises(ValueError, match=r"1\.\.8"):
        validate_batch(Batch(batch.data, batch.valid, batch.months, patch_size=16))
    with pytest.raises(ValueError, match=r"months 0\.\.11"):
        validate_batch(Batch(batch.data, batch.valid, batch.months + 12, patch_size=4))
    with pytest.raises(ValueError, match="unknown band groups"):
        validate_batch(
            Batch({"s3": batch.data["s2_10m"]}, {"s3": batch.valid["s2_10m"]}, batch.months, 4)
        )
    with pytest.raises(KeyError, match="choose one of"):
        LatentMIMConfig(size="huge")


@pytest.mark.parametrize("self_attention", [True, False])
def test_per_sample_attention_equals_masked_batched_attention(self_attention: bool) -> None:
    """The CPU path (each sample over its own tokens) gives the masked batched result on
    every valid row; padding rows are zero."""
    import torch.nn.functional as F
    from terracube.model.nn.attention import attention_mask, front_packed, per_sample_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 7, 4, generator=g, dtype=torch.float64) for _ in range(3))
    lengths = [7, 3, 0]
    valid = torch.arange(7)[None, :] < torch.tensor(lengths)[:, None]
    assert front_packed(valid) and not front_packed(valid.flip(1))
    got = per_sample_attention(q, k, v, lengths, self_attention)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask(valid))
    for i, n in enumerate(lengths):
        rows = n if self_attention else 7
        if n:
            torch.testing.assert_close(got[i, :, :rows], want[i, :, :rows])
        assert not got[i, :, rows:].any()
