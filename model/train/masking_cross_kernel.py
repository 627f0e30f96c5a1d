"""Compiled core of OlmoEarth v1's `modality_cross_random` masking (allenai/
olmoearth_pretrain train/masking.py, `ModalityCrossRandomMaskingStrategy`, with v1's
encode_ratio 0.5, decode_ratio 0.5, at least 2 encoded band sets, maps decode-only).

Per view and sample:
1. Base mask, per modality: its tokens (all band groups and timesteps, invalid ones
   included) get a uniformly random status: floor(N * encode_ratio) encoded,
   floor(N * decode_ratio) decoded, the rest target-only. Invalid tokens then become
   missing: never encoded, never decoded.
2. Present groups P (registry order): a group with a valid token that is encoded in the
   base mask, and every decode-only group with a valid token.
3. Choice: with one present group it is encoded and none decoded; with two, the first
   is encoded and the second decoded; otherwise k_enc uniform in min(2, n)..n of the n
   encodable present groups are encoded and k_dec uniform in 1..|P| of all present
   groups decoded, drawn independently.
4. Rewrite: a group not chosen for encoding loses its encoded tokens (to target-only);
   an encoded group not chosen for decoding loses its decoded tokens. As in the
   reference, a group chosen for neither keeps its decoded tokens, and maps always do.
5. Fallback: a sample left with no encoded or no decoded token has every encodable
   modality re-drawn over its valid tokens (floor again; a single token is encoded).
   A sample with no valid encodable token gets no tokens at all.
Randomness is the splitmix64 of `masking_kernel`, seeded by the caller.
"""

from __future__ import annotations

import numba
import numpy as np
from terracube.model.train.masking_kernel import _below, _choose

_ENCODED, _TARGET, _DECODED, _MISSING = 0, 1, 2, 3


@numba.njit(cache=True, nogil=True)
def _draw(
    status: np.ndarray,
    valid: np.ndarray,
    starts: np.ndarray,
    sizes: np.ndarray,
    b: int,
    first: int,
    last: int,
    encode_ratio: float,
    decode_ratio: float,
    only_valid: bool,
    state: np.ndarray,
) -> None:
    """Random statuses for groups first..last-1 of sample b (one modality): exact counts
    over its tokens (all of them, or only the valid ones), invalid tokens missing."""
    n = 0
    for g in range(first, last):
        at = starts[g] + b * sizes[g]
        for j in range(at, at + sizes[g]):
            if valid[j] or not only_valid:
                n += 1
    if only_valid and n == 1:
        need_enc, need_dec = 1, 0
    else:
        need_enc, need_dec = int(n * encode_ratio), int(n * decode_ratio)
    remaining = n
    for g in range(first, last):
        at = starts[g] + b * sizes[g]
        for j in range(at, at + sizes[g]):
            if not valid[j] and only_valid:
                continue
            u = _below(state, remaining) if remaining > 0 else 0
            remaining -= 1
            if u < need_enc:
                need_enc -= 1
                s = _ENCODED
            elif u < need_enc + need_dec:
                need_dec -= 1
                s = _DECODED
            else:
                s = _TARGET
            status[j] = s if valid[j] else _MISSING


@numba.njit(cache=True, nogil=True)
def _modality_runs(modality: np.ndarray) -> np.ndarray:
    """First group of each modality's run of groups, then the group count."""
    runs = [0]
    for g in range(1, modality.shape[0]):
        if modality[g] != modality[g - 1]:
            runs.append(g)
    runs.append(modality.shape[0])
    return np.array(runs, np.int64)


@numba.njit(cache=True, nogil=True)
def cross_random_views(
    valid: np.ndarray,
    starts: np.ndarray,
    sizes: np.ndarray,
    encodable: np.ndarray,
    modality: np.ndarray,
    batch: int,
    min_encoded: int,
    encode_ratio: float,
    decode_ratio: float,
    seed: int,
    out: np.ndarray,
) -> None:
    """Fill `out` (bool (views, 2, M): encode, decode) from token validity `valid` (bool
    (M,)) laid out as in `masking_kernel.mask_views`; `modality` (groups,) ids, equal
    ids contiguous. See the module doc."""
    groups = sizes.shape[0]
    out[:] = False
    state = np.empty(1, np.uint64)
    state[0] = np.uint64(seed)
    status = np.empty(valid.shape[0], np.int8)
    order = np.empty(groups, np.int64)
    candidates = np.empty(groups, np.bool_)
    present = np.empty(groups, np.bool_)
    encoded = np.empty(groups, np.bool_)
    decoded = np.empty(groups, np.bool_)
    runs = _modality_runs(modality)
    for v in range(out.shape[0]):
        for b in range(batch):
            for r in range(runs.shape[0] - 1):  # 1. base mask, one modality at a time
                _draw(status, valid, starts, sizes, b, runs[r], runs[r + 1],
                      encode_ratio, decode_ratio, False, state)  # fmt: skip
            n_present = 0
            for g in range(groups):  # 2. present groups
                at = starts[g] + b * sizes[g]
                any_valid = False
                any_encoded = False
                for j in range(at, at + sizes[g]):
                    any_valid |= valid[j]
                    any_encoded |= status[j] == _ENCODED
                present[g] = any_valid and (any_encoded or not encodable[g])
                n_present += present[g]
            for g in range(groups):  # 3. choice
                encoded[g] = False
                decoded[g] = False
            if n_present <= 2:
                seen = 0
                for g in range(groups):
                    if present[g]:
                        if seen == 0:
                            encoded[g] = encodable[g]
                        else:
                            decoded[g] = True
                        seen += 1
            else:
                for g in range(groups):
                    candidates[g] = present[g] and encodable[g]
                _choose(candidates, min_encoded, state, order, encoded)
                _choose(present, 1, state, order, decoded)
            n_enc = 0
            n_dec = 0
            for g in range(groups):  # 4. rewrite
                at = starts[g] + b * sizes[g]
                for j in range(at, at + sizes[g]):
                    s = status[j]
                    if (s == _ENCODED and not encoded[g]) or (
                        s == _DECODED and encoded[g] and not decoded[g]
                    ):
                        s = _TARGET
                    status[j] = s
                    n_enc += s == _ENCODED
                    n_dec += s == _DECODED
            if n_enc == 0 or n_dec == 0:  # 5. fallback
                for r in range(runs.shape[0] - 1):
                    if encodable[runs[r]]:
                        _draw(status, valid, starts, sizes, b, runs[r], runs[r + 1],
                              encode_ratio, decode_ratio, True, state)  # fmt: skip
                n_enc = 0
                for g in range(groups):
                    at = starts[g] + b * sizes[g]
                    for j in range(at, at + sizes[g]):
                        n_enc += status[j] == _ENCODED
            for g in range(groups):
                at = starts[g] + b * sizes[g]
                for j in range(at, at + sizes[g]):
                    if n_enc > 0:
                        out[v, 0, j] = status[j] == _ENCODED
                        out[v, 1, j] = status[j] == _DECODED
