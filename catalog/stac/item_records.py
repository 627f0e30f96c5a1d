"""Normalised items as plain JSON-able records: how a saved plan keeps its items.

A plan written to disk (catalog/plan.py) stores each `NormalizedItem` as one record,
so a build reads back exactly the hrefs, transforms and conversions the plan chose,
without searching or normalising again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import affine
import shapely
from terracube.catalog.registry import RadiometryKind
from terracube.catalog.stac.items import AssetRef, Conversion, NormalizedItem


def _asset_record(ref: AssetRef) -> dict[str, Any]:
    return {
        "band": ref.band,
        "href": ref.href,
        "asset_key": ref.asset_key,
        "transform": list(ref.transform)[:6] if ref.transform is not None else None,
        "shape": list(ref.shape) if ref.shape is not None else None,
        "nodata": None if ref.nodata is None or math.isnan(ref.nodata) else ref.nodata,
        "nodata_nan": ref.nodata is not None and math.isnan(ref.nodata),
        "dtype": ref.dtype,
        "file_size": ref.file_size,
        "conversion": {
            "kind": ref.conversion.kind.value,
            "dn_offset": ref.conversion.dn_offset,
            "scale": ref.conversion.scale,
            "offset": ref.conversion.offset,
            "source": ref.conversion.source,
        },
    }


def _asset_from_record(rec: Mapping[str, Any]) -> AssetRef:
    conv = dict(rec["conversion"])
    nodata = float("nan") if rec.get("nodata_nan") else rec.get("nodata")
    return AssetRef(
        band=rec["band"],
        href=rec["href"],
        asset_key=rec["asset_key"],
        transform=affine.Affine(*rec["transform"]) if rec.get("transform") else None,
        shape=tuple(rec["shape"]) if rec.get("shape") else None,
        nodata=nodata,
        dtype=rec.get("dtype"),
        conversion=Conversion(RadiometryKind(conv.pop("kind")), **conv),
        file_size=rec.get("file_size"),
    )


def item_to_record(item: NormalizedItem) -> dict[str, Any]:
    """JSON-safe dict of a NormalizedItem (the plan stores items this way)."""
    return {
        "id": item.id,
        "collection": item.collection,
        "modality": item.modality,
        "datetime": item.datetime.isoformat(),
        "geometry": shapely.geometry.mapping(item.geometry),
        "epsg": item.epsg,
        "assets": [_asset_record(a) for a in item.assets],
        "mask": _asset_record(item.mask) if item.mask else None,
        "cloud_cover": item.cloud_cover,
        "platform": item.platform,
        "missing_bands": list(item.missing_bands),
    }


def item_from_record(rec: Mapping[str, Any]) -> NormalizedItem:
    """Inverse of item_to_record."""
    return NormalizedItem(
        id=rec["id"],
        collection=rec["collection"],
        modality=rec["modality"],
        datetime=datetime.fromisoformat(rec["datetime"]),
        geometry=shapely.geometry.shape(rec["geometry"]),
        epsg=rec.get("epsg"),
        assets=tuple(_asset_from_record(a) for a in rec["assets"]),
        mask=_asset_from_record(rec["mask"]) if rec.get("mask") else None,
        cloud_cover=rec.get("cloud_cover"),
        platform=rec.get("platform"),
        missing_bands=tuple(rec.get("missing_bands") or ()),
    )
