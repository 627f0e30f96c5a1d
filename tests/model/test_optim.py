"""Optimisation properties: frozen targets, gradient flow, negative scopes in the model."""

from __future__ import annotations

import torch
from terracube.model.nn.groups import all_groups, decode_only_groups, encodable_groups
from terracube.model.nn.olmoearth import LatentMIM, LatentMIMConfig
from terracube.model.nn.synthetic import synthetic_batch
from terracube.model.train.masking import ViewMasks, mask_batch


def checkerboard_views(batch) -> list[ViewMasks]:
    """Two views that encode half of every encodable group and decode the rest plus the maps."""
    views = []
    for phase in (0, 1):
        encode, decode = {}, {}
        for g in batch.groups:
            valid = batch.token_valid(g)
            _, _, h, w = valid.shape
            board = (torch.arange(h)[:, None] + torch.arange(w)[None, :] + phase) % 2 == 0
            if g in encodable_groups():
                encode[g] = valid & board
                decode[g] = valid & ~board
            else:
                encode[g] = torch.zeros_like(valid)
                decode[g] = valid
        views.append(ViewMasks(encode, decode))
    return views


def test_target_is_the_initial_patch_embedding_and_stays_frozen_through_adamw_steps() -> None:
    torch.manual_seed(0)
    model = LatentMIM()
    # at init the target is a copy of the online patch embedding, bias included ...
    for g in encodable_groups():
        online = model.tokenizer.embed[g]
        assert torch.equal(model.target.weight(g), online.weight)
        bias = model.target.bias(g)
        assert bias is not None and torch.equal(bias, online.bias) and bias.abs().sum() > 0
        assert model.target.weight(g).data_ptr() != online.weight.data_ptr()  # a copy
    # ... and maps, never encoded, have target embeddings of their own
    assert all(model.target.bias(g) is not None for g in decode_only_groups())
    before = {name: buf.clone() for name, buf in model.target.named_buffers()}
    assert set(before) == {f"{k}_{g}" for g in all_groups() for k in ("weight", "bias")}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.02)
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for buf in model.target.buffers():
        assert id(buf) not in optimised and not buf.requires_grad
    assert not list(model.target.parameters())
    online_before = model.tokenizer.embed["s2_10m"].weight.detach().clone()
    batch = synthetic_batch(batch_size=2, timesteps=2, size=8, patch_size=4)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        optimizer.zero_grad()
        model(batch, mask_batch(batch, generator))["loss"].backward()
        optimizer.step()
    for name, buf in model.target.named_buffers():
        assert torch.equal(buf, before[name]), f"target {name} changed"
        assert buf.grad is None
    assert not torch.equal(model.tokenizer.embed["s2_10m"].weight, online_before)
    # the frozen target travels with the checkpoint
    assert all(f"target.weight_{g}" in model.state_dict() for g in all_groups())


def test_random_projection_target_depends_only_on_the_seed() -> None:
    def target(seed: int) -> torch.Tensor:
        config = LatentMIMConfig(target="random_projection", target_seed=seed, target_dim=64)
        model = LatentMIM(config)
        assert model.target.bias("s2_10m") is None and model.decoder.head.out_features == 64
        return model.target.weight("s2_10m")

    a = target(1)
    torch.manual_seed(123)
    b, c = target(1), target(2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_gradient_reaches_every_trainable_parameter() -> None:
    torch.manual_seed(0)
    model = LatentMIM()
    batch = synthetic_batch(batch_size=3, timesteps=2, size=8, patch_size=2)
    out = model(batch, checkerboard_views(batch))
    out["loss"].backward()
    assert out["contrastive"] > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {name}"


def _loss(negatives: str, groups: list[str]) -> torch.Tensor:
    torch.manual_seed(0)
    model = LatentMIM(LatentMIMConfig(negatives=negatives, contrastive_weight=0.0))
    batch = synthetic_batch(batch_size=2, timesteps=2, size=8, patch_size=2, groups=groups)
    with torch.no_grad():
        return model(batch, checkerboard_views(batch))["loss"]


def test_negative_scope_matters_only_with_several_groups() -> None:
    assert torch.equal(_loss("band_group", ["s2_10m"]), _loss("all", ["s2_10m"]))
    several = ["s2_10m", "s1", "worldcover"]
    assert not torch.allclose(_loss("band_group", several), _loss("all", several))
    # s2_10m and s1 are different modalities, so "modality" equals "band_group" here ...
    assert torch.equal(_loss("band_group", several), _loss("modality", several))
    # ... but not when two groups of one modality are decoded
    s2 = ["s2_10m", "s2_20m"]
    assert not torch.allclose(_loss("band_group", s2), _loss("modality", s2))


def test_decode_only_groups_cannot_be_encoded() -> None:
    batch = synthetic_batch(batch_size=1, timesteps=1, size=8, patch_size=4)
    views = checkerboard_views(batch)
    views[0].encode["osm"] = batch.token_valid("osm")
    try:
        LatentMIM()(batch, views)
    except ValueError as err:
        assert "decode-only groups ['osm']" in str(err)
    else:
        raise AssertionError("encoding OSM must be refused")


def test_bf16_autocast_step_keeps_fp32_losses_and_targets() -> None:
    torch.manual_seed(0)
    model = LatentMIM()
    batch = synthetic_batch(batch_size=2, timesteps=2, size=8, patch_size=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch, checkerboard_views(batch))
        seq = model.embed(batch, with_targets=True)
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    assert seq.targets is not None and seq.targets.dtype == torch.float32
    out["loss"].backward()
    assert model.tokenizer.embed["s2_10m"].weight.grad.abs().sum() > 0


def test_a_training_step_reads_nothing_back_from_the_device() -> None:
    """On the "meta" device a tensor has no values, so any host read in forward or backward
    (`bool(t.any())`, `int(t.sum())`, `.item()`, `.tolist()`) raises. Packed lengths come
    from the masks' host counts instead; on CUDA the step therefore never waits."""
    batch = synthetic_batch(batch_size=2, timesteps=2, size=16, patch_size=4, valid_fraction=0.9)
    views = mask_batch(batch, torch.Generator().manual_seed(0))
    model = LatentMIM().to("meta")
    out = model(batch.to("meta"), [v.to("meta") for v in views])
    assert out["loss"].device.type == "meta" and out["encoded_tokens"].device.type == "meta"
    out["loss"].backward()
    assert model.encoder.blocks[0].attn.q.weight.grad is not None
    # the same step on the host: the host counts size the packs exactly
    cpu = LatentMIM()(batch, views)
    encoded = sum(int(c[0].sum()) for v in views for c in v.counts.values())
    assert int(cpu["encoded_tokens"]) == encoded
