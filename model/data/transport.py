"""One shared-memory buffer per batch between DataLoader workers and the training process.

A `LoaderItem` holds ~40 small tensors (data, validity, months, two views of
encode/decode masks per group). torch moves every tensor through its own
shared-memory segment and file descriptor, which costs ~1.3 ms per tensor on
each side — more than decoding the batch. The worker builds a batch's big
tensors in place in one shared-memory arena (`carve`); `pack` keeps those where
they are, copies the small rest (masks, months) into a second shared buffer and
pickles everything else with persistent ids in the tensors' place; `unpack`
rebuilds the object with tensors that are zero-copy views of the two buffers.

Creating a shared segment per batch and faulting its fresh pages in costs a worker
more than it saves (~7 ms per batch of 4 on 2 cores: a third of the worker's time).
So `StreamingLoader` sets up an `ArenaRing` before its workers start: a few
batch-sized slots per worker in one shared segment that every process maps. A
worker builds a batch in a free slot of its own, masks included, and sends only the
slot number and the small pickle; the training process views the slot in place
(`ArenaRing.lease`), and the slot is free again when the last tensor viewing it is
gone. A batch that does not fit, or a worker whose slots are all still held by the
consumer, falls back to a fresh segment, so holding batches never blocks the stream.
"""

from __future__ import annotations

import io
import pickle
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

ALIGN = 64


@dataclass
class Packed:
    """An object whose tensors live in `buffers` at `layout` [(buffer, offset, dtype, shape)];
    buffer 0 is slot `slot` of the receiver's `ArenaRing` when `slot` is set."""

    buffers: tuple[torch.Tensor, ...]
    payload: bytes
    layout: list[tuple[int, int, torch.dtype, tuple[int, ...]]]
    slot: int | None = None


class _SlotLease:
    """Exposes one ring slot to numpy; when the last array (and tensor) over it is freed,
    the slot is marked free for its worker again."""

    def __init__(self, ring: ArenaRing, slot: int) -> None:
        start = ring.memory.data_ptr() + slot * ring.slot_bytes
        self.__array_interface__ = {
            "data": (start, False),
            "shape": (ring.slot_bytes,),
            "typestr": "|u1",
            "version": 3,
        }
        self._keep = ring.memory  # the mapping outlives every lease on it
        weakref.finalize(self, _release, ring.busy, slot)


def _release(busy: torch.Tensor, slot: int) -> None:
    busy[slot] = 0


class ArenaRing:
    """`per_worker` reusable slots of `slot_bytes` per worker in one shared segment (see the
    module doc). Created before the workers start, so that every process maps it."""

    def __init__(self, workers: int, per_worker: int, slot_bytes: int) -> None:
        self.slot_bytes = _aligned(max(slot_bytes, ALIGN))
        self.per_worker = per_worker
        n = workers * per_worker
        self.memory = torch.empty(n * self.slot_bytes, dtype=torch.uint8).share_memory_()
        self.busy = torch.zeros(n, dtype=torch.int32).share_memory_()
        """1 from a worker's claim until the consumer's last view of the slot is freed."""
        self._leased: weakref.WeakValueDictionary[int, _SlotLease] = weakref.WeakValueDictionary()

    def claim(self, worker: int) -> tuple[int, torch.Tensor] | None:
        """A free slot of this worker's (marked busy) and its bytes, or None if all are held.
        Only a worker sets its slots busy and only the consumer frees them: no race."""
        first = worker * self.per_worker
        flags = self.busy.numpy()[first : first + self.per_worker]
        free = np.flatnonzero(flags == 0)
        if len(free) == 0:
            return None
        slot = first + int(free[0])
        flags[slot - first] = 1
        start = slot * self.slot_bytes
        return slot, self.memory[start : start + self.slot_bytes]

    def lease(self, slot: int) -> torch.Tensor:
        """Slot `slot` as a uint8 tensor in the consumer; freed with its last view."""
        lease = _SlotLease(self, slot)
        self._leased[slot] = lease
        return torch.from_numpy(np.asarray(lease))

    def free_unleased(self) -> None:
        """Free every slot the consumer holds no view of: the claims of workers that were
        shut down with batches in flight (called before new workers start)."""
        held = set(self._leased.keys())
        for slot in range(len(self.busy)):
            if slot not in held:
                self.busy[slot] = 0


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


def _offsets(specs: list[tuple[torch.dtype, tuple[int, ...]]]) -> tuple[list[int], int]:
    """Each tensor's aligned byte offset in `carve`'s buffer, and the buffer's size."""
    offsets, total = [], 0
    for dtype, shape in specs:
        offsets.append(total)
        total = _aligned(total + torch.Size(shape).numel() * dtype.itemsize)
    return offsets, total


def carve_bytes(specs: list[tuple[torch.dtype, tuple[int, ...]]]) -> int:
    """Bytes `carve` lays these tensors out in."""
    return _offsets(specs)[1]


def carve(
    specs: list[tuple[torch.dtype, tuple[int, ...]]],
    shared: bool,
    region: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Uninitialised tensors of these (dtype, shape) laid out in one byte buffer — `region`
    (a ring slot) when given, else a new one, in shared memory when `shared` — so a worker
    can build a batch in place and `pack` it with no copy."""
    offsets, total = _offsets(specs)
    if region is not None:
        if region.numel() < total:
            raise ValueError(f"{total} bytes of tensors do not fit a {region.numel()}-byte region")
        arena = region
    else:
        arena = _shared_bytes(total) if shared else torch.empty(total, dtype=torch.uint8)
    return [
        arena[o : o + torch.Size(shape).numel() * dtype.itemsize].view(dtype).view(shape)
        for o, (dtype, shape) in zip(offsets, specs, strict=True)
    ]


def pack(
    obj: Any,
    arena: torch.Tensor | None = None,
    slot: tuple[int, torch.Tensor, int] | None = None,
) -> Packed:
    """`obj` with its CPU tensors in at most two buffers: contiguous tensors that already live
    in `arena` (a tensor from `carve`) stay there; every other one is copied once into a new
    shared buffer. With `slot` = (ring slot, its bytes, bytes already used) the arena is that
    slot: tensors in it stay, the rest are copied into its unused tail when they fit, and
    buffer 0 is not sent (the receiver maps the ring)."""
    file = io.BytesIO()
    pickler = _TensorPickler(file)
    pickler.dump(obj)
    if slot is not None:
        region = slot[1]
        start, stop, spare = region.data_ptr(), region.data_ptr() + region.numel(), slot[2]
    elif arena is not None:
        whole = _whole_bytes(arena)
        start, stop, spare = whole.data_ptr(), whole.data_ptr() + whole.numel(), None
    else:
        start = stop = 0
        spare = None
    rest = [t for t in pickler.tensors if not _inside(t, start, stop)]
    rest_bytes = sum(_aligned(t.numel() * t.element_size()) for t in rest)
    into_slot = slot is not None and spare is not None and spare + rest_bytes <= slot[1].numel()
    # into_slot implies spare is not None; restated so that the checker narrows it
    layout, total, copies = [], spare if into_slot and spare is not None else 0, []
    for t in pickler.tensors:
        if t.device.type != "cpu" or t.requires_grad:
            raise ValueError(
                f"pack moves CPU tensors without grad; got {t.device}, grad {t.requires_grad}"
            )
        if _inside(t, start, stop):
            layout.append((0, t.data_ptr() - start, t.dtype, tuple(t.shape)))
            continue
        layout.append((0 if into_slot else 1, total, t.dtype, tuple(t.shape)))
        copies.append((t, total))
        total = _aligned(total + t.numel() * t.element_size())
    target = slot[1] if into_slot and slot is not None else _shared_bytes(total)
    for t, offset in copies:
        flat = t.contiguous().reshape(-1).view(torch.uint8)
        target[offset : offset + flat.numel()].copy_(flat)
    empty = torch.empty(0, dtype=torch.uint8)
    if slot is not None:
        return Packed((empty, empty if into_slot else target), file.getvalue(), layout, slot[0])
    first = empty if arena is None else _whole_bytes(arena)
    return Packed((first, target), file.getvalue(), layout)


def _inside(t: torch.Tensor, start: int, stop: int) -> bool:
    """Contiguous and wholly inside the byte range [start, stop)."""
    begin = t.data_ptr()
    return t.is_contiguous() and start <= begin and begin + t.numel() * t.element_size() <= stop


def _whole_bytes(t: torch.Tensor) -> torch.Tensor:
    """The whole storage behind `t` as a flat uint8 tensor."""
    storage = t.untyped_storage()
    # stride (1,) is set_'s default for a flat size; the stubs only take all four arguments
    return torch.empty(0, dtype=torch.uint8).set_(storage, 0, (storage.nbytes(),), (1,))


def _shared_bytes(n: int) -> torch.Tensor:
    """n bytes allocated in shared memory up front, so that sending the buffer to another
    process passes a file descriptor instead of copying into a fresh segment (private
    torch API; a plain tensor when it is missing, which torch then shares by copying)."""
    new_shared = getattr(torch.UntypedStorage, "_new_shared", None)
    if new_shared is None or n == 0:
        return torch.empty(n, dtype=torch.uint8)
    return torch.empty(0, dtype=torch.uint8).set_(new_shared(n))


def unpack(packed: Packed, ring: ArenaRing | None = None) -> Any:
    """The packed object back, its tensors viewing `packed.buffers` — buffer 0 being slot
    `packed.slot` of `ring` when set — with no copy."""
    if packed.slot is not None:
        if ring is None:
            raise ValueError(f"batch in ring slot {packed.slot}, but no ring to read it from")
        packed.buffers = (ring.lease(packed.slot), *packed.buffers[1:])
    return _TensorUnpickler(packed).load()
