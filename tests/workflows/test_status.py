"""`terracube status` on a small hand-written corpus whose answer is known exactly,
and the progress bar's counts."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from rich.console import Console
from terracube.catalog.registry import band_group
from terracube.pipeline.corpus.store import SampleData, SampleState, create_corpus
from terracube.workflows.build.progress import BuildProgress
from terracube.workflows.build.status import corpus_status, print_status
from terracube.workflows.build.tasks import SampleOutcome, ShardOutcome
from terracube.workflows.progress import LineProgress, eta

STARTS = np.array(["2022-01-01", "2022-02-01", "2022-03-01"], dtype="datetime64[D]")


def _s1_sample(state: SampleState, valid: list[float], error: str = "") -> SampleData:
    group = band_group("s1")
    done = state is SampleState.DONE
    return SampleData(
        tile_id="32631_0284_02034",
        epsg=32631,
        x0=727040.0,
        y0=5209600.0,
        center_lon=5.99,
        center_lat=47.0,
        period_starts=STARTS,
        groups={"s1": np.full((3, len(group.bands), group.pixels, group.pixels), -10.0, "float32")}
        if done
        else {},
        valid_fraction={"s1": np.array(valid)} if done else {},
        provenance={"s1": [["a"], ["b"], []]} if done else {},
        states={"sentinel1": state},
        errors={"sentinel1": error} if error else {},
    )


def test_status_counts_coverage_and_failure_reasons(tmp_path: Path) -> None:
    url = str(tmp_path / "c.zarr")
    corpus = create_corpus(url, n_samples=5, n_periods=3, samples_per_shard=2, groups=("s1",))
    corpus.write_shard(
        0,
        [
            _s1_sample(SampleState.DONE, [1.0, 0.0, 0.5]),
            _s1_sample(SampleState.DONE, [1.0, 0.0, 0.0]),
        ],
    )
    corpus.write_shard(
        1,
        [
            _s1_sample(SampleState.FAILED, [], "RasterioIOError: HTTP 503 on a.tif"),
            _s1_sample(SampleState.FAILED, [], "RasterioIOError: HTTP 503 on a.tif"),
        ],
    )
    status = corpus_status(url)
    assert status["states"] == {"sentinel1": {"pending": 1, "done": 2, "empty": 0, "failed": 2}}
    assert status["coverage"] == {"sentinel1": [1.0, 0.0, 0.5]}
    assert status["period_starts"] == ["2022-01-01", "2022-02-01", "2022-03-01"]
    assert status["top_failures"] == [
        {
            "modality": "sentinel1",
            "error_class": "RasterioIOError",
            "message": "HTTP 503 on a.tif",
            "count": 2,
        }
    ]
    assert status["complete"] is False and status["shards"] == 3
    text = io.StringIO()
    print_status(status, text)
    shown = text.getvalue()
    assert "sentinel1" in shown and "2 x sentinel1: RasterioIOError: HTTP 503 on a.tif" in shown
    assert "1.00  0.00  0.50" in shown


def _outcome(shard: int, states: list[dict[str, int]]) -> ShardOutcome:
    samples = tuple(
        SampleOutcome(i, f"t{i}", s, {}, tuple(s)) for i, s in enumerate(states)
    )  # fmt: skip
    return ShardOutcome(shard, samples, seconds=1.0, build_seconds=0.8, worker="w")


def test_progress_counts_done_empty_failed_tiles() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=150)
    with BuildProgress(3, console) as progress:
        progress.update(_outcome(0, [{"a": 1, "b": 2}, {"a": 2, "b": 2}]))
        progress.update(_outcome(1, [{"a": 1, "b": 3}]))
    assert dict(progress.counts) == {"done": 1, "empty": 1, "failed": 1}
    assert progress.tiles_per_minute > 0
    shown = out.getvalue()
    assert "3/3" in shown and "1 done" in shown and "1 empty" in shown and "1 failed" in shown


def test_progress_off_a_terminal_is_a_plain_line_per_interval() -> None:
    """Piped into a log, the bar used to leave one final frame; now each update past the
    interval (and always the first and the last) is one readable line."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=150)
    with BuildProgress(3, console, every_s=0.0) as progress:
        progress.update(_outcome(0, [{"a": 1}]))
        progress.update(_outcome(1, [{"a": 1}, {"a": 3}]))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("build: 1/3 tiles (33 %), 1 done, 0 empty, 0 failed")
    assert lines[1].startswith("build: 3/3 tiles (100 %), 2 done, 0 empty, 1 failed")
    assert "tiles/min" in lines[1] and "ETA 0:00:00" in lines[1]
    quiet = io.StringIO()
    slow = LineProgress("pretrain", 100, "steps", quiet, every_s=3600)
    for step in range(1, 101):
        slow.update(step, f"loss {4 - step / 100:.3f}")
    shown = quiet.getvalue().splitlines()  # the first line and the last, nothing between
    assert len(shown) == 2 and shown[0].startswith("pretrain: 1/100 steps (1 %), loss 3.990")
    assert shown[1].startswith("pretrain: 100/100 steps (100 %), loss 3.000")
    assert eta(25, 100, 60.0) == "0:03:00" and eta(0, 100, 5.0) == "-"
