"""What an embedding export is: the request (`EmbedSpec`), what it resolves to against the
checkpoint and the corpus (`Resolved`), and the provenance both outputs carry.

Defaults come from the checkpoint, never from a constant: the patch size is the one the
model was trained at (the largest when it was trained at several: fewest tokens), the
window the largest training crop (the context it learned from). An export resumes only
into an output made by the same request (same checkpoint bytes, corpus, patch, window,
periods, groups and statistics): `identity` is what is compared.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from terracube.catalog.registry import band_group
from terracube.model.data.plan import TILE_PIXELS
from terracube.model.nn.encoder import model_size
from terracube.model.nn.groups import encodable_groups
from terracube.model.nn.olmoearth import LatentMIMConfig
from terracube.model.train.checkpoint import trained_patch_size
from terracube.pipeline.corpus.store import Corpus

EMBED_FORMAT_VERSION = 1
RECIPE = "Latent MIM Lite (OlmoEarth, arXiv 2511.13655)"


class EmbedError(ValueError):
    """The export cannot run as asked; the message names the input and the fix."""


@dataclass(frozen=True)
class EmbedSpec:
    """One export request (what `terracube embed` is given)."""

    checkpoint: str
    data: str
    """Corpus store URL or path."""
    out: str
    """Output folder (local or shared filesystem): embeddings.zarr and tiles.parquet."""
    storage_options: dict[str, Any] = field(default_factory=dict)
    patch_size: int | None = None
    window: int | None = None
    periods: tuple[int, int] | None = None
    """[start, stop) corpus periods to encode; None = all."""
    groups: tuple[str, ...] | None = None
    """Input band groups; None = every encodable group of the corpus."""
    tiles_per_read: int = 4
    windows_per_step: int = 16
    device: str = "auto"
    stats_from: str | None = None
    """Corpus whose normalisation statistics to use (e.g. the training corpus); None = the
    data corpus' own (registry defaults when it has none)."""
    allow_pending: bool = False
    """Encode samples whose input modalities are still pending (treated as missing)."""


@dataclass(frozen=True)
class Resolved:
    patch_size: int
    window: int
    periods: tuple[int, int]
    groups: tuple[str, ...]
    dim: int
    model: LatentMIMConfig
    seed: int


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def terracube_version() -> str:
    try:
        return metadata.version("terracube")
    except metadata.PackageNotFoundError:  # pragma: no cover (running from a bare checkout)
        return "unknown"


def resolve(spec: EmbedSpec, settings: dict[str, Any], corpus: Corpus) -> Resolved:
    """Patch, window, periods and groups of `spec`, defaults taken from the checkpoint."""
    loader = settings.get("loader")
    trained_crops = [int(c) for c in (loader or {}).get("crop_sizes", [])] or [64]
    patch = spec.patch_size if spec.patch_size is not None else trained_patch_size(settings) or 4
    window = spec.window if spec.window is not None else max(trained_crops)
    said = (
        f"--window {window} px"
        if spec.window is not None
        else f"the checkpoint's largest training crop ({window} px, the default window)"
    )
    tile = TILE_PIXELS
    if not 1 <= patch <= 8:
        raise EmbedError(f"--patch-size {patch}: FlexiViT patch sizes are 1..8")
    if window % 4 or tile % window or not 4 <= window <= tile:
        raise EmbedError(
            f"{said}: a window must divide the {tile} px tile and be a multiple of 4 px "
            "(the 40 m group's pixel factor), e.g. 32, 64 or 256; pass --window"
        )
    if window % patch:
        raise EmbedError(f"{said} is not a multiple of the patch size {patch}; pass --window")
    start, stop = spec.periods or (0, corpus.n_periods)
    if not 0 <= start < stop <= corpus.n_periods:
        raise EmbedError(
            f"--periods {start}:{stop} is outside the corpus' {corpus.n_periods} periods "
            f"(0:{corpus.n_periods})"
        )
    available = tuple(g for g in corpus.params.groups if g in encodable_groups())
    groups = available if spec.groups is None else tuple(spec.groups)
    wrong = [g for g in groups if g not in available]
    if wrong:
        raise EmbedError(
            f"--groups {wrong} are not encodable groups of {corpus.url!r}; it has "
            f"{list(available)} (WorldCover and OSM are labels, never encoder input)"
        )
    if not groups:
        raise EmbedError(f"{corpus.url!r} holds no encodable band group to embed")
    recorded = settings.get("model")
    config = (
        LatentMIMConfig(**recorded)
        if isinstance(recorded, dict)
        else LatentMIMConfig(size=str(settings.get("model_size", "nano")))
    )
    return Resolved(
        patch_size=patch,
        window=window,
        periods=(start, stop),
        groups=tuple(g for g in available if g in groups),
        dim=model_size(config.size).dim,
        model=config,
        seed=int(settings.get("seed", 0)),
    )


def provenance(
    spec: EmbedSpec,
    resolved: Resolved,
    corpus: Corpus,
    checkpoint: dict[str, Any],
    sha256: str,
    stats_source: str,
) -> dict[str, Any]:
    """Everything needed to know where the embeddings came from (both outputs carry it)."""
    settings = checkpoint.get("settings", {})
    loader = settings.get("loader") or {}
    modalities = sorted({band_group(g).modality for g in resolved.groups})
    return {
        "format_version": EMBED_FORMAT_VERSION,
        "checkpoint": {
            "file": Path(spec.checkpoint).name,
            "sha256": sha256,
            "step": int(checkpoint.get("step", -1)),
            "format": checkpoint.get("format"),
            "model": asdict(resolved.model),
            "recipe": RECIPE,
            "seed": resolved.seed,
            "trained_on": settings.get("store"),
            "trained_patch_sizes": loader.get("patch_sizes"),
            "trained_crop_sizes": loader.get("crop_sizes"),
        },
        "corpus": {
            "url": corpus.url,
            "format_version": corpus.format_version,
            "n_samples": corpus.n_samples,
            "n_periods": corpus.n_periods,
            "samples_per_shard": corpus.params.samples_per_shard,
            "period": corpus.params.period,
        },
        "normalisation": stats_source,
        "patch_size": resolved.patch_size,
        "window": resolved.window,
        "gsd_m": 10.0 * resolved.patch_size,
        "periods": {"start": resolved.periods[0], "stop": resolved.periods[1]},
        "groups": list(resolved.groups),
        "modalities": modalities,
        "dim": resolved.dim,
        "pooling": "mean of encoded tokens (patch: over groups and timesteps; tile: all)",
        "terracube_version": terracube_version(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def identity(prov: dict[str, Any]) -> dict[str, Any]:
    """The part of the provenance two runs must share to write into one output (the
    checkpoint by content: a renamed copy of the same file resumes)."""
    keep = {k: v for k, v in prov.items() if k not in ("created", "terracube_version")}
    keep["checkpoint"] = {k: v for k, v in prov["checkpoint"].items() if k != "file"}
    return keep
