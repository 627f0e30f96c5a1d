"""What `terracube model-info` reports: a model's sizes, its recipe, and the share of
tokens its masking actually encodes and decodes.

The fractions are measured, not quoted: `samples` synthetic samples on the benchmark's
layout (64 x 64 px, 12 timesteps, every band group, 3 % invalid pixels, patch size 8)
are masked with the recipe's strategy, in chunks so memory stays small (token validity
only, never pixels). With every token valid the default strategy's expectation is
0.35 (1 - f) encoded and 0.35 + 0.15 f decoded, f the maps' share of the tokens
(model/train/masking.py); the figures carry their standard errors.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from terracube.catalog.registry import band_group
from terracube.model.nn.batch import token_validity
from terracube.model.nn.encoder import count_parameters
from terracube.model.nn.groups import all_groups
from terracube.model.nn.olmoearth import LatentMIM, LatentMIMConfig
from terracube.model.train.masking import MaskingParams, sample_view_masks
from torch import Tensor

CHUNK = 32


def masking_fractions(
    params: MaskingParams,
    samples: int = 256,
    size_px: int = 64,
    timesteps: int = 12,
    patch_size: int = 8,
    valid_fraction: float = 0.97,
    seed: int = 0,
) -> dict[str, float]:
    """Mean share of each sample's tokens encoded and decoded (one view), with standard errors."""
    generator = torch.Generator().manual_seed(seed)
    encoded: list[Tensor] = []
    decoded: list[Tensor] = []
    done = 0
    while done < samples:
        b = min(CHUNK, samples - done)
        token_valid = {}
        for g in all_groups():
            t = timesteps if band_group(g).temporal else 1
            pixels = torch.rand(b, t, size_px, size_px, generator=generator) < valid_fraction
            token_valid[g] = token_validity(pixels, patch_size)
        view = sample_view_masks(token_valid, generator, params)
        tokens = sum(v[0].numel() for v in token_valid.values())
        counts = torch.stack(list(view.counts.values()))  # (groups, 2, B)
        encoded.append(counts[:, 0].sum(0).double() / tokens)
        decoded.append(counts[:, 1].sum(0).double() / tokens)
        done += b
    out: dict[str, float] = {}
    for name, parts in (("encoded", encoded), ("decoded", decoded)):
        values = torch.cat(parts)
        out[f"{name}_fraction"] = float(values.mean())
        out[f"{name}_fraction_stderr"] = float(values.std() / math.sqrt(len(values)))
    return out


def model_info(
    config: LatentMIMConfig, masking: MaskingParams | None = None, samples: int = 256
) -> dict[str, Any]:
    """Parameter counts, shapes, the recipe's options and the measured masking fractions."""
    masking = masking or MaskingParams()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LatentMIM(config)
    size = model.size
    encoder_side = (
        count_parameters(model.tokenizer)
        + count_parameters(model.channel_embedding)
        + count_parameters(model.encoder)
        + (count_parameters(model.projection) if model.projection is not None else 0)
    )
    info: dict[str, Any] = {
        "size": size.name,
        "width": size.dim,
        "heads": size.heads,
        "encoder_depth": size.depth,
        "decoder_depth": config.depth_of_decoder,
        "drop_path": config.drop_path,
        "encoder_params": encoder_side,
        "encoder_block_params": count_parameters(model.encoder),
        "decoder_params": count_parameters(model.decoder),
        "target_params": sum(b.numel() for b in model.target.buffers()),
        "target_trainable_params": count_parameters(model.target),
        "recipe": {k: v for k, v in dataclasses.asdict(config).items() if k != "size"},
        "masking": dataclasses.asdict(masking),
        "masking_measured_on": (
            f"{samples} synthetic samples, 64 px, 12 timesteps, every band group, "
            "3 % invalid pixels, patch size 8"
        ),
    }
    info.update(masking_fractions(masking, samples))
    return info


def format_info(info: dict[str, Any]) -> str:
    """The human-readable table of `terracube model-info`."""
    lines = [
        f"model {info['size']}: width {info['width']}, {info['heads']} heads, "
        f"encoder depth {info['encoder_depth']}, decoder depth {info['decoder_depth']}, "
        f"drop path {info['drop_path']}",
        f"  encoder params  {info['encoder_params']:>12,}  (blocks + norm {info['encoder_block_params']:,})",
        f"  decoder params  {info['decoder_params']:>12,}",
        f"  target params   {info['target_params']:>12,}  (frozen buffers; trainable "
        f"{info['target_trainable_params']})",
        "recipe:",
        *(f"  {k:<24}{v}" for k, v in info["recipe"].items()),
        "masking:",
        *(f"  {k:<24}{v}" for k, v in info["masking"].items()),
        f"measured on {info['masking_measured_on']}:",
        f"  encoded fraction  {info['encoded_fraction']:.4f} +- {info['encoded_fraction_stderr']:.4f}",
        f"  decoded fraction  {info['decoded_fraction']:.4f} +- {info['decoded_fraction_stderr']:.4f}",
    ]
    return "\n".join(lines)
