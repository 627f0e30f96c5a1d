"""FlexiViT pseudo-inverse (PI) resize of patch-embedding kernels.

Weights live at the base patch size (8). For a smaller patch size p we want the
p x p kernel whose token on a patch `x` equals the base kernel's token on the
bilinear upsample `U x` of that patch: <x, w_p> = <U x, w_8> for every x. The
least-squares solution is w_p = U^T w_8, which is FlexiViT's pinv(B^T) w_8 with
B = pinv(U), the pseudo-inverse of the upsampling (arXiv 2212.08013, sec. 3.4).
For a patch size above the base (not used by the batch contract, supported for
completeness) U is the upsampling from base to new and w_new = pinv(U^T) w_base,
which keeps every token of an upsampled base patch exactly.
Resizing the kernel rather than the image keeps the cost of a token at p x p.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor


@cache
def bilinear_upsample_matrix(small: int, large: int) -> Tensor:
    """float64 (large^2, small^2): column i is the bilinear upsample of basis patch i."""
    if not 1 <= small <= large:
        raise ValueError(f"need 1 <= small <= large, got small={small}, large={large}")
    basis = torch.eye(small * small, dtype=torch.float64).reshape(-1, 1, small, small)
    up = F.interpolate(basis, size=(large, large), mode="bilinear", align_corners=False)
    return up.reshape(small * small, large * large).T.contiguous()


@cache
def pi_resize_matrix(base: int, new: int) -> Tensor:
    """float64 (new^2, base^2) mapping a flattened base kernel to the new kernel."""
    if base == new:
        return torch.eye(base * base, dtype=torch.float64)
    if new < base:
        return bilinear_upsample_matrix(new, base).T.contiguous()
    return torch.linalg.pinv(bilinear_upsample_matrix(base, new).T)


def pi_resize_kernel(weight: Tensor, new_size: int) -> Tensor:
    """Resize (..., k, k) kernels to (..., new, new); differentiable w.r.t. `weight`."""
    base = weight.shape[-1]
    if weight.shape[-2] != base:
        raise ValueError(f"kernels must be square, got {tuple(weight.shape[-2:])}")
    if new_size == base:
        return weight
    matrix = pi_resize_matrix(base, new_size).to(device=weight.device, dtype=weight.dtype)
    flat = weight.reshape(*weight.shape[:-2], base * base) @ matrix.T
    return flat.reshape(*weight.shape[:-2], new_size, new_size)
