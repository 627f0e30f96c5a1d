"""Checkpoints written atomically and loaded with `torch.load(weights_only=True)`.

Only tensors and primitive containers go in (no pickled objects), so loading a
checkpoint can never run code. A checkpoint is written to a temp file in the same
folder, fsynced, then `os.replace`d over its name: a crash leaves the previous
checkpoint intact and never a torn file.

`load_checkpoint` recognises a file before trusting it: empty, not a `torch.save`
archive, unreadable (truncated, random bytes) and not terracube's (no `format`) each
raise `CheckpointError` naming the file, where torch raised an IndexError or an
OSError 55 lines deep, or printed `Aborted.` for an empty file.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

_NAME = re.compile(r"step_(\d{8})\.pt")
_ZIP_MAGIC = b"PK\x03\x04"
"""The first bytes of every `torch.save` file (a zip archive) since torch 1.6."""


class CheckpointError(ValueError):
    """A file is not a readable terracube checkpoint; the message names it and what to do."""


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"step_{step:08d}.pt"


def save_checkpoint(directory: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Atomically write `state` as step_<step>.pt and keep only the newest `keep` checkpoints."""
    directory.mkdir(parents=True, exist_ok=True)
    target = checkpoint_path(directory, step)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return target


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints in `directory`, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _NAME.fullmatch(p.name))


def latest_checkpoint(directory: Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def load_checkpoint(path: Path, expected_format: int | None = None) -> dict[str, Any]:
    """Load with weights_only=True (tensors and primitives only, never arbitrary code),
    after recognising the file; with `expected_format`, also check that it is a terracube
    checkpoint of that format."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            head = fh.read(len(_ZIP_MAGIC))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} cannot be opened ({exc.strerror})") from None
    if not head:
        raise CheckpointError(
            f"checkpoint {path} is empty (0 bytes), e.g. a copy that was cut off; delete it "
            "or pass another step_*.pt"
        )
    if head != _ZIP_MAGIC:
        raise CheckpointError(
            f"{path} is not a checkpoint: torch.save files are zip archives and this one "
            "does not start like one; pass a step_*.pt written by terracube pretrain"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path} holds pickled Python objects, which terracube never loads (weights_only "
            "loading: tensors and primitives only); pass a step_*.pt written by terracube"
        ) from None
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {str(exc)[:160]}); "
            "it is probably truncated or damaged: delete it or pass another step_*.pt"
        ) from None
    if expected_format is None:
        return state
    if not isinstance(state, dict) or "format" not in state or "model" not in state:
        raise CheckpointError(
            f"{path} is a torch file but not a terracube pretraining checkpoint (it has no "
            "'format' and 'model' entries)"
        )
    if state["format"] != expected_format:
        raise CheckpointError(
            f"{path} has checkpoint format {state['format']!r}; this terracube reads format "
            f"{expected_format} (see CHECKPOINT_FORMAT in model/train/pretrain.py): "
            "retrain, or use the terracube version that wrote it"
        )
    return state


def trained_patch_size(settings: dict[str, Any]) -> int | None:
    """The patch size a checkpoint's run trained at (the largest of several: fewest tokens);
    None when its settings do not say."""
    loader = settings.get("loader") if isinstance(settings, dict) else None
    sizes = loader.get("patch_sizes") if isinstance(loader, dict) else None
    return max(int(p) for p in sizes) if sizes else None


def rng_states() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) RNG states as tensors and primitives."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_states(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        (
            n["kind"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
