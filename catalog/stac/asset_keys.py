"""Which asset key holds which registry band, one table per provider.

The same band is `red` (Earth Search v1 COG), `red-jp2` (the JPEG 2000 original Earth
Search v1 publishes beside it), `B04` (Planetary Computer, Earth Search v0
`sentinel-s2-l2a-cogs`) or `SR_B4` (USGS, stactools). Keys never collide inside one
modality across these providers, so the normaliser looks a band up in the union of the
tables of its modality, in a fixed order: every COG key of every provider first, then
the JP2 keys, so an item carrying both is read from its COG (range reads) and a JP2-only
item is still read. Keys not in any table fall back to the registry's aliases and to
the asset's `eo:bands` name (catalog/stac/items.py).

Each table was checked against recorded real items (tests/catalog/test_provider_items.py
names where each came from).
"""

from __future__ import annotations

from dataclasses import dataclass

S2_COMMON = {
    "B01": "coastal",
    "B02": "blue",
    "B03": "green",
    "B04": "red",
    "B05": "rededge1",
    "B06": "rededge2",
    "B07": "rededge3",
    "B08": "nir",
    "B8A": "nir08",
    "B09": "nir09",
    "B11": "swir16",
    "B12": "swir22",
    "SCL": "scl",
}
LANDSAT_COMMON = {
    "SR_B1": "coastal",
    "SR_B2": "blue",
    "SR_B3": "green",
    "SR_B4": "red",
    "SR_B5": "nir08",
    "SR_B6": "swir16",
    "SR_B7": "swir22",
    "ST_B10": "lwir11",
    "QA_PIXEL": "qa_pixel",
}


@dataclass(frozen=True)
class ProviderKeys:
    """Asset keys one provider uses for one modality: band -> keys, preferred first."""

    provider: str
    modality: str
    collections: tuple[str, ...]
    keys: dict[str, tuple[str, ...]]

    def cog_keys(self, band: str) -> tuple[str, ...]:
        return tuple(k for k in self.keys.get(band, ()) if not is_jp2_key(k))

    def jp2_keys(self, band: str) -> tuple[str, ...]:
        return tuple(k for k in self.keys.get(band, ()) if is_jp2_key(k))


def is_jp2_key(key: str) -> bool:
    return key.lower().endswith(("-jp2", ".jp2"))


PROVIDER_KEYS: tuple[ProviderKeys, ...] = (
    ProviderKeys(
        "earth-search-v1",
        "sentinel2_l2a",
        ("sentinel-2-l2a", "sentinel-2-c1-l2a"),
        {band: (common, f"{common}-jp2") for band, common in S2_COMMON.items()},
    ),
    ProviderKeys(
        "earth-search-v0",
        "sentinel2_l2a",
        ("sentinel-s2-l2a-cogs",),
        {band: (band,) for band in S2_COMMON},
    ),
    ProviderKeys(
        "planetary-computer",
        "sentinel2_l2a",
        ("sentinel-2-l2a",),
        {band: (band,) for band in S2_COMMON},
    ),
    ProviderKeys(
        "planetary-computer",
        "sentinel1",
        ("sentinel-1-rtc",),
        {"VV": ("vv",), "VH": ("vh",)},
    ),
    ProviderKeys(
        "earth-search-v1 / planetary-computer / usgs-landsatlook",
        "landsat_c2l2",
        ("landsat-c2-l2", "landsat-c2l2-sr", "landsat-c2l2-st"),
        {band: (common,) for band, common in LANDSAT_COMMON.items()},
    ),
    ProviderKeys(
        "stactools-landsat",
        "landsat_c2l2",
        ("landsat-c2-l2", "landsat-c2l2-sr", "landsat-c2l2-st"),
        {band: (band, f"{band}.TIF") for band in LANDSAT_COMMON},
    ),
)


def keys_for(modality: str, band: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(COG keys, JP2 keys) that hold `band` of `modality` at any provider, in table order."""
    tables = [t for t in PROVIDER_KEYS if t.modality == modality]
    cog = tuple(dict.fromkeys(k for t in tables for k in t.cog_keys(band)))
    jp2 = tuple(dict.fromkeys(k for t in tables for k in t.jp2_keys(band)))
    return cog, jp2
