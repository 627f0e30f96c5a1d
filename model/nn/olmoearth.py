"""OlmoEarth's Latent MIM Lite (arXiv 2511.13655) driven by the modality registry.

The defaults are OlmoEarth v1's recipe (allenai/olmoearth_pretrain, scripts/official/v1);
every other choice is a named option of `LatentMIMConfig`. docs/model.md holds the parity
table with the figure behind each option.

One step, per masked view: the encoder sees the view's encoded tokens (patch embedding
plus its encodings), the decoder predicts each decoded token's frozen target from that
token's encodings and the encoder's output, patch discrimination scores the predictions
within (sample, modality), and the two views' pooled, projected embeddings meet in the
instance-contrastive term: loss = mean over views of patch discrimination + 0.1 InfoNCE.

The step never reads a value back from the device: packed lengths come from the masks'
host-side counts (`ViewMasks.counts`), and checks on device tensors are asynchronous.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from terracube.catalog.registry import band_group
from terracube.model.nn.batch import Batch, validate_batch
from terracube.model.nn.decoder import Decoder
from terracube.model.nn.encoder import Encoder, init_weights, model_size
from terracube.model.nn.encodings import ChannelEmbedding, fixed_encodings
from terracube.model.nn.groups import (
    all_groups,
    decode_only_groups,
    encodable_groups,
    group_index,
    modality_index,
)
from terracube.model.nn.losses import (
    CONTRASTIVE_DIRECTIONS,
    NEGATIVE_SCOPES,
    PATCH_REDUCTIONS,
    ContrastiveDirection,
    NegativeScope,
    PatchReduction,
    gather_tokens,
    instance_contrastive_loss,
    pack,
    patch_discrimination_loss,
)
from terracube.model.nn.objectives import (
    EMA_MOMENTUM,
    EmaTarget,
    pixel_loss,
    pixel_target_dim,
    pixel_targets,
)
from terracube.model.nn.sequence import GroupSpan, TokenSequence
from terracube.model.nn.target import TARGET_KINDS, FrozenTarget, TargetKind
from terracube.model.nn.tokenizer import (
    BASE_PATCH_SIZE,
    PATCH_RESIZES,
    PatchResize,
    Tokenizer,
)
from terracube.model.train.masking import ViewMasks
from torch import Tensor, nn


@dataclass(frozen=True)
class LatentMIMConfig:
    """The model and its losses; every default is OlmoEarth v1's (docs/model.md)."""

    size: str = "nano"
    decoder_depth: int | None = None
    """None = the size's (4 for every v1 size)."""
    drop_path: float = 0.1
    """Stochastic depth of every encoder block (the decoder has none)."""
    target: TargetKind = "patch_embed_copy"
    target_dim: int | None = None
    """Width of a "random_projection" target; None = the encoder width."""
    target_seed: int = 0
    """Seed of a "random_projection" target."""
    ema_momentum: float = EMA_MOMENTUM
    """Momentum of an "ema_encoder" target (objectives.py)."""
    patch_resize: PatchResize = "image_bicubic"
    negatives: NegativeScope = "modality"
    patch_reduction: PatchReduction = "per_sample"
    temperature: float = 0.1
    contrastive_weight: float = 0.1
    contrastive_temperature: float = 0.1
    contrastive_direction: ContrastiveDirection = "one_way"
    contrastive_projection: bool = True
    """A learned linear head on the pooled embedding before InfoNCE."""
    base_patch_size: int = BASE_PATCH_SIZE

    def __post_init__(self) -> None:
        model_size(self.size)
        choices = (
            ("negatives", self.negatives, NEGATIVE_SCOPES),
            ("patch_reduction", self.patch_reduction, PATCH_REDUCTIONS),
            ("target", self.target, TARGET_KINDS),
            ("patch_resize", self.patch_resize, PATCH_RESIZES),
            ("contrastive_direction", self.contrastive_direction, CONTRASTIVE_DIRECTIONS),
        )
        for name, value, allowed in choices:
            if value not in allowed:
                raise ValueError(f"{name}={value!r}; choose one of {', '.join(allowed)}")
        if self.temperature <= 0 or self.contrastive_temperature <= 0:
            raise ValueError("temperatures must be > 0")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"drop_path={self.drop_path}; it must lie in [0, 1)")
        if self.decoder_depth is not None and self.decoder_depth < 1:
            raise ValueError(f"decoder_depth={self.decoder_depth}; it must be >= 1")
        if not 0.0 < self.ema_momentum < 1.0:
            raise ValueError(f"ema_momentum={self.ema_momentum}; it must lie in (0, 1)")
        if self.target != "random_projection" and self.target_dim is not None:
            raise ValueError(
                "target_dim applies to target: random_projection only; a patch-embedding "
                "copy has the encoder's width"
            )

    @property
    def depth_of_decoder(self) -> int:
        return self.decoder_depth or model_size(self.size).decoder_depth


def _scopes(spans: Sequence[GroupSpan], negatives: NegativeScope) -> list[tuple[str, ...]]:
    """Groups of each negative scope, in token order (a modality's groups are adjacent)."""
    if negatives == "all":
        return [tuple(s.group for s in spans)]
    if negatives == "band_group":
        return [(s.group,) for s in spans]
    scopes: dict[int, list[str]] = {}
    previous = None
    for s in spans:
        m = modality_index(s.group)
        if m in scopes and m != previous:
            raise ValueError(
                f"band group {s.group!r} is not next to its modality's other groups; the "
                "registry must list a modality's band groups together"
            )
        scopes.setdefault(m, []).append(s.group)
        previous = m
    return [tuple(groups) for groups in scopes.values()]


def _longest(counts: dict[str, Tensor], groups: Sequence[str], side: int) -> int:
    """Most tokens of `groups` on `side` (0 encode, 1 decode) in any sample (host ints)."""
    total = sum((counts[g][side] for g in groups if g in counts), torch.zeros(1, dtype=torch.long))
    return int(total.max())


class LatentMIM(nn.Module):
    """Encoder + decoder + frozen target; `forward` returns losses, `encode` embeddings."""

    def __init__(self, config: LatentMIMConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or LatentMIMConfig()
        size = model_size(c.size)
        self.size = size
        every = Tokenizer(size.dim, all_groups(), c.base_patch_size, c.patch_resize)
        if c.target == "random_projection":
            dim = c.target_dim or size.dim
            self.target = FrozenTarget.random(dim, c.target_seed, c.base_patch_size, c.patch_resize)
        else:  # the copy also gives the maps' targets of "ema_encoder"
            self.target = FrozenTarget.copy_of(every, c.patch_resize)
        target_dim = (
            pixel_target_dim(c.base_patch_size) if c.target == "pixels" else self.target.target_dim
        )
        for g in decode_only_groups():
            del every.embed[g]  # maps are never encoded: no online patch embedding
        self.tokenizer = every
        self.channel_embedding = ChannelEmbedding(size.dim)
        self.encoder = Encoder(size, c.drop_path)
        self.decoder = Decoder(size, target_dim, c.depth_of_decoder)
        self.projection = nn.Linear(size.dim, size.dim) if c.contrastive_projection else None
        for module in (self.encoder, self.decoder, self.projection):
            if module is not None:
                init_weights(module)
        self.ema_target = (
            EmaTarget(self.tokenizer, self.channel_embedding, self.encoder)
            if c.target == "ema_encoder"
            else None
        )

    @torch.no_grad()
    def update_target(self) -> None:
        """After an optimizer step: an "ema_encoder" target follows the online weights."""
        if self.ema_target is not None:
            online = {
                "tokenizer": self.tokenizer,
                "channel_embedding": self.channel_embedding,
                "encoder": self.encoder,
            }
            self.ema_target.follow(online, self.config.ema_momentum)

    # ------------------------------------------------------------------ tokens
    def embed(
        self, batch: Batch, with_targets: bool, source: EmaTarget | None = None
    ) -> TokenSequence:
        """Every token of every present group: content, encodings, validity, ids, targets.
        `source` swaps in another tokenizer and channel embedding (the EMA target's)."""
        tokenizer = self.tokenizer if source is None else cast(Tokenizer, source.tokenizer)
        channel_embedding = (
            self.channel_embedding
            if source is None
            else cast(ChannelEmbedding, source.channel_embedding)
        )
        p, grid, b = batch.patch_size, batch.grid, batch.batch_size
        device = batch.months.device
        spans, content, fixed, valid, group_ids, modality_ids, targets = ([] for _ in range(7))
        start = 0
        for name in batch.groups:
            data, pixel_valid = batch.data[name], batch.valid[name]
            months = batch.months if band_group(name).temporal else None
            t = data.shape[1]
            enc = fixed_encodings(self.size.dim, months, grid, p, batch.gsd, device)
            enc = enc.expand(b, t, *grid, -1)
            gid = group_index(name)
            ids = torch.full((1,), gid, device=device)
            tokens = enc + channel_embedding(ids)
            if name in tokenizer.embed:
                tokens = tokens + tokenizer(name, data, pixel_valid, p)
            span = GroupSpan(name, start, (t, *grid))
            spans.append(span)
            start += span.length
            content.append(tokens.reshape(b, span.length, -1))
            fixed.append(enc.reshape(b, span.length, -1))
            valid.append(batch.token_valid(name).reshape(b, -1))
            group_ids.append(torch.full((span.length,), gid, device=device))
            modality_ids.append(torch.full((span.length,), modality_index(name), device=device))
            if with_targets and self.config.target == "pixels":
                target = pixel_targets(data, pixel_valid, p, self.config.base_patch_size)
                targets.append(target.reshape(b, span.length, -1))
            elif with_targets:
                targets.append(self.target(name, data, pixel_valid, p).reshape(b, span.length, -1))
        return TokenSequence(
            spans=tuple(spans),
            content=torch.cat(content, dim=1),
            encodings=torch.cat(fixed, dim=1),
            valid=torch.cat(valid, dim=1),
            group_ids=torch.cat(group_ids).expand(b, -1),
            modality_ids=torch.cat(modality_ids).expand(b, -1),
            targets=torch.cat(targets, dim=1) if with_targets else None,
        )

    def _run_encoder(
        self, seq: TokenSequence, encode: Tensor, length: int | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        index, present = pack(encode, None if length is None else max(length, 1))
        if index.shape[1] == 0:  # nothing encoded anywhere: one absent slot keeps shapes valid
            index, present = pack(encode, 1)
        tokens, pooled = self.encoder(gather_tokens(seq.content, index), present)
        return tokens, pooled, index, present

    # ------------------------------------------------------------------ public API
    def encode(
        self, batch: Batch, encode_masks: dict[str, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Pooled (B, D) embedding (the mean of the encoded tokens, before the contrastive
        head) and per-group tokens (B, T, H/p, W/p, D), zero where a token was not encoded.
        No masks = every valid token of every encodable group."""
        validate_batch(batch)
        seq = self.embed(batch, with_targets=False)
        if encode_masks is None:
            encode_masks = {
                g: batch.token_valid(g) for g in batch.groups if g in encodable_groups()
            }
        _check_encodable(encode_masks)
        encode = seq.flatten(encode_masks, "encode") & seq.valid
        tokens, pooled, index, present = self._run_encoder(seq, encode, None)
        full = tokens.new_zeros(*seq.valid.shape, tokens.shape[-1])
        rows = torch.arange(index.shape[0], device=index.device)[:, None].expand_as(index)
        full[rows[present], index[present]] = tokens[present]
        return pooled, seq.unflatten(full)

    def forward(self, batch: Batch, view_masks: Sequence[ViewMasks]) -> dict[str, Tensor]:
        """Losses of one step over one or more masked views (two enable the contrastive term).

        Returns loss, patch_discrimination, contrastive, pooled (B, D) of the first view,
        pooled_views (V, B, D), encoded (B, L, D) and encoded_present (B, L) of the first
        view (detached, for diagnostics), and encoded/decoded token counts (device tensors).
        """
        if not view_masks:
            raise ValueError("view_masks is empty; pass at least one ViewMasks (see mask_batch)")
        validate_batch(batch)
        seq = self.embed(batch, with_targets=True)
        assert seq.targets is not None
        targets = seq.targets if self.ema_target is None else self._ema_targets(batch, seq)
        scopes = _scopes(seq.spans, self.config.negatives)
        patch_losses, pooled_views, projected, has_tokens = [], [], [], []
        first_tokens: tuple[Tensor, Tensor] | None = None
        n_encoded = n_decoded = seq.valid.new_zeros((), dtype=torch.long)
        for view in view_masks:
            counts = view.counts
            _check_encodable(view.encode, counts)
            encode = seq.flatten(view.encode, "encode") & seq.valid
            decode = seq.flatten(view.decode, "decode") & seq.valid
            _check_disjoint(encode, decode)
            encoded_length = _longest(counts, [s.group for s in seq.spans], 0)
            tokens, pooled, enc_index, present = self._run_encoder(seq, encode, encoded_length)
            pooled_views.append(pooled)
            if first_tokens is None:  # diagnostics, selected by the caller (no device read here)
                first_tokens = (tokens.detach(), present)
            projected.append(self.projection(pooled) if self.projection is not None else pooled)
            has_tokens.append(present.any(dim=1))
            n_encoded = n_encoded + present.sum()
            indices, presences, lengths = [], [], []
            for groups in scopes:
                first = next(s for s in seq.spans if s.group == groups[0])
                last = next(s for s in seq.spans if s.group == groups[-1])
                a, z = first.start, last.start + last.length
                index, slot = pack(decode[:, a:z], _longest(counts, groups, 1))
                indices.append(index + a)
                presences.append(slot)
                lengths.append(index.shape[1])
            dec_index, dec_present = torch.cat(indices, dim=1), torch.cat(presences, dim=1)
            n_decoded = n_decoded + dec_present.sum()
            if dec_index.shape[1] == 0:
                patch_losses.append(0.0 * tokens.sum())
                continue
            pred = self.decoder(
                gather_tokens(seq.encodings, dec_index),
                seq.group_ids.gather(1, dec_index),
                tokens,
                gather_tokens(seq.encodings, enc_index),
                seq.group_ids.gather(1, enc_index),
                present,
            )
            target = gather_tokens(targets, dec_index)
            if self.config.target == "pixels":
                patch_losses.append(pixel_loss(pred, target, dec_present))
                continue
            per_scope = [
                (p, t, s)
                for p, t, s in zip(
                    pred.split(lengths, dim=1),
                    target.split(lengths, dim=1),
                    dec_present.split(lengths, dim=1),
                    strict=True,
                )
            ]
            patch_losses.append(
                patch_discrimination_loss(
                    per_scope, self.config.temperature, self.config.patch_reduction
                )
            )
        patch_disc = torch.stack(patch_losses).mean()
        if len(pooled_views) >= 2:
            contrastive = instance_contrastive_loss(
                projected[0],
                projected[1],
                self.config.contrastive_temperature,
                present=has_tokens[0] & has_tokens[1],
                direction=self.config.contrastive_direction,
            )
        else:
            contrastive = patch_disc.new_zeros(())
        return {
            "loss": patch_disc + self.config.contrastive_weight * contrastive,
            "patch_discrimination": patch_disc.detach(),
            "contrastive": contrastive.detach(),
            "pooled": pooled_views[0],
            "pooled_views": torch.stack(pooled_views),
            "encoded": first_tokens[0] if first_tokens else seq.content.new_zeros(0, 0, 1),
            "encoded_present": first_tokens[1] if first_tokens else seq.valid.new_zeros(0, 0),
            "encoded_tokens": n_encoded,
            "decoded_tokens": n_decoded,
        }

    @torch.no_grad()
    def _ema_targets(self, batch: Batch, seq: TokenSequence) -> Tensor:
        """The EMA encoder's output at every valid encodable token (it sees them all);
        the maps keep their frozen patch-embedding targets."""
        assert self.ema_target is not None and seq.targets is not None
        teacher = self.embed(batch, with_targets=False, source=self.ema_target)
        encode = torch.zeros_like(teacher.valid)
        for span in teacher.spans:
            if span.group in encodable_groups():
                stop = span.start + span.length
                encode[:, span.start : stop] = teacher.valid[:, span.start : stop]
        index, present = pack(encode, None)
        if index.shape[1] == 0:
            return seq.targets
        tokens, _ = self.ema_target.encoder(gather_tokens(teacher.content, index), present)
        full = seq.targets.clone()
        rows = torch.arange(index.shape[0], device=index.device)[:, None].expand_as(index)
        full[rows[present], index[present]] = tokens[present].to(full.dtype)
        return full


def _check_encodable(masks: dict[str, Tensor], counts: dict[str, Tensor] | None = None) -> None:
    """Maps (registry encodable=False) may only be decoded; read from host counts when
    there are some, else from the masks (a device read only outside the training step)."""
    bad = [
        g
        for g, m in masks.items()
        if g not in encodable_groups()
        and (bool(counts[g][0].any()) if counts is not None and g in counts else bool(m.any()))
    ]
    if bad:
        raise ValueError(
            f"encode masks select tokens of decode-only groups {bad}; "
            "maps (registry encodable=False) may only be decoded"
        )


def _check_disjoint(encode: Tensor, decode: Tensor) -> None:
    """A token cannot be its own target: an exact check on the host, an asynchronous
    device assertion (no wait) elsewhere."""
    overlap = (encode & decode).any()
    if encode.device.type == "cpu":
        if bool(overlap):
            raise ValueError("encode and decode masks overlap; a token cannot be its own target")
    else:
        torch._assert_async(~overlap, "encode and decode masks overlap")
