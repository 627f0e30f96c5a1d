"""Flattening of per-group token grids into one ragged token sequence per sample.

Order: groups in registry order, then (time, row, column) within a group. Masks,
encodings, targets and outputs all share this order, so one index tensor moves
between them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class GroupSpan:
    group: str
    start: int
    shape: tuple[int, int, int]  # (T, h, w)

    @property
    def length(self) -> int:
        t, h, w = self.shape
        return t * h * w


@dataclass
class TokenSequence:
    """Everything the encoder, decoder and loss need about every token of a batch."""

    spans: tuple[GroupSpan, ...]
    content: Tensor  # (B, N, D) encoder input: patch embedding + encodings (maps: encodings only)
    encodings: Tensor  # (B, N, D) fixed time/month/space quarters (channel quarter zero)
    valid: Tensor  # (B, N) bool token validity
    group_ids: Tensor  # (B, N) long registry group index
    modality_ids: Tensor  # (B, N) long registry modality index
    targets: Tensor | None  # (B, N, target_dim) frozen-projection targets, no grad

    def flatten(self, per_group: dict[str, Tensor], name: str) -> Tensor:
        """(B, N) bool from per-group (B, T, h, w) masks; a group missing from the dict is all False."""
        b = self.valid.shape[0]
        unknown = set(per_group) - {s.group for s in self.spans}
        if unknown:
            raise ValueError(f"{name} masks name groups {sorted(unknown)} that the batch lacks")
        parts = []
        for span in self.spans:
            mask = per_group.get(span.group)
            if mask is None:
                parts.append(
                    torch.zeros(b, span.length, dtype=torch.bool, device=self.valid.device)
                )
                continue
            if tuple(mask.shape) != (b, *span.shape) or mask.dtype != torch.bool:
                raise ValueError(
                    f"{name} mask of group {span.group!r} is {mask.dtype} {tuple(mask.shape)}; "
                    f"expected bool {(b, *span.shape)} = (B, T, H/p, W/p)"
                )
            parts.append(mask.reshape(b, -1).to(self.valid.device))
        return torch.cat(parts, dim=1)

    def unflatten(self, values: Tensor) -> dict[str, Tensor]:
        """(B, N, ...) -> group -> (B, T, h, w, ...)."""
        b = values.shape[0]
        return {
            s.group: values[:, s.start : s.start + s.length].reshape(b, *s.shape, *values.shape[2:])
            for s in self.spans
        }
