"""Data tests never touch the user's cache or environment: each test gets its own cache directory."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_data_env(tmp_path, monkeypatch):
    monkeypatch.delenv("SLIMTORCH_DATA", raising=False)
    monkeypatch.setenv("SLIMTORCH_CACHE", str(tmp_path / "slimtorch-cache"))
    yield
