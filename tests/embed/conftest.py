"""The embedding tests' corpus and checkpoint (tests/embed/corpus.py writes both)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.embed.corpus import write_checkpoint, write_embed_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("embed") / "corpus.zarr"
    write_embed_corpus(path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt"), seed=3)
