"""FlexiViT resizes (image bicubic, kernel PI), patch embedding, and token encodings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from terracube.model.nn.batch import token_validity
from terracube.model.nn.encodings import ChannelEmbedding, fixed_encodings, month_sincos
from terracube.model.nn.flexi import pi_resize_kernel, pi_resize_matrix
from terracube.model.nn.tokenizer import FlexiPatchEmbed


def upsample(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def test_resize_to_the_base_size_is_identity() -> None:
    w = torch.randn(4, 3, 8, 8)
    assert pi_resize_kernel(w, 8) is w
    assert torch.equal(pi_resize_matrix(8, 8), torch.eye(64, dtype=torch.float64))


@pytest.mark.parametrize("p", [1, 2, 4])
def test_resized_kernel_on_a_patch_equals_base_kernel_on_its_bilinear_upsample(p: int) -> None:
    g = torch.Generator().manual_seed(p)
    w = torch.randn(6, 3, 8, 8, generator=g, dtype=torch.float64)
    x = torch.randn(5, 3, p, p, generator=g, dtype=torch.float64)
    base_tokens = F.conv2d(upsample(x, 8), w)
    resized_tokens = F.conv2d(x, pi_resize_kernel(w, p))
    torch.testing.assert_close(resized_tokens, base_tokens, rtol=1e-9, atol=1e-9)


def test_p1_kernel_is_the_sum_of_the_base_kernel() -> None:
    # a 1x1 patch upsamples to a constant 8x8 patch, so its kernel is the base kernel's sum
    w = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(pi_resize_kernel(w, 1)[..., 0, 0], w.sum(dim=(-1, -2)))


def test_upsizing_beyond_the_base_preserves_tokens_of_upsampled_base_patches() -> None:
    w = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(
        F.conv2d(upsample(x, 8), pi_resize_kernel(w, 8)), F.conv2d(x, w), rtol=1e-7, atol=1e-7
    )


def test_patch_embedding_is_patch_size_consistent_and_ignores_invalid_pixels() -> None:
    torch.manual_seed(0)
    embed = FlexiPatchEmbed(in_channels=2, dim=16, resize="pi_kernel").double()
    coarse = torch.randn(1, 1, 2, 4, 4, dtype=torch.float64)  # (B, T, C, H, W) at p = 2
    ones = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    tokens_p2 = embed(coarse, ones, 2)
    # each p=2 token equals the base p=8 token of that 2x2 patch's bilinear upsample
    for i in range(2):
        for j in range(2):
            patch = coarse[0, :, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
            big = upsample(patch, 8)[None]
            torch.testing.assert_close(
                embed(big, torch.ones(1, 1, 8, 8, dtype=torch.bool), 8)[0, 0, 0, 0],
                tokens_p2[0, 0, i, j],
            )
    poisoned = coarse.clone()
    valid = ones.clone()
    poisoned[..., 0, 0] = float("nan")
    valid[..., 0, 0] = False
    expected = coarse.clone()
    expected[..., 0, 0] = 0.0
    torch.testing.assert_close(embed(poisoned, valid, 2), embed(expected, ones, 2))


def test_token_validity_threshold_is_half_the_pixels() -> None:
    valid = torch.zeros(1, 1, 2, 4, dtype=torch.bool)
    valid[0, 0, 0, 0] = True  # 1 of 4 -> invalid
    valid[0, 0, :, 2] = True  # 2 of 4 -> valid
    assert token_validity(valid, 2).tolist() == [[[[False, True]]]]


def test_image_bicubic_resize_is_the_reference_formula() -> None:
    """At p != 8 the default tokenizer resizes the image so each p x p patch becomes
    8 x 8 (bicubic, antialias) and applies the base conv with its bias."""
    torch.manual_seed(0)
    embed = FlexiPatchEmbed(in_channels=3, dim=5).double()
    x = torch.randn(2, 1, 3, 8, 12, dtype=torch.float64)
    ones = torch.ones(2, 1, 8, 12, dtype=torch.bool)
    tokens = embed(x, ones, 4)
    big = F.interpolate(x[:, 0], size=(16, 24), mode="bicubic", antialias=True)
    expected = F.conv2d(big, embed.weight, embed.bias, stride=8).permute(0, 2, 3, 1)
    torch.testing.assert_close(tokens[:, 0], expected)
    assert tokens.shape == (2, 1, 2, 3, 5)
    # at the base size nothing is resized: a plain strided conv
    plain = F.conv2d(x[:, 0], embed.weight, embed.bias, stride=8).permute(0, 2, 3, 1)
    torch.testing.assert_close(embed(x, ones, 8)[:, 0], plain)


def reference_sincos(positions: np.ndarray, dim: int) -> np.ndarray:
    """The reference's 1-D sin-cos written out: omega_k = 1 / 10000 ** (k / dim / 2)."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2) / dim / 2.0)
    angles = positions[:, None] * omega[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def test_fixed_encodings_equal_the_reference_layout_by_hand() -> None:
    dim, q = 32, 8
    months = torch.tensor([[0, 5, 11]])
    enc = fixed_encodings(dim, months, (2, 3), patch_size=4, gsd=10.0, device=torch.device("cpu"))
    assert enc.shape == (1, 3, 2, 3, dim)
    e = enc.double().numpy()
    assert not e[..., :q].any()  # the channel quarter is the learned part
    time = reference_sincos(np.arange(3.0), q)
    for t in range(3):
        np.testing.assert_allclose(e[0, t, 1, 2, q : 2 * q], time[t], atol=1e-6)
        angle = 2 * math.pi * months[0, t].item() / 12
        want = [math.sin(angle)] * (q // 2) + [math.cos(angle)] * (q // 2)
        np.testing.assert_allclose(e[0, t, 0, 0, 2 * q : 3 * q], want, atol=1e-6)
    ratio = 4 * 10.0 / 10.0  # patch size x gsd / 10 m
    cols = reference_sincos(np.arange(3.0) * ratio, q // 2)
    rows = reference_sincos(np.arange(2.0) * ratio, q // 2)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(
                e[0, 0, i, j, 3 * q :], np.concatenate([cols[j], rows[i]]), atol=1e-6
            )


def test_spatial_encoding_is_in_ground_metres() -> None:
    cpu = torch.device("cpu")
    months = torch.tensor([[0, 5]])
    a = fixed_encodings(32, months, (3, 3), patch_size=4, gsd=10.0, device=cpu)
    b = fixed_encodings(32, months, (3, 3), patch_size=2, gsd=20.0, device=cpu)  # 40 m both
    c = fixed_encodings(32, months, (3, 3), patch_size=2, gsd=10.0, device=cpu)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    assert a.shape == (1, 2, 3, 3, 32)


def test_month_encoding_is_cyclic_and_static_groups_have_no_time_part() -> None:
    e = month_sincos(torch.arange(12), 16)
    torch.testing.assert_close((e[11] - e[0]).norm(), (e[0] - e[1]).norm())
    static = fixed_encodings(32, None, (2, 2), patch_size=4, gsd=10.0, device=torch.device("cpu"))
    assert static.shape == (1, 1, 2, 2, 32)
    assert not static[..., :24].any()  # channel, time and month quarters are empty
    assert static[..., 24:].abs().sum() > 0


def test_channel_embedding_starts_at_zero_and_fills_only_the_first_quarter() -> None:
    emb = ChannelEmbedding(32)
    assert not emb.weight.any()
    with torch.no_grad():
        emb.weight.add_(1.0)
    out = emb(torch.tensor([[0, 3]]))
    assert out.shape == (1, 2, 32)
    assert bool((out[..., :8] == 1).all()) and not out[..., 8:].any()
