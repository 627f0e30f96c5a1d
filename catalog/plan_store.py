"""The saved plan (format 2): columnar files a build task reads a slice of.

Format 1 kept every item's record beside one geometry per item and read the whole
plan back on every resume: 35 s and 1.7 GB per 1k worldwide tiles. Format 2:

- `samples.parquet`: one row per sample, row groups of `SAMPLES_PER_GROUP` samples;
- `assignments.parquet`: the ranked candidates, sample order, row groups aligned to
  the same sample groups, each row naming its item by `item_row`;
- `items.parquet`: every assigned item once, numbered in order of first use (so the
  items of neighbouring samples sit in the same row groups), row groups of exactly
  `ITEMS_PER_GROUP` items: the group of item row r is r // ITEMS_PER_GROUP;
- `availability.parquet`: one row per (sample, modality, period), candidate counts;
- `plan.json`: format version, time scheme, search costs, counts.

A build task is told only the plan's location and its sample range (`PlanFiles`):
it reads the row groups of its samples and of the items they name, nothing else.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import shutil
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from terracube.catalog import plan_items
from terracube.catalog.plan_items import ItemTable
from terracube.catalog.stac.item_records import item_from_record
from terracube.catalog.stac.items import NormalizedItem
from terracube.catalog.timescheme import TimeScheme

PLAN_FORMAT_VERSION = 2
SAMPLES_PER_GROUP = 256
ITEMS_PER_GROUP = plan_items.ITEMS_PER_GROUP
_CACHED_ITEM_GROUPS = 32
_KEY = 1 << 40
"""modality position * _KEY + item row: one integer per (modality, item)."""

_ASSIGNMENTS = pa.schema(
    [
        ("sample_index", pa.int64()),
        ("tile_id", pa.string()),
        ("modality", pa.string()),
        ("period", pa.int64()),
        ("rank", pa.int64()),
        ("item_id", pa.string()),
        ("collection", pa.string()),
        ("datetime", pa.timestamp("ns", tz="UTC")),
        ("cloud_cover", pa.float64()),
        ("coverage", pa.float64()),
        ("item_row", pa.int64()),
    ]
)
_AVAILABILITY = pa.schema(
    [
        ("sample_index", pa.int64()),
        ("tile_id", pa.string()),
        ("modality", pa.string()),
        ("period", pa.int64()),
        ("candidates", pa.int64()),
        ("other_crs_dropped", pa.int64()),
        ("has_data", pa.bool_()),
    ]
)
_ITEMS = pa.schema([("item_row", pa.int64()), ("item_id", pa.string()), ("record", pa.string())])


class PlanFormatError(ValueError):
    """A plan folder this code cannot read (missing, or another format version)."""


class PlanWriter:
    """Writes a plan chunk by chunk (sample order), so no more than one chunk of rows and
    one row group of item records is ever held; `close` writes the samples and plan.json."""

    def __init__(
        self, directory: str | Path, names: Sequence[str], tables: Mapping[str, ItemTable]
    ):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.names = list(names)
        self.tables = tables
        self._numbers = {n: np.full(len(tables[n]), -1, dtype=np.int64) for n in self.names}
        self._next_row = 0
        self._pending: list[tuple[str, int]] = []
        self._assignments = pq.ParquetWriter(self.directory / "assignments.parquet", _ASSIGNMENTS)
        self._availability = pq.ParquetWriter(
            self.directory / "availability.parquet", _AVAILABILITY
        )
        stored = [tables[n].store_rows for n in self.names]
        self._stored = bool(self.names) and all(rows is not None for rows in stored)
        """Every table was read from one item store: its file is the plan's items, item
        rows are its rows, and nothing is written again."""
        self._items = (
            None if self._stored else pq.ParquetWriter(self.directory / "items.parquet", _ITEMS)
        )
        self.rows = 0

    def add(
        self, tile_ids: np.ndarray, rows: Mapping[str, np.ndarray], avail: Mapping[str, np.ndarray]
    ) -> None:
        """One chunk's columns (`plan_engine.chunk_columns`); `tile_ids` of all samples."""
        item_row = self._number(rows["modality"], rows["item"])
        name_of = np.array(self.names, dtype=object)
        ids, collections, times, clouds = (np.empty(len(item_row), dtype=t)
                                           for t in (object, object, np.int64, float))  # fmt: skip
        for position, name in enumerate(self.names):
            chosen = rows["modality"] == position
            table, picked = self.tables[name], rows["item"][chosen]
            ids[chosen], collections[chosen] = table.ids[picked], table.collection[picked]
            times[chosen], clouds[chosen] = table.datetime_ns[picked], table.cloud[picked]
        columns = {
            "sample_index": rows["sample"],
            "tile_id": tile_ids[rows["sample"]],
            "modality": name_of[rows["modality"]] if self.names else [],
            "period": rows["period"],
            "rank": rows["rank"],
            "item_id": ids,
            "collection": collections,
            "datetime": pa.array(times, type=pa.timestamp("ns", tz="UTC")),
            "cloud_cover": pa.array(clouds, mask=np.isnan(clouds)),
            "coverage": rows["coverage"],
            "item_row": item_row,
        }
        table = pa.table(columns, schema=_ASSIGNMENTS)
        for piece in _by_sample_group(table, rows["sample"]):
            self._assignments.write_table(piece)
        self.rows += len(table)
        available = pa.table(
            {
                "sample_index": avail["sample"],
                "tile_id": tile_ids[avail["sample"]],
                "modality": name_of[avail["modality"]] if self.names else [],
                "period": avail["period"],
                "candidates": avail["candidates"],
                "other_crs_dropped": avail["other_crs_dropped"],
                "has_data": avail["candidates"] > 0,
            },
            schema=_AVAILABILITY,
        )
        self._availability.write_table(available)
        self._flush_items(final=False)

    def _number(self, modality: np.ndarray, item: np.ndarray) -> np.ndarray:
        """Item rows in order of first use; items used for the first time are queued for
        items.parquet. With an item store, its rows."""
        if self._stored:
            out = np.empty(len(item), dtype=np.int64)
            for position, name in enumerate(self.names):
                chosen = modality == position
                out[chosen] = self.tables[name].store_rows[item[chosen]]  # type: ignore[index]
            return out
        out = self._known(modality, item)
        fresh = np.flatnonzero(out < 0)
        if not len(fresh):
            return out
        keys = modality[fresh] * _KEY + item[fresh]
        unique, first = np.unique(keys, return_index=True)
        unique = unique[np.argsort(first, kind="stable")]
        positions, rows = np.divmod(unique, _KEY)
        numbers = np.arange(self._next_row, self._next_row + len(unique))
        for position, name in enumerate(self.names):
            chosen = positions == position
            self._numbers[name][rows[chosen]] = numbers[chosen]
        self._pending.extend(zip([self.names[p] for p in positions], rows.tolist(), strict=True))
        self._next_row += len(unique)
        return self._known(modality, item)

    def _known(self, modality: np.ndarray, item: np.ndarray) -> np.ndarray:
        out = np.empty(len(item), dtype=np.int64)
        for position, name in enumerate(self.names):
            chosen = modality == position
            out[chosen] = self._numbers[name][item[chosen]]
        return out

    def _flush_items(self, final: bool) -> None:
        if self._items is None:
            return
        while len(self._pending) >= ITEMS_PER_GROUP or (final and self._pending):
            group, self._pending = self._pending[:ITEMS_PER_GROUP], self._pending[ITEMS_PER_GROUP:]
            first = self._next_row - len(self._pending) - len(group)
            rows = np.arange(first, first + len(group))
            ids = [self.tables[n].ids[r] for n, r in group]
            records = [self.tables[n].records[r] for n, r in group]
            self._items.write_table(
                pa.table({"item_row": rows, "item_id": ids, "record": records}, schema=_ITEMS)
            )

    def close(
        self, samples: gpd.GeoDataFrame, scheme: TimeScheme, search: Mapping[str, Any]
    ) -> Path:
        self._flush_items(final=True)
        for writer in (self._assignments, self._availability, self._items):
            if writer is not None:
                writer.close()
        items = self._next_row
        if self._stored:
            items = self._place_store()
        samples.to_parquet(self.directory / "samples.parquet", row_group_size=SAMPLES_PER_GROUP)
        meta = {
            "format_version": PLAN_FORMAT_VERSION,
            "scheme": scheme.to_dict(),
            "search": dict(search),
            "samples": len(samples),
            "assignments": self.rows,
            "items": items,
            "modalities": self.names,
            "items_per_group": self._group_size(),
            "plan_id": uuid.uuid4().hex,
        }
        (self.directory / "plan.json").write_text(json.dumps(meta, indent=2, default=str))
        return self.directory

    def _group_size(self) -> int:
        if not self._stored:
            return ITEMS_PER_GROUP
        return int(next(iter(self.tables.values())).records.group_size)

    def _place_store(self) -> int:
        """The item store's file becomes the plan's items.parquet: hard-linked when on
        the same file system (the bytes are kept once), else copied."""
        source = next(iter(self.tables.values())).records.path
        target = self.directory / "items.parquet"
        if source.resolve() != target.resolve():
            target.unlink(missing_ok=True)
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)
        return int(pq.ParquetFile(target).metadata.num_rows)


def _by_sample_group(table: pa.Table, samples: np.ndarray) -> list[pa.Table]:
    """Slices of `table` (sorted by sample) at every SAMPLES_PER_GROUP boundary."""
    if not len(samples):
        return [table]
    groups = samples // SAMPLES_PER_GROUP
    cuts = np.flatnonzero(np.diff(groups)) + 1
    edges = [0, *cuts.tolist(), len(samples)]
    return [table.slice(a, b - a) for a, b in itertools.pairwise(edges)]


def read_meta(
    directory: str | Path, storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    fs, root = _filesystem(str(directory), storage_options)
    path = f"{root}/plan.json"
    if not fs.isfile(path):
        raise FileNotFoundError(
            f"{directory} is not a plan directory (no plan.json); write one with Plan.to_parquet"
        )
    with fs.open(path, "rb") as handle:
        meta: dict[str, Any] = json.loads(handle.read())
    if meta.get("format_version") != PLAN_FORMAT_VERSION:
        raise PlanFormatError(
            f"plan {directory} has format version {meta.get('format_version')}, this code reads "
            f"{PLAN_FORMAT_VERSION}; re-run the plan"
        )
    return meta


def _filesystem(location: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    """fsspec filesystem and root path of a local folder or an object-store URL."""
    import fsspec

    if "://" not in location:
        return fsspec.filesystem("file"), str(Path(location).resolve())
    fs, root = fsspec.core.url_to_fs(location, **dict(storage_options or {}))
    return fs, str(root).rstrip("/")


def publish_plan(directory: str | Path, url: str, storage_options: Mapping[str, Any] | None) -> str:
    """Copy a plan folder to `url` (beside a remote store), so workers anywhere can read
    their rows; plan.json last, so a reader never sees a half-copied plan as whole."""
    fs, root = _filesystem(url, storage_options)
    src = Path(directory)
    names = sorted(p.name for p in src.iterdir() if p.is_file() and p.name != "plan.json")
    for name in [*names, "plan.json"]:
        fs.put_file(str(src / name), f"{root}/{name}")
    return url


class PlanFiles:
    """A saved plan, read lazily: whole tables on demand, or one sample range's rows."""

    def __init__(
        self, directory: str | Path, storage_options: Mapping[str, Any] | None = None
    ) -> None:
        self.location = str(directory)
        self.fs, self.root = _filesystem(self.location, storage_options)
        self.directory = Path(directory) if "://" not in self.location else Path(self.root)
        self.meta = read_meta(directory, storage_options)
        self.scheme = TimeScheme.from_dict(self.meta["scheme"])
        self.search: dict[str, Any] = self.meta.get("search", {})
        self._item_groups: OrderedDict[int, tuple[int, list[str], dict[int, NormalizedItem]]] = (
            OrderedDict()
        )
        self._tables: dict[str, Any] = {}

    @property
    def n_samples(self) -> int:
        return int(self.meta["samples"])

    @property
    def samples(self) -> gpd.GeoDataFrame:
        if "samples" not in self._tables:
            self._tables["samples"] = gpd.read_parquet(self.directory / "samples.parquet")
        return self._tables["samples"]

    @property
    def availability(self) -> pd.DataFrame:
        if "availability" not in self._tables:
            self._tables["availability"] = pd.read_parquet(self.directory / "availability.parquet")
        return self._tables["availability"]

    @property
    def assignments(self) -> pd.DataFrame:
        if "assignments" not in self._tables:
            table = pd.read_parquet(self.directory / "assignments.parquet")
            self._tables["assignments"] = table.drop(columns=["item_row"])
        return self._tables["assignments"]

    def all_items(self) -> dict[str, NormalizedItem]:
        table = pq.read_table(self.directory / "items.parquet", columns=["record"])
        items = (item_from_record(json.loads(r)) for r in table.column("record").to_pylist())
        return {i.id: i for i in items}

    # ------------------------------------------------------------------ one sample range

    def sample_rows(self, start: int, stop: int) -> pd.DataFrame:
        """tile_id and period_starts of samples [start, stop), indexed by sample."""
        table = _read_groups(self._parquet("samples.parquet"), start, stop, "sample_index",
                             ["sample_index", "tile_id", "period_starts"])  # fmt: skip
        return table.set_index("sample_index")

    def assignment_rows(self, start: int, stop: int) -> pd.DataFrame:
        return _read_groups(self._parquet("assignments.parquet"), start, stop, "sample_index",
                            ["sample_index", "modality", "period", "rank", "item_row"])  # fmt: skip

    def items(self, rows: np.ndarray) -> dict[int, NormalizedItem]:
        """item_row -> item, reading only the row groups that hold `rows` (a few cached)."""
        out: dict[int, NormalizedItem] = {}
        size = int(self.meta.get("items_per_group", ITEMS_PER_GROUP))
        wanted = np.unique(np.asarray(rows, dtype=np.int64))
        for group in np.unique(wanted // size):
            first, records, decoded = self._item_group(int(group))
            for row in wanted[wanted // size == group].tolist():
                item = decoded.get(row)
                if item is None:  # decoded on first use: a group holds 512 records
                    item = decoded[row] = item_from_record(json.loads(records[row - first]))
                out[row] = item
        return {int(r): out[int(r)] for r in rows}

    def _parquet(self, name: str) -> pq.ParquetFile:
        """An open Parquet file of the plan (footer read once per file and process)."""
        opened = self._tables.get(f"file:{name}")
        if opened is None:
            opened = pq.ParquetFile(self.fs.open(f"{self.root}/{name}", "rb"))
            self._tables[f"file:{name}"] = opened
        return opened

    def _item_group(self, group: int) -> tuple[int, list[str], dict[int, NormalizedItem]]:
        """(first item row, records, items decoded so far) of one row group, cached."""
        if group in self._item_groups:
            self._item_groups.move_to_end(group)
            return self._item_groups[group]
        table = self._parquet("items.parquet").read_row_group(group, columns=["item_row", "record"])
        rows = table.column("item_row").to_numpy()
        if len(rows) and not np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
            raise PlanFormatError(f"items.parquet row group {group} is not one run of item rows")
        decoded: dict[int, NormalizedItem] = {}
        entry = (int(rows[0]) if len(rows) else 0, table.column("record").to_pylist(), decoded)
        self._item_groups[group] = entry
        while len(self._item_groups) > _CACHED_ITEM_GROUPS:
            self._item_groups.popitem(last=False)
        return entry


def _read_groups(
    handle: pq.ParquetFile, start: int, stop: int, column: str, columns: Sequence[str]
) -> pd.DataFrame:
    """Rows whose `column` is in [start, stop), reading only the row groups whose
    statistics meet that range."""
    position = handle.schema_arrow.get_field_index(column)
    chosen = []
    for g in range(handle.metadata.num_row_groups):
        stats = handle.metadata.row_group(g).column(position).statistics
        if stats is None or not stats.has_min_max or (stats.min < stop and stats.max >= start):
            chosen.append(g)
    table = handle.read_row_groups(chosen, columns=list(columns)).to_pandas()
    return table[(table[column] >= start) & (table[column] < stop)].reset_index(drop=True)


@dataclass(frozen=True)
class PlanRef:
    """Where a build task finds its plan rows: a few dozen bytes instead of the items."""

    location: str
    plan_id: str
    """plan.json's id: a plan re-made at the same place is another plan."""
    storage_options: str = "{}"
    """JSON of the fsspec options (hashable, so one open plan per process is cached)."""

    @classmethod
    def of(cls, files: PlanFiles, storage_options: Mapping[str, Any] | None = None) -> PlanRef:
        options = json.dumps(dict(storage_options or {}), sort_keys=True)
        return cls(files.location, str(files.meta["plan_id"]), options)

    def open(self) -> PlanFiles:
        files = _open_cached(self)
        if files.meta.get("plan_id") != self.plan_id:
            raise PlanFormatError(
                f"the plan at {self.location} was re-made during the build (id "
                f"{files.meta.get('plan_id')}, the task expected {self.plan_id}); run the build again"
            )
        return files


@functools.lru_cache(maxsize=4)
def _open_cached(ref: PlanRef) -> PlanFiles:
    """One PlanFiles per plan and process: its open files and item groups are reused by
    every shard task the process runs."""
    return PlanFiles(ref.location, json.loads(ref.storage_options))
