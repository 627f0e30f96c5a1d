"""Label rasters as an evaluation task, on the synthetic world's corpus and its crop-type
truth (the context task of docs/evaluation.md)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from terracube.model.eval.evaluate import EvalParams, evaluate
from terracube.model.eval.probes import LinearProbeParams
from terracube.model.eval.raster_labels import raster_task
from terracube.model.eval.tasks import IGNORE, CropParams
from terracube.workflows.world import WorldManifest, WorldTruth
from terracube.workflows.world.crops import LABELS_DIR


@pytest.fixture(scope="module")
def world_store(world_corpus: str) -> str:
    return world_corpus


def test_crops_carry_the_truth_labels(
    world: WorldManifest, world_truth: WorldTruth, world_store: str
) -> None:
    params = CropParams(crop=32, min_labelled=0.25)
    ds = raster_task(world_store, world.truth_dir / LABELS_DIR, "segmentation", params)
    assert ds.class_names == ("spring crop", "summer crop", "autumn crop")
    assert set(ds.raw) == {"s2_10m", "s2_20m", "s2_40m", "landsat", "s1"}  # never the labels
    windows = [(y, x) for y in range(0, 256, 32) for x in range(0, 256, 32)]
    row = 0
    for tile_id in sorted(world.tile_ids):
        truth = world_truth.crop_type_labels(tile_id).astype(np.int64) - 1  # 0 -> IGNORE
        for y, x in windows:
            want = truth[y : y + 32, x : x + 32]
            if (want != IGNORE).mean() < params.min_labelled:
                continue
            assert ds.split_keys[row] == tile_id
            np.testing.assert_array_equal(ds.labels[row], want)
            row += 1
    assert row == len(ds) > 20


def test_evaluate_scores_the_crop_types_with_intervals(
    world: WorldManifest, world_store: str, tmp_path: Path
) -> None:
    params = EvalParams(
        patch_size=8,
        crop=CropParams(crop=32, max_crops_per_tile=16),
        linear=LinearProbeParams(max_epochs=5, patience=None, optimizer="adamw"),
        labels=str(world.truth_dir / LABELS_DIR),
        bootstrap=200,
    )
    results = evaluate(None, "raster-segmentation", world_store, tmp_path, params)
    assert results["classes"] == ["spring crop", "summer crop", "autumn crop"]
    assert results["split"]["by"] == "tile" and results["unit"] == "patch"
    assert {r["probe"] for r in results["rows"]} == {"knn", "linear", "knn5", "logreg"}
    for row in results["rows"]:
        value, low, high = row["ci"]["accuracy"]
        assert low <= value <= high and value == pytest.approx(row["accuracy"])
    raw = [d for d in results["differences"] if d["minus"] == "raw-pixels"]
    assert {d["probe"] for d in raw} == {"knn", "linear", "knn5", "logreg"}
    assert "## Checkpoint minus baseline" in (tmp_path / "results.md").read_text()


def test_bad_label_inputs_say_what_to_do(
    world: WorldManifest, world_store: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="pass --labels DIR"):
        evaluate(None, "raster-segmentation", world_store, tmp_path, EvalParams(patch_size=8))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no GeoTIFF"):
        raster_task(world_store, empty, "segmentation")
    shifted = tmp_path / "shifted"
    shutil.copytree(world.truth_dir / LABELS_DIR, shifted)
    path = next(shifted.glob("*.tif"))
    with rasterio.open(path, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as dst:
        dst.transform = dst.transform * Affine.translation(0.5, 0)  # 5 m off the grid
    with pytest.raises(ValueError, match="not on the 10 m corpus grid"):
        raster_task(world_store, shifted, "segmentation")
    one_zone = tmp_path / "one-zone"
    one_zone.mkdir()
    shutil.copy(sorted((world.truth_dir / LABELS_DIR).glob("*.tif"))[0], one_zone)
    with pytest.raises(ValueError, match="has no raster in EPSG"):
        raster_task(world_store, one_zone, "segmentation")
