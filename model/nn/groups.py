"""Band groups as the model sees them, derived from the modality registry.

The model never names a sensor: channel counts, encodability and temporality all
come from `terracube.catalog.registry`, so a new `Modality` entry needs no model code.
"""

from __future__ import annotations

from functools import cache

from terracube.catalog.registry import BAND_GROUPS, band_group, modality_of_group


def group_channels(name: str) -> int:
    """Input channels of one band group after normalisation.

    "standard"/"scale" bands give one channel each; a "onehot" band (WorldCover)
    gives one channel per class code of its modality.
    """
    group = band_group(name)
    channels = 0
    for band in group.bands:
        kind = band.normalization.kind
        if kind == "onehot":
            classes = modality_of_group(name).classes
            if not classes:
                raise ValueError(
                    f"band {band.name!r} of group {name!r} is one-hot normalised but its "
                    "modality lists no classes; add `classes` to the Modality entry"
                )
            channels += len(classes)
        elif kind in ("standard", "scale"):
            channels += 1
        else:
            raise ValueError(
                f"band {band.name!r} of group {name!r}: unknown normalisation {kind!r}"
            )
    return channels


@cache
def all_groups() -> tuple[str, ...]:
    """Every band group in registry order: the model's fixed token order."""
    return tuple(BAND_GROUPS)


@cache
def encodable_groups() -> tuple[str, ...]:
    """Groups the encoder may see (their modality is `encodable`)."""
    return tuple(g for g in all_groups() if modality_of_group(g).encodable)


@cache
def decode_only_groups() -> tuple[str, ...]:
    """Map groups (WorldCover, OSM): prediction targets only, never encoder input."""
    return tuple(g for g in all_groups() if not modality_of_group(g).encodable)


def group_index(name: str) -> int:
    """Stable integer id of a group (its registry position), for embeddings."""
    try:
        return all_groups().index(name)
    except ValueError:
        raise KeyError(
            f"unknown band group {name!r}; the registry has: {', '.join(all_groups())}"
        ) from None


def modality_index(name: str) -> int:
    """Stable integer id of a group's modality, for modality-scoped negatives."""
    modalities = list(dict.fromkeys(modality_of_group(g).name for g in all_groups()))
    return modalities.index(modality_of_group(name).name)
