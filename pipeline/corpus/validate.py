"""Check a corpus store against its planned layout, and summarise it.

`validate` reads the store without consolidated metadata (that is what a
hand edit or a crash leaves behind) and compares it with `plan_arrays` of the
store's own creation parameters. Each problem names the array or shard file
and says in plain words what is wrong, for `terracube validate`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import zarr
from terracube.catalog.registry import band_group
from terracube.pipeline.corpus.integrity import REPAIR_HINT, missing_shards
from terracube.pipeline.corpus.schema import (
    DAYS_FILL,
    SUPPORTED_FORMAT_VERSIONS,
    ArraySpec,
    CorpusParams,
    SampleState,
    group_facts,
    modality_facts,
    plan_arrays,
)
from terracube.pipeline.corpus.store import Corpus, epsg_is_known, open_store


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a corpus: where (array, shard file or attribute) and what."""

    path: str
    message: str
    shard: int | None = None
    """The damaged shard (missing or undecodable file) that `terracube repair` rebuilds;
    None for what a rebuild of shards cannot fix (attributes, array metadata)."""

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


VERSION_KEY = "terracube_format_version"


def _normalise(value: Any) -> Any:
    """Compare attrs as JSON would store them (tuples become lists, floats stay floats)."""
    return json.loads(json.dumps(value))


def _open_root(url: str, storage_options: Mapping[str, Any] | None) -> zarr.Group | Problem:
    store = open_store(url, storage_options, read_only=True)
    try:
        return zarr.open_group(store, mode="r", zarr_format=3, use_consolidated=False)
    except Exception as exc:
        return Problem("zarr.json", f"not a readable zarr v3 group ({type(exc).__name__}: {exc})")


def _check_root(root: zarr.Group) -> tuple[CorpusParams | None, list[Problem]]:
    problems: list[Problem] = []
    attrs: dict[str, Any] = dict(root.attrs)  # any JSON: every use below checks its shape
    version = attrs.get(VERSION_KEY)
    if version is None:
        problems.append(
            Problem(
                "zarr.json",
                "attribute terracube_format_version is missing; this is not a terracube corpus",
            )
        )
    elif version not in SUPPORTED_FORMAT_VERSIONS:
        problems.append(
            Problem(
                "zarr.json",
                f"terracube_format_version={version!r} is not supported (supported: "
                f"{sorted(SUPPORTED_FORMAT_VERSIONS)}); upgrade terracube or rebuild the corpus",
            )
        )
    try:
        params = CorpusParams.from_attrs(dict(attrs["terracube:params"]))
    except (KeyError, TypeError, ValueError) as exc:
        problems.append(Problem("zarr.json", f"terracube:params missing or invalid ({exc})"))
        return None, problems
    stored_groups = attrs.get("terracube:groups", {})
    for g in params.groups:
        if _normalise(stored_groups.get(g)) != _normalise(group_facts(band_group(g))):
            problems.append(
                Problem("zarr.json", f"terracube:groups[{g!r}] differs from the modality registry")
            )
    stored_modalities = attrs.get("terracube:modalities", {})
    for m in params.modalities:
        if _normalise(stored_modalities.get(m)) != _normalise(modality_facts(m)):
            problems.append(
                Problem(
                    "zarr.json", f"terracube:modalities[{m!r}] differs from the modality registry"
                )
            )
    return params, problems


def _dtype_name(arr: zarr.Array) -> str:
    meta = arr.metadata
    assert meta.zarr_format == 3  # `_open_root` opens a v3 group: its arrays are v3
    name = meta.data_type.to_json(zarr_format=3)
    return name if isinstance(name, str) else str(name.get("name", name))


def _same_fill(a: Any, b: Any) -> bool:
    if isinstance(b, float) and np.isnan(b):
        return isinstance(a, float | np.floating) and bool(np.isnan(a))
    return bool(a == b)


def _check_array(root: zarr.Group, spec: ArraySpec) -> tuple[zarr.Array | None, list[Problem]]:
    try:
        node = root[spec.name]
    except KeyError:
        return None, [
            Problem(spec.name, "array is missing; the corpus is incomplete (re-create it)")
        ]
    if not isinstance(node, zarr.Array):
        return None, [Problem(spec.name, "is a group, expected an array")]
    wrong: list[str] = []
    meta = node.metadata
    assert meta.zarr_format == 3  # `_open_root` opens a v3 group: its arrays are v3
    checks = {
        "dims": (tuple(meta.dimension_names or ()), spec.dims),
        "dtype": (_dtype_name(node), spec.dtype),
        "shape": (tuple(node.shape), spec.shape),
        "shards": (node.shards, spec.shards),
        "chunks": (tuple(node.chunks), spec.chunks),
    }
    for what, (have, want) in checks.items():
        if have != want:
            wrong.append(f"{what} is {have}, expected {want}")
    if not _same_fill(node.fill_value, spec.fill_value) and "dtype" not in " ".join(wrong):
        wrong.append(f"fill_value is {node.fill_value!r}, expected {spec.fill_value!r}")
    if spec.role == "data":
        facts = node.attrs.get("terracube:facts")
        if _normalise(facts) != _normalise(spec.attrs["terracube:facts"]):
            wrong.append("attribute terracube:facts differs from the modality registry")
    return node, [Problem(spec.name, w) for w in wrong]


def _shard_path(arr: zarr.Array, name: str, shard: int) -> str:
    key = arr.metadata.encode_chunk_key((shard,) + (0,) * (arr.ndim - 1))
    return f"{name}/{key}"


def _check_values(
    arrays: dict[str, zarr.Array], params: CorpusParams, read_data: bool
) -> list[Problem]:
    """Read every shard; check codes, ranges and that written samples are georeferenced."""
    problems: list[Problem] = []
    k = params.samples_per_shard
    for shard, start in enumerate(range(0, params.n_samples, k)):
        span = slice(start, min(start + k, params.n_samples))
        values: dict[str, np.ndarray] = {}
        for name, arr in arrays.items():
            meta = arr.metadata
            assert meta.zarr_format == 3  # `_open_root` opens a v3 group: its arrays are v3
            if arr.ndim and meta.dimension_names and meta.dimension_names[0] != "sample":
                continue
            if not read_data and name in params.groups:
                continue
            try:
                values[name] = np.asarray(arr[span])
            except Exception as exc:
                problems.append(
                    Problem(
                        _shard_path(arr, name, shard),
                        f"cannot be decoded ({type(exc).__name__}: {exc}) (samples "
                        f"{span.start}..{span.stop - 1}); {REPAIR_HINT}",
                        shard,
                    )
                )
        written = np.zeros(span.stop - span.start, dtype=bool)
        for m in params.modalities:
            codes = values.get(f"{m}_state")
            if codes is None:
                continue
            bad = ~np.isin(codes, [int(s) for s in SampleState])
            for i in np.flatnonzero(bad):
                problems.append(
                    Problem(
                        f"{m}_state",
                        f"sample {start + i} has state code {int(codes[i])}; valid codes are "
                        + ", ".join(f"{int(s)}={s.name.lower()}" for s in SampleState),
                        shard,
                    )
                )
            written |= codes != int(SampleState.PENDING)
        for g in params.groups:
            vf = values.get(f"{g}_valid_fraction")
            if vf is None:
                continue
            bad_rows = ~np.all((vf >= 0) & (vf <= 1), axis=tuple(range(1, vf.ndim)))
            for i in np.flatnonzero(bad_rows):
                problems.append(
                    Problem(
                        f"{g}_valid_fraction",
                        f"sample {start + i} has values outside [0, 1]: {vf[i]}",
                        shard,
                    )
                )
        for i in np.flatnonzero(written):
            found = _check_index_row(values, start + int(i), int(i))
            problems += [dataclasses.replace(p, shard=shard) for p in found]
    return problems


def _check_index_row(values: dict[str, np.ndarray], sample: int, i: int) -> list[Problem]:
    """A sample with any non-pending state must carry a complete index row."""
    found: list[Problem] = []
    if "tile_id" in values and not str(values["tile_id"][i]):
        found.append(Problem("tile_id", f"sample {sample} is written but has an empty tile_id"))
    if "epsg" in values and not epsg_is_known(int(values["epsg"][i])):
        found.append(
            Problem(
                "epsg",
                f"sample {sample} is written but epsg={int(values['epsg'][i])} is not a known EPSG code",
            )
        )
    for name in ("x0", "y0", "center_lon", "center_lat"):
        if name in values and not np.isfinite(values[name][i]):
            found.append(Problem(name, f"sample {sample} is written but {name} is not finite"))
    if "period_start" in values and np.any(values["period_start"][i] == DAYS_FILL):
        found.append(
            Problem("period_start", f"sample {sample} is written but has missing period starts")
        )
    return found


def validate(
    url: str | os.PathLike[str],
    storage_options: Mapping[str, Any] | None = None,
    read_data: bool = True,
) -> list[Problem]:
    """Every problem found in the corpus at `url`; an empty list means it is valid.

    `read_data=False` skips decoding the band-group shards (the bulk of the
    bytes) but still reads every index, quality and state shard.
    """
    root = _open_root(os.fspath(url), storage_options)
    if isinstance(root, Problem):
        return [root]
    params, problems = _check_root(root)
    if params is None:
        return problems
    arrays: dict[str, zarr.Array] = {}
    for spec in plan_arrays(params):
        arr, found = _check_array(root, spec)
        problems += found
        if arr is not None and not found:
            arrays[spec.name] = arr
        if arr is not None and spec.role == "coord":
            names = [str(v) for v in np.asarray(arr[:])]
            expected = list(band_group(spec.name.removeprefix("band_")).band_names)
            if names != expected:
                problems.append(
                    Problem(spec.name, f"band names are {names}, the registry has {expected}")
                )
    problems += _check_values(arrays, params, read_data)
    version = root.attrs.get(VERSION_KEY)
    if version in SUPPORTED_FORMAT_VERSIONS:
        problems += _check_presence(root, params, int(cast(int, version)))
    return problems


def _readable(root: zarr.Group, name: str) -> np.ndarray | None:
    """The whole per-sample array `name`, or None when it cannot be read (already reported
    shard by shard by `_check_values`)."""
    try:
        return np.asarray(root[name][:])  # type: ignore[index]
    except Exception:
        return None


def _check_presence(root: zarr.Group, params: CorpusParams, version: int) -> list[Problem]:
    """Shard files a written sample needs that are not in the store (`integrity`)."""
    states = {m: _readable(root, f"{m}_state") for m in params.modalities}
    fractions = {g: _readable(root, f"{g}_valid_fraction") for g in params.groups}
    damage = missing_shards(
        root,
        params,
        version,
        {m: v for m, v in states.items() if v is not None},
        {g: v for g, v in fractions.items() if v is not None},
    )
    return [Problem(d.path, str(d).removeprefix(f"{d.path}: "), d.shard) for d in damage]


def describe(
    url: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A JSON-able summary for `terracube status`: layout, sizes and counts per modality/state."""
    corpus = Corpus.open(url, storage_options)
    p = corpus.params
    states = {
        m: {s.name.lower(): int(np.count_nonzero(corpus.states(m) == int(s))) for s in SampleState}
        for m in p.modalities
    }
    all_done = np.ones(p.n_samples, dtype=bool)
    for m in p.modalities:
        all_done &= corpus.states(m) == int(SampleState.DONE)
    groups = {}
    stored = 0
    raw = 0
    for spec in corpus.specs:
        arr = corpus.array(spec.name)
        nbytes = int(arr.nbytes_stored())
        stored += nbytes
        raw += int(arr.nbytes) if spec.dtype != "string" else 0
        if spec.role == "data":
            g = band_group(spec.name)
            groups[spec.name] = {
                "modality": g.modality,
                "resolution": g.resolution,
                "bands": list(g.band_names),
                "dtype": g.dtype,
                "shape": list(spec.shape),
                "stored_bytes": nbytes,
            }
    return {
        "url": corpus.url,
        "format_version": corpus.format_version,
        "n_samples": p.n_samples,
        "n_periods": p.n_periods,
        "period": p.period,
        "samples_per_shard": p.samples_per_shard,
        "n_shards": p.n_shards,
        "groups": groups,
        "states": states,
        "samples_all_done": int(all_done.sum()),
        "stored_bytes": stored,
        "uncompressed_bytes": raw,
    }
