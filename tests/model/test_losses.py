"""Losses against plain-loop reference computations, and collapse diagnostics."""

from __future__ import annotations

import math

import pytest
import torch
from terracube.model.nn.losses import (
    gather_tokens,
    instance_contrastive_loss,
    pack,
    patch_discrimination_loss,
)
from terracube.model.train.diagnostics import effective_rank, embedding_std


def _unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def _ce(p_i: list[float], targets: list[list[float]], i: int, temperature: float) -> float:
    p = _unit(p_i)
    logits = [sum(x * y for x, y in zip(p, _unit(t), strict=True)) / temperature for t in targets]
    return math.log(sum(math.exp(v) for v in logits)) - logits[i]


def reference_patch_discrimination(pred, target, present, scope, temperature, reduction) -> float:
    """Readable reference. Each present token i of sample b: softmax over the targets of the
    present tokens of sample b with the same scope, -log p(i). per_sample (the reference's
    ModalityPatchDiscriminationLoss): 2 tau x the mean over a sample's tokens of a scope,
    mean over samples having any, sum over scopes. token_mean: mean over every token."""
    per_scope: dict[int, dict[int, list[float]]] = {}
    for b in range(len(pred)):
        for i in range(len(pred[b])):
            if not present[b][i]:
                continue
            same = [j for j in range(len(pred[b])) if present[b][j] and scope[b][j] == scope[b][i]]
            ce = _ce(pred[b][i], [target[b][j] for j in same], same.index(i), temperature)
            per_scope.setdefault(scope[b][i], {}).setdefault(b, []).append(ce)
    if reduction == "token_mean":
        every = [v for samples in per_scope.values() for vs in samples.values() for v in vs]
        return sum(every) / len(every)
    total = 0.0
    for samples in per_scope.values():
        means = [2 * temperature * sum(vs) / len(vs) for vs in samples.values()]
        total += sum(means) / len(means)
    return total


def split_by_scope(pred, target, present, scope):
    """(pred, target, present) per distinct scope id, packed per sample as the model does."""
    out = []
    for s in torch.unique(scope[present]).tolist():
        index, slot = pack(present & (scope == s))
        out.append((gather_tokens(pred, index), gather_tokens(target, index), slot))
    return out


def hand_made(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(2, 6, 3, generator=g, dtype=torch.float64)
    target = torch.randn(2, 6, 3, generator=g, dtype=torch.float64)
    present = torch.tensor([[1, 1, 1, 1, 0, 1], [1, 0, 1, 1, 1, 0]], dtype=torch.bool)
    groups = torch.tensor([[0, 0, 1, 1, 1, 2], [0, 0, 0, 2, 2, 2]])
    return pred, target, present, groups


@pytest.mark.parametrize("reduction", ["per_sample", "token_mean"])
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_patch_discrimination_equals_reference_loop(temperature: float, reduction: str) -> None:
    pred, target, present, groups = hand_made()
    scopes = split_by_scope(pred, target, present, groups)
    got = patch_discrimination_loss(scopes, temperature, reduction)  # type: ignore[arg-type]
    want = reference_patch_discrimination(
        pred.tolist(), target.tolist(), present.tolist(), groups.tolist(), temperature, reduction
    )
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_the_two_reductions_differ_on_unequal_samples() -> None:
    """Sample 0 has 5 tokens of scope 0 and sample 1 one: per_sample weighs the samples
    equally, token_mean the tokens; the figures differ by more than the 2 tau factor."""
    pred, target, present, _ = hand_made(4)
    present = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    scopes = split_by_scope(pred, target, present, torch.zeros(2, 6, dtype=torch.long))
    per_sample = patch_discrimination_loss(scopes, 0.1, "per_sample").item()
    token_mean = patch_discrimination_loss(scopes, 0.1, "token_mean").item()
    assert per_sample / 0.2 != pytest.approx(token_mean, rel=1e-3)


def test_known_value_for_two_orthogonal_tokens() -> None:
    # perfect predictions of two orthogonal targets: CE = log(1 + exp(-1/T)) per token
    pred = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    present = torch.ones(1, 2, dtype=torch.bool)
    tau = 0.25
    ce = math.log(1 + math.exp(-1 / tau))
    scopes = [(pred, pred.clone(), present)]
    mean = patch_discrimination_loss(scopes, tau, "token_mean").item()
    assert mean == pytest.approx(ce, rel=1e-5)
    assert patch_discrimination_loss(scopes, tau).item() == pytest.approx(2 * tau * ce, rel=1e-5)
    # two scopes of that same sample: per_sample sums them, token_mean averages
    two = scopes + scopes
    assert patch_discrimination_loss(two, tau).item() == pytest.approx(4 * tau * ce, rel=1e-5)
    assert patch_discrimination_loss(two, tau, "token_mean").item() == pytest.approx(ce, rel=1e-5)


def test_restricted_negatives_differ_exactly_when_cross_group_negatives_exist() -> None:
    pred, target, present, groups = hand_made(1)
    everything = torch.zeros_like(groups)

    def loss(scope: torch.Tensor) -> torch.Tensor:
        return patch_discrimination_loss(
            split_by_scope(pred, target, present, scope), 0.1, "token_mean"
        )

    restricted, unrestricted = loss(groups), loss(everything)
    assert abs(restricted.item() - unrestricted.item()) > 1e-3
    # with one group only, both scopes name the same negatives: bit-identical
    assert torch.equal(loss(torch.full_like(groups, 4)), loss(everything))
    # restricting can only remove negatives, so the loss cannot grow
    assert restricted.item() < unrestricted.item()


def test_a_sample_without_tokens_of_a_scope_adds_nothing_and_keeps_gradients_finite() -> None:
    pred, target, present, groups = hand_made(3)
    present[1] = False  # sample 1 decodes nothing
    pred.requires_grad_(True)
    scopes = split_by_scope(pred, target, present, groups)
    loss = patch_discrimination_loss(scopes, 0.1)
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    assert not pred.grad[1].any()
    only_first = split_by_scope(pred[:1], target[:1], present[:1], groups[:1])
    assert loss.item() == pytest.approx(patch_discrimination_loss(only_first, 0.1).item())


def test_loss_is_float32_under_bf16_autocast() -> None:
    pred, target, present, groups = hand_made(2)
    scopes16 = split_by_scope(pred.bfloat16(), target.bfloat16(), present, groups)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = patch_discrimination_loss(scopes16)
    want = patch_discrimination_loss([(p.float(), t.float(), s) for p, t, s in scopes16])
    assert got.dtype == torch.float32
    assert torch.equal(got, want)


def test_instance_contrastive_equals_reference_loop() -> None:
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    temperature = 0.2

    def one_direction(x, y) -> float:
        return sum(_ce(x[i], y, i, temperature) for i in range(len(x))) / len(x)

    forward = one_direction(a.tolist(), b.tolist())
    backward = one_direction(b.tolist(), a.tolist())
    got = instance_contrastive_loss(a, b, temperature)  # one way: the reference's InfoNCE
    assert got.item() == pytest.approx(forward, rel=1e-5)
    symmetric = instance_contrastive_loss(a, b, temperature, direction="symmetric")
    assert symmetric.item() == pytest.approx(0.5 * (forward + backward), rel=1e-5)
    # samples without encoded tokens are left out entirely
    present = torch.tensor([True, False, True, True])
    keep = present.nonzero().squeeze(1)
    for direction in ("one_way", "symmetric"):
        assert instance_contrastive_loss(
            a,
            b,
            temperature,
            present,
            direction,  # type: ignore[arg-type]
        ).item() == pytest.approx(
            instance_contrastive_loss(a[keep], b[keep], temperature, None, direction).item()  # type: ignore[arg-type]
        )
    assert instance_contrastive_loss(a, b, present=torch.tensor([True, False, False, False])) == 0


def test_pack_front_packs_in_order() -> None:
    mask = torch.tensor([[False, True, False, True], [True, True, True, False], [False] * 4])
    index, present = pack(mask)
    assert index.tolist() == [[1, 3, 0], [0, 1, 2], [0, 0, 0]]
    assert present.tolist() == [[True, True, False], [True, True, True], [False, False, False]]
    assert pack(torch.zeros(2, 3, dtype=torch.bool))[0].shape == (2, 0)
    # a length from the host (the masks' own counts) sizes the result without a device read
    index, present = pack(mask, 4)
    assert index.shape == (3, 4) and present.sum(1).tolist() == [2, 3, 0]


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
