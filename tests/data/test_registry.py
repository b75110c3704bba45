import pytest
from torch.utils.data import Dataset

from slimtorch import data


def test_list_datasets_has_the_four_builtins():
    assert set(data.list_datasets()) >= {"digits", "mnist", "cifar10", "tinyshakespeare"}


def test_unknown_name_lists_valid_ones():
    valid = "cifar10, digits, hf_disk, image_folder, mnist, text, tinyshakespeare"
    with pytest.raises(ValueError, match=rf"unknown dataset 'mnits'.*{valid}"):
        data.load("mnits")


def test_bad_split_lists_valid_ones():
    with pytest.raises(ValueError, match=r"split 'validation' is not one of \['train', 'test'\]"):
        data.load("digits", "validation")


def test_unknown_option_lists_allowed():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['blocksize'\]; allowed: \['block_size'"):
        data.load("tinyshakespeare", blocksize=3)


def test_register_dataset_adds_a_loadable_name():
    class Tiny(Dataset):
        def __init__(self, split):
            self.split = split

        def __len__(self):
            return 1

        def __getitem__(self, i):
            return self.split, 0

    @data.register_dataset("tiny_test_only", splits=("train",))
    def _load(split, root=None, augment=False):
        return Tiny(split)

    try:
        assert data.load("tiny_test_only")[0] == ("train", 0)
        with pytest.raises(ValueError, match="already registered"):
            data.register_dataset("tiny_test_only")(_load)
    finally:
        data.DATASETS._items.pop("tiny_test_only")
