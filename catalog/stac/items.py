"""One item shape for every provider: Earth Search v1, Planetary Computer, USGS, our own.

Providers publish the same scene under different asset keys (`B04`, `red`,
`SR_B4.TIF`), different projection fields (`proj:code`, `proj:epsg`, `proj:wkt2`, item
or asset level), relative or absolute hrefs, and, worst, different radiometric
metadata for the same DN. Everything downstream reads `NormalizedItem`, so those
differences are settled here, once, and the DN -> stored conversion is explicit.

Band and mask names come from the registry (Band.aliases, MaskBand.aliases); this module
only adds provider facts: which collection id holds which modality.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import affine
import pystac
import shapely
from pyproj import CRS
from terracube.catalog.registry import MODALITIES, MaskBand, modality
from terracube.catalog.s2_baseline import METADATA_ASSET_KEYS
from terracube.catalog.stac.asset_keys import is_jp2_key, keys_for
from terracube.catalog.stac.conversion import Conversion, band_conversion, mask_conversion
from terracube.catalog.stac.http import HrefPolicy, check_asset_href
from terracube.catalog.stac.item_errors import REASONS, ItemNormalizationError

__all__ = [
    "REASONS",
    "AssetRef",
    "Conversion",
    "ItemNormalizationError",
    "NormalizedItem",
    "normalize_item",
    "normalize_items",
]

COLLECTION_MODALITIES: dict[str, str] = {
    c: m.name for m in MODALITIES.values() for c in m.stac_collections
}
"""Provider collection id -> registry modality. A `terracube:modality` item property wins."""

UNSUPPORTED_COLLECTIONS: dict[str, str] = {
    "sentinel-1-grd": "GRD scenes are in radar geometry (GCPs, amplitude DN), not on a map "
    "grid; use a terrain-corrected collection such as Planetary Computer sentinel-1-rtc",
    "sentinel-2-l1c": "L1C is top-of-atmosphere; the corpus stores L2A surface reflectance",
}

OPTIONAL_BANDS: dict[str, frozenset[str]] = {
    m.name: frozenset(b.name for b in m.bands if b.optional) for m in MODALITIES.values()
}
"""Bands whose absence is a fact of the product, not a broken item; stored as nodata."""


MODALITY_PROPERTY = "terracube:modality"


@dataclass(frozen=True)
class AssetRef:
    """Where one registry band (or mask) of an item lives and how to read it."""

    band: str
    href: str
    asset_key: str
    transform: affine.Affine | None
    shape: tuple[int, int] | None
    nodata: float | None
    dtype: str | None
    conversion: Conversion
    file_size: int | None = None


@dataclass(frozen=True)
class NormalizedItem:
    id: str
    collection: str
    modality: str
    datetime: datetime
    geometry: shapely.Geometry
    """Footprint in lon/lat (EPSG:4326)."""
    epsg: int | None
    """None when the provider publishes no projection (read it from the asset)."""
    assets: tuple[AssetRef, ...]
    mask: AssetRef | None
    cloud_cover: float | None
    platform: str | None
    missing_bands: tuple[str, ...] = ()
    """Optional registry bands this product does not carry (OPTIONAL_BANDS)."""

    def asset(self, band: str) -> AssetRef:
        for ref in self.assets:
            if ref.band == band:
                return ref
        raise KeyError(f"item {self.id} has no asset for band {band!r}")

    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(ref.band for ref in self.assets)


# --------------------------------------------------------------------------- helpers


def _item_dict(item: pystac.Item | Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    if isinstance(item, pystac.Item):
        return item.to_dict(include_self_link=True, transform_hrefs=False), item.get_self_href()
    if not isinstance(item, Mapping):
        raise TypeError(f"expected a pystac.Item or an item dict, got {type(item).__name__}")
    return dict(item), None


def _self_href(data: Mapping[str, Any]) -> str | None:
    for link in data.get("links") or ():
        if link.get("rel") == "self" and link.get("href"):
            return str(link["href"])
    return None


def _is_url(href: str) -> bool:
    scheme = urlsplit(href).scheme
    return len(scheme) > 1


def resolve_href(href: str, base: str | None, item_id: str) -> str:
    """Absolute href: relative ones resolve against the item's own location."""
    if _is_url(href) or os.path.isabs(href):
        return href
    if base is None:
        raise ItemNormalizationError(
            f"item {item_id}: asset href {href!r} is relative and the item has no self href; "
            "pass base_href (the item's own URL or path) to normalize_item",
            "relative href",
        )
    if _is_url(base):
        return urljoin(base, href)
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(base)), href))


def _epsg_from(fields: Mapping[str, Any]) -> int | None:
    code = fields.get("proj:code")
    if isinstance(code, str) and code.upper().startswith("EPSG:"):
        return int(code.split(":", 1)[1])
    if fields.get("proj:epsg") is not None:
        return int(fields["proj:epsg"])
    for key in ("proj:wkt2", "proj:projjson"):
        if fields.get(key):
            crs = CRS.from_user_input(fields[key])
            epsg = crs.to_epsg()
            if epsg is not None:
                return epsg
    return None


def _parse_datetime(props: Mapping[str, Any], item_id: str) -> datetime:
    raw = props.get("datetime") or props.get("start_datetime")
    if not raw:
        raise ItemNormalizationError(
            f"item {item_id}: neither datetime nor start_datetime set", "bad datetime"
        )
    try:
        when = datetime.fromisoformat(str(raw))
    except ValueError as err:
        raise ItemNormalizationError(
            f"item {item_id}: bad datetime {raw!r}: {err}", "bad datetime"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _platform(props: Mapping[str, Any]) -> str | None:
    raw = props.get("platform") or props.get("eo:platform")
    return str(raw).strip().lower().replace("_", "-") if raw else None


def _raster_band(asset: Mapping[str, Any]) -> Mapping[str, Any]:
    bands: Sequence[Any] = asset.get("raster:bands") or asset.get("bands") or ()
    return bands[0] if len(bands) == 1 and isinstance(bands[0], Mapping) else {}


def _asset_names(
    key: str, asset: Mapping[str, Any], item_eo: list[Any]
) -> tuple[set[str], set[str]]:
    """(names from the key, names from a single eo:band) an asset is published under."""
    stem = key.rsplit(".", 1)[0] if key.lower().endswith((".tif", ".tiff")) else key
    from_key = {key, stem}
    eo: Sequence[Any] = asset.get("eo:bands") or ()
    from_eo: set[str] = set()
    if len(eo) == 1:
        band = eo[0]
        if isinstance(band, int) and 0 <= band < len(item_eo):  # STAC 0.x index form
            band = item_eo[band]
        if isinstance(band, Mapping):
            from_eo = {str(band[k]) for k in ("name", "common_name") if band.get(k)}
    return from_key, from_eo


def _is_jp2(key: str, asset: Mapping[str, Any]) -> bool:
    return is_jp2_key(key) or "jp2" in str(asset.get("type", "")).lower()


def _find_asset(
    modality_name: str,
    band_name: str,
    aliases: tuple[str, ...],
    assets: Mapping[str, Mapping[str, Any]],
    item_eo: list[Any],
) -> str | None:
    """Asset key holding `band_name`: a provider table's COG key (asset_keys.py), then a
    registry alias or an eo:bands name on a non-JP2 asset, then a JP2 key, then a JP2
    asset by alias or eo:bands name. A COG is always preferred to the JP2 original."""
    cog_keys, jp2_keys = keys_for(modality_name, band_name)
    for key in cog_keys:
        if key in assets and not _is_jp2(key, assets[key]):
            return key
    wanted = set(aliases)
    by_key: dict[bool, str] = {}
    by_eo: dict[bool, str] = {}
    for key, asset in assets.items():
        from_key, from_eo = _asset_names(key, asset, item_eo)
        jp2 = _is_jp2(key, asset)
        if from_key & wanted:
            by_key.setdefault(jp2, key)
        if from_eo & wanted:
            by_eo.setdefault(jp2, key)
    if False in by_key or False in by_eo:
        return by_key.get(False) or by_eo[False]
    for key in (*cog_keys, *jp2_keys):
        if key in assets:
            return key
    return by_key.get(True) or by_eo.get(True)


# --------------------------------------------------------------------------- main entry


def modality_of(data: Mapping[str, Any], overrides: Mapping[str, str] | None = None) -> str:
    """Registry modality of an item dict, from its property or its collection id."""
    item_id = data.get("id", "<no id>")
    props = data.get("properties") or {}
    if props.get(MODALITY_PROPERTY):
        return modality(str(props[MODALITY_PROPERTY])).name
    collection = data.get("collection")
    table = {**COLLECTION_MODALITIES, **(overrides or {})}
    if collection in table:
        return table[collection]
    if collection in UNSUPPORTED_COLLECTIONS:
        raise ItemNormalizationError(
            f"item {item_id}: collection {collection!r} is not supported: "
            f"{UNSUPPORTED_COLLECTIONS[collection]}",
            "unsupported collection",
        )
    raise ItemNormalizationError(
        f"item {item_id}: unknown collection {collection!r}; known: {', '.join(sorted(table))}. "
        f"Set the item property {MODALITY_PROPERTY!r} or pass collection_modalities.",
        "unknown collection",
    )


def _asset_ref(
    band_name: str,
    key: str,
    asset: Mapping[str, Any],
    item: Mapping[str, Any],
    base: str | None,
    conversion: Conversion,
    policy: HrefPolicy | None,
) -> AssetRef:
    props = item.get("properties") or {}
    href = resolve_href(str(asset["href"]), base, item["id"])
    if policy is not None:
        check_asset_href(href, policy)
    raster = _raster_band(asset)
    transform = asset.get("proj:transform") or props.get("proj:transform")
    shape = asset.get("proj:shape") or props.get("proj:shape")
    nodata = raster.get("nodata", asset.get("nodata"))
    return AssetRef(
        band=band_name,
        href=href,
        asset_key=key,
        transform=affine.Affine(*transform[:6]) if transform else None,
        shape=(int(shape[0]), int(shape[1])) if shape else None,
        nodata=float(nodata) if nodata is not None else None,
        dtype=raster.get("data_type"),
        conversion=conversion,
        file_size=int(asset["file:size"]) if asset.get("file:size") is not None else None,
    )


def normalize_item(
    item: pystac.Item | Mapping[str, Any],
    *,
    base_href: str | None = None,
    policy: HrefPolicy | None = None,
    collection_modalities: Mapping[str, str] | None = None,
    required_bands: Iterable[str] | None = None,
    require_mask: bool = True,
    fetch: Callable[[str], bytes] | None = None,
) -> NormalizedItem:
    """Normalize one STAC item. `policy` checks every asset href (pass it for remote catalogs).

    `required_bands` defaults to the modality's bands minus OPTIONAL_BANDS; a missing
    required band or mask raises ItemNormalizationError naming the item and the band.
    `require_mask=False` accepts products that publish no mask band (Major TOM and
    SSL4EO S2 patches have no SCL): their `mask` is None, and the build uses them
    only with BuildParams(allow_unmasked=True). A mask that is present is still used.
    `fetch(href) -> bytes` reads a metadata asset; it is called only for an S2 item
    whose baseline no property names (at most once per item), after `policy` allowed
    the href.
    """
    data, pystac_self = _item_dict(item)
    item_id = str(data.get("id") or "<no id>")
    props = data.get("properties") or {}
    mod = modality(modality_of(data, collection_modalities))
    platform = _platform(props)
    if mod.platforms and platform is not None and platform not in mod.platforms:
        accepted = "/".join(sorted(mod.platforms))
        raise ItemNormalizationError(
            f"item {item_id}: platform {platform!r} is not among {accepted}, the platforms whose "
            f"band numbering the registry's {mod.title} follows. Filter the search with "
            f"platform in {accepted}.",
            "unsupported platform",
        )
    base = base_href or pystac_self or _self_href(data)
    assets: Mapping[str, Mapping[str, Any]] = data.get("assets") or {}
    item_eo = list(props.get("eo:bands") or [])
    optional = OPTIONAL_BANDS.get(mod.name, frozenset())
    required = (
        set(required_bands)
        if required_bands is not None
        else {b.name for b in mod.bands if b.name not in optional}
    )

    metadata = _metadata_reader(assets, base, item_id, policy, fetch)
    refs: list[AssetRef] = []
    missing: list[str] = []
    for band in mod.bands:
        key = _find_asset(mod.name, band.name, band.aliases, assets, item_eo)
        if key is None:
            missing.append(band.name)
            continue
        conversion = band_conversion(
            band, _raster_band(assets[key]), props, item_id, metadata, _is_jp2(key, assets[key])
        )
        refs.append(_asset_ref(band.name, key, assets[key], data, base, conversion, policy))
    lacking = sorted(required & set(missing))
    if lacking:
        raise ItemNormalizationError(
            f"item {item_id} ({data.get('collection')}): no asset for required band(s) "
            f"{', '.join(lacking)} of {mod.name}; asset keys present: {', '.join(assets) or 'none'}",
            "missing band",
        )
    mask = (
        _mask_ref(mod.name, mod.mask, assets, item_eo, data, base, policy, require_mask)
        if mod.mask
        else None
    )

    epsg = _epsg_from(props)
    if epsg is None:
        epsg = next((e for r in refs if (e := _epsg_from(assets[r.asset_key])) is not None), None)
    geometry = data.get("geometry")
    if not geometry:
        raise ItemNormalizationError(f"item {item_id}: has no geometry", "no geometry")
    cloud = props.get("eo:cloud_cover")
    return NormalizedItem(
        id=item_id,
        collection=str(data.get("collection") or ""),
        modality=mod.name,
        datetime=_parse_datetime(props, item_id),
        geometry=shapely.geometry.shape(geometry),
        epsg=epsg,
        assets=tuple(refs),
        mask=mask,
        cloud_cover=float(cloud) if cloud is not None else None,
        platform=platform,
        missing_bands=tuple(missing),
    )


def _metadata_reader(
    assets: Mapping[str, Mapping[str, Any]],
    base: str | None,
    item_id: str,
    policy: HrefPolicy | None,
    fetch: Callable[[str], bytes] | None,
) -> Callable[[], bytes | None] | None:
    """A once-only reader of the item's first metadata XML asset, or None without one."""
    if fetch is None:
        return None
    key = next((k for k in METADATA_ASSET_KEYS if k in assets and assets[k].get("href")), None)
    if key is None:
        return None
    cache: list[bytes | None] = []

    def read() -> bytes | None:
        if not cache:
            assert key is not None
            href = resolve_href(str(assets[key]["href"]), base, item_id)
            if policy is not None:
                check_asset_href(href, policy)
            cache.append(fetch(href))
        return cache[0]

    return read


def _mask_ref(
    modality_name: str,
    mask: MaskBand,
    assets: Mapping[str, Mapping[str, Any]],
    item_eo: list[Any],
    data: Mapping[str, Any],
    base: str | None,
    policy: HrefPolicy | None,
    required: bool = True,
) -> AssetRef | None:
    key = _find_asset(modality_name, mask.name, mask.aliases, assets, item_eo)
    if key is None and not required:
        return None
    if key is None:
        raise ItemNormalizationError(
            f"item {data.get('id')}: no {mask.name} mask asset (looked for "
            f"{', '.join(mask.aliases)}); clouds cannot be masked without it. For products "
            "without one (Major TOM, SSL4EO) pass require_mask=False",
            "missing mask",
        )
    return _asset_ref(mask.name, key, assets[key], data, base, mask_conversion(), policy)


def normalize_items(
    items: Iterable[pystac.Item | Mapping[str, Any]], **kwargs: Any
) -> list[NormalizedItem]:
    """Normalize many items with the same options (see normalize_item, e.g. require_mask)."""
    return [normalize_item(item, **kwargs) for item in items]
