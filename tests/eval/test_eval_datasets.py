"""EuroSAT and BigEarthNet adapters: published layouts mapped onto registry band groups.

EuroSAT fixtures: three real EuroSAT_MS tiles (AnnualCrop_1, Pasture_300,
SeaLake_3000) from kai-tub/rico-hdl integration tests; EuroSAT (Helber et al.),
MIT License; contains modified Copernicus Sentinel data. See
shared/fixtures/real/eurosat/SOURCES.md.

BigEarthNet: real v1.0 S2 and S1 patches in tests/data/bigearthnet/ (SOURCES.md there;
CDLA-Permissive-1.0, contains modified Copernicus Sentinel data), and
`write_bigearthnet_patch`, a synthetic folder in the published v1 layout for the edge
cases (a missing band, bad metadata).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from terracube.catalog.registry import band_group
from terracube.model.eval.datasets import (
    EUROSAT_FILE_BANDS,
    read_bigearthnet,
    read_eurosat,
    registry_layout,
)
from terracube.model.eval.evaluate import EvalParams, evaluate
from terracube.model.eval.probes import KnnParams, LinearProbeParams
from terracube.model.eval.tasks import split_by_key

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "real"
EUROSAT = FIXTURES / "eurosat"


def file_bands(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def test_eurosat_file_band_order_is_verified_on_real_tiles() -> None:
    """The MS tiles store B8A last: B10 (cirrus, index 9) is ~0 and index 12 tracks B08."""
    for name in ("AnnualCrop/AnnualCrop_1", "Pasture/Pasture_300", "SeaLake/SeaLake_3000"):
        bands = file_bands(EUROSAT / "EuroSAT_MS" / f"{name}.tif").reshape(13, -1).mean(1)
        assert bands.shape == (13,)
        assert bands[EUROSAT_FILE_BANDS.index("B10")] < 20  # cirrus: ~10 DN over land and sea
        assert bands[EUROSAT_FILE_BANDS.index("B09")] > 50  # water vapour band is not empty
    pasture = file_bands(EUROSAT / "EuroSAT_MS/Pasture/Pasture_300.tif").reshape(13, -1).mean(1)
    b08, b8a = pasture[EUROSAT_FILE_BANDS.index("B08")], pasture[EUROSAT_FILE_BANDS.index("B8A")]
    assert 0.9 < b8a / b08 < 1.3  # narrow NIR follows broad NIR over vegetation
    assert b8a > 4 * pasture[EUROSAT_FILE_BANDS.index("B04")]  # red edge step of grass


def test_eurosat_reads_real_fixtures_with_registry_band_mapping() -> None:
    ds = read_eurosat(EUROSAT)
    assert ds.kind == "classification"
    assert ds.class_names == ("AnnualCrop", "Pasture", "SeaLake")
    assert ds.labels.tolist() == [0, 1, 2]
    assert ds.split_keys.tolist() == ["AnnualCrop_1", "Pasture_300", "SeaLake_3000"]
    assert set(ds.raw) == {"s2_10m", "s2_20m", "s2_40m"}  # 13 -> 12 bands: B10 dropped
    assert sum(x.shape[2] for x in ds.raw.values()) == 12
    for g, x in ds.raw.items():
        assert x.shape == (3, 1, len(band_group(g).bands), 64, 64) and x.dtype == np.uint16
        assert ds.present[g].all()
    sealake = file_bands(EUROSAT / "EuroSAT_MS/SeaLake/SeaLake_3000.tif")
    for g, x in ds.raw.items():
        for b, name in enumerate(band_group(g).band_names):
            np.testing.assert_array_equal(x[2, 0, b], sealake[EUROSAT_FILE_BANDS.index(name)])
    blue, green, red, nir = ds.raw["s2_10m"][2, 0].reshape(4, -1).mean(1)
    assert nir < red < green and nir < blue
    assert nir < green  # water absorbs NIR
    crop_nir = ds.raw["s2_10m"][0, 0, 3].mean()
    assert crop_nir > 5 * nir
    assert (ds.months == 0).all()


def test_registry_layout_drops_b10_and_missing_groups() -> None:
    layout, dropped = registry_layout(EUROSAT_FILE_BANDS)
    assert dropped == ["B10"]
    assert layout == {
        "s2_10m": [1, 2, 3, 7],
        "s2_20m": [4, 5, 6, 12, 10, 11],
        "s2_40m": [0, 8],
    }
    rgbn_only, dropped = registry_layout(("B04", "B03", "B02", "B08", "B01"))
    assert rgbn_only == {"s2_10m": [2, 1, 0, 3]}  # B01 alone cannot make s2_40m
    assert dropped == ["B01"]


def test_eurosat_bad_layout_is_named(tmp_path: Path) -> None:
    (tmp_path / "EuroSAT_MS" / "Forest").mkdir(parents=True)
    (tmp_path / "EuroSAT_MS" / "Forest" / "forest-1.tif").write_bytes(b"")
    with pytest.raises(ValueError, match=r"EuroSAT_MS/<Class>/<Class>_<n>\.tif"):
        read_eurosat(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_eurosat(tmp_path / "nowhere")


# --------------------------------------------------------------------------- BigEarthNet

BIGEARTHNET_BANDS = {  # band -> native pixels per 1200 m patch
    **dict.fromkeys(("B02", "B03", "B04", "B08"), 120),
    **dict.fromkeys(("B05", "B06", "B07", "B8A", "B11", "B12"), 60),
    **dict.fromkeys(("B01", "B09"), 20),
}


def band_values(patch: int, band: str, size: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (100 * patch + 10 * list(BIGEARTHNET_BANDS).index(band) + yy + 2 * xx + 1).astype(
        np.uint16
    )


def write_bigearthnet_patch(
    root: Path, name: str, patch: int, labels: list[str], date: str, skip: tuple[str, ...] = ()
) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    for band, size in BIGEARTHNET_BANDS.items():
        if band in skip:
            continue
        res = 1200 / size
        with rasterio.open(
            folder / f"{name}_{band}.tif",
            "w",
            driver="GTiff",
            width=size,
            height=size,
            count=1,
            dtype="uint16",
            crs="EPSG:32634",
            transform=Affine(res, 0, 500_000, 0, -res, 4_000_000),
        ) as ds:
            ds.write(band_values(patch, band, size), 1)
    meta = {
        "labels": labels,
        "coordinates": {"ulx": 500000, "uly": 4000000, "lrx": 501200, "lry": 3998800},
        "projection": 'PROJCS["WGS 84 / UTM zone 34N", ...]',
        "tile_source": "S2A_MSIL1C_20170613T101031_N0205_R022_T34VER_20170613T101032",
        "acquisition_date": date,
    }
    (folder / f"{name}_labels_metadata.json").write_text(json.dumps(meta))


def test_bigearthnet_layout_on_synthetic_folder(tmp_path: Path) -> None:
    write_bigearthnet_patch(
        tmp_path,
        "S2A_MSIL2A_20170613T101031_0_45",
        0,
        ["Coniferous forest", "Mixed forest"],
        "2017-06-13 10:10:31",
    )
    write_bigearthnet_patch(
        tmp_path,
        "S2A_MSIL2A_20171002T094031_1_12",
        1,
        ["Pastures", "Coniferous forest"],
        "2017-10-02 09:40:31",
        skip=("B09",),  # s2_40m incomplete here: not present for this patch, never zeros
    )
    (tmp_path / "not_a_patch").mkdir()  # folders without metadata are ignored
    ds = read_bigearthnet(tmp_path)
    assert ds.kind == "multilabel"
    assert ds.class_names == ("Coniferous forest", "Mixed forest", "Pastures")
    assert ds.labels.tolist() == [[True, True, False], [True, False, True]]
    assert ds.months.tolist() == [[5], [9]]
    assert set(ds.raw) == {"s2_10m", "s2_20m", "s2_40m"}
    assert ds.present["s2_40m"].tolist() == [[True], [False]]
    assert ds.present["s2_10m"].all() and ds.present["s2_20m"].all()
    for g, x in ds.raw.items():
        assert x.shape == (2, 1, len(band_group(g).bands), 120, 120)
    # 20 m B8A repeated 2x, 60 m B01 repeated 6x onto the 10 m grid
    b8a = ds.raw["s2_20m"][1, 0, band_group("s2_20m").band_names.index("B8A")]
    np.testing.assert_array_equal(b8a[::2, ::2], band_values(1, "B8A", 60))
    np.testing.assert_array_equal(b8a[1::2, 1::2], band_values(1, "B8A", 60))
    b01 = ds.raw["s2_40m"][0, 0, 0]
    np.testing.assert_array_equal(b01[5::6, ::6], band_values(0, "B01", 20))
    np.testing.assert_array_equal(ds.raw["s2_10m"][0, 0, 3], band_values(0, "B08", 120))
    train, test = split_by_key(ds.split_keys, 0.5, seed=0)
    assert sorted([*train, *test]) == [0, 1] and len(test) == 1


def test_bigearthnet_bad_metadata_is_named(tmp_path: Path) -> None:
    write_bigearthnet_patch(tmp_path, "p", 0, ["Pastures"], "13/06/2017")
    with pytest.raises(ValueError, match="acquisition_date"):
        read_bigearthnet(tmp_path)
    write_bigearthnet_patch(tmp_path / "ok", "q", 0, ["Pastures"], "2017-06-13 10:10:31")
    with pytest.raises(ValueError, match="not in class_names"):
        read_bigearthnet(tmp_path / "ok", class_names=("Mixed forest",))


FAST_EXTERNAL = EvalParams(
    patch_size=8,
    test_fraction=0.5,
    knn=KnnParams(k=3),
    linear=LinearProbeParams(max_epochs=10, patience=3, val_fraction=0.34),
)


def test_evaluate_bigearthnet_reports_multilabel_metrics(tmp_path: Path) -> None:
    forest, pasture = "Coniferous forest", "Pastures"
    for i in range(6):
        labels = [forest] if i % 2 else [forest, pasture]
        write_bigearthnet_patch(tmp_path / "ben", f"patch_{i}", i, labels, "2017-06-13 10:10:31")
    results = evaluate(None, "bigearthnet", tmp_path / "ben", tmp_path / "out", FAST_EXTERNAL)
    assert results["kind"] == "multilabel" and results["classes"] == [forest, pasture]
    assert (results["n_train"], results["n_test"]) == (3, 3)
    for row in results["rows"]:
        assert set(row) >= {"micro_f1", "macro_f1", "mAP"}
        assert 0.0 <= row["micro_f1"] <= 1.0 and 0.0 < row["mAP"] <= 1.0
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["rows"] == results["rows"]
    assert saved["files"] == {"json": "results.json", "markdown": "results.md"}


def test_evaluate_runs_on_real_eurosat_fixtures(tmp_path: Path) -> None:
    params = EvalParams(
        patch_size=8,
        test_fraction=0.34,
        knn=KnnParams(k=3),
        linear=LinearProbeParams(max_epochs=5, patience=2, val_fraction=0.5),
    )
    results = evaluate(None, "eurosat", EUROSAT, tmp_path, params)
    assert results["classes"] == ["AnnualCrop", "Pasture", "SeaLake"]
    assert (results["n_train"], results["n_test"]) == (2, 1)
    for row in results["rows"]:
        assert np.asarray(row["confusion"]).sum() == 1
        assert row["accuracy"] in (0.0, 1.0)


# --------------------------------------------------------------------------- BigEarthNet, real

REAL_BEN = Path(__file__).parents[1] / "data" / "bigearthnet"
"""Real BigEarthNet v1.0 patches: 2 S2 + their S1 partners, and one S1 patch whose S2
partner is not here (tests/data/bigearthnet/SOURCES.md)."""


def test_real_bigearthnet_pairs_s1_with_its_s2_patch() -> None:
    ds = read_bigearthnet(REAL_BEN)
    assert ds.split_keys.tolist() == [
        "S2A_MSIL2A_20170613T101031_87_48",
        "S2B_MSIL2A_20170924T93020_69_24",
    ]
    assert set(ds.raw) == {"s2_10m", "s2_20m", "s2_40m", "s1"}
    assert ds.present["s1"].all() and ds.months.tolist() == [[5], [8]]  # S2 dates
    s1 = ds.raw["s1"]
    assert s1.dtype == np.float32 and s1.shape == (2, 1, 2, 120, 120)
    vv = band_group("s1").band_names.index("VV")
    folder = REAL_BEN / "BigEarthNet-S1-v1.0" / "S1A_IW_GRDH_1SDV_20170925T043256_35VPK_69_24"
    with rasterio.open(folder / f"{folder.name}_VV.tif") as src:
        np.testing.assert_array_equal(s1[1, 0, vv], src.read(1))  # dB values as published
    assert float(s1.min()) > -40 and float(s1.max()) < 10  # backscatter in dB, not linear
    assert ds.labels.sum(axis=1).tolist() == [2, 5]  # Peatbogs, Water bodies, ... in the second
    assert "Peatbogs" in ds.class_names


def test_real_bigearthnet_s1_alone() -> None:
    ds = read_bigearthnet(REAL_BEN / "BigEarthNet-S1-v1.0")
    assert set(ds.raw) == {"s1"} and len(ds.split_keys) == 3
    assert ds.months.tolist() == [[5], [5], [8]]  # June, June, September (acquisition_time)
    assert not np.isnan(ds.raw["s1"]).any()


def test_bigearthnet_s1_pairing_errors_are_named(tmp_path: Path) -> None:
    import shutil

    for part in ("BigEarthNet-v1.0", "BigEarthNet-S1-v1.0"):
        shutil.copytree(REAL_BEN / part, tmp_path / part)
    s1 = tmp_path / "BigEarthNet-S1-v1.0" / "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48"
    meta_path = s1 / f"{s1.name}_labels_metadata.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "labels": ["Pastures"]}))
    with pytest.raises(ValueError, match=r"labels .* differ from its S2 patch"):
        read_bigearthnet(tmp_path)
    meta_path.write_text(json.dumps({**meta, "acquisition_time": None}))
    with pytest.raises(ValueError, match="acquisition_time=None is not a date"):
        read_bigearthnet(tmp_path / "BigEarthNet-S1-v1.0")
