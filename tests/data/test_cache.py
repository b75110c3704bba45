import numpy as np
import pytest

from slimtorch.data.cache import cached_arrays, decoded_dir, fingerprint


def test_build_once_then_reuse(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return {"a": np.arange(5), "names": np.array(["x", "yy"])}

    first = cached_arrays("toy", "k1", build)
    second = cached_arrays("toy", "k1", build)
    assert len(calls) == 1
    np.testing.assert_array_equal(second["a"], first["a"])
    assert second["names"].tolist() == ["x", "yy"]
    cached_arrays("toy", "k1", build, use_cache=False)
    assert len(calls) == 2


def test_damaged_cache_is_rebuilt(tmp_path):
    cached_arrays("toy", "k2", lambda: {"a": np.arange(3)})
    (decoded_dir("toy", "k2") / "a.npy").write_bytes(b"garbage")
    out = cached_arrays("toy", "k2", lambda: {"a": np.arange(4)})
    assert out["a"].tolist() == [0, 1, 2, 3]
    assert cached_arrays("toy", "k2", lambda: {"a": np.arange(9)})["a"].tolist() == [0, 1, 2, 3]


def test_unwritable_cache_only_warns(tmp_path, monkeypatch):
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    monkeypatch.setenv("SLIMTORCH_CACHE", str(blocker))
    with pytest.warns(UserWarning, match="could not write the toy cache"):
        out = cached_arrays("toy", "k3", lambda: {"a": np.ones(2)})
    assert out["a"].tolist() == [1.0, 1.0]


def test_fingerprint_follows_content_changes(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    a = fingerprint([p])
    assert fingerprint([p]) == a
    p.write_bytes(b"abcd")
    assert fingerprint([p]) != a
