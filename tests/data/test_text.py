import pytest
import torch

from slimtorch import data
from slimtorch.core.errors import SlimtorchError

TEXT = "hello world, this is a tiny corpus.\nIt has two lines!\n" * 5


@pytest.fixture
def corpus(tmp_path):
    d = tmp_path / "tinyshakespeare"
    d.mkdir()
    (d / "input.txt").write_text(TEXT, encoding="utf-8")
    return tmp_path


def test_vocab_encode_decode(corpus):
    ds = data.load("tinyshakespeare", root=corpus, block_size=8)
    assert ds.chars == sorted(set(TEXT)) and ds.vocab_size == len(set(TEXT))
    ids = ds.encode("hello")
    assert ids.dtype == torch.long and ids.tolist() == [ds.chars.index(c) for c in "hello"]
    assert ds.decode(ids) == "hello"
    with pytest.raises(ValueError, match="character 'Z' is not in the vocabulary"):
        ds.encode("Zebra")


def test_split_90_10_and_windows(corpus):
    train = data.load("tinyshakespeare", "train", root=corpus, block_size=8)
    val = data.load("tinyshakespeare", "val", root=corpus, block_size=8)
    test = data.load("tinyshakespeare", "test", root=corpus, block_size=8)
    n = len(TEXT)
    cut = int(n * 0.9)
    assert train.decode(train.data) == TEXT[:cut] and val.decode(val.data) == TEXT[cut:]
    assert torch.equal(val.data, test.data)
    assert len(train) == (cut - 1) // 8
    x, y = train[2]
    assert x.shape == y.shape == (8,) and x.dtype == torch.long
    assert train.decode(x) == TEXT[16:24] and train.decode(y) == TEXT[17:25]
    x_last, y_last = train[len(train) - 1]
    assert train.decode(y_last)[-1] == TEXT[8 * len(train)]
    with pytest.raises(IndexError):
        train[len(train)]


def test_random_offsets_give_consecutive_targets(corpus):
    ds = data.load("tinyshakespeare", root=corpus, augment=True, block_size=8, num_samples=50)
    assert len(ds) == 50
    starts = set()
    for i in range(50):
        x, y = ds[i]
        s = ds.decode(x) + ds.decode(y)[-1]
        assert s in TEXT
        assert torch.equal(x[1:], y[:-1])
        starts.add(ds.decode(x))
    assert len(starts) > 10


def test_explicit_path_and_real_file(tmp_path, shared_data):
    p = tmp_path / "any.txt"
    p.write_text("abcabcabcabcabc")
    ds = data.load("tinyshakespeare", path=p, block_size=3)
    assert ds.chars == ["a", "b", "c"]
    real = data.load("tinyshakespeare", root=shared_data, block_size=128)
    assert real.vocab_size == 65 and len(real.data) == int(1115394 * 0.9)


def test_bad_inputs(tmp_path, corpus):
    with pytest.raises(SlimtorchError, match="does not exist"):
        data.load("tinyshakespeare", path=tmp_path / "nope.txt")
    with pytest.raises(SlimtorchError, match=r"too few for block_size=1000"):
        data.load("tinyshakespeare", "val", root=corpus, block_size=1000)
    with pytest.raises(ValueError, match="block_size must be a positive integer, got 0"):
        data.load("tinyshakespeare", root=corpus, block_size=0)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\xfa not utf8")
    with pytest.raises(SlimtorchError, match=r"bad.txt: not UTF-8 text"):
        data.load("tinyshakespeare", path=bad)
