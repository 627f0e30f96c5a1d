"""The ablation arms: an EMA target encoder, pixel targets, uniform masking, and the
collapse diagnostics pretraining logs."""

from __future__ import annotations

import pytest
import torch
from terracube.model.nn.groups import encodable_groups
from terracube.model.nn.objectives import pixel_loss, pixel_target_dim, pixel_targets
from terracube.model.nn.olmoearth import LatentMIM, LatentMIMConfig
from terracube.model.nn.synthetic import synthetic_batch
from terracube.model.train.diagnostics import (
    collapse_report,
    collapse_warning,
    mean_pairwise_cosine,
)
from terracube.model.train.masking import MaskingParams, mask_batch

GROUPS = ("s2_10m", "s2_20m", "s1", "worldcover")


def _model(target: str) -> LatentMIM:
    torch.manual_seed(0)
    return LatentMIM(LatentMIMConfig(size="nano", target=target, drop_path=0.0))  # type: ignore[arg-type]


def _batch(valid_fraction: float = 1.0):
    return synthetic_batch(2, 2, 16, 8, GROUPS, torch.Generator().manual_seed(1), valid_fraction)


def test_ema_target_starts_as_the_encoder_and_never_trains() -> None:
    model = _model("ema_encoder").eval()
    batch = _batch()
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert not any(id(p) in trainable for p in model.ema_target.parameters())
    assert any(k.startswith("ema_target.encoder.") for k in model.state_dict())
    seq = model.embed(batch, with_targets=True)
    targets = model._ema_targets(batch, seq)
    _, tokens = model.encode(batch)  # every valid token, the online (= EMA at init) weights
    for span in seq.spans:
        got = targets[:, span.start : span.start + span.length]
        if span.group in encodable_groups():
            want = tokens[span.group].reshape(2, span.length, -1)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        else:  # maps keep the frozen patch-embedding targets
            torch.testing.assert_close(got, seq.targets[:, span.start : span.start + span.length])


def test_ema_target_follows_the_online_weights_by_its_momentum() -> None:
    model = _model("ema_encoder")
    online = (
        model.encoder.blocks[0].attention.qkv.weight
        if hasattr(model.encoder.blocks[0], "attention")
        else next(model.encoder.parameters())
    )
    name = next(k for k, p in model.encoder.named_parameters() if p is online)
    before = dict(model.ema_target.encoder.named_parameters())[name].clone()
    with torch.no_grad():
        online.add_(1.0)
    model.update_target()
    after = dict(model.ema_target.encoder.named_parameters())[name]
    m = model.config.ema_momentum
    torch.testing.assert_close(after, m * before + (1 - m) * online)
    model.train()
    assert not model.ema_target.training  # no drop path in the target, ever


def test_pixel_targets_are_the_patches_with_nan_where_invalid() -> None:
    batch = _batch(valid_fraction=0.8)
    data, valid = batch.data["s2_10m"], batch.valid["s2_10m"]
    targets = pixel_targets(data, valid, 8, 8)
    assert targets.shape == (2, 2, 2, 2, pixel_target_dim(8))
    patch = data[1, 0, :, 8:16, 0:8]  # sample 1, time 0, token row 1, column 0
    ok = valid[1, 0, 8:16, 0:8]
    want = torch.where(ok[None], patch, torch.nan).reshape(-1)
    got = targets[1, 0, 1, 0]
    torch.testing.assert_close(got[: want.numel()], want, equal_nan=True)
    assert torch.isnan(got[want.numel() :]).all()  # padding up to the widest group


def test_pixel_loss_is_the_mean_squared_error_over_valid_pixels() -> None:
    target = torch.tensor([[[1.0, 2.0, torch.nan], [0.0, torch.nan, torch.nan]]])
    pred = torch.tensor([[[0.0, 0.0, 5.0], [3.0, 1.0, 1.0]]])
    present = torch.tensor([[True, True]])
    # token 1: (1 + 4) / 2; token 2: 9 / 1
    assert float(pixel_loss(pred, target, present)) == pytest.approx((2.5 + 9.0) / 2)
    assert float(pixel_loss(pred, target, torch.tensor([[True, False]]))) == pytest.approx(2.5)


@pytest.mark.parametrize("target", ["ema_encoder", "pixels"])
def test_each_arm_trains_a_step(target: str) -> None:
    model = _model(target).train()
    batch = _batch(valid_fraction=0.9)
    views = mask_batch(batch, torch.Generator().manual_seed(2), 2)
    out = model(batch, views)
    assert torch.isfinite(out["loss"]) and float(out["loss"]) > 0
    out["loss"].backward()
    assert model.decoder.head.weight.grad is not None
    assert model.decoder.head.weight.shape[0] == (
        pixel_target_dim(8) if target == "pixels" else model.size.dim
    )


def test_uniform_masking_ignores_groups_and_keeps_the_rules() -> None:
    batch = synthetic_batch(16, 4, 32, 8, GROUPS, torch.Generator().manual_seed(3), 0.9)
    params = MaskingParams(strategy="uniform_random")
    (view,) = mask_batch(batch, torch.Generator().manual_seed(4), 1, params=params)
    enc = dec = total = 0
    for g in GROUPS:
        valid = batch.token_valid(g)
        e, d = view.encode[g], view.decode[g]
        assert not (e & d).any() and not (e & ~valid).any() and not (d & ~valid).any()
        if g not in encodable_groups():
            assert not e.any()
            continue
        enc, dec, total = enc + int(e.sum()), dec + int(d.sum()), total + int(valid.sum())
    assert enc / total == pytest.approx(0.5, abs=0.03)
    assert dec / total == pytest.approx(0.5, abs=0.03)
    # no group is all-or-nothing per sample (the modality-aware rule would do that)
    assert 0 < view.encode["s1"].flatten(1).float().mean(1).min() < 1


def test_mean_pairwise_cosine() -> None:
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))
    unit = torch.nn.functional.normalize(x, dim=1)
    sims = unit @ unit.T
    want = (sims.sum() - sims.diag().sum()) / (7 * 6)
    assert mean_pairwise_cosine(x) == pytest.approx(float(want), abs=1e-6)
    assert mean_pairwise_cosine(torch.ones(4, 3) + 1e-6 * x[:4, :3]) == pytest.approx(1.0, abs=1e-5)


def test_collapsed_tokens_are_warned_about() -> None:
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    healthy = collapse_report(x, prefix="token_")
    assert healthy["token_effective_rank"] > 10 and collapse_warning(healthy, 5) is None
    line = torch.ones(64, 16) + 1e-4 * x  # every token on one direction
    collapsed = collapse_report(line, prefix="token_")
    warning = collapse_warning(collapsed, 7)
    assert warning is not None and warning.startswith("step 7:") and "collapsing" in warning
