"""Image data sets as torch datasets: normalised ``(C, H, W)`` float tensors with int labels.

Every stage reads data through ``load_dataset(name, split)``, so training, conversion, simulation and
reports see the same pixels, the same normalisation and the same test order.

- ``digits``: scikit-learn's 8x8 handwritten digits (embedded, no download), pixel/16, split 80/20 with a
  fixed seed, stratified; normalised with the train split's mean/std.
- ``cifar10`` / ``cifar100``: torchvision's on-disk layout (``cifar-10-batches-py``,
  ``cifar-100-python``; ``download=True`` fetches it with torchvision), or a zipped ImageFolder copy
  (``train.zip``/``test.zip`` holding ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``).
- ``tinyimagenet``: the official ``tiny-imagenet-200`` layout as a folder or a zip; the test split is
  the official val split, labelled by ``val/val_annotations.txt``.
- ``imagefolder``: any folder or zip with ``train/<class>/...`` and ``test/<class>/...`` (or ``val/``).

Zip and folder copies are decoded once into a uint8 array and cached (``$LASNN_CACHE`` or
``~/.cache/lasnn``), keyed by the source's path, size and modification time; data sets are held in
memory, which suits the small-image data sets lasnn targets. Augmentation uses torchvision transforms
on tensors (random crop with padding, plus horizontal flips for natural images).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import warnings
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import transforms
from tqdm import tqdm

from lasnn.artifacts import atomic_write
from lasnn.errors import LasnnError

DATASETS = ("digits", "cifar10", "cifar100", "tinyimagenet", "imagefolder")
SPLITS = ("train", "test")
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_CACHE_VERSION = 2  # bump when the cached arrays' meaning changes

# Per-channel mean/std over all pixels of the standard train splits, on the [0, 1] scale. CIFAR: the
# values commonly used with the original pickles (the CIFAR-10 ones agree with ../shared/datasets/cifar10's
# JPEG train.zip to 0.002, checked in tests/test_data.py). Tiny ImageNet: computed here over the 40,000
# train images of ../shared/datasets/tiny-imagenet-200-subset.zip (first 200 of each class).
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
TINYIMAGENET_STATS = ((0.4800, 0.4481, 0.3977), (0.2765, 0.2691, 0.2819))

DIGITS_TEST_FRACTION = 0.2
DIGITS_SEED = 0


@dataclass(frozen=True)
class DatasetInfo:
    """What the model and later stages need to know about a data set."""

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]


class ImageArrayDataset(Dataset):
    """Images held in memory as a ``[N, C, H, W]`` tensor (uint8, or float in [0, 1]) with int labels.

    ``augment`` applies the random transforms before normalisation; ``batch`` normalises a slice at
    once without augmentation (fast path of ``first_samples``).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augmentation: list[Callable] | None = None,
        mirror: bool = True,
    ) -> None:
        if images.dim() != 4 or len(images) != len(labels):
            raise ValueError(f"images {tuple(images.shape)} and labels {tuple(labels.shape)} do not match")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.mean, self.std = tuple(mean), tuple(std)
        self.mirror = mirror  # whether horizontal flips are a valid augmentation (not for digits)
        self.augment = bool(augmentation)
        self._normalise = transforms.Compose(
            [transforms.ConvertImageDtype(torch.float32), transforms.Normalize(mean, std)]
        )
        self.transform = transforms.Compose([*(augmentation or []), self._normalise])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), int(self.labels[index])

    def normalised(self, indices: torch.Tensor) -> torch.Tensor:
        """The images at ``indices``, normalised, never augmented."""
        return self._normalise(self.images[indices])

    def batch(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Items ``start:stop`` normalised, never augmented."""
        return self._normalise(self.images[start:stop]), self.labels[start:stop].clone()


# ----------------------------------------------------------------------------------------- public API


def default_data_root() -> Path:
    return Path(os.environ.get("LASNN_DATA_ROOT") or "./data")


def cache_dir() -> Path:
    return Path(os.environ.get("LASNN_CACHE") or Path.home() / ".cache" / "lasnn")


def load_dataset(
    name: str,
    split: str,
    data_root: str | os.PathLike | None = None,
    download: bool = False,
    augment: bool | None = None,
) -> tuple[Dataset, DatasetInfo]:
    """The ``split`` ("train" or "test") of data set ``name`` and its description.

    Items are ``(float tensor (C, H, W) normalised with info.mean/std, int label)``. ``augment``
    defaults to ``split == "train"``. ``data_root`` defaults to ``$LASNN_DATA_ROOT`` or ``./data``.
    """
    _check_name_split(name, split)
    augment = (split == "train") if augment is None else bool(augment)
    root = Path(data_root) if data_root is not None else default_data_root()
    if name == "digits":
        images, labels, info = _digits(split)
    elif name in ("cifar10", "cifar100"):
        images, labels, info = _cifar(name, split, root, download)
    elif name == "tinyimagenet":
        images, labels, info = _tinyimagenet(split, root)
    else:
        images, labels, info = _imagefolder(split, root)
    augmentation = _augmentation(name, info.input_shape) if augment else None
    return ImageArrayDataset(images, labels, info.mean, info.std, augmentation, mirror=name != "digits"), info


def dataset_info(name: str, data_root: str | os.PathLike | None = None) -> DatasetInfo:
    """Describe data set ``name`` reading only its class list (``imagefolder``: its cached train split)."""
    _check_name_split(name, "train")
    root = Path(data_root) if data_root is not None else default_data_root()
    if name == "digits":
        return _digits_arrays()[2]
    if name in ("cifar10", "cifar100"):
        return _cifar_info(name, _cifar_source(name, root, download=False))
    if name == "tinyimagenet":
        archive, prefix = _tinyimagenet_source(root)
        with archive:
            return _tinyimagenet_info(_tinyimagenet_wnids(archive, prefix))
    return _imagefolder(None, root)[2]


def first_samples(dataset: Dataset, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` items (all when ``n`` is None or larger than the data set), stacked as
    ``(images [n, C, H, W], labels [n])`` in the data set's fixed order."""
    total = len(dataset)
    if n is not None and n < 0:
        raise LasnnError(f"The number of samples must be zero or positive, got {n}.")
    count = total if n is None else min(n, total)
    if isinstance(dataset, ImageArrayDataset) and not dataset.augment:
        return dataset.batch(0, count)
    if count == 0:
        raise LasnnError("The data set is empty; there are no samples to take.")
    items = [dataset[i] for i in range(count)]
    return torch.stack([image for image, _ in items]), torch.tensor([int(label) for _, label in items])


def _check_name_split(name: str, split: str) -> None:
    if name not in DATASETS:
        raise LasnnError(f"Unknown data set {name!r}; expected one of {', '.join(DATASETS)}.")
    if split not in SPLITS:
        raise LasnnError(f"Unknown split {split!r} for data set {name}; expected 'train' or 'test'.")


def _augmentation(name: str, shape: tuple[int, int, int]) -> list[Callable]:
    """Standard training augmentation: random translation by padding and cropping; horizontal flips
    too for natural images (not for digits, whose mirror images are other symbols)."""
    _, height, width = shape
    if name == "digits":
        return [transforms.RandomCrop((height, width), padding=1)]
    return [
        transforms.RandomCrop((height, width), padding=max(1, height // 8)),
        transforms.RandomHorizontalFlip(),
    ]


# --------------------------------------------------------------------------------------------- digits


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], DatasetInfo]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # [N, 1, 8, 8] in [0, 1]
    labels = torch.from_numpy(digits.target.astype(np.int64))
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)),
        test_size=DIGITS_TEST_FRACTION,
        random_state=DIGITS_SEED,
        stratify=digits.target,
    )
    index = {"train": torch.from_numpy(np.sort(train_idx)), "test": torch.from_numpy(np.sort(test_idx))}
    train = images[index["train"]]
    info = DatasetInfo(
        name="digits",
        num_classes=10,
        input_shape=(1, 8, 8),
        mean=(float(train.mean()),),
        std=(float(train.std()),),
        class_names=tuple(str(i) for i in range(10)),
    )
    return (
        {split: images[idx] for split, idx in index.items()},
        {split: labels[idx] for split, idx in index.items()},
        info,
    )


def _digits(split: str) -> tuple[torch.Tensor, torch.Tensor, DatasetInfo]:
    images, labels, info = _digits_arrays()
    return images[split], labels[split], info


# ---------------------------------------------------------------------------------------------- CIFAR

_CIFAR = {
    # name: (torchvision class, folder, meta file, meta key, number of classes, stats, display name)
    "cifar10": (
        torchvision.datasets.CIFAR10,
        "cifar-10-batches-py",
        "batches.meta",
        "label_names",
        10,
        CIFAR10_STATS,
        "CIFAR-10",
    ),
    "cifar100": (
        torchvision.datasets.CIFAR100,
        "cifar-100-python",
        "meta",
        "fine_label_names",
        100,
        CIFAR100_STATS,
        "CIFAR-100",
    ),
}


def _lenient(cls: type) -> type:
    """torchvision's CIFAR reader without its md5 checks (a checksum of None only checks that the file
    exists), so that re-packed copies and small test files load; downloads are still verified."""
    return type(
        f"Lenient{cls.__name__}",
        (cls,),
        {
            "train_list": [[name, None] for name, _ in cls.train_list],
            "test_list": [[name, None] for name, _ in cls.test_list],
            "meta": {**cls.meta, "md5": None},
        },
    )


def _cifar_source(name: str, root: Path, download: bool) -> tuple[str, Path, Path | None]:
    """("pickle", folder, None) for torchvision's layout, ("zip", train.zip, test.zip) for a zipped copy."""
    tv_class, folder, _, _, _, _, display = _CIFAR[name]
    if (root / folder).is_dir():
        return "pickle", root / folder, None
    for base in (root, root / name):
        if (base / "train.zip").is_file() and (base / "test.zip").is_file():
            return "zip", base / "train.zip", base / "test.zip"
    if download:
        try:
            tv_class(root=str(root), train=True, download=True)  # fetches and md5-verifies every file
        except Exception as error:  # network and archive errors come in many types
            raise LasnnError(
                f"Downloading {display} into {root} failed ({_reason(error)}); check the network or "
                f"place {folder}/ there by hand."
            ) from error
        return "pickle", root / folder, None
    raise LasnnError(
        f"No {display} data at {root}: expected {root / folder}/ (torchvision's layout; pass --download to "
        f"fetch it) or {root}/train.zip and {root}/test.zip (zipped ImageFolder: train/<class>/*.jpg, "
        "test/<class>/*.jpg)."
    )


def _cifar_info(name: str, source: tuple[str, Path, Path | None]) -> DatasetInfo:
    _, folder, meta_file, meta_key, num_classes, (mean, std), display = _CIFAR[name]
    kind, path, _ = source
    if kind == "pickle":
        meta_path = path / meta_file
        try:
            with open(meta_path, "rb") as handle:
                classes = tuple(pickle.load(handle, encoding="latin1")[meta_key])
        except Exception as error:  # missing file, unpickling and key errors
            raise LasnnError(
                f"{meta_path} is missing or not a {display} meta pickle with '{meta_key}' "
                f"({_reason(error)}); restore torchvision's {folder}/ layout."
            ) from error
    else:
        with _Archive(path) as archive:
            classes = tuple(_imagefolder_entries(archive, ("train",))[0])
    if len(classes) != num_classes:
        raise LasnnError(
            f"{path} has {len(classes)} classes, but {display} has {num_classes}; point the data "
            f"root at a {display} copy."
        )
    return DatasetInfo(name, num_classes, (3, 32, 32), mean, std, classes)


def _cifar(
    name: str, split: str, root: Path, download: bool
) -> tuple[torch.Tensor, torch.Tensor, DatasetInfo]:
    tv_class, folder, _, _, _, _, display = _CIFAR[name]
    source = _cifar_source(name, root, download)
    info = _cifar_info(name, source)
    kind, path, test_zip = source
    if kind == "pickle":
        try:
            copy = _lenient(tv_class)(root=str(path.parent), train=split == "train", download=False)
            images, labels = np.asarray(copy.data), np.asarray(copy.targets, dtype=np.int64)
        except Exception as error:  # torchvision raises RuntimeError, pickle/shape errors for damaged files
            raise LasnnError(
                f"{path} is not a readable {display} copy in torchvision's layout "
                f"({_reason(error)}); re-download it or restore {folder}/."
            ) from error
        if images.shape[1:] != (32, 32, 3) or len(images) == 0:
            raise LasnnError(
                f"{path} holds {display} images of shape {images.shape[1:]}, expected 32x32 RGB."
            )
        images = _to_nchw(images)
    else:
        zip_path = path if split == "train" else test_zip
        arrays = _decoded_imagefolder_zip(zip_path, (split,), info.class_names, size=(32, 32), mode="RGB")
        images, labels = torch.from_numpy(arrays["images"]), arrays["labels"]
    if len(labels) and (labels.min() < 0 or labels.max() >= info.num_classes):
        raise LasnnError(f"{path} has labels outside 0..{info.num_classes - 1}; it is not a {display} copy.")
    return images, torch.from_numpy(labels), info


# -------------------------------------------------------------------------------------- Tiny ImageNet


def _tinyimagenet_source(root: Path) -> tuple[_Archive, str]:
    """The archive (folder or zip) holding ``wnids.txt`` and the prefix of the data set inside it."""
    candidates: list[Path] = []
    if root.is_file() and root.suffix == ".zip":
        candidates = [root]
    elif root.is_dir():
        if (root / "wnids.txt").is_file():
            return _Archive(root), ""
        if (root / "tiny-imagenet-200" / "wnids.txt").is_file():
            return _Archive(root / "tiny-imagenet-200"), ""
        candidates = [root / "tiny-imagenet-200.zip"] + sorted(root.glob("tiny-imagenet-200*.zip"))
        candidates += [root / "tinyimagenet" / "tiny-imagenet-200.zip"]
    for candidate in candidates:
        if candidate.is_file():
            archive = _Archive(candidate)
            wnids = [n for n in archive.names if n == "wnids.txt" or n.endswith("/wnids.txt")]
            if not wnids:
                archive.close()
                raise LasnnError(
                    f"{candidate} has no wnids.txt; expected the official tiny-imagenet-200 "
                    "layout (wnids.txt, train/<wnid>/images/*.JPEG, val/val_annotations.txt)."
                )
            return archive, min(wnids, key=len)[: -len("wnids.txt")]
    raise LasnnError(
        f"No Tiny ImageNet data at {root}: expected the official tiny-imagenet-200 layout (wnids.txt, "
        "train/<wnid>/images/*.JPEG, val/images/*.JPEG, val/val_annotations.txt) as that folder, a folder "
        "containing tiny-imagenet-200/ or tiny-imagenet-200*.zip, or the zip itself."
    )


def _tinyimagenet_wnids(archive: _Archive, prefix: str) -> tuple[str, ...]:
    text = archive.read(prefix + "wnids.txt").decode("utf-8", "replace")
    wnids = tuple(sorted({line.strip() for line in text.splitlines() if line.strip()}))
    if not wnids:
        raise LasnnError(f"{archive.path}: {prefix}wnids.txt is empty; expected one WordNet id per line.")
    return wnids


def _tinyimagenet_info(wnids: tuple[str, ...]) -> DatasetInfo:
    mean, std = TINYIMAGENET_STATS
    return DatasetInfo("tinyimagenet", len(wnids), (3, 64, 64), mean, std, wnids)


def _tinyimagenet(split: str, root: Path) -> tuple[torch.Tensor, torch.Tensor, DatasetInfo]:
    archive, prefix = _tinyimagenet_source(root)
    with archive:
        wnids = _tinyimagenet_wnids(archive, prefix)
        info = _tinyimagenet_info(wnids)
        label_of = {wnid: i for i, wnid in enumerate(wnids)}
        if split == "train":
            members, labels = [], []
            for name in archive.names:
                parts = name[len(prefix) :].split("/") if name.startswith(prefix) else []
                if len(parts) == 4 and parts[0] == "train" and parts[2] == "images" and _is_image(name):
                    if parts[1] not in label_of:
                        raise LasnnError(
                            f"{archive.path}: {name} is in class {parts[1]}, which wnids.txt does not list."
                        )
                    members.append(name)
                    labels.append(label_of[parts[1]])
            order = sorted(range(len(members)), key=lambda i: (labels[i], members[i]))
            members, labels = [members[i] for i in order], [labels[i] for i in order]
            expected = "train/<wnid>/images/*.JPEG"
        else:
            annotations = prefix + "val/val_annotations.txt"
            if annotations not in archive.name_set:
                raise LasnnError(
                    f"{archive.path} has no {annotations}; expected the official tiny-imagenet-200 "
                    "val split (val/images/*.JPEG labelled by val/val_annotations.txt)."
                )
            members, labels = [], []
            for number, line in enumerate(archive.read(annotations).decode("utf-8", "replace").splitlines()):
                fields = line.split("\t")
                if not line.strip():
                    continue
                if len(fields) < 2 or fields[1] not in label_of:
                    raise LasnnError(
                        f"{archive.path}: line {number + 1} of {annotations} is {line!r}; expected "
                        "'<file>\\t<wnid>\\t...' with a wnid listed in wnids.txt."
                    )
                members.append(f"{prefix}val/images/{fields[0]}")
                labels.append(label_of[fields[1]])
            expected = "val/images/<file> for every line of val/val_annotations.txt"
        missing = [m for m in members if m not in archive.name_set]
        if not members or missing:
            detail = f"{missing[0]} is missing" if missing else "no images found"
            raise LasnnError(
                f"{archive.path}: {detail}; expected {expected} in the tiny-imagenet-200 layout."
            )
        images = _cached_decode(
            archive, f"tinyimagenet-{split}", members, size=(64, 64), mode="RGB", resize=False
        )
    return torch.from_numpy(images), torch.tensor(labels, dtype=torch.int64), info


# ---------------------------------------------------------------------------------------- ImageFolder


def _imagefolder(split: str | None, root: Path) -> tuple[torch.Tensor, torch.Tensor, DatasetInfo]:
    """A user's ImageFolder (folder or zip). Every image is converted to the first train image's mode
    (greyscale or RGB) and resized to its size; mean/std are computed from the train split (cached with
    its decoded pixels). ``split=None`` returns the info only."""
    layout = (
        "train/<class>/<image> and test/<class>/<image> (or val/<class>/<image>) with images of type "
        + "/".join(IMG_EXTENSIONS)
    )
    if not (root.is_dir() or (root.is_file() and zipfile.is_zipfile(root))):
        raise LasnnError(f"No ImageFolder data at {root}: expected a folder or zip holding {layout}.")
    with _Archive(root) as archive:
        classes, train_members, train_classes = _imagefolder_entries(archive, ("train",))
        if not train_members:
            raise LasnnError(
                f"{root} has no train/<class>/<image> files; expected an ImageFolder holding {layout}."
            )
        first = _open_image(archive, train_members[0])
        mode = "L" if first.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
        size = first.size  # (width, height)
        train = _cached_decode(archive, "imagefolder-train", train_members, size=size, mode=mode, resize=True)
        mean, std = _channel_stats(train)
        info = DatasetInfo(
            "imagefolder", len(classes), (train.shape[1], size[1], size[0]), mean, std, tuple(classes)
        )
        if split is None:
            return torch.empty(0), torch.empty(0), info
        if split == "train":
            label_of = {c: i for i, c in enumerate(classes)}
            return torch.from_numpy(train), torch.tensor([label_of[c] for c in train_classes]), info
        test_classes, members, member_classes = _imagefolder_entries(archive, ("test", "val"))
        if not members:
            raise LasnnError(
                f"{root} has no test/<class>/<image> (or val/<class>/<image>) files; expected an "
                f"ImageFolder holding {layout}."
            )
        unknown = sorted(set(test_classes) - set(classes))
        if unknown:
            raise LasnnError(
                f"{root}: the test split has class folder(s) {', '.join(unknown)} that train/ lacks; "
                "both splits must use the same class names."
            )
        label_of = {c: i for i, c in enumerate(classes)}
        labels = [label_of[c] for c in member_classes]
        test = _cached_decode(archive, "imagefolder-test", members, size=size, mode=mode, resize=True)
    return torch.from_numpy(test), torch.tensor(labels, dtype=torch.int64), info


def _imagefolder_entries(
    archive: _Archive, split_dirs: Iterable[str]
) -> tuple[list[str], list[str], list[str]]:
    """(sorted class names, image members sorted by (class, name), each member's class) of the first of
    ``split_dirs`` found, at the shallowest depth it occurs (``train/``, ``x/train/``, ...)."""
    for split_dir in split_dirs:
        found: dict[str, list[tuple[str, str]]] = {}
        for name in archive.names:
            parts = name.split("/")
            if not _is_image(name) or split_dir not in parts[:-2]:
                continue
            depth = parts.index(split_dir)
            found.setdefault("/".join(parts[:depth]), []).append((parts[depth + 1], name))
        if found:
            prefix = min(found, key=lambda p: (p.count("/") if p else -1, p))
            entries = sorted(found[prefix])
            return sorted({c for c, _ in entries}), [m for _, m in entries], [c for c, _ in entries]
    return [], [], []


def _decoded_imagefolder_zip(
    zip_path: Path, split_dirs: tuple[str, ...], classes: tuple[str, ...], size: tuple[int, int], mode: str
) -> dict[str, np.ndarray]:
    """Images and labels of one split of a zipped ImageFolder whose classes must equal ``classes``."""
    with _Archive(zip_path) as archive:
        found, members, member_classes = _imagefolder_entries(archive, split_dirs)
        if not members:
            raise LasnnError(
                f"{zip_path} has no {'|'.join(split_dirs)}/<class>/<image> files; expected a zipped "
                "ImageFolder split."
            )
        if tuple(found) != tuple(classes):
            raise LasnnError(
                f"{zip_path} has the class folders {', '.join(found)}, expected {', '.join(classes)}."
            )
        images = _cached_decode(
            archive, f"{zip_path.parent.name}-{zip_path.stem}", members, size=size, mode=mode, resize=False
        )
    label_of = {c: i for i, c in enumerate(classes)}
    return {"images": images, "labels": np.asarray([label_of[c] for c in member_classes], dtype=np.int64)}


# ------------------------------------------------------------------------------ archives and decoding


class _Archive:
    """A folder or a zip file read through one interface: ``names`` are '/'-separated relative paths."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._zip: zipfile.ZipFile | None = None
        try:
            if self.path.is_dir():
                self.names = sorted(
                    str(Path(dirpath, f).relative_to(self.path).as_posix())
                    for dirpath, _, files in os.walk(self.path)
                    for f in files
                )
            else:
                self._zip = zipfile.ZipFile(self.path)
                self.names = sorted(n for n in self._zip.namelist() if not n.endswith("/"))
        except (OSError, zipfile.BadZipFile) as error:
            raise LasnnError(
                f"{self.path} cannot be read as a folder or zip file ({_reason(error)})."
            ) from error
        self.name_set = set(self.names)

    def read(self, name: str) -> bytes:
        try:
            if self._zip is not None:
                return self._zip.read(name)
            return (self.path / name).read_bytes()
        except (OSError, KeyError, zipfile.BadZipFile) as error:
            raise LasnnError(f"{self.path}: cannot read {name} ({_reason(error)}).") from error

    def identity(self, members: list[str]) -> tuple:
        """What the cached decode of ``members`` depends on: path, size and modification time."""
        if self._zip is not None:
            stat = self.path.stat()
            return str(self.path.resolve()), stat.st_size, stat.st_mtime_ns
        stats = [(self.path / m).stat() for m in members]
        return (str(self.path.resolve()), sum(s.st_size for s in stats), max(s.st_mtime_ns for s in stats))

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> _Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reason(error: BaseException) -> str:
    """An exception as a clause inside a one-sentence message: type and first line, no final period."""
    text = str(error).strip().splitlines()[0].rstrip(".") if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _open_image(archive: _Archive, member: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(archive.read(member)))
        image.load()
        return image
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise LasnnError(f"{archive.path}: {member} is not a readable image ({_reason(error)}).") from error


def _cached_decode(
    archive: _Archive, label: str, members: list[str], size: tuple[int, int], mode: str, resize: bool
) -> np.ndarray:
    """Decode ``members`` into a uint8 ``[N, C, H, W]`` array, reusing a cached copy when the source is
    unchanged (key: path, size, mtime, member list, size and mode)."""
    key = hashlib.sha256(
        repr((_CACHE_VERSION, archive.identity(members), members, size, mode, resize)).encode()
    ).hexdigest()[:24]
    path = cache_dir() / f"{label}-{key}.npy"
    if path.is_file():
        try:
            cached = np.load(path, allow_pickle=False)
            if cached.shape[:2] == (len(members), 1 if mode == "L" else 3):
                return cached
        except (OSError, ValueError):
            pass  # damaged cache file: decode again and overwrite it
    width, height = size
    channels = 1 if mode == "L" else 3
    images = np.empty((len(members), height, width, channels), dtype=np.uint8)
    for i, member in enumerate(
        tqdm(members, desc=f"decoding {archive.path.name}", unit="img", mininterval=1)
    ):
        image = _open_image(archive, member)
        if image.mode != mode:
            image = image.convert(mode)
        if image.size != (width, height):
            if not resize:
                raise LasnnError(
                    f"{archive.path}: {member} is {image.size[0]}x{image.size[1]} pixels, "
                    f"expected {width}x{height}."
                )
            image = image.resize((width, height), Image.BILINEAR)
        images[i] = np.asarray(image).reshape(height, width, channels)
    images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    try:
        with atomic_write(path, "wb") as handle:
            np.save(handle, images, allow_pickle=False)
    except LasnnError as error:  # a cache that cannot be written only costs time
        warnings.warn(f"lasnn: not caching decoded images: {error}", stacklevel=2)
    return images


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std over all pixels of uint8 ``[N, C, H, W]`` images, on the [0, 1] scale,
    from exact 256-bin histograms (no float copy of the whole data set)."""
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for channel in range(images.shape[1]):
        pixels = torch.from_numpy(np.ascontiguousarray(images[:, channel])).reshape(-1)
        counts = torch.bincount(pixels, minlength=256).numpy().astype(np.float64)
        mean = float(counts @ values / counts.sum())
        means.append(mean)
        stds.append(float(np.sqrt(counts @ (values - mean) ** 2 / counts.sum())))
    return tuple(means), tuple(stds)


def _to_nchw(images_nhwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
