"""The loader tests' corpora: one small structured corpus, and a copy with statistics."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from terracube.model.data.pixel_stats import stats_command

from tests.loader.corpus_fixture import write_loader_corpus


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("loader") / "corpus.zarr"
    write_loader_corpus(path)
    return path


@pytest.fixture(scope="module")
def stats_path(corpus_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stats") / "corpus.zarr"
    shutil.copytree(corpus_path, path)
    stats_command(path)
    return path
