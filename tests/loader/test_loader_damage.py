"""Damage the loader meets (issue 19, points 1 and 6): a deleted shard of a done sample is
a counted decode error, never a tile of zeros; each bad shard is said once; a training run
stops past its share of failed reads."""

from __future__ import annotations

import shutil
from itertools import islice
from pathlib import Path

import pytest
from terracube.model.data.loader import CorpusStream, LoaderItem
from terracube.model.data.plan import LoaderParams
from terracube.model.data.read_faults import DecodeBudget, DecodeBudgetExceeded
from terracube.model.data.stream import StreamingLoader
from terracube.model.train.pretrain import train
from terracube.workflows.cli.app import app
from terracube.workflows.pretrain_config import load_pretrain_config
from typer.testing import CliRunner

from tests.loader.corpus_fixture import N_SAMPLES, NOTHING_DONE, PER_SHARD
from tests.model.test_pretrain import write_config

ELIGIBLE = sorted(set(range(N_SAMPLES)) - {NOTHING_DONE})
SMALL = LoaderParams(batch_size=2, crop_sizes=(16, 32), patch_sizes=(4, 8), token_budget=1200)


def _epoch(path: Path, workers: int = 0) -> tuple[dict[int, LoaderItem], StreamingLoader]:
    dataset = CorpusStream(path, SMALL)
    loader = StreamingLoader(dataset, num_workers=workers)
    items: dict[int, LoaderItem] = {}
    seen: list[LoaderItem] = []
    for item in islice(loader, dataset.batches_in_epoch(0, workers)):
        items.update({s: item for s in item.samples})
        seen.append(item)
    loader.close()
    assert sorted(items) == ELIGIBLE
    return items, loader


@pytest.mark.parametrize("workers", [0, 2])
def test_a_deleted_data_shard_is_counted_never_zeros_and_said_once(
    corpus_path: Path, tmp_path: Path, workers: int
) -> None:
    path = tmp_path / "corpus.zarr"
    shutil.copytree(corpus_path, path)
    (path / "s2_10m" / "c" / "0" / "0" / "0" / "0" / "0").unlink()  # samples 0 and 1
    lost = [s for s in range(PER_SHARD) if s in ELIGIBLE]
    items, loader = _epoch(path, workers)
    reports = [r for item in {id(i): i for i in items.values()}.values() for r in item.bad_shards]
    for sample, item in items.items():
        b = item.samples.index(sample)
        valid = item.batch.valid["s2_10m"][b]
        assert bool(valid.any()) is (sample not in lost), sample
        assert item.batch.valid["s2_20m"][b].any()  # the sample's other groups are intact
    assert loader.decode_errors == len(lost)
    assert len(reports) == 1 and "s2_10m/c/0/0/0/0/0" in reports[0], reports
    assert "missing" in reports[0]


def test_a_deleted_valid_fraction_shard_leaves_its_samples_out(
    corpus_path: Path, tmp_path: Path
) -> None:
    path = tmp_path / "corpus.zarr"
    shutil.copytree(corpus_path, path)
    (path / "s2_20m_valid_fraction" / "c" / "0" / "0").unlink()
    items, loader = _epoch(path)
    for sample in range(PER_SHARD):
        if sample in items:
            b = items[sample].samples.index(sample)
            assert not items[sample].batch.valid["s2_20m"][b].any()
    assert loader.decode_errors >= 1


def test_the_budget_counts_reads_and_says_each_shard_once() -> None:
    budget = DecodeBudget(0.25)
    assert budget.add(8, 1, ("a: bad",)) == ["a: bad"]
    assert budget.add(8, 1, ("a: bad",)) == []  # said once
    with pytest.raises(DecodeBudgetExceeded, match=r"7 of 24 .* a: bad; b: bad"):
        budget.add(8, 5, ("b: bad",))
    with pytest.raises(ValueError, match="max_decode_error_share"):
        DecodeBudget(1.5)


def test_pretraining_on_a_damaged_store_stops_with_the_shard_named(
    corpus_path: Path, tmp_path: Path
) -> None:
    path = tmp_path / "corpus.zarr"
    shutil.copytree(corpus_path, path)
    (path / "s2_10m" / "c" / "0" / "0" / "0" / "0" / "0").unlink()
    config = write_config(tmp_path / "run", path, steps=6)
    with pytest.raises(DecodeBudgetExceeded, match="s2_10m/c/0/0/0/0/0"):
        train(load_pretrain_config(config).settings())
    result = CliRunner().invoke(app, ["pretrain", str(config)])
    assert result.exit_code == 2 and "terracube repair" in result.output, result.output
    assert "Traceback" not in result.output
    lenient = write_config(
        tmp_path / "lenient", path, steps=2, **{"data.max_decode_error_share": 1.0}
    )
    assert train(load_pretrain_config(lenient).settings()).is_file()
