"""CIFAR-10 from an image-folder tree, a ``.tar.gz`` of one, or the ``cifar-10-batches-py`` pickles.

Sources, tried in each place of :func:`~slimtorch.data.paths.search_places` (``<base>/cifar10/`` then
``<base>/``), in this order:

1. an image-folder tree ``train/<class>/*.jpg`` and ``test/<class>/*.jpg`` (classes sorted
   alphabetically, which for CIFAR-10 is also the standard label order);
2. an archive ``cifar10-jpg.tar.gz``, ``cifar10.tar.gz`` or ``cifar-10-python.tar.gz`` holding such a
   tree or the pickle batches (``root=`` may also be the archive itself);
3. a ``cifar-10-batches-py/`` directory (``data_batch_1..5``, ``test_batch``, ``batches.meta``), read
   with a restricted unpickler: only the known keys, only numpy arrays and plain types.

The source is decoded once (both splits; a progress bar shows the JPEG decoding) and cached as
``uint8`` ``.npy`` arrays under ``$SLIMTORCH_CACHE/decoded/``. Normalization uses the CIFAR-10
training-set channel mean (0.4914, 0.4822, 0.4465) and standard deviation (0.2470, 0.2435, 0.2616).
Augmentation: zero-pad 4, random 32x32 crop, random horizontal flip (He et al., 2016).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from tqdm.auto import tqdm

from slimtorch.core.errors import SlimtorchError
from slimtorch.data.cache import cached_arrays, fingerprint
from slimtorch.data.image_dataset import ImageTensorDataset
from slimtorch.data.image_folder import ImageCollector, iter_tar, list_tree, split_class_file
from slimtorch.data.paths import not_found_error, search_places
from slimtorch.data.registry import register_dataset
from slimtorch.data.safe_pickle import restricted_loads
from slimtorch.data.transforms import RandomCropFlip

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
ARCHIVES = ("cifar10-jpg.tar.gz", "cifar10.tar.gz", "cifar-10-python.tar.gz")
PICKLE_DIR = "cifar-10-batches-py"
#: Keys a CIFAR-10 batch dict may hold (``data`` and ``labels`` are required).
BATCH_KEYS = frozenset({"batch_label", "labels", "data", "filenames"})
META_KEYS = frozenset({"num_cases_per_batch", "label_names", "num_vis"})
_BATCH_RE = re.compile(r"^(data_batch_\d+|test_batch|batches\.meta)$")


# ---------------------------------------------------------------------------------------------- pickles


def _str_keys(obj: object, name: str, allowed: frozenset[str]) -> dict[str, object]:
    if not isinstance(obj, dict):
        raise SlimtorchError(f"{name}: expected a dict, found {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        key = k.decode("latin1") if isinstance(k, bytes) else k
        if not isinstance(key, str) or key not in allowed:
            raise SlimtorchError(
                f"{name}: unexpected key {k!r}; a CIFAR-10 file holds only {sorted(allowed)}"
            )
        out[key] = v
    return out


def read_batch(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode one CIFAR-10 batch pickle into ``(images (N, 3, 32, 32) uint8, labels (N,) int64)``.

    Raises:
        SlimtorchError: naming the file, if it is not a valid CIFAR-10 batch.
    """
    d = _str_keys(restricted_loads(data, name), name, BATCH_KEYS)
    if "data" not in d or "labels" not in d:
        raise SlimtorchError(f"{name}: a CIFAR-10 batch needs 'data' and 'labels', found {sorted(d)}")
    x, y = d["data"], d["labels"]
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        desc = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise SlimtorchError(f"{name}: 'data' must be a uint8 array (N, 3072), found {desc}")
    if not isinstance(y, (list, np.ndarray)) or not all(isinstance(v, (int, np.integer)) for v in y):
        raise SlimtorchError(f"{name}: 'labels' must be a list of integers")
    labels = np.asarray(y, dtype=np.int64)
    if labels.shape != (x.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES))):
        raise SlimtorchError(
            f"{name}: need {x.shape[0]} labels in 0..9, found {labels.shape[0]} "
            f"in [{labels.min(initial=0)}, {labels.max(initial=0)}]"
        )
    return x.reshape(-1, 3, 32, 32), labels  # rows are R(1024) G(1024) B(1024), row-major


def read_meta(data: bytes, name: str) -> list[str]:
    """Class names from ``batches.meta``."""
    d = _str_keys(restricted_loads(data, name), name, META_KEYS)
    names = d.get("label_names")
    if not isinstance(names, list) or not all(isinstance(n, (bytes, str)) for n in names):
        raise SlimtorchError(f"{name}: 'label_names' must be a list of strings")
    return [n.decode("utf-8") if isinstance(n, bytes) else n for n in names]


def batches_to_arrays(files: dict[str, tuple[bytes, str]], source: str) -> dict[str, np.ndarray]:
    """Assemble decoded pickles ``{basename: (bytes, full name)}`` into the cached array layout."""
    train = sorted((k for k in files if k.startswith("data_batch_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    if not train or "test_batch" not in files:
        raise SlimtorchError(f"{source}: need data_batch_1.. and test_batch, found {sorted(files)}")
    classes = read_meta(*files["batches.meta"]) if "batches.meta" in files else list(CLASSES)
    out: dict[str, np.ndarray] = {"classes": np.array(classes)}
    for split, names in (("train", train), ("test", ["test_batch"])):
        parts = [read_batch(*files[n]) for n in names]
        out[f"{split}_images"] = np.concatenate([p[0] for p in parts])
        out[f"{split}_labels"] = np.concatenate([p[1] for p in parts])
    return out


# ---------------------------------------------------------------------------------------------- sources


def _decode_tree(base: Path, progress: bool) -> dict[str, np.ndarray]:
    files = list_tree(base)
    col = ImageCollector()
    for split, cls, f in tqdm(files, desc=f"decoding {base}", unit="img", disable=not progress):
        try:
            data = f.read_bytes()
        except OSError as e:
            raise SlimtorchError(f"cannot read {f}: {e}") from None
        col.add(split, cls, f.name, data, str(f))
    return col.arrays(str(base))


def _decode_archive(path: Path, progress: bool) -> dict[str, np.ndarray]:
    col = ImageCollector()
    pickles: dict[str, tuple[bytes, str]] = {}
    bar = tqdm(desc=f"decoding {path.name}", unit="img", disable=not progress)
    with bar:
        for member, data in iter_tar(path):
            scf = split_class_file(member)
            if scf is not None:
                col.add(scf[0], scf[1], scf[2], data, f"{path}:{member}")
                bar.update()
            elif _BATCH_RE.match(PurePosixPath(member).name):
                pickles[PurePosixPath(member).name] = (data, f"{path}:{member}")
    if len(col):
        return col.arrays(str(path))
    if pickles:
        return batches_to_arrays(pickles, str(path))
    raise SlimtorchError(f"{path}: holds neither train/<class>/*.jpg images nor {PICKLE_DIR} batches")


def _decode_pickle_dir(d: Path, progress: bool) -> dict[str, np.ndarray]:
    files = {}
    for f in sorted(d.iterdir()):
        if _BATCH_RE.match(f.name):
            files[f.name] = (f.read_bytes(), str(f))
    return batches_to_arrays(files, str(d))


def _tree_files(d: Path) -> list[Path] | None:
    if not ((d / "train").is_dir() and (d / "test").is_dir()):
        return None
    # Class directories change their mtime when files are added or removed: a cheap fingerprint.
    return [d / s / c.name for s in ("train", "test") for c in sorted((d / s).iterdir()) if c.is_dir()]


def _pickle_files(d: Path) -> list[Path] | None:
    for cand in (d / PICKLE_DIR, d):
        if (cand / "data_batch_1").is_file() or (cand / "test_batch").is_file():
            return sorted(f for f in cand.iterdir() if _BATCH_RE.match(f.name))
    return None


Decoder = Callable[[Path, bool], dict[str, np.ndarray]]


def find_source(root: str | os.PathLike[str] | None = None) -> tuple[Path, Decoder, Iterable[Path]]:
    """The first CIFAR-10 source found: ``(path, decoder, files to fingerprint)``.

    Raises:
        SlimtorchError: listing every place searched when there is none.
    """
    if root is not None and Path(root).is_file():
        return Path(root), _decode_archive, [Path(root)]
    places = search_places("cifar10", root)
    for place in places:
        d = place.path
        tree = _tree_files(d)
        if tree:
            return d, _decode_tree, tree
        for a in ARCHIVES:
            if (d / a).is_file():
                return d / a, _decode_archive, [d / a]
        pick = _pickle_files(d)
        if pick:
            return pick[0].parent, _decode_pickle_dir, pick
    wanted = f"train/<class>/*.jpg + test/<class>/*.jpg, one of {', '.join(ARCHIVES)}, or {PICKLE_DIR}/"
    raise not_found_error("cifar10", wanted, places)


@register_dataset("cifar10", splits=("train", "test"))
def load_cifar10(
    split: str,
    root: str | os.PathLike[str] | None = None,
    augment: bool = False,
    use_cache: bool = True,
    progress: bool = True,
) -> ImageTensorDataset:
    """CIFAR-10 ``split`` (50,000 train / 10,000 test) as ``(3, 32, 32)`` normalized images.

    Args:
        split: ``"train"`` or ``"test"``.
        root: directory (or archive file) searched first.
        augment: pad-4 random crop + horizontal flip.
        use_cache: reuse / write the decoded ``.npy`` cache.
        progress: show a progress bar while decoding.
    """
    path, decode, files = find_source(root)
    arrays = cached_arrays("cifar10", fingerprint(files), lambda: decode(path, progress), use_cache=use_cache)
    return ImageTensorDataset(
        torch.from_numpy(arrays[f"{split}_images"]),
        torch.from_numpy(arrays[f"{split}_labels"]),
        MEAN,
        STD,
        augment=RandomCropFlip(padding=4) if augment else None,
        classes=[str(c) for c in arrays["classes"]],
        name=f"cifar10/{split}",
    )
