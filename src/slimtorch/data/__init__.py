"""Datasets: ``load(name, split, root=None, augment=False, **kwargs)``, subsets and loaders.

>>> from slimtorch import data
>>> train = data.load("digits", "train")          # bundled, needs no files
>>> x, y = train[0]                               # (1, 8, 8) float32, int64
>>> calib = data.calibration_subset(train, 128, seed=0)

Registered datasets: ``digits``, ``mnist``, ``cifar10``, ``tinyshakespeare``. Files are looked up in
``root=``, then ``$SLIMTORCH_DATA``, then ``~/.cache/slimtorch`` (``<base>/<name>/`` or ``<base>/``);
decoded arrays are cached as ``.npy`` under ``$SLIMTORCH_CACHE`` (default ``~/.cache/slimtorch``).
A ``root=`` that does not exist is an error.

Your own data, read from ``root=`` only: ``image_folder`` (class subfolders of images), ``arrays``
(a ``.npz`` with ``x``/``y`` or a ``.npy`` pair), ``text`` (a UTF-8 file, character-level LM) and
``hf_disk`` (a Hugging Face ``datasets`` ``save_to_disk`` folder; needs ``datasets``).
:func:`resolve` turns a path given as the dataset (``--data ./pets``) into one of these.

Language-model calibration: :func:`token_sequences` cuts ``num_samples`` random ``seq_len``-token windows
from a 1-D token stream (e.g. ``tokenizer(text, return_tensors="pt").input_ids``), the GPTQ / AWQ recipe; a
stream shorter than ``seq_len`` is an error that says so.
"""

from slimtorch.core.blockwise import token_sequences
from slimtorch.data import (  # noqa: F401  (registration)
    arrays,
    cifar,
    digits,
    hf_disk,
    mnist,
    text,
    text_file,
    user_images,
)
from slimtorch.data.arrays import ArrayDataset
from slimtorch.data.cache import cached_arrays, fingerprint
from slimtorch.data.image_dataset import ImageTensorDataset
from slimtorch.data.paths import ENV_CACHE, ENV_DATA, cache_dir, search_places
from slimtorch.data.registry import DATASETS, list_datasets, load, register_dataset
from slimtorch.data.resolve import detect_kind, resolve
from slimtorch.data.subsets import calibration_subset, make_loader, stratified_split
from slimtorch.data.text import CharDataset
from slimtorch.data.transforms import RandomCropFlip, RandomShift

__all__ = [
    "DATASETS",
    "ArrayDataset",
    "ENV_CACHE",
    "ENV_DATA",
    "CharDataset",
    "ImageTensorDataset",
    "RandomCropFlip",
    "RandomShift",
    "cache_dir",
    "cached_arrays",
    "detect_kind",
    "calibration_subset",
    "fingerprint",
    "list_datasets",
    "load",
    "make_loader",
    "register_dataset",
    "resolve",
    "search_places",
    "stratified_split",
    "token_sequences",
]
