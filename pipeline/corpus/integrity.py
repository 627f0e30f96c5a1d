"""Which shard files a corpus must have, and which it lacks: damage said out loud.

zarr reads a shard file that is not there as the fill value, so a deleted shard of a
done sample reads as a tile of zeros and nothing downstream can tell. Since format 2
(`schema.FORMAT_VERSION`) every array of a written shard is a complete object, so the
rule is exact: a shard that holds any written sample (a non-pending state) must have
the file of every per-sample array. `write_shard` writes the states last, so the files
of a write that was cut off are not damage: that shard's samples read as pending, and
the next build rewrites it whole (`tests/integrity`). A format-1 store skipped fill-valued shards, so there only a data
shard whose done samples have valid pixels is known to be required (a lost all-zero
OpenStreetMap shard of a format-1 store cannot be told from one never written).

The check lists each array's keys once (one listing per array, not one request per
shard) and reads only the state arrays, so `terracube status` can afford it on every
call; decoding the bytes is `validate`'s job. `Damage` names the shard file, the samples
it holds and what to run, and `terracube repair` rebuilds exactly the shards named.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import zarr
from terracube.catalog.registry import band_group
from terracube.pipeline.corpus.schema import (
    COMPLETE_SHARDS_SINCE,
    SAMPLE_DIM,
    CorpusError,
    CorpusParams,
    SampleState,
    plan_arrays,
)
from terracube.pipeline.corpus.shard_whole import read_array
from terracube.pipeline.corpus.store import Corpus, SampleData
from terracube.pipeline.corpus.zarr_adapter import run_sync

REPAIR_HINT = "run `terracube repair CONFIG` to rebuild it"


@dataclass(frozen=True)
class Damage:
    """One shard file of one array that is missing or cannot be decoded."""

    array: str
    shard: int
    path: str
    """The shard file's key inside the store (`s2_10m/c/3/0/0/0/0`)."""
    samples: range
    reason: str

    def __str__(self) -> str:
        if not self.samples:
            return f"{self.path}: {self.reason}; {REPAIR_HINT}"
        last = self.samples.stop - 1
        return f"{self.path}: {self.reason} (samples {self.samples.start}..{last}); {REPAIR_HINT}"


def shard_key(arr: zarr.Array, shard: int) -> str:
    """The key of shard `shard` (along the sample axis) of `arr`, relative to its array."""
    return arr.metadata.encode_chunk_key((shard,) + (0,) * (arr.ndim - 1))


_MARK = 987654321


def shard_keys(arr: zarr.Array, n: int) -> list[str]:
    """`shard_key` of shards 0..n-1, from one encoded key: zarr's encoder costs ~5 us a
    call, and status asks for every shard of ~30 arrays (950k calls at 100k samples)."""
    template = shard_key(arr, _MARK)
    if template.count(str(_MARK)) != 1:  # pragma: no cover (an encoding without the index)
        return [shard_key(arr, i) for i in range(n)]
    head, tail = template.split(str(_MARK))
    return [f"{head}{i}{tail}" for i in range(n)]


async def _keys(store: object, prefix: str) -> set[str]:
    return {key async for key in store.list_prefix(prefix)}  # type: ignore[attr-defined]


def stored_keys(root: zarr.Group, name: str) -> set[str]:
    """Every key under array `name` (one listing), relative to the array."""
    prefix = f"{name}/"
    return {k[len(prefix) :] for k in run_sync(_keys(root.store, prefix))}


def _spans(params: CorpusParams) -> list[range]:
    k = params.samples_per_shard
    return [range(s, min(s + k, params.n_samples)) for s in range(0, params.n_samples, k)]


def missing_shards(
    root: zarr.Group,
    params: CorpusParams,
    version: int,
    states: Mapping[str, np.ndarray],
    valid_fraction: Mapping[str, np.ndarray] | None = None,
) -> list[Damage]:
    """Shard files the store must have and does not (empty list: none missing).

    `states`: modality -> state codes of every sample (an array that cannot be read
    is simply absent here). `valid_fraction` (group -> per-sample fractions) is only
    needed for format-1 stores."""
    spans = _spans(params)
    per_sample = [s for s in plan_arrays(params) if s.dims and s.dims[0] == SAMPLE_DIM]
    arrays: dict[str, zarr.Array] = {}
    for spec in per_sample:
        node = root.get(spec.name)
        if isinstance(node, zarr.Array):
            arrays[spec.name] = node
    present: dict[str, np.ndarray] = {}
    for name, arr in arrays.items():
        keys = stored_keys(root, name)
        present[name] = np.fromiter(
            (key in keys for key in shard_keys(arr, len(spans))), dtype=bool, count=len(spans)
        )
    if version >= COMPLETE_SHARDS_SINCE:
        # written = some sample of the shard has a non-pending state. `write_shard` writes
        # the states last, so the files of a shard whose write was cut off (or is under
        # way) are not damage: its samples are pending and the next build rewrites it.
        written = np.zeros(len(spans), dtype=bool)
        for codes in states.values():
            written |= _per_shard_any(codes != int(SampleState.PENDING), spans)
        required = {name: written for name in arrays}
    else:
        required = _format1_required(params, spans, states, valid_fraction or {})
    found = []
    for name, need in required.items():
        if name not in arrays:
            continue
        arr = arrays[name]
        for i in np.flatnonzero(need & np.logical_not(present[name])):
            found.append(
                Damage(
                    name,
                    int(i),
                    f"{name}/{shard_key(arr, int(i))}",
                    spans[i],
                    "shard file is missing, so its samples would read as fill values",
                )
            )
    return found


def _per_shard_any(flags: np.ndarray, spans: Sequence[range]) -> np.ndarray:
    return np.array([bool(flags[s.start : s.stop].any()) for s in spans], dtype=bool)


def _format1_required(
    params: CorpusParams,
    spans: Sequence[range],
    states: Mapping[str, np.ndarray],
    valid_fraction: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Format 1: the data shards that hold a done sample with valid pixels."""
    required = {}
    for g in params.groups:
        codes, fraction = states.get(band_group(g).modality), valid_fraction.get(g)
        if codes is None or fraction is None:
            continue
        valid = fraction.reshape(len(codes), -1).max(axis=1) > 0
        required[g] = _per_shard_any((codes == int(SampleState.DONE)) & valid, spans)
    return required


def corpus_damage(corpus: Corpus) -> list[Damage]:
    """Missing shard files (`integrity.missing_shards`) and per-sample arrays status reads
    that cannot be decoded; the band data itself is decoded by `terracube validate` only."""
    return damage_and_arrays(corpus)[0]


def damage_and_arrays(
    corpus: Corpus,
) -> tuple[list[Damage], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """`corpus_damage`, plus the state codes (per modality) and valid fractions (per
    group) it read on the way: `terracube status` needs them too and reads them once."""
    p = corpus.params
    damage: list[Damage] = []
    states: dict[str, np.ndarray] = {}
    fractions: dict[str, np.ndarray] = {}
    names = [(f"{m}_state", states, m) for m in p.modalities]
    names += [(f"{g}_valid_fraction", fractions, g) for g in p.groups]
    for array, into, key in names:
        if array not in corpus.group:
            damage.append(Damage(array, -1, array, range(0), "array is missing"))
            continue
        try:
            into[key] = read_array(corpus.array(array))
        except Exception as exc:
            damage += _undecodable(corpus, array, exc)
    damage += missing_shards(corpus.group, p, corpus.format_version, states, fractions)
    return damage, states, fractions


def _undecodable(corpus: Corpus, name: str, exc: Exception) -> list[Damage]:
    """Each shard of array `name` that fails to decode (found by reading shard by shard)."""
    arr = corpus.array(name)
    found = []
    for shard, span in enumerate(corpus.shards):
        try:
            arr[span.start : span.stop]
        except Exception as err:
            found.append(
                Damage(
                    name,
                    shard,
                    f"{name}/{shard_key(arr, shard)}",
                    span,
                    f"cannot be decoded ({type(err).__name__}: {str(err)[:200]})",
                )
            )
    return found or [Damage(name, -1, name, range(0), f"cannot be read ({exc})")]


def checked_record(corpus: Corpus, sample: int) -> SampleData:
    """`corpus.read_record(sample)`, refusing what it would misread: a sample whose shard
    files are missing (they would read as fill values) or cannot be decoded raises
    `CorpusError` naming the file and the fix, instead of zarr's bare codec message."""
    shard = corpus.shard_of(sample)
    lost = [d for d in corpus_damage(corpus) if d.shard == shard]
    if lost:
        raise CorpusError(f"sample {sample} of {corpus.url}: {lost[0]}")
    try:
        return corpus.read_record(sample)
    except Exception as exc:
        for spec in corpus.specs:
            if spec.role == "coord":
                continue
            arr = corpus.array(spec.name)
            try:
                arr[sample]
            except Exception as err:
                path = f"{spec.name}/{shard_key(arr, shard)}"
                raise CorpusError(
                    f"sample {sample} of {corpus.url}: {path} cannot be decoded "
                    f"({type(err).__name__}: {str(err)[:200]}); {REPAIR_HINT}"
                ) from None
        raise CorpusError(f"sample {sample} of {corpus.url} cannot be read ({exc})") from None


def readable_states(corpus: Corpus, purpose: str) -> dict[str, np.ndarray]:
    """Every modality's state codes; when a state shard cannot be decoded, `CorpusError`
    naming the file, why `purpose` needs it, and the fix (a bare codec error before)."""
    try:
        return {m: corpus.states(m) for m in corpus.params.modalities}
    except (KeyError, IndexError):
        raise
    except Exception as exc:
        damage = [d for d in corpus_damage(corpus) if d.array.endswith("_state")]
        where = str(damage[0]) if damage else f"a state array cannot be read ({exc})"
        raise CorpusError(f"{corpus.url}: {where} — {purpose} needs every sample's state") from None
