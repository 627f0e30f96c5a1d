"""Latent MIM Lite losses, always computed in float32 (also under autocast)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

NegativeScope = Literal["band_group", "modality", "all"]
NEGATIVE_SCOPES: tuple[str, ...] = ("band_group", "modality", "all")


def pack(mask: Tensor, min_length: int = 0) -> tuple[Tensor, Tensor]:
    """Indices (B, K) of each row's True entries, front-packed in order, and their presence.

    K is the largest row count (at least `min_length`); padding slots repeat index 0
    and are False in the presence mask.
    """
    counts = mask.sum(dim=1)
    k = max(int(counts.max()) if mask.numel() else 0, min_length)
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :k]
    present = torch.arange(k, device=mask.device)[None, :] < counts[:, None]
    return order.masked_fill(~present, 0), present


def gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    """(B, N, D) gathered at (B, K) -> (B, K, D)."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def patch_discrimination_loss(
    pred: Tensor, target: Tensor, present: Tensor, scope_ids: Tensor, temperature: float = 0.1
) -> Tensor:
    """InfoNCE of each decoded token against the targets of its scope within its sample.

    pred, target: (B, M, D); present: (B, M) bool; scope_ids: (B, M) int — negatives of a
    token are the other present tokens of the same sample with the same scope id (its
    band group, its modality, or all). Mean over present tokens; 0 when there are none.
    """
    with torch.autocast(pred.device.type, enabled=False):
        pred = F.normalize(pred.float(), dim=-1)
        target = F.normalize(target.float(), dim=-1)
        total = pred.new_zeros(())
        count = 0
        for scope in torch.unique(scope_ids[present]).tolist():
            index, slot = pack(present & (scope_ids == scope))
            p, t = gather_tokens(pred, index), gather_tokens(target, index)
            logits = torch.bmm(p, t.transpose(1, 2)) / temperature  # (B, K, K)
            logits = logits.masked_fill(~slot[:, None, :], float("-inf"))
            labels = torch.arange(slot.shape[1], device=pred.device).expand_as(slot)
            losses = F.cross_entropy(logits[slot], labels[slot], reduction="sum")
            total = total + losses
            count += int(slot.sum())
        return total / max(count, 1)


def scope_ids_for(scope: NegativeScope, group_ids: Tensor, modality_ids: Tensor) -> Tensor:
    """Per-token scope ids for the chosen negative set."""
    if scope == "band_group":
        return group_ids
    if scope == "modality":
        return modality_ids
    if scope == "all":
        return torch.zeros_like(group_ids)
    raise ValueError(f"negatives={scope!r}; choose one of {NEGATIVE_SCOPES}")


def instance_contrastive_loss(
    first: Tensor, second: Tensor, temperature: float = 0.1, present: Tensor | None = None
) -> Tensor:
    """Symmetric InfoNCE between pooled embeddings (B, D) of two views of the same batch;
    sample i of one view is the positive of sample i of the other. Samples with
    `present` False (no encoded tokens in a view) are left out entirely."""
    with torch.autocast(first.device.type, enabled=False):
        a = F.normalize(first.float(), dim=-1)
        b = F.normalize(second.float(), dim=-1)
        if present is not None:
            a, b = a[present], b[present]
        if a.shape[0] < 2:
            return a.new_zeros(()) + 0.0 * (first.sum() + second.sum())
        logits = a @ b.T / temperature
        labels = torch.arange(a.shape[0], device=a.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
