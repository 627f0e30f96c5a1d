"""Issue 7 acceptance on real pipeline output: 100 CPU steps (200 until the evidence
benchmark, `benchmarks/ablation.py`, took over the learning claim) of nano on the synthetic
world's corpus reduce the loss, and the encoder's token embeddings do not collapse."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from terracube.model.data.loader import CorpusStream
from terracube.model.data.plan import LoaderParams
from terracube.model.eval.evaluate import EvalParams, load_encoders
from terracube.model.train.diagnostics import effective_rank, embedding_std
from terracube.model.train.pretrain import PretrainSettings, train
from terracube.model.train.schedule import OptimParams

STEPS = 100
RANK_FLOOR = 8.0
"""Out of 128 dimensions; a collapsed encoder sits near 1."""


@pytest.mark.slow
def test_nano_100_steps_on_the_world_corpus(world_corpus: str, tmp_path: Path) -> None:

    crop = LoaderParams(batch_size=4, crop_sizes=(32,), patch_sizes=(8,), token_budget=4096)
    settings = PretrainSettings(
        store=world_corpus,
        checkpoint_dir=tmp_path / "ckpt",
        out_dir=tmp_path / "run",
        steps=STEPS,
        loader=crop,
        optim=OptimParams(lr=1e-3, warmup_steps=20),
        workers=0,
        checkpoint_interval=STEPS,
        device="cpu",
    )
    checkpoint = train(settings)

    rows = [
        json.loads(line) for line in (settings.out_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    losses = np.array([r["patch_discrimination"] for r in rows])
    head, tail = losses[:20], losses[-20:]
    first, last = head.mean(), tail.mean()
    # A real decrease, not step-to-step noise: more than 3 standard errors apart.
    standard_error = np.sqrt(head.var(ddof=1) / head.size + tail.var(ddof=1) / tail.size)
    assert first - last > 3 * standard_error, (first, last, standard_error)

    # Token embeddings of fresh crops from the same corpus, from the trained encoder.
    encoders = load_encoders(checkpoint, EvalParams(size="nano", patch_size=8))
    stream = CorpusStream(world_corpus, replace(crop, seed=99))
    item = next(iter(stream))
    with torch.no_grad():
        _, tokens = encoders.trained.eval().encode(item.batch)
    flat = torch.cat(
        [t[item.batch.token_valid(g)] for g, t in tokens.items() if g not in {"worldcover", "osm"}]
    )
    assert flat.shape[0] > 64
    rank, std = effective_rank(flat), embedding_std(flat)
    print(
        f"patch loss {first:.3f} -> {last:.3f} (se {standard_error:.3f}); "
        f"token effective rank {rank:.1f}, std {std:.3f}"
    )
    assert rank > RANK_FLOOR
    assert std > 1e-3
