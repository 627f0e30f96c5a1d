"""The dry-run summary of a plan: tiles, items, estimated bytes and requests, gaps.

Bytes are what the build would read: for every assigned candidate and every band (and
the cloud mask), the tile window at the asset's own resolution times its data type,
never more than the asset's file:size when the provider publishes it. Reads are counted
as one header plus one windowed range request per asset per tile (COG over HTTP).
"""

from __future__ import annotations

import json
import math
import sys
from typing import IO, Any

import numpy as np
from terracube.catalog.bands import TILE_SIZE_M
from terracube.catalog.plan import Plan
from terracube.catalog.plan_store import PlanFiles
from terracube.catalog.registry import modality
from terracube.catalog.stac.items import AssetRef
from terracube.catalog.stac.rejections import reason_table

REQUESTS_PER_ASSET_READ = 2
"""COG header + one windowed range request."""


def _native_res(ref: AssetRef, item_epsg: int | None, fallback: float) -> float:
    """Pixel size in metres: from proj:transform when the asset is projected in metres."""
    if ref.transform is not None and item_epsg not in (None, 4326):
        return abs(ref.transform.a)
    return fallback


def window_bytes(
    ref: AssetRef, item_epsg: int | None, fallback_res: float, fallback_dtype: str
) -> int:
    """Bytes of one tile window of this asset, capped by its file size when known."""
    res = _native_res(ref, item_epsg, fallback_res)
    pixels = math.ceil(TILE_SIZE_M / res) ** 2
    size = pixels * np.dtype(ref.dtype or fallback_dtype).itemsize
    return min(size, ref.file_size) if ref.file_size else size


def modalities_without_data(plan: Plan | PlanFiles) -> list[str]:
    """Searched modalities that have no item for any tile in any period.

    A lon/lat-swapped bbox that is still valid, an AOI at sea, a wrong collection or
    time range all look like this; the CLI says so and exits non-zero (--allow-empty).
    """
    avail = plan.availability
    if not len(avail):
        return []
    per_modality = avail.groupby("modality").has_data.any()
    return sorted(str(m) for m in per_modality[~per_modality].index)


def empty_plan_message(plan: Plan | PlanFiles, names: list[str]) -> str:
    """What to check when `names` found nothing anywhere."""
    bounds = [round(float(v), 4) for v in plan.samples.total_bounds] if len(plan.samples) else []
    span = plan.scheme.span(plan.scheme.start)
    return (
        f"no data for {', '.join(names)} in any of {plan.samples.tile_id.nunique()} tile(s) "
        f"(lon/lat bounds {bounds}) over {span[0]:%Y-%m-%d}..{span[1]:%Y-%m-%d}. Check that the "
        "AOI is lon/lat in that order and on land, the time range, the collection and the "
        "query of those modalities; pass --allow-empty to plan and build anyway"
    )


def summarize(plan: Plan) -> dict[str, Any]:
    """JSON-safe summary dict for `terracube plan --dry-run --json`."""
    rows = plan.assignments
    est_bytes: dict[str, int] = {}
    reads: dict[str, int] = {}
    for name, group in rows.groupby("modality"):
        mod = modality(str(name))
        bands = {b.name: b for b in mod.bands}
        total = count = 0
        for item_id in group.item_id:
            item = plan.items[item_id]
            refs = [*item.assets, *([item.mask] if item.mask else [])]
            for ref in refs:
                band = bands.get(ref.band)
                res = band.native_res if band else (mod.mask.native_res if mod.mask else 10)
                dtype = band.dtype if band else "uint16"
                total += window_bytes(ref, item.epsg, res, dtype)
                count += 1
        est_bytes[str(name)] = total
        reads[str(name)] = count * REQUESTS_PER_ASSET_READ
    avail = plan.availability
    empty_periods: dict[str, int] = {}
    tiles_without_data: dict[str, list[str]] = {}
    if len(avail):
        for name, group in avail.groupby("modality"):
            empty_periods[str(name)] = int((~group.has_data).sum())
            per_tile = group.groupby("tile_id").has_data.any()
            tiles_without_data[str(name)] = sorted(per_tile[~per_tile].index.tolist())
    return {
        "tiles": int(plan.samples.tile_id.nunique()),
        "samples": len(plan.samples),
        "periods": plan.scheme.periods,
        "time_scheme": plan.scheme.to_dict(),
        "items": {str(k): int(v) for k, v in rows.groupby("modality").item_id.nunique().items()},
        "items_total": len(plan.items),
        "assignments": len(rows),
        "estimated_bytes": {**est_bytes, "total": sum(est_bytes.values())},
        "requests": {
            "search": int(plan.search.get("http_requests", 0)),
            "search_calls": int(plan.search.get("search_calls", 0)),
            "search_cache_hits": int(plan.search.get("cache_hits", 0)),
            "asset_reads": {**reads, "total": sum(reads.values())},
        },
        "empty_periods": empty_periods,
        "tiles_without_data": tiles_without_data,
        "modalities_without_data": modalities_without_data(plan),
        "rejected_items": len(plan.search.get("rejected", [])),
        "rejected_by_reason": reason_table(plan.search.get("rejected", [])),
        "warnings": list(plan.search.get("warnings", [])),
    }


def print_summary(
    plan: Plan, as_json: bool = False, stream: IO[str] | None = None
) -> dict[str, Any]:
    """Print the summary (JSON or a short text) and return the dict."""
    out = stream or sys.stdout
    summary = summarize(plan)
    if as_json:
        out.write(json.dumps(summary, indent=2) + "\n")
        return summary
    gib = summary["estimated_bytes"]["total"] / 2**30
    out.write(
        f"{summary['tiles']} tiles x {summary['periods']} periods, {summary['items_total']} items, "
        f"~{gib:.2f} GiB to read, {summary['requests']['asset_reads']['total']} asset requests, "
        f"{summary['requests']['search']} search requests\n"
    )
    for name, tiles in summary["tiles_without_data"].items():
        if tiles:
            out.write(f"  {name}: {len(tiles)} tile(s) without data\n")
    for warning in summary["warnings"]:
        out.write(f"warning: {warning}\n")
    reasons = summary["rejected_by_reason"]
    if reasons:
        out.write(f"{summary['rejected_items']} item(s) set aside (all in plan.json):\n")
        width = max(len(r) for r in reasons)
        for reason, row in reasons.items():
            examples = ", ".join(row["examples"])
            more = ", ..." if row["count"] > len(row["examples"]) else ""
            out.write(f"  {reason:<{width}}  {row['count']:>6}  e.g. {examples}{more}\n")
            out.write(f"  {'':<{width}}          {row['message']}\n")
    return summary
