"""One shared-memory buffer per batch between DataLoader workers and the training process.

A `LoaderItem` holds ~40 small tensors (data, validity, months, two views of
encode/decode masks per group). torch moves every tensor through its own
shared-memory segment and file descriptor, which costs ~1.3 ms per tensor on
each side — more than decoding the batch. The worker builds a batch's big
tensors in place in one shared-memory arena (`carve`); `pack` keeps those where
they are, copies the small rest (masks, months) into a second shared buffer and
pickles everything else with persistent ids in the tensors' place; `unpack`
rebuilds the object with tensors that are zero-copy views of the two buffers.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from typing import Any

import torch

ALIGN = 64


@dataclass
class Packed:
    """An object whose tensors live in `buffers` at `layout` [(buffer, offset, dtype, shape)]."""

    buffers: tuple[torch.Tensor, ...]
    payload: bytes
    layout: list[tuple[int, int, torch.dtype, tuple[int, ...]]]


class _TensorPickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.tensors: list[torch.Tensor] = []

    def persistent_id(self, obj: Any) -> int | None:
        if isinstance(obj, torch.Tensor):
            self.tensors.append(obj)
            return len(self.tensors) - 1
        return None


class _TensorUnpickler(pickle.Unpickler):
    def __init__(self, packed: Packed) -> None:
        super().__init__(io.BytesIO(packed.payload))
        self.packed = packed

    def persistent_load(self, pid: Any) -> torch.Tensor:
        which, offset, dtype, shape = self.packed.layout[int(pid)]
        nbytes = torch.Size(shape).numel() * dtype.itemsize
        return self.packed.buffers[which][offset : offset + nbytes].view(dtype).view(shape)


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def carve(specs: list[tuple[torch.dtype, tuple[int, ...]]], shared: bool) -> list[torch.Tensor]:
    """Uninitialised tensors of these (dtype, shape) laid out in one byte buffer (in shared
    memory when `shared`), so a worker can build a batch in place and `pack` it with no copy."""
    offsets, total = [], 0
    for dtype, shape in specs:
        offsets.append(total)
        total = _aligned(total + torch.Size(shape).numel() * dtype.itemsize)
    arena = _shared_bytes(total) if shared else torch.empty(total, dtype=torch.uint8)
    return [
        arena[o : o + torch.Size(shape).numel() * dtype.itemsize].view(dtype).view(shape)
        for o, (dtype, shape) in zip(offsets, specs, strict=True)
    ]


def pack(obj: Any, arena: torch.Tensor | None = None) -> Packed:
    """`obj` with its CPU tensors in at most two buffers: contiguous tensors that already live
    in `arena` (a tensor from `carve`) stay there; every other one is copied once into a new
    shared buffer."""
    file = io.BytesIO()
    pickler = _TensorPickler(file)
    pickler.dump(obj)
    base = None if arena is None else arena.untyped_storage()
    layout, total, copies = [], 0, []
    for t in pickler.tensors:
        if t.device.type != "cpu" or t.requires_grad:
            raise ValueError(
                f"pack moves CPU tensors without grad; got {t.device}, grad {t.requires_grad}"
            )
        if (
            base is not None
            and t.untyped_storage().data_ptr() == base.data_ptr()
            and t.is_contiguous()
        ):
            offset = t.data_ptr() - base.data_ptr()
            layout.append((0, offset, t.dtype, tuple(t.shape)))
            continue
        layout.append((1, total, t.dtype, tuple(t.shape)))
        copies.append((t, total))
        total = _aligned(total + t.numel() * t.element_size())
    buffer = _shared_bytes(total)
    for t, offset in copies:
        flat = t.contiguous().reshape(-1).view(torch.uint8)
        buffer[offset : offset + flat.numel()].copy_(flat)
    whole = torch.empty(0, dtype=torch.uint8) if base is None else _whole_bytes(arena)
    return Packed((whole, buffer), file.getvalue(), layout)


def _whole_bytes(t: torch.Tensor) -> torch.Tensor:
    """The whole storage behind `t` as a flat uint8 tensor."""
    storage = t.untyped_storage()
    return torch.empty(0, dtype=torch.uint8).set_(storage, 0, (storage.nbytes(),))


def _shared_bytes(n: int) -> torch.Tensor:
    """n bytes allocated in shared memory up front, so that sending the buffer to another
    process passes a file descriptor instead of copying into a fresh segment (private
    torch API; a plain tensor when it is missing, which torch then shares by copying)."""
    new_shared = getattr(torch.UntypedStorage, "_new_shared", None)
    if new_shared is None or n == 0:
        return torch.empty(n, dtype=torch.uint8)
    return torch.empty(0, dtype=torch.uint8).set_(new_shared(n))


def unpack(packed: Packed) -> Any:
    """The packed object back, its tensors viewing `packed.buffers` (no copy)."""
    return _TensorUnpickler(packed).load()
