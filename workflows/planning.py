"""From a validated BuildConfig to a Plan: sources, tiles, one search per source, the plan.

Everything that can be wrong in a config but only shows up against the world (a STAC
URL nobody answers, an AOI that covers no tile, a catalog path that does not exist) is
checked here, before any build work, and reported as a ConfigError naming the field.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from terracube.catalog.grid import Tile, cover, cover_columns
from terracube.catalog.osm.extract import ExtractError, extract_bounds
from terracube.catalog.plan import Plan, PlanParams
from terracube.catalog.registry import MODALITIES, is_osm, modality
from terracube.catalog.stac.http import LOCAL_CATALOG_POLICY, REMOTE_POLICY, RetryPolicy
from terracube.catalog.stac.search import (
    STATIC_SEARCH_START,
    RegionParams,
    SearchCache,
    SearchError,
    search_and_plan,
    search_tiles,
)
from terracube.catalog.stac.sources import (
    PROFILES,
    ItemSource,
    SourceError,
    StacApiSource,
    StaticCatalogSource,
    generic_profile,
    href_signer,
)
from terracube.catalog.timescheme import TimeScheme
from terracube.workflows.config import (
    BuildConfig,
    ConfigError,
    OsmFileSource,
    OverpassSource,
    StacApiSourceConfig,
    StaticSource,
)

PREFLIGHT_RETRY = RetryPolicy(attempts=2, backoff_s=0.2, connect_timeout_s=5.0, read_timeout_s=20.0)
"""A landing-page probe should fail fast: a dead URL is a config error, not a transient one."""


def time_scheme(config: BuildConfig) -> TimeScheme:
    period = config.time.period
    return TimeScheme(
        config.time.start, config.time.periods, None if period == "month" else int(period)
    )


def period_duration(config: BuildConfig) -> str:
    """ISO-8601 duration of one period, as the corpus records it."""
    period = config.time.period
    return "P1M" if period == "month" else f"P{int(period)}D"


def stac_modalities(config: BuildConfig) -> list[str]:
    """Configured modalities that come from a STAC catalog (OSM does not), registry order."""
    return [
        m
        for m in MODALITIES
        if m in config.modalities
        and not isinstance(config.modalities[m], OsmFileSource | OverpassSource)
    ]


def corpus_groups(config: BuildConfig) -> tuple[str, ...]:
    """Band groups of the configured modalities, in registry order."""
    return tuple(g.name for m in MODALITIES if m in config.modalities for g in modality(m).groups)


def select_tiles(config: BuildConfig) -> list[Tile]:
    """The tiles to build, from the AOI and sampling mode; never empty."""
    aoi = config.aoi
    field = "aoi.tiles" if aoi.tiles is not None else "aoi.geojson" if aoi.geojson else "aoi.bbox"
    try:
        if aoi.tiles is not None:
            tiles = sorted({Tile.from_id(t) for t in aoi.tiles})
        elif aoi.geojson is not None:
            path = config.resolve(aoi.geojson)
            if not path.is_file():
                raise ConfigError(f"aoi.geojson: {path} does not exist")
            tiles = cover(json.loads(path.read_text()))
        else:
            assert aoi.bbox is not None
            tiles = cover(aoi.bbox)
    except ConfigError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{field}: {exc}") from None
    if not tiles:
        raise ConfigError(f"{field}: the AOI covers no tile of the grid; widen it or fix it")
    sampling = config.sampling
    if sampling.mode == "random":
        assert sampling.n is not None
        if sampling.n > len(tiles):
            raise ConfigError(
                f"sampling.n: asks {sampling.n} tiles but the AOI covers {len(tiles)}; "
                "ask for at most that many"
            )
        tiles = _draw(tiles, sampling.n, sampling.seed)
    elif sampling.mode == "stratified" and "worldcover" not in config.modalities:
        raise ConfigError(
            "sampling.mode: 'stratified' draws tiles per WorldCover class; add a worldcover "
            "modality to modalities (or use 'cover' or 'random')"
        )
    return tiles


def _draw(tiles: Sequence[Tile], n: int, seed: int) -> list[Tile]:
    """Same draw as catalog.sampling.draw_random_tiles, on tiles already covered."""
    picks = np.random.default_rng(seed).choice(len(tiles), size=n, replace=False)
    return sorted(tiles[i] for i in picks)


def make_source(config: BuildConfig, name: str, retry: RetryPolicy | None = None) -> ItemSource:
    """The catalog source of one modality, as configured."""
    return make_group_source(config, [name], retry)


def make_group_source(
    config: BuildConfig, names: Sequence[str], retry: RetryPolicy | None = None
) -> ItemSource:
    """One source for modalities with the same source settings (`_source_key`), knowing
    every one's configured collection."""
    source = config.modalities[names[0]]
    where = f"modalities.{names[0]}"
    collections = {n: getattr(config.modalities[n], "collection", None) for n in names}
    if isinstance(source, StaticSource):
        path = config.resolve(source.catalog)
        if not path.is_file():
            raise ConfigError(f"{where}.catalog: {path} does not exist")
        try:
            return StaticCatalogSource(
                path,
                collection_modalities={c: n for n, c in collections.items() if c},
                href_policy=replace(LOCAL_CATALOG_POLICY, internal_hosts=_hosts(source)),
            )
        except SourceError as exc:
            raise ConfigError(f"{where}.catalog: {exc}") from None
    if isinstance(source, StacApiSourceConfig):
        kwargs: dict[str, Any] = {"retry": retry} if retry is not None else {}
        kwargs["href_policy"] = replace(REMOTE_POLICY, internal_hosts=_hosts(source))
        if source.profile == "generic":
            assert source.url and all(collections.values())
            profile = generic_profile(source.url, {n: c for n, c in collections.items() if c})
            return StacApiSource(profile, **kwargs)
        named = PROFILES[source.profile]
        chosen = {n: c for n, c in collections.items() if c}  # a configured id wins
        profile = replace(named, collections={**named.collections, **chosen})
        return StacApiSource(profile, **kwargs)
    raise ConfigError(f"{where}: source {source.source!r} is not a STAC catalog")


def _hosts(source: StaticSource | StacApiSourceConfig) -> frozenset[str]:
    return frozenset(h.strip().lower() for h in source.allowed_hosts or ())


def allowed_internal_hosts(config: BuildConfig) -> frozenset[str]:
    """Every internal host the config allows asset reads to reach (the read-time egress
    check of `pipeline/read/egress.py` enforces their union)."""
    found: set[str] = set()
    for source in config.modalities.values():
        if isinstance(source, StaticSource | StacApiSourceConfig):
            found |= _hosts(source)
    return frozenset(found)


def _source_key(config: BuildConfig, name: str) -> str:
    """Modalities with the same source settings share one source (one catalog walk)."""
    source = config.modalities[name].model_dump(mode="json")
    source.pop("collection", None)
    source.pop("query", None)
    return json.dumps(source, sort_keys=True)


def href_signers(config: BuildConfig) -> dict[str, Callable[[str], str]]:
    """modality -> read-time href signer, for STAC API sources whose assets need one."""
    signers: dict[str, Callable[[str], str]] = {}
    for name in stac_modalities(config):
        source = config.modalities[name]
        if not isinstance(source, StacApiSourceConfig):
            continue
        api = make_source(config, name)
        assert isinstance(api, StacApiSource)
        signer = href_signer(api.profile)
        if signer is None and source.sign:
            import planetary_computer

            signer = planetary_computer.sign_url
        if signer is not None:
            signers[name] = signer
    return signers


def check_output_store(config: BuildConfig) -> None:
    """A local output store must be a folder (or not exist yet): checked before anything is
    searched or written, where a regular file gave `[Errno 17] File exists` at build time."""
    url = config.store_url
    if "://" in url:
        return
    path = Path(url)
    if path.exists() and not path.is_dir():
        raise ConfigError(
            f"output.store: {path} is a file, not a corpus folder; name a new folder "
            "(e.g. corpus.zarr) or move the file away"
        )
    if path.parent.exists() and not path.parent.is_dir():
        raise ConfigError(f"output.store: the parent {path.parent} of {path} is a file")


def check_sources(config: BuildConfig) -> None:
    """Open every STAC API landing page once (fast fail) and check collections exist."""
    for name in stac_modalities(config):
        source = config.modalities[name]
        if not isinstance(source, StacApiSourceConfig):
            continue
        api = make_source(config, name, retry=PREFLIGHT_RETRY)
        assert isinstance(api, StacApiSource)
        try:
            api.collection_for(name)
            api.client  # noqa: B018  (opens the landing page)
        except SourceError as exc:
            raise ConfigError(f"modalities.{name}: {exc}") from None
        except Exception as exc:
            field = "url" if source.url else "profile"
            raise ConfigError(
                f"modalities.{name}.{field}: {_why_unusable(api.profile.url, exc)}"
            ) from None


def _why_unusable(url: str, exc: Exception) -> str:
    """What went wrong opening a STAC API's landing page, in words: a server that
    answered with something that is not STAC JSON was reached, so it must not be
    called unreachable."""
    detail = f"{type(exc).__name__}: {str(exc)[:200]}"
    if isinstance(exc, ValueError | KeyError | TypeError):  # JSONDecodeError is a ValueError
        return (
            f"{url} answered, but not with a STAC API landing page (JSON with "
            f"'conformsTo' and 'links'; {detail}); check that the URL is the API root, "
            "e.g. https://earth-search.aws.element84.com/v1"
        )
    return f"the STAC API {url} cannot be reached ({detail}); check the URL and your network"


def check_osm_extract(config: BuildConfig, tiles: Sequence[Tile]) -> list[str]:
    """Plan-time check of a local OSM extract: readable, and meeting the AOI.

    Raises ConfigError when the file cannot be read or meets none of the tiles; returns
    a warning when some tiles reach beyond it (their OSM layers miss what lies outside).
    """
    name = next((n for n in config.modalities if is_osm(n)), None)
    source = config.modalities[name] if name else None
    if not isinstance(source, OsmFileSource):
        return []
    path = config.resolve(source.path)
    try:
        bounds = extract_bounds(path)
    except ExtractError as exc:
        raise ConfigError(f"modalities.{name}.path: {exc}") from None
    if bounds is None:
        raise ConfigError(f"modalities.{name}.path: {path} holds no node; is it the right file?")
    box = shapely.box(*bounds)
    shown = ", ".join(f"{v:.4f}" for v in bounds)
    meets = [t for t in tiles if box.intersects(t.footprint_lonlat())]
    if not meets:
        raise ConfigError(
            f"modalities.{name}.path: the extract {path.name} covers lon/lat {shown}, which "
            f"meets none of the {len(tiles)} tile(s) of the AOI: use the extract of the "
            "AOI's region (or check that the AOI is lon/lat in that order)"
        )
    beyond = [t for t in tiles if not box.contains(t.footprint_lonlat())]
    if beyond:
        return [
            f"{name}: {len(beyond)} of {len(tiles)} tile(s) reach beyond the extract "
            f"{path.name} (lon/lat {shown}); their OSM layers miss what lies outside it"
        ]
    return []


def plan_build(
    config: BuildConfig,
    cache_dir: Path | None = None,
    region_params: RegionParams | None = None,
    plan_params: PlanParams | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Plan:
    """Search every source once per region x collection, then plan all modalities together.
    `progress(stage, done, total)` follows the searches and the assignment."""
    check_output_store(config)
    tiles = select_tiles(config)
    warnings = check_osm_extract(config, tiles)
    check_sources(config)
    cache = SearchCache(cache_dir) if cache_dir is not None else None
    if config.sampling.mode == "stratified":
        tiles = stratified_tiles(config, tiles, region_params or RegionParams(), cache)
    scheme = time_scheme(config)
    by_source: dict[str, list[str]] = defaultdict(list)
    for name in stac_modalities(config):
        by_source[_source_key(config, name)].append(name)
    sources = {}
    for names in by_source.values():
        shared = make_group_source(config, names)
        sources.update(dict.fromkeys(names, shared))
    try:
        plan = search_and_plan(
            sources,
            tiles,
            scheme,
            region_params=region_params or RegionParams(),
            plan_params=plan_params,
            query=_queries(config, list(sources)),
            cache=cache,
            progress=progress,
        )
    except SearchError as exc:
        raise ConfigError(f"modalities.{exc.modality}: {exc}") from None
    plan.search["warnings"] = [*plan.search.get("warnings", []), *warnings]
    return plan


def stratified_tiles(
    config: BuildConfig,
    tiles: Sequence[Tile],
    region_params: RegionParams,
    cache: SearchCache | None,
) -> list[Tile]:
    """Up to `n_per_class` tiles per majority WorldCover class (read coarse from the items)."""
    from terracube.catalog.sampling import draw_stratified, worldcover_class_lookup

    assert config.sampling.n_per_class is not None
    _, end = time_scheme(config).span()
    try:
        found = search_tiles(
            make_source(config, "worldcover"),
            tiles,
            STATIC_SEARCH_START,
            end,
            ["worldcover"],
            params=region_params,
            cache=cache,
        )
    except SourceError as exc:
        raise ConfigError(f"modalities.worldcover: {exc}") from None
    lookup = worldcover_class_lookup(
        found.items.get("worldcover", []), internal_hosts=allowed_internal_hosts(config)
    )
    drawn = draw_stratified(tiles, config.sampling.n_per_class, lookup, config.sampling.seed)
    chosen = sorted({tile for members in drawn.values() for tile in members})
    if not chosen:
        raise ConfigError(
            "sampling: no tile of the AOI has a valid WorldCover class; stratified sampling "
            "found nothing to draw (check modalities.worldcover or use 'cover')"
        )
    return chosen


def dry_run_estimate(config: BuildConfig) -> dict[str, Any] | None:
    """The sizing of a build whose tiles number more than `SEARCH_LIMIT_TILES` (None at
    or below it: the dry run searches then). From tile columns alone, in seconds for
    millions of tiles; random sampling draws the same tiles `select_tiles` would."""
    from terracube.workflows.sizing import SEARCH_LIMIT_TILES, count_regions, sizing

    aoi = config.aoi
    field = "aoi.tiles" if aoi.tiles is not None else "aoi.geojson" if aoi.geojson else "aoi.bbox"
    try:
        if aoi.tiles is not None:
            if len(aoi.tiles) <= SEARCH_LIMIT_TILES:
                return None
            parsed = sorted({Tile.from_id(t) for t in aoi.tiles})
            epsg, col, row = (np.array(v, dtype=np.int64)
                              for v in zip(*[(t.epsg, t.col, t.row) for t in parsed], strict=True))  # fmt: skip
        elif aoi.geojson is not None:
            path = config.resolve(aoi.geojson)
            if not path.is_file():
                raise ConfigError(f"aoi.geojson: {path} does not exist")
            epsg, col, row = cover_columns(json.loads(path.read_text()))
        else:
            assert aoi.bbox is not None
            epsg, col, row = cover_columns(aoi.bbox)
    except ConfigError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{field}: {exc}") from None
    covered = len(epsg)
    sampling = config.sampling
    note = f"{covered} tiles cover the AOI"
    if sampling.mode == "random" and sampling.n is not None and sampling.n <= covered:
        picks = np.sort(np.random.default_rng(sampling.seed).choice(covered, sampling.n, False))
        epsg, col, row = epsg[picks], col[picks], row[picks]
        note += f"; sampling.mode random draws {sampling.n}"
    elif sampling.mode == "stratified":
        note += "; stratified sampling draws fewer (the count needs WorldCover: not read here)"
    if len(epsg) <= SEARCH_LIMIT_TILES:
        return None
    regions = count_regions(epsg, col, row)
    estimate = sizing(
        len(epsg),
        config.time.periods,
        corpus_groups(config),
        config.output.samples_per_shard,
        regions,
        len(stac_modalities(config)),
    ).to_dict()
    return {"estimated": True, "search_limit_tiles": SEARCH_LIMIT_TILES, "note": note,
            "periods": config.time.periods, **estimate}  # fmt: skip


def print_estimate(estimate: Mapping[str, Any], stream: Any) -> None:
    """The dry-run estimate for people."""
    gib = estimate["corpus_bytes_uncompressed"] / 2**30
    stream.write(
        f"{estimate['tiles']} tiles x {estimate['periods']} periods: an estimate, nothing "
        f"searched (more than {estimate['search_limit_tiles']} tiles; {estimate['note']})\n"
        f"  search: {estimate['search_regions']} regions, {estimate['search_calls']} search calls\n"
        f"  store: {estimate['samples_per_shard']} samples per shard, {estimate['shards']} "
        f"shards (one build task each), {estimate['store_objects']} objects, "
        f"{gib:,.0f} GiB before compression\n"
        f"  plan: ~{estimate['plan_assignment_rows']:,} assignment rows, "
        f"~{estimate['plan_bytes'] / 2**30:.1f} GiB saved (items apart)\n"
        "`terracube plan CONFIG` (without --dry-run) searches and writes the plan\n"
    )


def _queries(config: BuildConfig, names: Sequence[str]) -> Mapping[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        source = config.modalities[name]
        if isinstance(source, StacApiSourceConfig) and source.query:
            out[name] = source.query
    return out
