"""Build one tile: planned items -> read -> mask -> convert -> composite -> SampleData.

Every modality ends in exactly one state: DONE (all its groups present; some
periods may still be missing, see valid_fraction), EMPTY (built, no data: no
item planned, no footprint meets the tile, or no clear pixel in any period) or
FAILED (an exception while reading or converting, recorded as
"ErrorClass: message"). A failure in one modality never touches another's data.

Rule for overlapping zones: when a period has candidates in the tile's own CRS,
only those are used; candidates from a neighbouring UTM zone are used only when
nothing in the tile's zone exists. Same-CRS reads copy pixels exactly; cross-CRS
nearest resampling does not, and mixing both in one median would blur edges.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import geopandas as gpd
import numpy as np
from terracube.catalog.grid import Tile
from terracube.catalog.registry import MODALITIES, BandGroup, band_group, is_osm, modality
from terracube.catalog.stac.items import NormalizedItem
from terracube.pipeline.cloudmask import observation_valid
from terracube.pipeline.composite import CompositeMethod, composite, split_periods
from terracube.pipeline.corpus.store import Corpus, SampleData, SampleState
from terracube.pipeline.mask_grid import mask_on_grid, scale_factor, shared_mask_resolution
from terracube.pipeline.radiometry import item_conversions, to_stored
from terracube.pipeline.read.reader import PasteOrWarpReader, Reader, ReadRequest, group_request
from terracube.pipeline.static_maps import OsmRasterParams, class_map, osm_raster


@dataclass(frozen=True)
class TileInputs:
    """Everything one tile needs, already planned (no search happens here)."""

    tile: Tile
    period_starts: tuple[date, ...]
    temporal: Mapping[str, Sequence[Sequence[NormalizedItem]]] = field(default_factory=dict)
    """modality -> per period, candidate items best first."""
    static: Mapping[str, Sequence[NormalizedItem]] = field(default_factory=dict)
    """modality (worldcover) -> candidate items best first."""
    osm: gpd.GeoDataFrame | None = None
    """Categorized OSM features in the tile CRS; None = OSM not planned (stays pending)."""


@dataclass(frozen=True)
class BuildParams:
    method: CompositeMethod = "median"
    own_zone_first: bool = True
    allow_unmasked: bool = False
    """Use items that lack their modality's mask band (Major TOM, SSL4EO patches) with
    nodata-only validity; off by default, since their clouds would enter composites."""
    osm: OsmRasterParams = field(default_factory=OsmRasterParams)


@dataclass(frozen=True)
class ModalityResult:
    state: SampleState
    reason: str = ""
    groups: dict[str, np.ndarray] = field(default_factory=dict)
    valid_fraction: dict[str, np.ndarray | np.float64] = field(default_factory=dict)
    """Per group: (T,) per period for temporal groups, a scalar for static ones."""
    provenance: dict[str, Any] = field(default_factory=dict)
    conversions: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TileResult:
    sample: SampleData
    conversions: dict[str, Any]
    """group -> item id -> band -> source->stored conversion actually applied."""
    seconds: dict[str, float]


def _meets(item: NormalizedItem, footprint: Any) -> bool:
    return bool(item.geometry.intersects(footprint))


def select_items(candidates: Sequence[NormalizedItem], tile: Tile, own_zone_first: bool) -> list:
    """Candidates whose footprint meets the tile; own-CRS ones only when any exist."""
    footprint = tile.footprint_lonlat()
    meeting = [i for i in candidates if _meets(i, footprint)]
    if own_zone_first:
        own = [i for i in meeting if i.epsg == tile.epsg]
        if own:
            return own
    return meeting


def modality_requests(
    items: Sequence[NormalizedItem], groups: Sequence[BandGroup], tile: Tile
) -> tuple[list[ReadRequest], dict[str, int | None], float | None]:
    """Every read of one modality: one per group, plus one shared mask read when it nests.

    Returns the requests, for each group the index of the request holding its mask
    (None: no mask band; the group's own request when the mask is read with it, as
    its last band), and the shared mask's resolution (None when not shared).
    Pure: decides from the plan's metadata only.
    """
    mask_band = modality(groups[0].modality).mask if groups else None
    shared_res = shared_mask_resolution(items, mask_band, tile)
    requests: list[ReadRequest] = []
    mask_at: dict[str, int | None] = {}
    shared: list[tuple[str, float]] = []  # (dtype, fill) of each shared mask read
    for group in groups:
        nests = shared_res is not None and scale_factor(shared_res, group.resolution) is not None
        requests.append(group_request(items, group, tile, with_mask=not nests))
        if mask_band is None:
            mask_at[group.name] = None
        elif not nests:
            mask_at[group.name] = len(requests) - 1
        else:  # the mask takes the group's dtype and fill, as when read with the group
            key = (group.dtype, group.nodata)
            if key not in shared:
                shared.append(key)
            mask_at[group.name] = len(groups) + shared.index(key)
    for dtype, fill in shared:
        # a group shares the mask only when there is a mask band and it nests in shared_res
        assert mask_band is not None and shared_res is not None
        requests.append(
            ReadRequest(tuple(items), (mask_band.name,), tile, float(shared_res), dtype, fill)
        )
    return requests, mask_at, shared_res


def build_temporal(
    name: str,
    per_period: Sequence[Sequence[NormalizedItem]],
    groups: Sequence[BandGroup],
    tile: Tile,
    reader: Reader,
    params: BuildParams,
) -> ModalityResult:
    """Read every selected item of every group in one call (mask once), then composite per period."""
    n_periods = len(per_period)
    if not any(per_period):
        return ModalityResult(SampleState.EMPTY, f"no {name} item planned in any period")
    chosen = [select_items(c, tile, params.own_zone_first) for c in per_period]
    items = [item for period in chosen for item in period]
    if not items:
        return ModalityResult(SampleState.EMPTY, f"no {name} item footprint meets tile {tile.id}")
    mask_band = modality(name).mask
    unmasked = [i.id for i in items if i.mask is None]
    if mask_band is not None and unmasked and not params.allow_unmasked:
        raise ValueError(
            f"{name} items {unmasked} have no {mask_band.name} mask, so clouds cannot be "
            "masked per pixel; pass BuildParams(allow_unmasked=True) to use them anyway"
        )
    periods = split_periods([p for p, period in enumerate(chosen) for _ in period], n_periods)
    requests, mask_at, shared_res = modality_requests(items, groups, tile)
    raws: list[np.ndarray | None] = list(reader.read_many(requests))  # None once freed
    no_mask = np.array([i.mask is None for i in items])
    result = ModalityResult(SampleState.DONE)
    for g, group in enumerate(groups):
        n_bands = len(group.bands)
        at = mask_at[group.name]
        raw = raws[g]
        assert raw is not None  # a group's read is freed only after its own use, below
        if at is None:
            mask = None
        elif at == g:
            mask = raw[:, n_bands]
        else:  # the shared mask read: never freed, and only made with a shared_res
            shared_read = raws[at]
            assert shared_read is not None and shared_res is not None
            mask = mask_on_grid(shared_read[:, 0], float(shared_res), group.resolution)
        bands = raw[:, :n_bands]
        valid = observation_valid(bands, group.nodata, mask, mask_band)
        if mask_band is not None and no_mask.any():
            valid[no_mask] = observation_valid(bands[no_mask], group.nodata, None, None)
        stored = to_stored(bands, items, group, group.nodata)
        raws[g] = None  # free the raw read before compositing
        values = np.full(
            (n_periods, n_bands, group.pixels, group.pixels), group.nodata, group.dtype
        )
        fractions = np.zeros(n_periods, dtype=np.float64)
        provenance: list[list[str]] = [[] for _ in range(n_periods)]
        for period, index in enumerate(periods):
            if not index:
                continue
            comp = composite(stored[index], valid[index], group.nodata, params.method)
            values[period] = comp.values
            fractions[period] = comp.valid_fraction
            provenance[period] = [items[index[i]].id for i in comp.used]
        result.groups[group.name] = values
        result.valid_fraction[group.name] = fractions
        result.provenance[group.name] = provenance
        result.conversions[group.name] = item_conversions(items, group)
    if not any(f.any() for f in result.valid_fraction.values()):
        return ModalityResult(
            SampleState.EMPTY,
            f"no clear {name} pixel in any period ({len(items)} items read)",
        )
    return result


def build_static_map(
    name: str,
    items: Sequence[NormalizedItem],
    tile: Tile,
    reader: Reader,
    params: BuildParams,
) -> ModalityResult:
    """A static class map (WorldCover): one layer from the items meeting the tile."""
    mod = MODALITIES[name]
    (group,) = mod.groups  # a class map is one layer
    meeting = select_items(items, tile, own_zone_first=False)
    # Own-CRS items first (pixels copied exactly); others only fill what they leave.
    chosen = sorted(meeting, key=lambda i: i.epsg != tile.epsg)
    if not chosen:
        return ModalityResult(SampleState.EMPTY, f"no {mod.title} item meets tile {tile.id}")
    values, used = class_map(chosen, tile, reader, group, mod.classes)
    fraction = float((values != group.nodata).mean())
    if fraction == 0:
        return ModalityResult(SampleState.EMPTY, f"no valid {mod.title} class pixel on the tile")
    return ModalityResult(
        SampleState.DONE,
        groups={group.name: values},
        valid_fraction={group.name: np.float64(fraction)},
        provenance={group.name: used},
    )


def build_osm(
    features: gpd.GeoDataFrame, tile: Tile, params: BuildParams, group: BandGroup
) -> ModalityResult:
    """An OSM tile with no feature is data (0 % everywhere), so it is DONE, not EMPTY."""
    values = osm_raster(features, tile, params.osm, group)
    ids = (
        sorted({f"{t}/{i}" for t, i in zip(features["osm_type"], features["osm_id"], strict=True)})
        if len(features) and "osm_id" in features.columns
        else []
    )
    return ModalityResult(
        SampleState.DONE,
        groups={group.name: values},
        valid_fraction={group.name: np.float64(1.0)},
        provenance={group.name: ids},
    )


def _run(name: str, build: Any) -> ModalityResult:
    try:
        return build()
    except Exception as err:  # recorded per tile and modality, never swallowed silently
        return ModalityResult(SampleState.FAILED, f"{type(err).__name__}: {err}"[:2000])


def build_tile(
    inputs: TileInputs,
    groups: Sequence[str],
    params: BuildParams = BuildParams(),
    reader: Reader | None = None,
) -> TileResult:
    """Build the sample of one tile for the corpus `groups`."""
    reader = reader or PasteOrWarpReader()
    tile = inputs.tile
    wanted = [band_group(g) for g in groups]
    n_periods = len(inputs.period_starts)
    for name, per_period in inputs.temporal.items():
        if len(per_period) != n_periods:
            raise ValueError(
                f"tile {tile.id}: {name} has candidates for {len(per_period)} periods, "
                f"period_starts has {n_periods}; give one (possibly empty) list per period"
            )
    results: dict[str, ModalityResult] = {}
    seconds: dict[str, float] = {}
    for name in MODALITIES:
        mine = [g for g in wanted if g.modality == name]
        if not mine:
            continue
        started = time.perf_counter()
        if MODALITIES[name].temporal:
            per_period = inputs.temporal.get(name, [[] for _ in range(n_periods)])
            results[name] = _run(
                name,
                lambda n=name, p=per_period, m=mine: build_temporal(n, p, m, tile, reader, params),
            )
        elif is_osm(name):
            if inputs.osm is None:
                continue
            results[name] = _run(name, lambda g=mine[0]: build_osm(inputs.osm, tile, params, g))
        else:
            items = inputs.static.get(name, ())
            results[name] = _run(
                name, lambda n=name, i=items: build_static_map(n, i, tile, reader, params)
            )
        seconds[name] = time.perf_counter() - started
    return TileResult(_sample(inputs, results), _conversions(results), seconds)


def tile_sample(inputs: TileInputs, **fields: Any) -> SampleData:
    """A SampleData carrying the tile's index fields (id, CRS, origin, centre, periods)."""
    tile = inputs.tile
    minx, _, _, maxy = tile.bounds
    lon, lat = tile.center_lonlat
    return SampleData(
        tile_id=tile.id,
        epsg=tile.epsg,
        x0=minx,
        y0=maxy,
        center_lon=lon,
        center_lat=lat,
        period_starts=np.array(inputs.period_starts, dtype="datetime64[D]"),
        **fields,
    )


def _sample(inputs: TileInputs, results: Mapping[str, ModalityResult]) -> SampleData:
    sample = tile_sample(inputs)
    for name, res in results.items():
        sample.states[name] = res.state
        if res.reason:
            sample.errors[name] = res.reason
        if res.state is SampleState.DONE:
            sample.groups.update(res.groups)
            sample.valid_fraction.update(res.valid_fraction)
            sample.provenance.update(res.provenance)
    return sample


def _conversions(results: Mapping[str, ModalityResult]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for res in results.values():
        out.update(res.conversions)
    return out


# --------------------------------------------------------------------------- writing


def write_tile(corpus: Corpus, index: int, result: TileResult) -> None:
    """Write one built sample (read-modify-write of its shard under the shard lock)."""
    corpus.write_sample(index, result.sample)


def build_shard(
    corpus: Corpus,
    shard_index: int,
    inputs: Mapping[int, TileInputs],
    params: BuildParams = BuildParams(),
    reader: Reader | None = None,
) -> dict[int, TileResult]:
    """Build the samples of one shard and write the whole shard once (the task owns it).

    `inputs` maps sample index -> TileInputs; samples of the shard without inputs
    are written as pending. Deterministic, so re-running gives identical bytes.
    """
    span = corpus.shards[shard_index]
    stray = sorted(set(inputs) - set(span))
    if stray:
        raise ValueError(
            f"samples {stray} are not in shard {shard_index} ({span.start}..{span.stop - 1})"
        )
    groups = corpus.params.groups
    built = {i: build_tile(inputs[i], groups, params, reader) for i in span if i in inputs}
    corpus.write_shard(shard_index, [built[i].sample if i in built else None for i in span])
    return built
