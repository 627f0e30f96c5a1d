"""SCL class masks are exact for every code a mask dtype can hold (lookup table or isin)."""

from __future__ import annotations

import numpy as np
import pytest
from terracube.catalog.registry import modality
from terracube.pipeline.cloudmask import clear_from_mask

SCL = modality("sentinel2_l2a").mask


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "uint32"])
def test_every_code_is_clear_unless_the_registry_says_invalid(dtype: str) -> None:
    info = np.iinfo(dtype)
    codes = np.arange(max(info.min, -300), min(info.max, 70000) + 1).astype(dtype)
    clear = clear_from_mask(codes.reshape(1, -1), SCL)[0]
    invalid = set(SCL.invalid)
    assert invalid and clear.dtype == bool
    assert [int(c) for c in codes[~clear]] == sorted(c for c in invalid if c in set(codes.tolist()))
