"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "real"
"""Real-data fixtures live beside the checkout (CI has shared/ there); never copied in."""


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """Root of the real-data fixtures; fails loudly (never skips) when they are absent."""
    if not FIXTURES_DIR.is_dir():
        pytest.fail(
            f"real-data fixtures not found at {FIXTURES_DIR}: check out shared/ beside the repo"
        )
    return FIXTURES_DIR
