"""Reads that failed: each damaged shard said once, counted, and never read as zeros.

A loader worker meets the same damaged shard in every batch that samples from it; it
used to log two lines per batch, and a missing shard file read as a tile of zeros.
`ReadFaults` keeps, per process, which shard files were already reported, logs each
once, and hands the new ones to the batch (`LoaderItem.bad_shards`) so the training
process can say each once too and stop the run when too many reads fail
(`DecodeBudget`). A missing file of a format-2 store is `ShardMissingError`, which no
zarr fallback may answer: zarr would return the fill value.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

log = logging.getLogger("terracube.model.data.loader")

_FILE = re.compile(r"^(\S+?): ")


def fault_key(array: str, shard: int, exc: BaseException) -> str:
    """The shard file an error names (its message starts with it), else array/shard."""
    found = _FILE.match(str(exc))
    return found.group(1) if found else f"{array} shard {shard}"


@dataclass
class ReadFaults:
    """Failed reads of one process: damaged shards reported once each."""

    reported: set[str] = field(default_factory=set)
    new: list[str] = field(default_factory=list)
    """`path: reason` of shards reported since the last `take`."""

    def note(self, array: str, shard: int, exc: BaseException, what: str) -> None:
        """Record a failed read of `array`'s shard `shard`; `what` the loader does about it."""
        key = fault_key(array, shard, exc)
        if key in self.reported:
            log.debug("%s of %s shard %d: %s (%s)", what, array, shard, exc, key)
            return
        self.reported.add(key)
        reason = str(exc).removeprefix(f"{key}: ")
        self.new.append(f"{key}: {type(exc).__name__}: {reason}")
        log.info("%s: %s (%s; said once per shard)", key, reason, what)

    def take(self) -> tuple[str, ...]:
        out, self.new = tuple(self.new), []
        return out


DEFAULT_MAX_DECODE_ERROR_SHARE = 0.01
"""A run stops when more than 1 % of its (sample, band group) reads have failed."""


class DecodeBudgetExceeded(RuntimeError):
    """Too many reads failed for a run to be trusted; the message names the shards."""


class CorpusTooSmall(ValueError):
    """The corpus cannot fill one batch of the asked size; the message says what to lower."""


@dataclass
class DecodeBudget:
    """The share of (sample, band group) reads a training run may lose to damage."""

    max_share: float = DEFAULT_MAX_DECODE_ERROR_SHARE
    floor_reads: int = 0
    """The share is taken of at least this many reads (the run's first epoch), so one
    bad shard met in the first batches of a large corpus does not stop the run: the
    errors an epoch may lose are its share of the whole epoch's reads."""
    reads: int = 0
    errors: int = 0
    shards: dict[str, None] = field(default_factory=dict)
    """Every bad shard reported so far, in order (a dict as an ordered set)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_share <= 1.0:
            raise ValueError(f"max_decode_error_share={self.max_share}: use a share in [0, 1]")

    def add(self, reads: int, errors: int, bad_shards: tuple[str, ...] = ()) -> list[str]:
        """Count a batch; the shards it newly reports (to be said once). Raises
        `DecodeBudgetExceeded` when the failed share passes `max_share`."""
        self.reads += reads
        self.errors += errors
        fresh = [s for s in bad_shards if s not in self.shards]
        self.shards.update(dict.fromkeys(fresh))
        if self.errors and self.errors > self.max_share * max(self.reads, self.floor_reads):
            names = list(self.shards)
            raise DecodeBudgetExceeded(
                f"{self.errors} of {self.reads} (sample, band group) reads failed "
                f"({100 * self.errors / self.reads:.1f} % > {100 * self.max_share:g} %), in "
                f"{len(names)} shard file(s): {'; '.join(names[:3])}"
                f"{' ...' if len(names) > 3 else ''}. Run `terracube validate` on the "
                "store and `terracube repair CONFIG`, or raise data.max_decode_error_share"
            )
        return fresh
