"""Pure parts of the build: which shards need work, merging carried-over samples,
the failure table, the run log's secret scrubbing, and sample verdicts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from terracube.catalog.registry import MODALITIES
from terracube.pipeline.corpus.store import SampleData, SampleState
from terracube.workflows.build.failures import FailureTable, split_error, top_reasons
from terracube.workflows.build.progress import sample_verdict
from terracube.workflows.build.runlog import RunLog, read_run_log
from terracube.workflows.build.shards import groups_of, merge_sample, plan_shard_work
from terracube.workflows.build.tasks import SampleOutcome, ShardOutcome

P, D, E, F = (int(s) for s in SampleState)


def test_only_shards_with_pending_work_are_planned() -> None:
    states = {
        "sentinel1": np.array([D, D, D, P, F, D, E]),
        "worldcover": np.array([D, E, D, D, D, D, D]),
    }
    work = plan_shard_work(states, samples_per_shard=2)
    assert [w.shard for w in work] == [1]
    assert dict(work[0].todo) == {3: ("sentinel1",)}
    assert (work[0].start, work[0].stop) == (2, 4)


def test_retry_failed_adds_failed_samples_and_keeps_shard_bounds() -> None:
    states = {
        "sentinel1": np.array([D, D, D, P, F, D, E]),
        "worldcover": np.array([D, E, D, D, F, D, P]),
    }
    work = plan_shard_work(states, samples_per_shard=2, retry_failed=True)
    assert [(w.shard, w.start, w.stop) for w in work] == [(1, 2, 4), (2, 4, 6), (3, 6, 7)]
    assert dict(work[1].todo) == {4: ("sentinel1", "worldcover")}
    assert dict(work[2].todo) == {6: ("worldcover",)}


def test_nothing_planned_when_every_sample_is_terminal() -> None:
    states = {"sentinel1": np.array([D, E, F]), "worldcover": np.array([D, D, F])}
    assert plan_shard_work(states, 2) == []
    assert len(plan_shard_work(states, 2, retry_failed=True)) == 1


def test_plan_shard_work_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        plan_shard_work({"a": np.zeros(2), "b": np.zeros(3)}, 1)
    with pytest.raises(ValueError, match="samples_per_shard"):
        plan_shard_work({"a": np.zeros(2)}, 0)


def test_groups_of_follows_the_registry() -> None:
    corpus_groups = ("s2_10m", "s2_20m", "s2_40m", "s1", "worldcover", "osm")
    expected_s2 = tuple(g.name for g in MODALITIES["sentinel2_l2a"].groups)
    assert groups_of(["sentinel2_l2a"], corpus_groups) == expected_s2
    assert groups_of(["worldcover", "sentinel1"], corpus_groups) == ("s1", "worldcover")


def _sample(states: dict[str, SampleState], errors: dict[str, str], value: int) -> SampleData:
    s1 = MODALITIES["sentinel1"].groups[0]
    groups, vf, prov = {}, {}, {}
    if states.get("sentinel1") is SampleState.DONE:
        groups[s1.name] = np.full((2, len(s1.bands), s1.pixels, s1.pixels), value, s1.dtype)
        vf[s1.name] = np.array([1.0, 0.5])
        prov[s1.name] = [["a"], ["b"]]
    return SampleData(
        tile_id="32631_0284_02034",
        epsg=32631,
        x0=0.0,
        y0=0.0,
        center_lon=6.0,
        center_lat=47.0,
        period_starts=np.array(["2022-01-01", "2022-02-01"], dtype="datetime64[D]"),
        groups=groups,
        valid_fraction=vf,
        provenance=prov,
        states=states,
        errors=errors,
    )


def test_merge_keeps_stored_modalities_and_takes_rebuilt_ones() -> None:
    stored = _sample(
        {"sentinel1": SampleState.DONE, "worldcover": SampleState.FAILED},
        {"worldcover": "OSError: boom"},
        value=7,
    )
    built = _sample(
        {"worldcover": SampleState.EMPTY}, {"worldcover": "no WorldCover item meets tile"}, 0
    )
    merged = merge_sample(built, stored, ["worldcover"])
    assert merged.states == {"sentinel1": SampleState.DONE, "worldcover": SampleState.EMPTY}
    assert merged.errors == {"worldcover": "no WorldCover item meets tile"}
    assert set(merged.groups) == {"s1"} and int(merged.groups["s1"][0, 0, 0, 0]) == 7
    assert merged.provenance == {"s1": [["a"], ["b"]]}


def test_merge_drops_what_a_build_never_writes() -> None:
    """A stored record carries every group (nodata for non-done modalities); a merge must
    keep only what the build writes, or a rewrite would differ from the first write."""
    stored = _sample({"sentinel1": SampleState.FAILED}, {"sentinel1": "X: y"}, 0)
    stored.groups["s1"] = np.zeros((2, 2, 256, 256), "float32")
    stored.provenance["s1"] = [[], []]
    merged = merge_sample(None, stored, [])
    assert merged.groups == {} and merged.provenance == {}
    assert merged.states == {"sentinel1": SampleState.FAILED}
    with pytest.raises(ValueError, match="built or a stored"):
        merge_sample(None, None, [])


def test_split_error_and_top_reasons() -> None:
    assert split_error("RasterioIOError: HTTP 503 on x.tif") == (
        "RasterioIOError",
        "HTTP 503 on x.tif",
    )
    assert split_error("no clear pixel: all cloud") == ("Error", "no clear pixel: all cloud")
    rows = [("s1", "A", "m")] * 3 + [("s1", "B", "n")] * 5 + [("wc", "A", "m")]
    assert top_reasons(rows, 2) == [
        {"modality": "s1", "error_class": "B", "message": "n", "count": 5},
        {"modality": "s1", "error_class": "A", "message": "m", "count": 3},
    ]


def _outcome(sample: int, state: int, error: str = "") -> ShardOutcome:
    return ShardOutcome(
        shard=sample,
        samples=(
            SampleOutcome(
                sample=sample,
                tile_id=f"t{sample}",
                states={"sentinel1": state},
                errors={"sentinel1": error} if error else {},
                rebuilt=("sentinel1",),
            ),
        ),
        seconds=1.0,
        build_seconds=0.5,
        worker="w",
    )


def test_failure_table_counts_attempts_and_forgets_fixed_tiles(tmp_path: Path) -> None:
    path = tmp_path / "failures.json"
    table = FailureTable(path)
    table.record(_outcome(0, F, "OSError: 503"))
    table.record(_outcome(1, F, "ValueError: bad"))
    table.save()
    again = FailureTable(path)
    assert again.record(_outcome(0, F, "OSError: 504")) is True
    assert again.record(_outcome(1, D)) is True  # t1 was failed, now fixed
    assert again.record(_outcome(2, D)) is False  # a clean shard leaves the table as is
    again.save()
    rows = json.loads(path.read_text())
    assert rows == [
        {
            "sample": 0,
            "tile_id": "t0",
            "modality": "sentinel1",
            "error_class": "OSError",
            "message": "504",
            "attempts": 2,
        }
    ]


def test_sample_verdicts() -> None:
    assert sample_verdict({"a": D, "b": E}) == "done"
    assert sample_verdict({"a": E, "b": E}) == "empty"
    assert sample_verdict({"a": D, "b": F}) == "failed"
    assert sample_verdict({"a": D, "b": P}) == "pending"


def test_run_log_never_writes_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    with RunLog(path, secrets={"AKIA-SECRET-123"}) as log:
        log.write("start", config={"key": "AKIA-SECRET-123"})
        log.write("shard_error", error="denied for AKIA-SECRET-123 at s3://b")
    assert "AKIA-SECRET-123" not in path.read_text()
    events = read_run_log(path)
    assert [e["event"] for e in events] == ["start", "shard_error"]
    assert events[0]["config"] == {"key": "***"}
    assert events[1]["error"] == "denied for *** at s3://b"


def test_failure_table_scrubs_secrets(tmp_path: Path) -> None:
    table = FailureTable(tmp_path / "failures.json", secrets={"sig=SECRET42"})
    table.record(_outcome(0, F, "HTTPError: 403 for https://x/a.tif?sig=SECRET42"))
    table.save()
    text = (tmp_path / "failures.json").read_text()
    assert "SECRET42" not in text
    assert table.rows[0].message == "403 for https://x/a.tif?***"


def _tag(href: str) -> str:
    return href + "?sig=t"


def test_sign_inputs_signs_only_the_named_modalities() -> None:
    from datetime import UTC, date, datetime

    import shapely
    from terracube.catalog.grid import Tile
    from terracube.catalog.registry import RadiometryKind
    from terracube.catalog.stac.items import AssetRef, Conversion, NormalizedItem
    from terracube.pipeline.tile import TileInputs
    from terracube.workflows.build.tasks import sign_inputs

    same = Conversion(RadiometryKind.IDENTITY)

    def item(name: str, modality: str) -> NormalizedItem:
        ref = AssetRef("B04", f"https://h/{name}.tif", "red", None, None, 0, "uint16", same)
        mask = AssetRef("SCL", f"https://h/{name}_scl.tif", "scl", None, None, 0, "uint8", same)
        return NormalizedItem(
            name, "c", modality, datetime(2022, 1, 5, tzinfo=UTC), shapely.box(5, 46, 6, 47),
            32631, (ref,), mask, 0.0, None,
        )  # fmt: skip

    inputs = TileInputs(
        tile=Tile.from_id("32631_0284_02034"),
        period_starts=(date(2022, 1, 1),),
        temporal={
            "sentinel2_l2a": [[item("a", "sentinel2_l2a")]],
            "sentinel1": [[item("b", "sentinel1")]],
        },
        static={"worldcover": [item("w", "worldcover")]},
    )
    signed = sign_inputs(inputs, {"sentinel2_l2a": _tag, "worldcover": _tag})
    s2 = signed.temporal["sentinel2_l2a"][0][0]
    assert (
        s2.assets[0].href == "https://h/a.tif?sig=t" and s2.mask.href == "https://h/a_scl.tif?sig=t"
    )
    assert s2.id == "a"  # provenance keeps the item id
    assert signed.temporal["sentinel1"][0][0].assets[0].href == "https://h/b.tif"
    assert signed.static["worldcover"][0].assets[0].href == "https://h/w.tif?sig=t"
    assert sign_inputs(inputs, {}) is inputs


def test_planetary_computer_sources_get_a_signer(tmp_path: Path) -> None:
    import planetary_computer
    from terracube.workflows.config import load_config
    from terracube.workflows.planning import href_signers

    path = tmp_path / "build.yaml"
    path.write_text(
        "name: t\naoi: {bbox: [5.99, 46.99, 6.01, 47.01]}\ntime: {start: '2022-01-01'}\n"
        "modalities:\n"
        "  sentinel1: {source: stac_api, profile: planetary-computer}\n"
        "  sentinel2_l2a: {source: stac_api, profile: earth-search}\n"
        "  worldcover: {source: stac_api, url: 'http://127.0.0.1:9/', collection: wc, sign: true}\n"
        "output: {store: c.zarr}\n"
    )
    signers = href_signers(load_config(path))
    assert signers == {
        "sentinel1": planetary_computer.sign_url,
        "worldcover": planetary_computer.sign_url,
    }
