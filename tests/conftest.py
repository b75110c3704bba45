"""Shared fixtures: fixed seeds, a fixed thread count, and where the shared datasets are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

#: ../shared/data beside the project (present in CI and on developer machines).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    yield


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def user_code():
    """``tests/user_code.py``: a user's own model factory and data, written into a test's folder."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("slimtorch_tests_user_code", Path(__file__).with_name("user_code.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
