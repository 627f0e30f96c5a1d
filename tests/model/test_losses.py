"""Losses against plain-loop reference computations, and collapse diagnostics."""

from __future__ import annotations

import math

import pytest
import torch
from terracube.model.nn.losses import instance_contrastive_loss, pack, patch_discrimination_loss
from terracube.model.train.diagnostics import effective_rank, embedding_std


def _unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def reference_patch_discrimination(pred, target, present, scope, temperature) -> float:
    """Readable reference: for each present token i of sample b, softmax over the targets
    of the present tokens j of sample b with the same scope; mean of -log p(i)."""
    losses = []
    for b in range(len(pred)):
        for i in range(len(pred[b])):
            if not present[b][i]:
                continue
            p = _unit(pred[b][i])
            logits = {}
            for j in range(len(pred[b])):
                if present[b][j] and scope[b][j] == scope[b][i]:
                    t = _unit(target[b][j])
                    logits[j] = sum(x * y for x, y in zip(p, t, strict=True)) / temperature
            log_z = math.log(sum(math.exp(v) for v in logits.values()))
            losses.append(log_z - logits[i])
    return sum(losses) / len(losses)


def hand_made(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(2, 6, 3, generator=g, dtype=torch.float64)
    target = torch.randn(2, 6, 3, generator=g, dtype=torch.float64)
    present = torch.tensor([[1, 1, 1, 1, 0, 1], [1, 0, 1, 1, 1, 0]], dtype=torch.bool)
    groups = torch.tensor([[0, 0, 1, 1, 1, 2], [0, 0, 0, 2, 2, 2]])
    return pred, target, present, groups


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_patch_discrimination_equals_reference_loop(temperature: float) -> None:
    pred, target, present, groups = hand_made()
    got = patch_discrimination_loss(pred, target, present, groups, temperature)
    want = reference_patch_discrimination(
        pred.tolist(), target.tolist(), present.tolist(), groups.tolist(), temperature
    )
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_known_value_for_two_orthogonal_tokens() -> None:
    # perfect predictions of two orthogonal targets: loss = log(1 + exp(-1/T))
    pred = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    present = torch.ones(1, 2, dtype=torch.bool)
    loss = patch_discrimination_loss(
        pred, pred.clone(), present, torch.zeros(1, 2, dtype=torch.long), 0.1
    )
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-10.0)), abs=1e-6)


def test_restricted_negatives_differ_exactly_when_cross_group_negatives_exist() -> None:
    pred, target, present, groups = hand_made(1)
    everything = torch.zeros_like(groups)
    restricted = patch_discrimination_loss(pred, target, present, groups)
    unrestricted = patch_discrimination_loss(pred, target, present, everything)
    assert abs(restricted.item() - unrestricted.item()) > 1e-3
    # with one group only, both scopes name the same negatives: bit-identical
    one_group = torch.full_like(groups, 4)
    assert torch.equal(
        patch_discrimination_loss(pred, target, present, one_group),
        patch_discrimination_loss(pred, target, present, everything),
    )
    # restricting can only remove negatives, so the loss cannot grow
    assert restricted.item() < unrestricted.item()


def test_loss_is_float32_under_bf16_autocast() -> None:
    pred, target, present, groups = hand_made(2)
    pred16, target16 = pred.bfloat16(), target.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = patch_discrimination_loss(pred16, target16, present, groups)
    want = patch_discrimination_loss(pred16.float(), target16.float(), present, groups)
    assert got.dtype == torch.float32
    assert torch.equal(got, want)


def test_instance_contrastive_equals_reference_loop() -> None:
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    temperature = 0.2

    def one_direction(x, y) -> float:
        total = 0.0
        for i in range(len(x)):
            sims = [
                sum(p * q for p, q in zip(_unit(x[i]), _unit(y[j]), strict=True)) / temperature
                for j in range(len(y))
            ]
            total += math.log(sum(math.exp(s) for s in sims)) - sims[i]
        return total / len(x)

    want = 0.5 * (one_direction(a.tolist(), b.tolist()) + one_direction(b.tolist(), a.tolist()))
    assert instance_contrastive_loss(a, b, temperature).item() == pytest.approx(want, rel=1e-5)
    # samples without encoded tokens are left out entirely
    present = torch.tensor([True, False, True, True])
    keep = present.nonzero().squeeze(1)
    assert instance_contrastive_loss(a, b, temperature, present).item() == pytest.approx(
        instance_contrastive_loss(a[keep], b[keep], temperature).item()
    )


def test_pack_front_packs_in_order() -> None:
    mask = torch.tensor([[False, True, False, True], [True, True, True, False], [False] * 4])
    index, present = pack(mask)
    assert index.tolist() == [[1, 3, 0], [0, 1, 2], [0, 0, 0]]
    assert present.tolist() == [[True, True, False], [True, True, True], [False, False, False]]
    assert pack(torch.zeros(2, 3, dtype=torch.bool))[0].shape == (2, 0)
    assert pack(torch.zeros(2, 3, dtype=torch.bool), min_length=1)[0].shape == (2, 1)


def test_effective_rank_and_std_show_collapse() -> None:
    eye = torch.eye(8) * 3.0
    assert effective_rank(eye) == pytest.approx(8.0)
    collapsed = torch.ones(16, 8) * torch.arange(1.0, 17.0)[:, None]  # one direction
    assert effective_rank(collapsed) == pytest.approx(1.0, abs=1e-6)
    assert embedding_std(collapsed) == pytest.approx(0.0, abs=1e-6)
    # two equal singular values, one zero: rank 2
    two = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert effective_rank(two) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="N >= 2"):
        effective_rank(torch.ones(1, 4))
