"""Why an item cannot be used: one error type with a fixed reason the plan counts by."""

from __future__ import annotations


class ItemNormalizationError(ValueError):
    """A STAC item that cannot be turned into a NormalizedItem; the message says why.

    `reason` is a short fixed phrase (REASONS) the plan summary counts items by.
    """

    def __init__(self, message: str, reason: str = "malformed item") -> None:
        super().__init__(message)
        self.reason = reason


REASONS = (
    "unknown collection",
    "unsupported collection",
    "unsupported platform",
    "missing band",
    "missing mask",
    "relative href",
    "no geometry",
    "bad datetime",
    "unknown S2 baseline",
    "non-integral DN offset",
    "unsafe href",
    "other modality",
    "malformed item",
)
"""Every `reason` an item is refused for; `malformed item` covers content that broke a
reader (a wrong type, a field of the wrong shape)."""
