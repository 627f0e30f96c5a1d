"""One shared-memory buffer per batch between DataLoader workers and the training process.

A `LoaderItem` holds ~40 small tensors (data, validity, months, two views of
encode/decode masks per group). torch moves every tensor through its own
shared-memory segment and file descriptor, which costs ~1.3 ms per tensor on
each side — more than decoding the batch. `pack` copies every tensor of an
object into one 64-byte-aligned uint8 tensor and pickles the rest with
persistent ids in their place; `unpack` rebuilds the object with tensors that
are zero-copy views of that buffer. The buffer is allocated in shared memory,
so sending it copies nothing more.
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
    """An object whose tensors live in `buffer` at `layout` [(offset, dtype, shape)]."""

    buffer: torch.Tensor
    payload: bytes
    layout: list[tuple[int, torch.dtype, tuple[int, ...]]]


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
        offset, dtype, shape = self.packed.layout[int(pid)]
        nbytes = torch.Size(shape).numel() * dtype.itemsize
        return self.packed.buffer[offset : offset + nbytes].view(dtype).view(shape)


def pack(obj: Any) -> Packed:
    """`obj` with every CPU tensor copied once into a single buffer."""
    file = io.BytesIO()
    pickler = _TensorPickler(file)
    pickler.dump(obj)
    layout, total = [], 0
    for t in pickler.tensors:
        if t.device.type != "cpu" or t.requires_grad:
            raise ValueError(
                f"pack moves CPU tensors without grad; got {t.device}, grad {t.requires_grad}"
            )
        total = -(-total // ALIGN) * ALIGN
        layout.append((total, t.dtype, tuple(t.shape)))
        total += t.numel() * t.element_size()
    buffer = _shared_bytes(total)
    for t, (offset, _, _) in zip(pickler.tensors, layout, strict=True):
        flat = t.contiguous().reshape(-1).view(torch.uint8)
        buffer[offset : offset + flat.numel()].copy_(flat)
    return Packed(buffer, file.getvalue(), layout)


def _shared_bytes(n: int) -> torch.Tensor:
    """n bytes allocated in shared memory up front, so that sending the buffer to another
    process passes a file descriptor instead of copying into a fresh segment (private
    torch API; a plain tensor when it is missing, which torch then shares by copying)."""
    new_shared = getattr(torch.UntypedStorage, "_new_shared", None)
    if new_shared is None or n == 0:
        return torch.empty(n, dtype=torch.uint8)
    return torch.empty(0, dtype=torch.uint8).set_(new_shared(n))


def unpack(packed: Packed) -> Any:
    """The packed object back, its tensors viewing `packed.buffer` (no copy)."""
    return _TensorUnpickler(packed).load()
