"""Items as columns: what planning reads of an item, apart from what building needs.

Planning needs six fields of an item (id, collection, time, footprint, CRS, cloud
cover); building needs its hrefs and conversions too. A NormalizedItem holds both and
costs a few kilobytes of Python objects, so a worldwide 300k-tile plan holding every
searched item as objects ran past 16 GiB. An `ItemTable` keeps the six as numpy
columns and the rest as one JSON record per row, decoded only for the items a build
task reads (`plan_store`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from terracube.catalog.stac.item_records import item_from_record, item_to_record
from terracube.catalog.stac.items import NormalizedItem

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NO_EPSG = -1
"""`epsg` of an item whose provider publishes no projection."""


def datetime_ns(when: datetime) -> int:
    """UTC nanoseconds since the epoch, exact (integer arithmetic on the timedelta)."""
    if when.tzinfo is None:
        raise ValueError(f"datetime {when.isoformat()} has no time zone; items are in UTC")
    delta = when - _EPOCH
    return ((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds) * 1000


@dataclass(frozen=True, eq=False)
class ItemTable:
    """One modality's items, row i = the i-th item; columns of equal length."""

    ids: np.ndarray
    collection: np.ndarray
    datetime_ns: np.ndarray
    epsg: np.ndarray
    """int64, NO_EPSG where unknown (which no tile CRS equals, as in the reference)."""
    cloud: np.ndarray
    """float64, NaN where the sensor has no cloud cover (ranks as clear)."""
    geometry: np.ndarray
    records: np.ndarray
    """JSON text of each item's record (`item_records`), for the build stage."""

    def __post_init__(self) -> None:
        lengths = {len(getattr(self, f)) for f in ("ids", "collection", "datetime_ns", "epsg",
                                                   "cloud", "geometry", "records")}  # fmt: skip
        if len(lengths) != 1:
            raise ValueError(f"ItemTable columns differ in length: {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def id_rank(self) -> np.ndarray:
        """Position of each id in sorted order: the last ranking key, compared once."""
        cached = self.__dict__.get("_id_rank")
        if cached is None:
            order = np.argsort(self.ids, kind="stable")
            cached = np.empty(len(order), dtype=np.int64)
            cached[order] = np.arange(len(order))
            object.__setattr__(self, "_id_rank", cached)
        return cached

    @classmethod
    def from_items(cls, items: Sequence[NormalizedItem]) -> ItemTable:
        return cls(
            ids=np.array([i.id for i in items], dtype=object),
            collection=np.array([i.collection for i in items], dtype=object),
            datetime_ns=np.array([datetime_ns(i.datetime) for i in items], dtype=np.int64),
            epsg=np.array([NO_EPSG if i.epsg is None else i.epsg for i in items], dtype=np.int64),
            cloud=np.array(
                [np.nan if i.cloud_cover is None else i.cloud_cover for i in items], dtype=float
            ),
            geometry=np.array([i.geometry for i in items], dtype=object),
            records=np.array([json.dumps(item_to_record(i)) for i in items], dtype=object),
        )

    def item(self, row: int) -> NormalizedItem:
        return item_from_record(json.loads(self.records[row]))
