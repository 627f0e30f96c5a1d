"""Which tiles to build: all tiles of some AOIs, N random ones, or N per land-cover class.

Drawing is pure and seeded (the same seed gives the same tiles on every machine);
`worldcover_class_lookup` is the one I/O adapter, reading the majority WorldCover class
of a tile from the planned WorldCover items.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from urllib.parse import urlsplit

import numpy as np
from terracube.catalog.grid import AoiLike, Tile, cover
from terracube.catalog.plan import tile_coverage
from terracube.catalog.registry import modality
from terracube.catalog.stac.egress import egress_proxy
from terracube.catalog.stac.items import NormalizedItem

ClassLookup = Callable[[Tile], int | None]
"""Majority class code of a tile, or None when the tile has no valid class pixels."""


def cover_aois(aois: Iterable[AoiLike]) -> list[Tile]:
    """Every tile meeting any AOI, each once, in grid order."""
    return sorted({tile for aoi in aois for tile in cover(aoi)})


def draw_random_tiles(aois: Iterable[AoiLike], n: int, seed: int) -> list[Tile]:
    """`n` distinct tiles drawn uniformly from the AOIs' cover, in grid order."""
    tiles = cover_aois(aois)
    if not 0 <= n <= len(tiles):
        raise ValueError(
            f"cannot draw {n} tiles: the AOIs cover {len(tiles)}; ask for at most that many"
        )
    picks = np.random.default_rng(seed).choice(len(tiles), size=n, replace=False)
    return sorted(tiles[i] for i in picks)


def draw_stratified(
    tiles: Sequence[Tile],
    per_class: int,
    class_of: ClassLookup,
    seed: int,
    classes: Iterable[int] | None = None,
) -> dict[int, list[Tile]]:
    """Up to `per_class` tiles per class (all of a rarer class), seeded, in grid order.

    `classes` limits the strata (default: every class found). Tiles whose class is None
    (no valid pixels) belong to no stratum.
    """
    if per_class < 0:
        raise ValueError(f"per_class must be >= 0, got {per_class}")
    strata: dict[int, list[Tile]] = defaultdict(list)
    for tile in sorted(set(tiles)):
        code = class_of(tile)
        if code is not None:
            strata[code].append(tile)
    wanted = sorted(strata) if classes is None else sorted(set(classes))
    rng = np.random.default_rng(seed)
    drawn: dict[int, list[Tile]] = {}
    for code in wanted:  # fixed order: one class's draw never shifts another's
        members = strata.get(code, [])
        picks = rng.choice(len(members), size=min(per_class, len(members)), replace=False)
        drawn[code] = sorted(members[i] for i in picks)
    return drawn


def majority_class(values: np.ndarray, nodata: int, valid: Iterable[int]) -> int | None:
    """Most frequent valid code (ties: the lower code); None when no pixel is valid."""
    allowed = np.isin(values, list(valid)) & (values != nodata)
    if not allowed.any():
        return None
    codes, counts = np.unique(values[allowed], return_counts=True)
    return int(codes[np.argmax(counts)])


def worldcover_class_lookup(
    items: Sequence[NormalizedItem],
    resolution: float = 80.0,
    internal_hosts: frozenset[str] = frozenset(),
) -> ClassLookup:
    """Majority WorldCover class of a tile, read from the best covering item.

    Read coarse (default 80 m, 32 x 32 px, nearest neighbour, from overviews): enough to
    stratify, and cheap. Uses rasterio's WarpedVRT onto the tile's own grid.
    """
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    wc = modality("worldcover")
    band = wc.bands[0]
    valid = tuple(wc.classes)

    def lookup(tile: Tile) -> int | None:
        ranked = sorted(((tile_coverage(i.geometry, tile), i) for i in items), key=lambda c: -c[0])
        if not ranked or ranked[0][0] <= 0:
            return None
        ref = ranked[0][1].asset(band.name)
        height, width = tile.shape(resolution)
        remote = urlsplit(ref.href).scheme.lower() in ("http", "https", "s3", "gs", "az")
        options = egress_proxy(internal_hosts).gdal_options() if remote else {}
        with (
            rasterio.Env(**options),  # catalog-chosen URL: every connection checked
            rasterio.open(ref.href) as src,
            WarpedVRT(
                src,
                crs=tile.crs,
                transform=tile.transform(resolution),
                width=width,
                height=height,
                resampling=Resampling.nearest,
                nodata=band.nodata,
            ) as vrt,
        ):
            values = vrt.read(1)
        return majority_class(values, int(band.nodata), valid)

    return lookup


def class_counts(drawn: Mapping[int, Sequence[Tile]]) -> dict[int, int]:
    return {code: len(tiles) for code, tiles in drawn.items()}
