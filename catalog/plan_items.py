"""Items as columns: what planning reads of an item, apart from what building needs.

Planning needs six fields of an item (id, collection, time, footprint, CRS, cloud
cover); building needs its hrefs and conversions too. A NormalizedItem holds both and
costs a few kilobytes of Python objects, so a worldwide 300k-tile plan holding every
searched item as objects ran past 16 GiB. An `ItemTable` keeps the six as numpy
columns and the rest as one JSON record per row, decoded only for the items a build
task reads (`plan_store`).

On disk (`ItemStoreWriter`, `read_item_tables`) the search answers are kept once: one
Parquet file of the planning columns plus each record, in 512-row groups, and each
footprint once in a second file. Planning reads only the columns (records stay on
disk), and the file becomes the plan's `items.parquet` as it is, so a worldwide plan
no longer writes ~1 KB of JSON per assigned item a second time: at 10k worldwide tiles
that copy was 45 of the plan's 75 s (profiled).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import shapely
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
    records: Any
    """JSON text of each item's record (`item_records`), for the build stage: an array,
    or `StoredRecords` when the table was read from an item store on disk."""
    footprint: np.ndarray | None = None
    """Footprint number of each row (rows sharing a footprint share the number), when
    known: an item store keeps each footprint once."""

    def __post_init__(self) -> None:
        lengths = {len(getattr(self, f)) for f in ("ids", "collection", "datetime_ns", "epsg",
                                                   "cloud", "geometry", "records")}  # fmt: skip
        if len(lengths) != 1:
            raise ValueError(f"ItemTable columns differ in length: {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def store_rows(self) -> np.ndarray | None:
        """Row of each item in its item store's file, when read from one."""
        return self.records.rows if isinstance(self.records, StoredRecords) else None

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


# --------------------------------------------------------------------------- on disk

ITEMS_FILE = "items.parquet"
FOOTPRINTS_FILE = "footprints.parquet"
ITEMS_PER_GROUP = 512
"""Rows per row group of the items file: the group of item row r is r // ITEMS_PER_GROUP
(`plan_store.PlanFiles.items` reads one group per 512 items)."""

_STORE_SCHEMA = pa.schema(
    [
        ("item_row", pa.int64()),
        ("item_id", pa.string()),
        ("record", pa.string()),
        ("modality", pa.string()),
        ("collection", pa.string()),
        ("datetime_ns", pa.int64()),
        ("epsg", pa.int64()),
        ("cloud", pa.float64()),
        ("footprint", pa.int64()),
    ]
)


_GROUP_KEY = b"terracube.items_per_group"


def store_group_size(path: Path) -> int:
    """Rows per row group of an items file, as its writer recorded it."""
    metadata = pq.read_schema(path).metadata or {}
    return int(metadata.get(_GROUP_KEY, ITEMS_PER_GROUP))


class StoredRecords:
    """The records column of a stored table: row i's record is row `rows[i]` of the
    items file, read (one row group) only when asked."""

    def __init__(self, path: Path, rows: np.ndarray) -> None:
        self.path = path
        self.rows = rows
        self.group_size = store_group_size(path)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, row: int) -> str:
        stored = int(self.rows[row])
        group = pq.ParquetFile(self.path).read_row_group(
            stored // self.group_size, columns=["item_row", "record"]
        )
        offset = stored - int(group.column("item_row")[0].as_py())
        return str(group.column("record")[offset].as_py())


class ItemStoreWriter:
    """Search answers streamed to disk as they come, each item once.

    Rows are numbered in the order they are added; footprints are kept once each (WKB
    equality) in `footprints.parquet`, so the 36 revisits of a scene share one polygon
    when read back. Row groups hold exactly ITEMS_PER_GROUP rows (the last one fewer):
    rows wait in a buffer until a whole group is there."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.group_size = ITEMS_PER_GROUP
        schema = _STORE_SCHEMA.with_metadata({_GROUP_KEY: str(self.group_size)})
        self._writer = pq.ParquetWriter(self.directory / ITEMS_FILE, schema)
        self._footprints: dict[bytes, int] = {}
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self.rows = 0

    def add_items(self, name: str, items: Sequence[NormalizedItem]) -> None:
        self.add(name, ItemTable.from_items(items))

    def add(self, name: str, table: ItemTable, rows: np.ndarray | None = None) -> None:
        """Rows of one modality's table (all, or `rows` of it), records included."""
        picked = np.arange(len(table)) if rows is None else np.asarray(rows, dtype=np.int64)
        if not len(picked):
            return
        wkb = shapely.to_wkb(table.geometry[picked])
        known = self._footprints
        footprint = np.fromiter(
            (known.setdefault(w, len(known)) for w in wkb), dtype=np.int64, count=len(wkb)
        )
        records = table.records
        text = [records[int(r)] for r in picked]
        first = self.rows + self._buffered
        part = (
            pa.table(
                {
                    "item_row": np.arange(first, first + len(picked)),
                    "item_id": pa.array(table.ids[picked], type=pa.string()),
                    "record": pa.array(text, type=pa.string()),
                    "modality": pa.array(np.full(len(picked), name, dtype=object), pa.string()),
                    "collection": pa.array(table.collection[picked], pa.string()),
                    "datetime_ns": table.datetime_ns[picked],
                    "epsg": table.epsg[picked],
                    "cloud": table.cloud[picked],
                    "footprint": footprint,
                }
            )
            .cast(_STORE_SCHEMA)
            .replace_schema_metadata({_GROUP_KEY: str(self.group_size)})
        )
        self._buffer.append(part)
        self._buffered += len(part)
        self._flush(final=False)

    def _flush(self, final: bool) -> None:
        whole = (self._buffered // self.group_size) * self.group_size
        size = self._buffered if final else whole
        if not size:
            return
        merged = pa.concat_tables(self._buffer).combine_chunks()
        self._writer.write_table(merged.slice(0, size), row_group_size=self.group_size)
        rest = merged.slice(size)
        self._buffer, self._buffered = ([rest.combine_chunks()] if len(rest) else []), len(rest)
        self.rows += size
        pa.default_memory_pool().release_unused()  # else the pool keeps ~1 GB per 500k items

    def close(self) -> Path:
        self._flush(final=True)
        self._writer.close()
        wkb = list(self._footprints)
        pq.write_table(
            pa.table({"footprint": np.arange(len(wkb)), "wkb": pa.array(wkb, type=pa.binary())}),
            self.directory / FOOTPRINTS_FILE,
        )
        return self.directory


def read_item_tables(directory: str | Path, names: Sequence[str]) -> dict[str, ItemTable]:
    """The planning columns of a stored item table, one ItemTable per modality in
    `names` (empty where none was stored); records stay on disk (`StoredRecords`)."""
    root = Path(directory)
    path = root / ITEMS_FILE
    shapes = pq.read_table(root / FOOTPRINTS_FILE)
    order = np.argsort(shapes.column("footprint").to_numpy())
    polygons = shapely.from_wkb(shapes.column("wkb").to_numpy(zero_copy_only=False)[order])
    columns = ["item_row", "item_id", "modality", "collection", "datetime_ns", "epsg", "cloud",
               "footprint"]  # fmt: skip
    data = pq.read_table(path, columns=columns)
    modality = pc.dictionary_encode(data.column("modality")).combine_chunks()
    codes = modality.indices.to_numpy(zero_copy_only=False)
    labels = modality.dictionary.to_pylist()
    collection = pc.dictionary_encode(data.column("collection")).combine_chunks()
    collection_names = np.array(collection.dictionary.to_pylist(), dtype=object)
    collection_codes = collection.indices.to_numpy(zero_copy_only=False)
    unknown = sorted(set(labels) - set(names))
    if unknown:
        raise ValueError(f"item store {root} holds modalities {unknown} the plan does not name")
    out = {}
    for name in names:
        chosen = np.flatnonzero(codes == labels.index(name)) if name in labels else np.zeros(0, int)
        footprint = data.column("footprint").to_numpy()[chosen]
        out[name] = ItemTable(
            ids=data.column("item_id").take(chosen).to_numpy(zero_copy_only=False),
            collection=collection_names[collection_codes[chosen]],
            datetime_ns=data.column("datetime_ns").to_numpy()[chosen],
            epsg=data.column("epsg").to_numpy()[chosen],
            cloud=data.column("cloud").to_numpy()[chosen],
            geometry=polygons[footprint],
            records=StoredRecords(path, data.column("item_row").to_numpy()[chosen]),
            footprint=footprint,
        )
    return out
