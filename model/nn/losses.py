"""Latent MIM Lite losses, always computed in float32 (also under autocast).

Patch discrimination (`patch_discrimination_loss`): each decoded token's prediction
against the frozen targets of the decoded tokens of its scope in its sample; the scope
is its modality by default (the reference's `ModalityPatchDiscriminationLoss`, v1's
"modality_patch_discrimination_new"), or its band group, or every decoded token of the
sample. Two reductions (`PatchReduction`):
- "per_sample" (default, the reference's): 2*tau * cross-entropy, averaged over a
  sample's tokens of a scope, then over the samples that have any, summed over scopes;
- "token_mean": the plain cross-entropy averaged over every decoded token of the batch.

Instance contrastive (`instance_contrastive_loss`): InfoNCE between the two views'
embeddings of each sample against the other samples. "one_way" (the reference's
InfoNCE) scores view 1 against view 2 only; "symmetric" averages both directions.

Nothing here reads a value back to the host: the token counts that decide tensor shapes
come with the masks (see `pack`), so a CUDA step never waits on one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

NegativeScope = Literal["modality", "band_group", "all"]
NEGATIVE_SCOPES: tuple[str, ...] = ("modality", "band_group", "all")
PatchReduction = Literal["per_sample", "token_mean"]
PATCH_REDUCTIONS: tuple[str, ...] = ("per_sample", "token_mean")
ContrastiveDirection = Literal["one_way", "symmetric"]
CONTRASTIVE_DIRECTIONS: tuple[str, ...] = ("one_way", "symmetric")


def float32_region(device_type: str) -> contextlib.AbstractContextManager[object]:
    """Autocast off (fp32) on devices that autocast; as is elsewhere ("meta", whose
    tensors the tests use to prove the step never reads a value back)."""
    if device_type in ("cpu", "cuda", "xpu", "mps"):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


_ABSENT = -1e9
"""Logit of an absent slot: finite, so a row with no present key keeps finite gradients
(an -inf row would give NaN through logsumexp even where its loss is discarded)."""


def pack(mask: Tensor, length: int | None = None) -> tuple[Tensor, Tensor]:
    """Indices (B, K) of each row's True entries, front-packed in order, and their presence.

    K is `length` when given (it must be at least the largest row count: the masks' own
    counts, known on the host before the step, give it without a device sync), else the
    largest row count (read from the device). Padding slots repeat index 0 and are False
    in the presence mask.
    """
    counts = mask.sum(dim=1)
    k = length if length is not None else (int(counts.max()) if mask.numel() else 0)
    k = min(k, mask.shape[1])
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :k]
    present = torch.arange(k, device=mask.device)[None, :] < counts[:, None]
    return order.masked_fill(~present, 0), present


def gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    """(B, N, D) gathered at (B, K) -> (B, K, D)."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def _scope_ce(p: Tensor, t: Tensor, present: Tensor, temperature: float) -> Tensor:
    logits = torch.bmm(p, t.transpose(1, 2)) / temperature  # (B, K, K)
    logits = logits.masked_fill(~present[:, None, :], _ABSENT)
    positive = torch.diagonal(logits, dim1=1, dim2=2)
    ce = torch.logsumexp(logits, dim=-1) - positive
    return torch.where(present, ce, 0.0)


def scope_cross_entropy(
    pred: Tensor, target: Tensor, present: Tensor, temperature: float
) -> Tensor:
    """(B, K) cross-entropy of each token's prediction against its sample's K targets of one
    scope (its own target the positive, absent slots excluded); 0 where not present.

    The (B, K, K) logits are recomputed in backward rather than kept: at p=4 a sample's
    Sentinel-2 scope holds ~3,300 decoded tokens, and the logits with their masked copy
    and softmax would hold ~1.4 GB per view until the backward pass (B=8)."""
    p = F.normalize(pred.float(), dim=-1)
    t = F.normalize(target.float(), dim=-1)
    if torch.is_grad_enabled() and (p.requires_grad or t.requires_grad):
        ce: Tensor = checkpoint(_scope_ce, p, t, present, temperature, use_reentrant=False)
        return ce
    return _scope_ce(p, t, present, temperature)


def patch_discrimination_loss(
    scopes: Sequence[tuple[Tensor, Tensor, Tensor]],
    temperature: float = 0.1,
    reduction: PatchReduction = "per_sample",
) -> Tensor:
    """Patch discrimination over scopes, each (pred (B, K, D), target (B, K, D), present
    (B, K) bool) holding one scope's decoded tokens per sample (see the module doc)."""
    if reduction not in PATCH_REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}; choose one of {PATCH_REDUCTIONS}")
    with float32_region(scopes[0][0].device.type if scopes else "cpu"):
        total: Tensor | None = None
        count: Tensor | None = None
        for pred, target, present in scopes:
            if pred.shape[1] == 0:
                continue
            ce = scope_cross_entropy(pred, target, present, temperature)
            if reduction == "per_sample":
                n = present.sum(dim=1)
                per_sample = ce.sum(dim=1) / n.clamp(min=1)
                has = (n > 0).to(ce.dtype)
                term = 2 * temperature * (per_sample * has).sum() / has.sum().clamp(min=1)
                total = term if total is None else total + term
            else:
                s, c = ce.sum(), present.sum()
                total = s if total is None else total + s
                count = c if count is None else count + c
        if total is None:
            zero = scopes[0][0].float().sum() * 0.0 if scopes else torch.zeros(())
            return zero
        if reduction == "token_mean":
            assert count is not None
            return total / count.clamp(min=1)
        return total


def instance_contrastive_loss(
    first: Tensor,
    second: Tensor,
    temperature: float = 0.1,
    present: Tensor | None = None,
    direction: ContrastiveDirection = "one_way",
) -> Tensor:
    """InfoNCE between embeddings (B, D) of two views of the same batch: sample i of one
    view is the positive of sample i of the other. Samples with `present` False (no
    encoded token in a view) are neither anchors nor negatives; 0 with fewer than two."""
    if direction not in CONTRASTIVE_DIRECTIONS:
        raise ValueError(f"direction={direction!r}; choose one of {CONTRASTIVE_DIRECTIONS}")
    with float32_region(first.device.type):
        a = F.normalize(first.float(), dim=-1)
        b = F.normalize(second.float(), dim=-1)
        keep = (
            present
            if present is not None
            else torch.ones(a.shape[0], dtype=torch.bool, device=a.device)
        )
        logits = (a @ b.T / temperature).masked_fill(~keep[None, :], _ABSENT)
        weight = keep.to(a.dtype)
        enough = (weight.sum() >= 2).to(a.dtype)
        denominator = weight.sum().clamp(min=1)

        def one_direction(scores: Tensor) -> Tensor:
            ce = torch.logsumexp(scores, dim=-1) - torch.diagonal(scores)
            return torch.where(keep, ce, 0.0).sum() / denominator

        loss = one_direction(logits)
        if direction == "symmetric":
            sym = (b @ a.T / temperature).masked_fill(~keep[None, :], _ABSENT)
            loss = 0.5 * (loss + one_direction(sym))
        return loss * enough
