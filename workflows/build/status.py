"""`terracube status`: what a corpus holds, read from the store alone (local or s3://).

Counts come from the per-(sample, modality) state arrays; coverage per period is the
fraction of `done` samples of a temporal modality with any valid pixel in that
period (from the `<group>_valid_fraction` arrays); failure reasons are the stored
`<modality>_error` texts of failed samples, grouped. No run folder is needed, so the
status of a corpus on object storage is exactly as complete as a local one.

A corpus is `complete` only when nothing is pending and no shard file a written sample
needs is missing or, among the arrays status reads, undecodable (`integrity`): a
deleted shard of a done sample used to read as zeros and still count as done. The
listing costs one request per array, whatever the corpus size.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import IO, Any

import numpy as np
from terracube.catalog.registry import MODALITIES
from terracube.pipeline.corpus.integrity import damage_and_arrays
from terracube.pipeline.corpus.schema import DAYS_FILL
from terracube.pipeline.corpus.shard_whole import read_array
from terracube.pipeline.corpus.store import Corpus, SampleState
from terracube.workflows.build.failures import split_error, top_reasons


def corpus_status(
    url: str, storage_options: Mapping[str, Any] | None = None, top: int = 5
) -> dict[str, Any]:
    """A JSON-able status: counts per modality and state, coverage per period, top failures."""
    corpus = Corpus.open(url, storage_options)
    p = corpus.params
    counts: dict[str, dict[str, int]] = {}
    coverage: dict[str, list[float | None]] = {}
    failed: list[tuple[str, str, str]] = []
    damage, all_states, fractions = damage_and_arrays(corpus)  # each array read once
    unreadable = {d.array for d in damage if d.reason.startswith("cannot")}
    for name in p.modalities:
        if f"{name}_state" in unreadable or name not in all_states:
            continue
        states = all_states[name]
        counts[name] = {
            s.name.lower(): int(np.count_nonzero(states == int(s))) for s in SampleState
        }
        if states.size and (states == SampleState.FAILED).any():
            errors = np.asarray(corpus.array(f"{name}_error")[:])
            for text in errors[states == SampleState.FAILED]:
                error_class, message = split_error(str(text))
                failed.append((name, error_class, message))
        if MODALITIES[name].temporal and not any(
            f"{g.name}_valid_fraction" in unreadable for g in MODALITIES[name].groups
        ):
            coverage[name] = _period_coverage(corpus, name, states, fractions)
    return {
        "url": corpus.url,
        "samples": p.n_samples,
        "periods": p.n_periods,
        "shards": p.n_shards,
        "period_starts": _typical_period_starts(corpus),
        "states": counts,
        "coverage": coverage,
        "top_failures": top_reasons(failed, top),
        "damaged": [
            {
                "path": d.path,
                "shard": d.shard,
                "samples": [d.samples.start, d.samples.stop - 1] if d.samples else [],
                "reason": d.reason,
            }
            for d in damage
        ],
        "complete": not damage
        and len(counts) == len(p.modalities)
        and all(c["pending"] == 0 for c in counts.values()),
    }


def _period_coverage(
    corpus: Corpus, name: str, states: np.ndarray, fractions: Mapping[str, np.ndarray]
) -> list[float | None]:
    """Per period: share of done samples with any valid pixel (None when nothing is done).
    `fractions`: group -> valid fractions already read (read here when absent)."""
    done = states == SampleState.DONE
    if not done.any():
        return [None] * corpus.n_periods
    valid = np.zeros((corpus.n_samples, corpus.n_periods), dtype=bool)
    for group in MODALITIES[name].groups:
        if group.name in corpus.params.groups:
            fraction = fractions.get(group.name)
            if fraction is None:
                fraction = read_array(corpus.array(f"{group.name}_valid_fraction"))
            valid |= fraction > 0
    return [round(float(v), 6) for v in valid[done].mean(axis=0)]


def _typical_period_starts(corpus: Corpus) -> list[str | None]:
    """Period starts of the first written sample (samples may have their own anchors)."""
    days = read_array(corpus.array("period_start"))
    written = np.flatnonzero((days != DAYS_FILL).all(axis=1))
    if not written.size:
        return [None] * corpus.n_periods
    row = days[written[0]].astype("datetime64[D]")
    return [str(d) for d in row]


def _verdict(status: Mapping[str, Any]) -> str:
    if status["complete"]:
        return "complete"
    if status["damaged"]:
        return f"incomplete: {len(status['damaged'])} damaged shard file(s)"
    return "incomplete"


def print_status(status: Mapping[str, Any], out: IO[str], as_json: bool = False) -> None:
    """The status as JSON, or as a short table for people."""
    if as_json:
        out.write(json.dumps(status, indent=2) + "\n")
        return
    out.write(
        f"{status['url']}: {status['samples']} samples x {status['periods']} periods "
        f"in {status['shards']} shards ({_verdict(status)})\n"
    )
    out.write(f"{'modality':<16}{'done':>8}{'empty':>8}{'failed':>8}{'pending':>9}\n")
    for name, c in status["states"].items():
        out.write(f"{name:<16}{c['done']:>8}{c['empty']:>8}{c['failed']:>8}{c['pending']:>9}\n")
    if status["coverage"]:
        out.write("coverage per period (done samples with valid data):\n")
        starts = status["period_starts"]
        for name, values in status["coverage"].items():
            cells = " ".join("  -  " if v is None else f"{v:5.2f}" for v in values)
            out.write(f"  {name:<14}{cells}\n")
        out.write(f"  {'period start':<14}{' '.join(str(s) for s in starts)}\n")
    if status["damaged"]:
        out.write(
            f"damaged: {len(status['damaged'])} shard file(s); `terracube repair CONFIG` "
            "rebuilds them:\n"
        )
        for row in status["damaged"][:20]:
            span = row["samples"]
            where = f" (samples {span[0]}..{span[1]})" if span else ""
            out.write(f"  {row['path']}: {row['reason']}{where}\n")
    if status["top_failures"]:
        out.write("top failure reasons:\n")
        for row in status["top_failures"]:
            out.write(
                f"  {row['count']:>5} x {row['modality']}: {row['error_class']}: "
                f"{row['message'][:160]}\n"
            )
