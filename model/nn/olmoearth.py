"""OlmoEarth's Latent MIM Lite (arXiv 2511.13655) driven by the modality registry."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from terracube.catalog.registry import band_group
from terracube.model.nn.batch import Batch, validate_batch
from terracube.model.nn.decoder import Decoder
from terracube.model.nn.encoder import Encoder, init_weights, model_size
from terracube.model.nn.encodings import TokenEncodings
from terracube.model.nn.groups import encodable_groups, group_index, modality_index
from terracube.model.nn.losses import (
    NEGATIVE_SCOPES,
    NegativeScope,
    gather_tokens,
    instance_contrastive_loss,
    pack,
    patch_discrimination_loss,
    scope_ids_for,
)
from terracube.model.nn.sequence import GroupSpan, TokenSequence
from terracube.model.nn.target import FrozenTargetProjection
from terracube.model.nn.tokenizer import BASE_PATCH_SIZE, Tokenizer
from terracube.model.train.masking import ViewMasks
from torch import Tensor, nn


@dataclass(frozen=True)
class LatentMIMConfig:
    size: str = "nano"
    target_dim: int | None = None
    """Width of the frozen target space; None = the encoder width."""
    temperature: float = 0.1
    negatives: NegativeScope = "band_group"
    contrastive_weight: float = 0.1
    contrastive_temperature: float = 0.1
    target_seed: int = 0
    base_patch_size: int = BASE_PATCH_SIZE

    def __post_init__(self) -> None:
        model_size(self.size)
        if self.negatives not in NEGATIVE_SCOPES:
            raise ValueError(f"negatives={self.negatives!r}; choose one of {NEGATIVE_SCOPES}")
        if self.temperature <= 0 or self.contrastive_temperature <= 0:
            raise ValueError("temperatures must be > 0")


class LatentMIM(nn.Module):
    """Encoder + decoder + frozen target; `forward` returns losses, `encode` embeddings."""

    def __init__(self, config: LatentMIMConfig | None = None) -> None:
        super().__init__()
        self.config = config or LatentMIMConfig()
        size = model_size(self.config.size)
        self.size = size
        target_dim = self.config.target_dim or size.dim
        self.encodings = TokenEncodings(size.dim)
        self.encoder = Encoder(size)
        self.decoder = Decoder(size, target_dim)
        init_weights(self.encoder)
        init_weights(self.decoder)
        self.tokenizer = Tokenizer(size.dim, self.config.base_patch_size)
        self.target = FrozenTargetProjection(
            target_dim, self.config.target_seed, self.config.base_patch_size
        )

    # ------------------------------------------------------------------ tokens
    def embed(self, batch: Batch, with_targets: bool) -> TokenSequence:
        """Every token of every present group: content, encodings, validity, ids, targets."""
        p, grid = batch.patch_size, batch.grid
        spans, content, encodings, valid, group_ids, modality_ids, targets = (
            [],
            [],
            [],
            [],
            [],
            [],
            [],
        )
        start = 0
        b = batch.batch_size
        for name in batch.groups:
            data, pixel_valid = batch.data[name], batch.valid[name]
            months = batch.months if band_group(name).temporal else None
            enc = self.encodings(group_index(name), months, grid, p, batch.gsd)
            t = data.shape[1]
            enc = enc.expand(b, t, *grid, -1)
            if name in self.tokenizer.embed:
                tokens = self.tokenizer(name, data, pixel_valid, p) + enc
            else:
                tokens = enc
            span = GroupSpan(name, start, (t, *grid))
            spans.append(span)
            start += span.length
            content.append(tokens.reshape(b, span.length, -1))
            encodings.append(enc.reshape(b, span.length, -1))
            valid.append(batch.token_valid(name).reshape(b, -1))
            group_ids.append(torch.full((span.length,), group_index(name)))
            modality_ids.append(torch.full((span.length,), modality_index(name)))
            if with_targets:
                targets.append(self.target(name, data, pixel_valid, p).reshape(b, span.length, -1))
        device = batch.months.device
        return TokenSequence(
            spans=tuple(spans),
            content=torch.cat(content, dim=1),
            encodings=torch.cat(encodings, dim=1),
            valid=torch.cat(valid, dim=1),
            group_ids=torch.cat(group_ids).to(device).expand(b, -1),
            modality_ids=torch.cat(modality_ids).to(device).expand(b, -1),
            targets=torch.cat(targets, dim=1) if with_targets else None,
        )

    def _encode_mask(self, seq: TokenSequence, masks: dict[str, Tensor]) -> Tensor:
        not_encodable = [
            g for g, m in masks.items() if g not in encodable_groups() and bool(m.any())
        ]
        if not_encodable:
            raise ValueError(
                f"encode masks select tokens of decode-only groups {not_encodable}; "
                "maps (registry encodable=False) may only be decoded"
            )
        return seq.flatten(masks, "encode") & seq.valid

    def _run_encoder(
        self, seq: TokenSequence, encode: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        index, present = pack(encode, min_length=1)
        tokens, pooled = self.encoder(gather_tokens(seq.content, index), present)
        return tokens, pooled, index, present

    # ------------------------------------------------------------------ public API
    def encode(
        self, batch: Batch, encode_masks: dict[str, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Pooled (B, D) embedding and per-group tokens (B, T, H/p, W/p, D), zero where a
        token was not encoded. No masks = every valid token of every encodable group."""
        validate_batch(batch)
        seq = self.embed(batch, with_targets=False)
        if encode_masks is None:
            encode_masks = {
                g: batch.token_valid(g) for g in batch.groups if g in encodable_groups()
            }
        encode = self._encode_mask(seq, encode_masks)
        tokens, pooled, index, present = self._run_encoder(seq, encode)
        full = tokens.new_zeros(*seq.valid.shape, tokens.shape[-1])
        rows = torch.arange(index.shape[0], device=index.device)[:, None].expand_as(index)
        full[rows[present], index[present]] = tokens[present]
        return pooled, seq.unflatten(full)

    def forward(self, batch: Batch, view_masks: Sequence[ViewMasks]) -> dict[str, Tensor]:
        """Losses of one step over one or more masked views (two enable the contrastive term).

        Returns loss, patch_discrimination, contrastive, pooled (B, D) of the first view,
        pooled_views (V, B, D), and encoded/decoded token counts.
        """
        if not view_masks:
            raise ValueError("view_masks is empty; pass at least one ViewMasks (see mask_batch)")
        validate_batch(batch)
        seq = self.embed(batch, with_targets=True)
        assert seq.targets is not None
        patch_losses, pooled_views, has_tokens = [], [], []
        n_encoded = n_decoded = 0
        for view in view_masks:
            encode = self._encode_mask(seq, view.encode)
            decode = seq.flatten(view.decode, "decode") & seq.valid
            if bool((encode & decode).any()):
                raise ValueError(
                    "encode and decode masks overlap; a token cannot be its own target"
                )
            tokens, pooled, _, present = self._run_encoder(seq, encode)
            pooled_views.append(pooled)
            has_tokens.append(present.any(dim=1))
            n_encoded += int(present.sum())
            index, targets_present = pack(decode)
            n_decoded += int(targets_present.sum())
            if index.shape[1] == 0:
                patch_losses.append(0.0 * tokens.sum())
                continue
            pred = self.decoder(gather_tokens(seq.encodings, index), tokens, present)
            scope = scope_ids_for(
                self.config.negatives,
                seq.group_ids.gather(1, index),
                seq.modality_ids.gather(1, index),
            )
            patch_losses.append(
                patch_discrimination_loss(
                    pred,
                    gather_tokens(seq.targets, index),
                    targets_present,
                    scope,
                    self.config.temperature,
                )
            )
        patch_disc = torch.stack(patch_losses).mean()
        if len(pooled_views) >= 2:
            contrastive = instance_contrastive_loss(
                pooled_views[0],
                pooled_views[1],
                self.config.contrastive_temperature,
                present=has_tokens[0] & has_tokens[1],
            )
        else:
            contrastive = patch_disc.new_zeros(())
        return {
            "loss": patch_disc + self.config.contrastive_weight * contrastive,
            "patch_discrimination": patch_disc.detach(),
            "contrastive": contrastive.detach(),
            "pooled": pooled_views[0],
            "pooled_views": torch.stack(pooled_views),
            "encoded_tokens": torch.tensor(n_encoded),
            "decoded_tokens": torch.tensor(n_decoded),
        }
