"""`embed` against `encode`, `evaluate` and the corpus: values, georeference, missing data."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import rioxarray  # noqa: F401 (registers the .rio accessor)
import shapely
import xarray as xr
from affine import Affine
from terracube.model.embed.run import EmbedTask, plan_export, run_embed_task
from terracube.model.embed.spec import EmbedError, EmbedSpec, file_sha256
from terracube.model.embed.store import EmbedState, embedding_sample
from terracube.model.eval.evaluate import EvalParams, encoder_features, evaluate, load_encoders
from terracube.model.eval.probes import KnnParams, knn_classify
from terracube.model.eval.tasks import (
    WORLDCOVER_CODES,
    CropParams,
    split_by_key,
    worldcover_task,
)
from terracube.pipeline.corpus.geo import sample_geobox
from terracube.pipeline.corpus.store import Corpus
from terracube.workflows.embed import run_embed

from tests.embed.corpus import (
    MISSING_S2_PERIOD,
    N_TILES,
    NO_INPUT,
    S1_EMPTY,
    classes_of,
    tile_epsg,
    write_checkpoint,
)


def export(corpus: Path, checkpoint: Path, out: Path, **options: object) -> EmbedSpec:
    spec = EmbedSpec(str(checkpoint), str(corpus), str(out), device="cpu", **options)  # type: ignore[arg-type]
    run_embed(spec, progress=False)
    return spec


@pytest.fixture(scope="module")
def windowed(corpus: Path, checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default export: patch 8 and 32 px windows, both from the checkpoint."""
    out = tmp_path_factory.mktemp("windowed")
    export(corpus, checkpoint, out)
    return out


def test_patch_maps_equal_encode_on_the_same_crops(
    windowed: Path, corpus: Path, checkpoint: Path
) -> None:
    ds = xr.open_zarr(windowed / "embeddings.zarr")
    maps = ds["embedding"].values
    assert maps.shape == (N_TILES, 32, 32, 128)
    crops = worldcover_task(corpus, "segmentation", CropParams(crop=32, min_labelled=0.0))
    params = EvalParams(patch_size=8)
    model = load_encoders(checkpoint, params).trained
    batch = crops.batch(np.arange(len(crops)), 8, crops.normalizers())
    want, present = encoder_features(model, batch, per_token=True)
    tiles = [t for t in range(N_TILES) if t != NO_INPUT]  # the task needs WorldCover
    assert len(crops) == len(tiles) * 64
    got = np.stack(
        [
            maps[t, y : y + 4, x : x + 4]
            for t in tiles
            for y in range(0, 32, 4)
            for x in range(0, 32, 4)
        ]
    )
    have = present.numpy()
    assert np.isnan(got[~have]).all() and not np.isnan(got[have]).any()
    np.testing.assert_allclose(got[have], want.numpy()[have], rtol=1e-4, atol=1e-5)
    tokens = ds["tokens"].values
    assert (tokens[NO_INPUT] == 0).all() and np.isnan(maps[NO_INPUT]).all()
    # 4 groups x 2 periods where all is present; S1 empty: 3 x 2; one S2 period missing: 3 + 1
    assert tokens[0].max() == 8 and tokens[S1_EMPTY].max() == 6
    assert tokens[MISSING_S2_PERIOD[0]].max() == 5


def test_whole_tile_window_pools_like_encode(
    corpus: Path, checkpoint: Path, tmp_path: Path
) -> None:
    export(corpus, checkpoint, tmp_path, window=256, groups=("s2_10m",))
    table = gpd.read_parquet(tmp_path / "tiles.parquet")
    tiles = worldcover_task(corpus, "classification", CropParams(crop=256), groups=["s2_10m"])
    model = load_encoders(checkpoint, EvalParams(patch_size=8)).trained
    batch = tiles.batch(np.arange(len(tiles)), 8, tiles.normalizers())
    want, _ = encoder_features(model, batch, per_token=False)
    by_tile = dict(zip(table["tile_id"], table["embedding"], strict=True))
    got = np.stack([by_tile[k] for k in tiles.split_keys])
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5)


def test_knn_on_the_table_reproduces_evaluate(
    corpus: Path, checkpoint: Path, tmp_path: Path
) -> None:
    export(corpus, checkpoint, tmp_path / "emb", window=256, groups=("s2_10m",))
    params = EvalParams(patch_size=8, crop=CropParams(crop=256), knn=KnnParams(k=3))
    results = evaluate(
        checkpoint, "worldcover-classification", corpus, tmp_path / "eval", params, ["s2_10m"]
    )
    row = next(r for r in results["rows"] if (r["features"], r["probe"]) == ("checkpoint", "knn"))
    table = gpd.read_parquet(tmp_path / "emb" / "tiles.parquet")
    labels = np.array(
        [
            WORLDCOVER_CODES.index(int(np.bincount(classes_of(int(s)).ravel()).argmax()))
            for s in table["sample"]
        ]
    )
    keys = table["tile_id"].to_numpy().astype(str)
    train, test = split_by_key(keys, params.test_fraction, params.seed)
    x = np.stack(table["embedding"].to_numpy()).astype(np.float64)
    got = knn_classify(x[train], labels[train], x[test], len(WORLDCOVER_CODES), params.knn)
    assert results["n_test"] == len(test) == 3
    assert row["accuracy"] == pytest.approx(float((got.predictions == labels[test]).mean()))
    confusion = np.zeros((len(WORLDCOVER_CODES),) * 2, int)
    np.add.at(confusion, (labels[test], got.predictions), 1)
    assert row["confusion"] == confusion.tolist()


def test_every_sample_is_georeferenced_like_the_corpus(windowed: Path, corpus: Path) -> None:
    opened = Corpus.open(corpus)
    table = gpd.read_parquet(windowed / "tiles.parquet")
    assert str(table.crs.to_string()) == "OGC:CRS84"
    rows = {int(s): i for i, s in enumerate(table["sample"])}
    for i in range(N_TILES):
        if i == NO_INPUT:
            with pytest.raises(KeyError):
                rows[i]
            continue
        crs, transform, _ = sample_geobox(opened, i, "s2_10m")
        one = embedding_sample(windowed / "embeddings.zarr", i)
        assert one.rio.crs.to_epsg() == tile_epsg(i) == int(crs.split(":")[1])
        assert one.rio.transform() == transform * Affine.scale(8)
        assert one.attrs["proj:code"] == crs
        row = table.iloc[rows[i]]
        square = shapely.from_wkb(row["geometry_tile_crs"])
        assert square.bounds == (transform.c, transform.f - 2560, transform.c + 2560, transform.f)
        assert row["geometry"].contains(shapely.Point(row["center_lon"], row["center_lat"]))
        assert row["epsg"] == tile_epsg(i)
    meta = pq.read_schema(windowed / "tiles.parquet").metadata
    assert b"geo" in meta and b"terracube:embeddings" in meta


def test_presence_and_states_record_the_missing_inputs(windowed: Path) -> None:
    ds = xr.open_zarr(windowed / "embeddings.zarr")
    present = ds["input_present"].values  # (sample, group, time)
    groups = list(ds["group"].values)
    assert groups == ["s2_10m", "s2_20m", "s2_40m", "s1"]
    assert present[0].all()
    assert not present[S1_EMPTY, groups.index("s1")].any() and present[S1_EMPTY, :3].all()
    tile, period = MISSING_S2_PERIOD
    assert not present[tile, :3, period].any() and present[tile, :3, 1 - period].all()
    assert not present[NO_INPUT].any()
    states = ds["state"].values
    assert states[NO_INPUT] == EmbedState.EMPTY
    assert (np.delete(states, NO_INPUT) == EmbedState.DONE).all()


def test_provenance_names_checkpoint_corpus_and_options(windowed: Path, checkpoint: Path) -> None:
    ds = xr.open_zarr(windowed / "embeddings.zarr")
    prov = ds.attrs["terracube:embeddings"]
    assert prov["checkpoint"]["sha256"] == file_sha256(checkpoint)
    assert prov["checkpoint"]["step"] == 7 and prov["checkpoint"]["model"]["size"] == "nano"
    assert (prov["patch_size"], prov["window"], prov["gsd_m"]) == (8, 32, 80.0)
    assert prov["periods"] == {"start": 0, "stop": 2}
    assert prov["modalities"] == ["sentinel1", "sentinel2_l2a"]
    assert prov["corpus"]["format_version"] >= 2 and prov["terracube_version"]
    assert prov["normalisation"] == "registry defaults"
    table_prov = pq.read_schema(windowed / "tiles.parquet").metadata[b"terracube:embeddings"]
    assert b'"sha256"' in table_prov


def test_periods_select_the_time_axis(corpus: Path, checkpoint: Path, tmp_path: Path) -> None:
    export(corpus, checkpoint, tmp_path, periods=(1, 2))
    ds = xr.open_zarr(tmp_path / "embeddings.zarr")
    assert ds.sizes["time"] == 1
    assert str(ds["period_start"].values[0, 0])[:10] == "2024-08-01"
    table = gpd.read_parquet(tmp_path / "tiles.parquet")
    assert (table["start_datetime"].astype(str) == "2024-08-01").all()
    assert (table["end_datetime"].astype(str) == "2024-09-01").all()  # exclusive end


def test_table_time_span_and_ring_orientation(windowed: Path) -> None:
    table = gpd.read_parquet(windowed / "tiles.parquet")
    assert (table["start_datetime"].astype(str) == "2024-04-01").all()
    assert (table["end_datetime"].astype(str) == "2024-09-01").all()  # [Apr, end of Aug)
    assert all(shapely.is_ccw(g.exterior) for g in table.geometry)
    assert all(shapely.is_ccw(shapely.from_wkb(g).exterior) for g in table["geometry_tile_crs"])


def test_pending_inputs_are_refused_or_marked_partial_then_redone(
    corpus: Path, checkpoint: Path, tmp_path: Path
) -> None:
    import shutil

    building = tmp_path / "building.zarr"
    shutil.copytree(corpus, building)
    opened = Corpus.open(building, writable=True)
    opened.array("sentinel1_state")[4] = 0  # sample 4's S1 not built yet (shard 1)
    spec = EmbedSpec(str(checkpoint), str(building), str(tmp_path / "out"), device="cpu")
    with pytest.raises(EmbedError, match=r"1 sample\(s\) whose inputs are still pending"):
        plan_export(spec)
    partial = EmbedSpec(**{**spec.__dict__, "allow_pending": True})
    report = run_embed(partial, progress=False)
    assert report.pending_inputs == 1 and report.table is not None
    ds = xr.open_zarr(tmp_path / "out" / "embeddings.zarr")
    assert ds["state"].values[4] == EmbedState.PARTIAL
    assert plan_export(partial).todo == ()  # still pending: nothing new to compute
    opened.array("sentinel1_state")[4] = 1  # the build finished it
    assert plan_export(partial).todo == (1,)  # only its shard is out of date


def test_bad_requests_are_refused_by_name(corpus: Path, checkpoint: Path, tmp_path: Path) -> None:
    def spec(**options: object) -> EmbedSpec:
        return EmbedSpec(str(checkpoint), str(corpus), str(tmp_path / "o"), **options)  # type: ignore[arg-type]

    with pytest.raises(EmbedError, match="--window 48"):
        plan_export(spec(window=48))
    bad_crop = write_checkpoint(tmp_path / "ck48", crop=48)
    with pytest.raises(EmbedError, match=r"largest training crop \(48 px"):
        plan_export(EmbedSpec(str(bad_crop), str(corpus), str(tmp_path / "o48")))
    with pytest.raises(EmbedError, match="worldcover"):
        plan_export(spec(groups=("worldcover",)))
    with pytest.raises(EmbedError, match="--periods 0:3"):
        plan_export(spec(periods=(0, 3)))
    with pytest.raises(EmbedError, match="does not exist"):
        plan_export(EmbedSpec(str(tmp_path / "none.pt"), str(corpus), str(tmp_path / "o")))
    plan_export(spec(patch_size=8))
    with pytest.raises(EmbedError, match="patch_size"):
        plan_export(spec(patch_size=4))  # the same --out, another patch size: refused


def test_a_damaged_shard_fails_its_task_by_name(
    corpus: Path, checkpoint: Path, tmp_path: Path
) -> None:
    import shutil

    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(corpus, damaged)
    (damaged / "s2_10m" / "c" / "1").rename(tmp_path / "moved")  # shard 1 of s2_10m
    spec = EmbedSpec(str(checkpoint), str(damaged), str(tmp_path / "out"), device="cpu")
    run = plan_export(spec).run
    with pytest.raises(EmbedError, match=r"shard 1 .*terracube validate"):
        run_embed_task(EmbedTask(spec, 1, run))
    assert run_embed_task(EmbedTask(spec, 0, run)).done == 3
