from pathlib import Path

import pytest

from slimtorch import data
from slimtorch.core.errors import SlimtorchError
from slimtorch.data.paths import cache_dir, search_places


def test_lookup_order_root_then_env_then_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMTORCH_DATA", str(tmp_path / "env"))
    places = [(p.path, p.origin) for p in search_places("mnist", tmp_path / "r")]
    assert places == [
        (tmp_path / "r" / "mnist", "root= argument"),
        (tmp_path / "r", "root= argument"),
        (tmp_path / "env" / "mnist", "$SLIMTORCH_DATA"),
        (tmp_path / "env", "$SLIMTORCH_DATA"),
        (cache_dir() / "mnist", "cache dir"),
        (cache_dir(), "cache dir"),
    ]


def test_cache_dir_defaults_to_home(monkeypatch):
    monkeypatch.delenv("SLIMTORCH_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "slimtorch"


@pytest.mark.parametrize("name", ["mnist", "cifar10", "tinyshakespeare"])
def test_missing_files_error_lists_every_place_and_the_env_var(name, tmp_path):
    root = tmp_path / "nothing-here"
    root.mkdir()  # an existing but empty root (a root that does not exist is refused before any search)
    with pytest.raises(SlimtorchError) as e:
        data.load(name, root=root)
    msg = str(e.value)
    for p in search_places(name, root):
        assert f"{p.path}  ({p.origin}" in msg
    assert "SLIMTORCH_DATA is not set" in msg
    assert "export SLIMTORCH_DATA=" in msg


def test_missing_files_error_shows_env_value(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMTORCH_DATA", str(tmp_path / "env"))
    with pytest.raises(SlimtorchError, match=r"SLIMTORCH_DATA=.*env\b"):
        data.load("mnist")
