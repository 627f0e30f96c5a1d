"""The two targets the paper argues against, kept as ablation arms (`LatentMIMConfig.target`).

- "ema_encoder" (classic latent MIM: data2vec, I-JEPA): the target of a decoded token is
  what a momentum copy of the online tokenizer, channel embedding and encoder outputs at
  that token when it sees every valid token of the sample. The copy follows the online
  weights after every optimizer step, `w <- m w + (1 - m) w_online` with m =
  `ema_momentum` (0.996, I-JEPA's starting value; constant here). It runs in eval mode
  (no drop path) and never gets a gradient. Maps are never encoded, so their targets stay
  the frozen patch-embedding ones. The paper's claim: this target can collapse, where the
  frozen random one cannot.
- "pixels" (MAE): the decoder regresses each decoded token's normalised pixels, resized
  to the base 8 x 8 patch as the tokenizer resizes its input; the loss is the mean
  squared error over the valid pixels of the decoded tokens, in place of patch
  discrimination (the contrastive term is unchanged). Groups have different band counts,
  so targets are padded to the widest group's C x 8 x 8 with NaN, and NaN means "no target
  here" (padding or an invalid pixel).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from terracube.model.nn.groups import all_groups, group_channels
from terracube.model.nn.losses import float32_region
from torch import Tensor, nn

EMA_MOMENTUM = 0.996


def pixel_target_dim(base_patch_size: int) -> int:
    """Width of pixel targets: the widest band group's C x base x base."""
    return max(group_channels(g) for g in all_groups()) * base_patch_size**2


class EmaTarget(nn.Module):
    """Momentum copies of the modules that make an encoded token (see the module doc)."""

    def __init__(self, tokenizer: nn.Module, channel_embedding: nn.Module, encoder: nn.Module):
        super().__init__()
        self.tokenizer = copy.deepcopy(tokenizer)
        self.channel_embedding = copy.deepcopy(channel_embedding)
        self.encoder = copy.deepcopy(encoder)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> EmaTarget:
        """Always in eval mode: the target sees no drop path, whatever the online model does."""
        return super().train(False)

    @torch.no_grad()
    def follow(self, online: dict[str, nn.Module], momentum: float) -> None:
        """w <- momentum * w + (1 - momentum) * w_online for every copied parameter."""
        for name, module in online.items():
            mine = dict(getattr(self, name).named_parameters())
            for key, value in module.named_parameters():
                mine[key].mul_(momentum).add_(value.detach(), alpha=1.0 - momentum)


def pixel_targets(data: Tensor, valid: Tensor, patch_size: int, base: int) -> Tensor:
    """(B, T, C, H, W) normalised pixels -> (B, T, H/p, W/p, width) float32 targets, each
    token's C x base x base pixels (resized when p != base), NaN for invalid pixels and
    for the padding up to `pixel_target_dim(base)`."""
    b, t, c, h, w = data.shape
    p = patch_size
    gh, gw = h // p, w // p
    with float32_region(data.device.type):
        x = data.float().reshape(b, t, c, gh, p, gw, p).permute(0, 1, 3, 5, 2, 4, 6)
        v = valid.reshape(b, t, 1, gh, p, gw, p).permute(0, 1, 3, 5, 2, 4, 6)
        v = v.expand(b, t, gh, gw, c, p, p)
        if p != base:
            flat = x.reshape(-1, c, p, p)
            x = F.interpolate(flat, size=(base, base), mode="bilinear", align_corners=False)
            x = x.reshape(b, t, gh, gw, c, base, base)
            keep = F.interpolate(v.reshape(-1, c, p, p).float(), size=(base, base), mode="nearest")
            v = keep.reshape(b, t, gh, gw, c, base, base) > 0.5
        x = torch.where(v, x, torch.full_like(x, float("nan")))
        x = x.reshape(b, t, gh, gw, c * base * base)
        width = pixel_target_dim(base)
        return F.pad(x, (0, width - x.shape[-1]), value=float("nan"))


def pixel_loss(pred: Tensor, target: Tensor, present: Tensor) -> Tensor:
    """Mean over decoded tokens (present) of the mean squared error over their target
    pixels (NaN = none); a token without any valid pixel counts for nothing."""
    with float32_region(pred.device.type):
        has = ~torch.isnan(target) & present[..., None]
        err = torch.where(has, (pred.float() - torch.nan_to_num(target)) ** 2, 0.0)
        n = has.sum(-1)
        per_token = err.sum(-1) / n.clamp(min=1)
        counted = n > 0
        return (per_token * counted).sum() / counted.sum().clamp(min=1)
