"""End to end: a tiny corpus written with the Corpus API -> WorldCover tasks -> evaluate().

Each 32 x 32 px block of a tile has one WorldCover class (its top-left 16 x 16 px
quarter another one); Sentinel-2 reflectance is a per-class spectrum plus noise, so
the inputs carry the label signal while WorldCover itself is never an input.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score
from terracube.catalog.registry import band_group
from terracube.model.eval.evaluate import (
    EvalParams,
    encoder_features,
    evaluate,
    init_model,
    load_encoders,
    raw_pixel_features,
)
from terracube.model.eval.probes import KnnParams, LinearProbeParams
from terracube.model.eval.report import METRIC_COLUMNS
from terracube.model.eval.tasks import (
    WORLDCOVER_CODES,
    CropParams,
    crop_windows,
    planned_bytes,
    split_by_key,
    token_labels,
    worldcover_task,
)
from terracube.model.nn.synthetic import synthetic_batch
from terracube.model.train.checkpoint import save_checkpoint
from terracube.model.train.pretrain import CHECKPOINT_FORMAT
from terracube.pipeline.corpus.store import Corpus, SampleData, SampleState, create_corpus

N_TILES = 6
PENDING_WORLDCOVER = 5
"""WorldCover never built for this tile: it must give no crop."""
CLASSES = (10, 40, 50, 80)
BLOCK = 32
NODATA_BLOCK = (0, 7)
"""(block row, block col) whose WorldCover is nodata: below min_labelled, skipped."""


def block_class(tile: int, by: int, bx: int) -> int:
    return CLASSES[(tile * 3 + by * 5 + bx) % len(CLASSES)]


def minority_class(tile: int, by: int, bx: int) -> int:
    return CLASSES[(CLASSES.index(block_class(tile, by, bx)) + 1) % len(CLASSES)]


def worldcover_map(tile: int) -> np.ndarray:
    out = np.zeros((256, 256), dtype=np.uint8)
    for by in range(8):
        for bx in range(8):
            y, x = by * BLOCK, bx * BLOCK
            out[y : y + BLOCK, x : x + BLOCK] = block_class(tile, by, bx)
            out[y : y + 16, x : x + 16] = minority_class(tile, by, bx)
    out[NODATA_BLOCK[0] * BLOCK : (NODATA_BLOCK[0] + 1) * BLOCK, NODATA_BLOCK[1] * BLOCK :][
        :, :BLOCK
    ] = 0
    return out


def s2_group(tile: int, name: str, classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    group = band_group(name)
    factor = int(group.resolution // 10)
    coarse = classes[::factor, ::factor]
    spectra = {
        c: 800 + 600 * ((np.arange(len(group.bands)) * (i + 2)) % 5) for i, c in enumerate(CLASSES)
    }
    spectra[0] = np.full(len(group.bands), 1500)
    values = np.stack([spectra[int(c)] for c in coarse.ravel()]).T.reshape(-1, *coarse.shape)
    noisy = values[None] + rng.normal(0, 60, (2, *values.shape))
    return np.clip(noisy, 1, 10000).astype(np.uint16)


def write_tiny_corpus(path: Path) -> None:
    groups = ("s2_10m", "s2_20m", "s2_40m", "worldcover", "osm")
    corpus = create_corpus(path, N_TILES, 2, 2, groups=groups)
    rng = np.random.default_rng(0)
    for k, span in enumerate(corpus.shards):
        samples = []
        for tile in span:
            classes = worldcover_map(tile)
            data = {g: s2_group(tile, g, classes, rng) for g in ("s2_10m", "s2_20m", "s2_40m")}
            data["worldcover"] = classes[None]
            data["osm"] = np.zeros((len(band_group("osm").bands), 256, 256), dtype=np.uint8)
            states = {"sentinel2_l2a": SampleState.DONE, "openstreetmap": SampleState.DONE}
            if tile != PENDING_WORLDCOVER:
                states["worldcover"] = SampleState.DONE
            samples.append(
                SampleData(
                    tile_id=f"32631_{tile}_7",
                    epsg=32631,
                    x0=400_000.0 + 2560 * tile,
                    y0=5_000_000.0,
                    center_lon=3.0,
                    center_lat=45.0,
                    period_starts=np.array(["2024-03-01", "2024-07-01"], dtype="datetime64[D]"),
                    groups=data,
                    valid_fraction={
                        g: np.float32(1.0) if g in ("worldcover", "osm") else np.ones(2, np.float32)
                        for g in data
                    },
                    states=states,
                )
            )
        corpus.write_shard(k, samples)


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("eval") / "tiny.zarr"
    write_tiny_corpus(path)
    return path


FAST = EvalParams(
    patch_size=8,  # 4x fewer tokens than patch 4: the nano encoder runs ~10x faster on CPU
    crop=CropParams(crop=32, max_crops_per_tile=12),
    knn=KnnParams(k=5),
    linear=LinearProbeParams(max_epochs=40, patience=5),
    batch_size=16,
)


def test_classification_task_labels_and_held_out_maps(tiny_corpus: Path) -> None:
    ds = worldcover_task(tiny_corpus, "classification", CropParams(crop=32))
    assert set(ds.raw) == {"s2_10m", "s2_20m", "s2_40m"}  # WorldCover / OSM never an input
    tiles = [t for t in range(N_TILES) if t != PENDING_WORLDCOVER]
    assert len(ds) == len(tiles) * 63  # 64 crops minus the nodata block
    want = [
        WORLDCOVER_CODES.index(block_class(t, by, bx))
        for t in tiles
        for by in range(8)
        for bx in range(8)
        if (by, bx) != NODATA_BLOCK
    ]
    assert ds.labels.tolist() == want
    assert ds.raw["s2_40m"].shape[-2:] == (32, 32)  # 8 px at 40 m repeated onto 10 m
    assert ds.months.tolist()[0] == [2, 6]
    with pytest.raises(ValueError, match="leak the labels"):
        worldcover_task(tiny_corpus, "classification", groups=["s2_10m", "worldcover"])


def test_segmentation_labels_per_token(tiny_corpus: Path) -> None:
    ds = worldcover_task(tiny_corpus, "segmentation", CropParams(crop=32, max_crops_per_tile=2))
    tokens = token_labels(ds.labels, patch_size=4, n_classes=len(WORLDCOVER_CODES))
    assert tokens.shape == (len(ds), 8, 8)
    for crop, grid in zip(ds.labels, tokens, strict=True):
        main, minor = np.bincount(crop.ravel(), minlength=11).argsort()[-2:][::-1]
        assert (grid[4:, :] == main).all() and (grid[:4, :4] == minor).all()


def scores(row: dict) -> dict:
    """A results row without its feature-set name."""
    return {k: v for k, v in row.items() if k != "features"}


def md_rows(text: str) -> list[list[str]]:
    """Cells of the results table (the first table; the differences table follows)."""
    first = text.split("\n## ")[0]
    lines = [ln for ln in first.splitlines() if ln.startswith("| ")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[1:]]


def test_evaluate_classification_writes_consistent_table_and_figure(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    results = evaluate(None, "worldcover-classification", tiny_corpus, tmp_path, FAST)
    assert [(r["features"], r["probe"]) for r in results["rows"]] == [
        (f, p)
        for f in ("checkpoint", "random-init", "raw-pixels")
        for p in ("knn", "linear", "knn5", "logreg")
    ]
    rows = {(r["features"], r["probe"]): r for r in results["rows"]}
    # no checkpoint: the encoder under test *is* the same-seed random init
    for probe in ("knn", "linear", "knn5", "logreg"):
        assert scores(rows["checkpoint", probe]) == scores(rows["random-init", probe])
    for row in results["rows"]:  # every interval holds its value
        for metric, (value, low, high) in row["ci"].items():
            assert value == pytest.approx(row[metric]) and low <= value <= high
    versus_random = [d for d in results["differences"] if d["minus"] == "random-init"]
    assert len(versus_random) == 4 * 2  # probes x (accuracy, macro_f1)
    for d in versus_random:  # identical predictions: a zero difference, never "better"
        assert (d["value"], d["low"], d["high"], d["verdict"]) == (0, 0, 0, "not resolved")
    # the label signal is in the inputs: raw pixels separate the classes
    assert rows["raw-pixels", "knn"]["accuracy"] >= 0.9
    # test crops = crops of the held-out tiles
    keys = np.array([f"32631_{t}_7" for t in range(N_TILES) if t != PENDING_WORLDCOVER])
    train, test = split_by_key(keys, 0.25, seed=0)
    assert results["split"]["test_samples"] == len(test) == 1 and len(train) == 4
    crops = worldcover_task(tiny_corpus, "classification", FAST.crop)
    is_test = np.isin(crops.split_keys, keys[test])
    assert (results["n_test"], results["n_train"]) == (is_test.sum(), (~is_test).sum())
    assert results["n_train"] + results["n_test"] <= 5 * 12
    for row in results["rows"]:
        confusion = np.asarray(row["confusion"])
        assert confusion.sum() == results["n_test"]
        assert row["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
        truth = np.repeat(np.arange(confusion.size) // len(confusion), confusion.ravel())
        pred = np.repeat(np.arange(confusion.size) % len(confusion), confusion.ravel())
        assert row["macro_f1"] == pytest.approx(f1_score(truth, pred, average="macro"))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    table = md_rows((tmp_path / "results.md").read_text())
    assert [r[:2] for r in table] == [[r["features"], r["probe"]] for r in results["rows"]]
    for cells, row in zip(table, results["rows"], strict=True):
        assert [float(c.split(" [")[0]) for c in cells[2:]] == [
            round(row[m], 4) for m in METRIC_COLUMNS["classification"]
        ]
    image = matplotlib.image.imread(tmp_path / "confusion_matrix.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 200
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 10  # drawn, not blank


def test_evaluate_segmentation_scores_tokens(tiny_corpus: Path, tmp_path: Path) -> None:
    params = EvalParams(
        crop=CropParams(crop=32, max_crops_per_tile=3),
        knn=KnnParams(k=5),
        linear=LinearProbeParams(max_epochs=20, patience=3),
        max_train_tokens=200,
    )
    results = evaluate(None, "worldcover-segmentation", tiny_corpus, tmp_path, params)
    assert results["unit"] == "patch"
    assert results["n_test"] == 3 * 64  # one test tile x 3 crops x (32/4)^2 patches
    assert results["n_train"] == 200  # subsampled from 4 x 3 x 64
    raw = {r["probe"]: r for r in results["rows"] if r["features"] == "raw-pixels"}
    assert raw["knn"]["mIoU"] > 0.8  # per-patch spectra identify the patch's class
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 0


def test_evaluate_loads_a_pretraining_checkpoint(tiny_corpus: Path, tmp_path: Path) -> None:
    model = init_model("nano", seed=0)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    state = {
        "format": CHECKPOINT_FORMAT,
        "step": 3,
        "model": model.state_dict(),
        "settings": {"model_size": "nano", "seed": 0},
    }
    path = save_checkpoint(tmp_path / "ckpt", 3, state)
    params = EvalParams(
        patch_size=8,
        crop=CropParams(crop=32, max_crops_per_tile=4),
        knn=KnnParams(k=5),
        linear=LinearProbeParams(max_epochs=10, patience=3),
    )
    encoders = load_encoders(path, params)
    moved = [
        not torch.equal(a, b)
        for a, b in zip(
            encoders.trained.encoder.parameters(),
            encoders.random_init.encoder.parameters(),
            strict=True,
        )
    ]
    assert all(moved)  # the checkpoint's weights were loaded, not the init
    trained = evaluate(path, "worldcover-classification", tiny_corpus, tmp_path / "a", params)
    baseline = evaluate(None, "worldcover-classification", tiny_corpus, tmp_path / "b", params)
    assert trained["encoder"] == "step_00000003.pt (step 3)"
    rows = {(r["features"], r["probe"]): r for r in trained["rows"]}
    base = {(r["features"], r["probe"]): r for r in baseline["rows"]}
    # the random-init baseline is the run's seed-0 start: equal to the no-checkpoint encoder
    assert scores(rows["random-init", "knn"]) == scores(base["checkpoint", "knn"])
    assert rows["raw-pixels", "linear"] == base["raw-pixels", "linear"]
    bad = tmp_path / "bad.pt"
    torch.save({"weights": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a terracube pretraining checkpoint"):
        evaluate(bad, "worldcover-classification", tiny_corpus, tmp_path / "c", params)
    with pytest.raises(ValueError, match="unknown task"):
        evaluate(None, "imagenet", tiny_corpus, tmp_path / "d", params)


def test_patch_size_defaults_to_the_checkpoints(tiny_corpus: Path, tmp_path: Path) -> None:
    state = {
        "format": CHECKPOINT_FORMAT,
        "step": 1,
        "model": init_model("nano", seed=0).state_dict(),
        "settings": {"model_size": "nano", "seed": 0, "loader": {"patch_sizes": [4, 8]}},
    }
    path = save_checkpoint(tmp_path / "ckpt", 1, state)
    params = EvalParams(
        patch_size=None,
        crop=CropParams(crop=32, max_crops_per_tile=2, max_tiles=2),
        linear=LinearProbeParams(max_epochs=2, patience=1),
    )
    seen = evaluate(path, "worldcover-segmentation", tiny_corpus, tmp_path / "a", params)
    assert seen["patch_size"] == 8  # trained at 4 and 8: the largest, never a silent 4
    none = evaluate(None, "worldcover-segmentation", tiny_corpus, tmp_path / "b", params)
    assert none["patch_size"] == 4


def test_split_crop_and_device_errors_name_the_fix() -> None:
    train, test = split_by_key(np.array(["b", "a", "b", "c", "a"]), 0.34, seed=1)
    keys = np.array(["b", "a", "b", "c", "a"])
    assert not set(keys[train]) & set(keys[test]) and len(set(keys[test])) == 1
    assert sorted([*train, *test]) == list(range(5))
    with pytest.raises(ValueError, match=">= 2 distinct samples"):
        split_by_key(np.array(["t", "t"]), 0.25, seed=0)
    with pytest.raises(ValueError, match="multiple of 4"):
        crop_windows(256, CropParams(crop=30))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            EvalParams(device="cuda").torch_device()
    assert EvalParams(device="auto").torch_device().type in ("cpu", "cuda")


def test_tile_subset_and_memory_guard(tiny_corpus: Path) -> None:
    params = CropParams(crop=32, max_tiles=2, max_crops_per_tile=5, seed=3)
    ds = worldcover_task(tiny_corpus, "classification", params)
    assert len(np.unique(ds.split_keys)) == 2 and len(ds) <= 10
    corpus = Corpus.open(tiny_corpus)
    held = sum(x.nbytes for x in ds.raw.values())
    assert (
        held == planned_bytes(corpus, tuple(ds.raw), len(ds), 32) == len(ds) * 2 * 12 * 32 * 32 * 2
    )
    again = worldcover_task(tiny_corpus, "classification", params)
    assert again.split_keys.tolist() == ds.split_keys.tolist()  # seeded
    with pytest.raises(ValueError, match="GiB of crops in memory"):
        worldcover_task(tiny_corpus, "classification", CropParams(max_bytes=10_000))


def test_raw_pixel_features_equal_numpy_per_crop_and_per_patch() -> None:
    batch = synthetic_batch(
        batch_size=2, timesteps=2, size=8, patch_size=4, groups=("s2_10m", "s1"), valid_fraction=0.7
    )
    pooled = raw_pixel_features(batch, per_token=False).numpy()
    patches = raw_pixel_features(batch, per_token=True).numpy()
    assert pooled.shape == (2, 2 * (4 + 2)) and patches.shape == (2, 2, 2, 12)
    x, v = batch.data["s2_10m"].numpy(), batch.valid["s2_10m"].numpy()
    for b in range(2):
        for c in range(4):
            values = x[b, :, c][v[b]]  # valid pixels of band c over time and the crop
            assert pooled[b, c] == pytest.approx(values.mean(), rel=1e-5)
            assert pooled[b, 4 + c] == pytest.approx(values.std(), rel=1e-4)
        window = (slice(None), slice(4, 8), slice(0, 4))  # patch (row 1, col 0)
        values = x[b, :, 2][window][v[b][window]]
        assert patches[b, 1, 0, 2] == pytest.approx(values.mean(), rel=1e-5)
    s1 = batch.data["s1"].numpy()[1, :, 1][batch.valid["s1"].numpy()[1]]
    assert pooled[1, 8 + 1] == pytest.approx(s1.mean(), rel=1e-5)


def test_per_patch_embedding_is_mean_of_encoded_tokens() -> None:
    model = init_model("nano", seed=0).eval()
    batch = synthetic_batch(batch_size=1, timesteps=2, size=8, patch_size=4, groups=("s2_10m",))
    batch.valid["s2_10m"][0, :, :4, :4] = False  # patch (0, 0) never valid: not encoded
    batch.valid["s2_10m"][0, 1, 4:, 4:] = False  # patch (1, 1) valid only at t = 0
    features, present = encoder_features(model, batch, per_token=True)
    with torch.no_grad():
        _, tokens = model.encode(batch)
    grid = tokens["s2_10m"][0]  # (T, 2, 2, D)
    assert present[0].tolist() == [[False, True], [True, True]]
    torch.testing.assert_close(features[0, 1, 1], grid[0, 1, 1])
    torch.testing.assert_close(features[0, 0, 1], grid[:, 0, 1].mean(0))
    assert torch.equal(features[0, 0, 0], torch.zeros(model.size.dim))
