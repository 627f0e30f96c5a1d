"""Collapse diagnostics for embeddings: a collapsed encoder maps everything to one
direction, which shows as a per-dimension std near 0 and an effective rank near 1."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check(embeddings: Tensor) -> Tensor:
    if embeddings.ndim != 2 or embeddings.shape[0] < 2:
        raise ValueError(
            f"embeddings must be (N >= 2, D), got {tuple(embeddings.shape)}; pass a batch of vectors"
        )
    return embeddings.detach().float()


def embedding_std(embeddings: Tensor) -> float:
    """Mean over dimensions of the per-dimension std of the L2-normalised embeddings
    (1/sqrt(D) for isotropic embeddings, 0 when collapsed)."""
    z = F.normalize(_check(embeddings), dim=-1)
    return float(z.std(dim=0).mean())


def effective_rank(embeddings: Tensor, eps: float = 1e-12) -> float:
    """exp(entropy of the normalised singular values) of the (N, D) matrix (RankMe,
    arXiv 2210.02885): between 1 (collapsed) and min(N, D)."""
    singular = torch.linalg.svdvals(_check(embeddings).double())
    p = singular / singular.sum().clamp(min=eps)
    entropy = -(p * torch.log(p.clamp(min=eps))).sum()
    return float(torch.exp(entropy))


def mean_pairwise_cosine(embeddings: Tensor) -> float:
    """Mean cosine similarity over all pairs of distinct rows (near 1 when collapsed)."""
    z = F.normalize(_check(embeddings), dim=-1)
    n = z.shape[0]
    total = z.sum(0)
    return float((total @ total - n) / (n * (n - 1)))


COLLAPSE_RANK = 2.0
"""Token embeddings whose effective rank falls below this have collapsed to a line or so:
pretraining warns (out of 128 dimensions for nano; a healthy run sits in the tens)."""


def collapse_report(embeddings: Tensor, prefix: str = "") -> dict[str, float]:
    return {
        f"{prefix}embedding_std": embedding_std(embeddings),
        f"{prefix}effective_rank": effective_rank(embeddings),
        f"{prefix}mean_cosine": mean_pairwise_cosine(embeddings),
    }


def collapse_warning(row: dict[str, float], step: int) -> str | None:
    """The warning pretraining logs for a metrics row whose encoded tokens collapsed."""
    rank = row.get("token_effective_rank")
    if rank is None or rank >= COLLAPSE_RANK:
        return None
    return (
        f"step {step}: the encoded tokens' effective rank is {rank:.2f} (below "
        f"{COLLAPSE_RANK:.1f}; mean cosine {row.get('token_mean_cosine', float('nan')):.3f}): "
        "the embeddings are collapsing. Lower the learning rate, check the target (a learned "
        "EMA target can collapse) or the inputs"
    )
