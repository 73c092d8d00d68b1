"""Data sets: every format read from small files written here in that format (checked pixel by pixel
against what was written) and from the real copies in ../shared/datasets (skipped when absent)."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lasnn import data
from lasnn.errors import LasnnError

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _normalised(image_hwc: np.ndarray, mean, std) -> torch.Tensor:
    """Reference normalisation of a uint8 HWC image, written out independently of torchvision."""
    chw = torch.from_numpy(image_hwc.astype(np.float32) / 255.0).permute(2, 0, 1)
    return (chw - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)


def _channel_stats(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over all pixels of a uint8 [N, C, H, W] tensor, via E[x] and E[x^2] of
    per-channel value histograms (no float copy of the whole data set)."""
    values = torch.arange(256, dtype=torch.float64) / 255
    counts = torch.stack(
        [torch.bincount(images[:, c].reshape(-1), minlength=256) for c in range(images.shape[1])]
    )
    counts = counts.to(torch.float64) / counts.sum(1, keepdim=True)
    mean, mean_square = counts @ values, counts @ values**2
    return mean.numpy(), (mean_square - mean**2).sqrt().numpy()


def _assert_one_sentence(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message and message.endswith("."), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# ---------------------------------------------------------------------------------------------- digits


def test_digits_shapes_split_and_normalisation() -> None:
    from sklearn.datasets import load_digits

    train, info = data.load_dataset("digits", "train", augment=False)
    test, info_test = data.load_dataset("digits", "test")
    assert info == info_test == data.dataset_info("digits")
    assert info.num_classes == 10 and info.input_shape == (1, 8, 8) and len(info.class_names) == 10
    assert (len(train), len(test)) == (1437, 360)  # 80/20 of 1,797
    x_train, y_train = data.first_samples(train, None)
    x_test, y_test = data.first_samples(test, None)
    assert (
        x_train.shape == (1437, 1, 8, 8) and x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    )
    # Normalised with the train split's statistics.
    assert abs(float(x_train.mean())) < 1e-5 and abs(float(x_train.std()) - 1) < 1e-3
    assert abs(float(x_test.mean())) < 0.1
    # Train and test are a partition of the 1,797 (all distinct) raw images: compare as multisets.
    raw = load_digits().images.reshape(-1, 64) / 16.0
    mean, std = info.mean[0], info.std[0]
    both = np.concatenate([x_train.reshape(-1, 64).numpy(), x_test.reshape(-1, 64).numpy()]) * std + mean
    np.testing.assert_allclose(np.unique(both.round(4), axis=0), np.unique(raw.round(4), axis=0), atol=1e-6)
    # Stratified: every class has about 20 % of its images in the test split.
    for label in range(10):
        n_test, n_all = int((y_test == label).sum()), int((load_digits().target == label).sum())
        assert abs(n_test - 0.2 * n_all) <= 1
    # Deterministic: rebuilt from scratch, the split is the same.
    data._digits_arrays.cache_clear()
    again, _ = data.first_samples(data.load_dataset("digits", "test")[0], None)
    assert torch.equal(again, x_test)


def test_digits_augmentation_is_a_small_translation() -> None:
    train, info = data.load_dataset("digits", "train")
    assert train.augment and not data.load_dataset("digits", "test")[0].augment
    plain, label = data.load_dataset("digits", "train", augment=False)[0][5]
    background = (0 - info.mean[0]) / info.std[0]
    padded = torch.nn.functional.pad(plain, (1, 1, 1, 1), value=background)
    shifts = set()
    torch.manual_seed(0)
    for _ in range(40):
        image, again_label = train[5]
        assert again_label == label and image.shape == (1, 8, 8)
        matches = [
            (dy, dx)
            for dy in range(3)
            for dx in range(3)
            if torch.allclose(image, padded[:, dy : dy + 8, dx : dx + 8], atol=1e-6)
        ]
        assert matches, "an augmented digit is not a translation of the original by at most one pixel"
        shifts.add(matches[0])
    assert len(shifts) > 3


# ----------------------------------------------------------------------------------------------- CIFAR


def _write_pickle(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(obj, handle)


def _write_cifar10(root: Path, per_batch: int = 3, n_test: int = 4) -> dict[str, tuple[np.ndarray, list]]:
    """A tiny cifar-10-batches-py in torchvision's format: rows of 3072 bytes (R, G, B planes)."""
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    train_rows, train_labels = [], []
    for b in range(1, 6):
        rows = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        _write_pickle(
            folder / f"data_batch_{b}",
            {
                "batch_label": f"training batch {b} of 5",
                "data": rows,
                "labels": labels,
                "filenames": ["x.png"] * per_batch,
            },
        )
        train_rows.append(rows)
        train_labels += labels
    test_rows = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    test_labels = rng.integers(0, 10, n_test).tolist()
    _write_pickle(folder / "test_batch", {"data": test_rows, "labels": test_labels})
    _write_pickle(folder / "batches.meta", {"label_names": CIFAR10_NAMES, "num_vis": 3072})
    return {"train": (np.concatenate(train_rows), train_labels), "test": (test_rows, test_labels)}


def _write_cifar100(root: Path) -> dict[str, tuple[np.ndarray, list]]:
    """A tiny cifar-100-python in torchvision's format (fine and coarse labels, meta names)."""
    rng = np.random.default_rng(2)
    folder = root / "cifar-100-python"
    written = {}
    for split, n in (("train", 7), ("test", 5)):
        rows = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, n).tolist()
        _write_pickle(
            folder / split, {"data": rows, "fine_labels": fine, "coarse_labels": [f // 5 for f in fine]}
        )
        written[split] = (rows, fine)
    _write_pickle(
        folder / "meta",
        {
            "fine_label_names": [f"fine{i:03d}" for i in range(100)],
            "coarse_label_names": [f"coarse{i:02d}" for i in range(20)],
        },
    )
    return written


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_pickles_pixel_exact(name: str, tmp_path: Path) -> None:
    written = _write_cifar10(tmp_path) if name == "cifar10" else _write_cifar100(tmp_path)
    info = data.dataset_info(name, tmp_path)
    expected_classes = CIFAR10_NAMES if name == "cifar10" else [f"fine{i:03d}" for i in range(100)]
    assert info.class_names == tuple(expected_classes) and info.num_classes == len(expected_classes)
    assert info.input_shape == (3, 32, 32) and len(info.mean) == len(info.std) == 3
    for split, (rows, labels) in written.items():
        dataset, split_info = data.load_dataset(name, split, tmp_path, augment=False)
        assert split_info == info and len(dataset) == len(rows)
        images, got_labels = data.first_samples(dataset, None)
        assert got_labels.tolist() == labels
        for i, row in enumerate(rows):
            reference = _normalised(row.reshape(3, 32, 32).transpose(1, 2, 0), info.mean, info.std)
            torch.testing.assert_close(images[i], reference)
            torch.testing.assert_close(dataset[i][0], reference)
    assert data.load_dataset(name, "train", tmp_path)[0].augment


def test_cifar_augmentation_is_crop_with_padding_and_flip(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    plain_set, info = data.load_dataset("cifar10", "train", tmp_path, augment=False)
    augmented_set, _ = data.load_dataset("cifar10", "train", tmp_path)
    plain = plain_set[2][0]
    zero = (0 - torch.tensor(info.mean)) / torch.tensor(info.std)  # black padding, normalised
    padded = zero.view(3, 1, 1).expand(3, 40, 40).clone()
    padded[:, 4:36, 4:36] = plain
    seen = set()
    torch.manual_seed(0)
    for _ in range(30):
        image = augmented_set[2][0]
        found = [
            (dy, dx, flip)
            for flip in (False, True)
            for dy in range(9)
            for dx in range(9)
            if torch.allclose(image, (padded.flip(-1) if flip else padded)[:, dy : dy + 32, dx : dx + 32])
        ]
        assert found, "an augmented CIFAR image is not a padded crop (optionally flipped) of the original"
        seen.add(found[0])
    assert len(seen) > 10 and any(flip for _, _, flip in seen) and not all(flip for _, _, flip in seen)
    assert any(dy in (0, 8) or dx in (0, 8) for dy, dx, _ in seen)  # shifts reach the full 4-pixel padding


def test_cifar_errors_name_path_and_layout(tmp_path: Path) -> None:
    with pytest.raises(LasnnError) as error:
        data.load_dataset("cifar10", "train", tmp_path)
    _assert_one_sentence(error, str(tmp_path), "cifar-10-batches-py", "train.zip")
    with pytest.raises(LasnnError) as error:
        data.dataset_info("cifar100", tmp_path)
    _assert_one_sentence(error, "cifar-100-python")
    _write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(LasnnError) as error:
        data.load_dataset("cifar10", "train", tmp_path)
    _assert_one_sentence(error, "cifar-10-batches-py", "torchvision's layout")
    os.remove(tmp_path / "cifar-10-batches-py" / "batches.meta")
    with pytest.raises(LasnnError) as error:
        data.load_dataset("cifar10", "test", tmp_path)
    _assert_one_sentence(error, "batches.meta")
    with pytest.raises(LasnnError) as error:
        data.load_dataset("cifar10", "validation", tmp_path)
    _assert_one_sentence(error, "'validation'")
    with pytest.raises(LasnnError) as error:
        data.load_dataset("mnist", "train", tmp_path)
    _assert_one_sentence(error, "'mnist'", "digits")


# ------------------------------------------------------------------------------------------- ImageFolder


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_tree(files: dict[str, bytes], root: Path, zip_path: Path | None = None) -> Path:
    """Write ``files`` (relative path -> bytes) as a folder under ``root``, or into ``zip_path``."""
    if zip_path is not None:
        with zipfile.ZipFile(zip_path, "w") as archive:
            for name, payload in files.items():
                archive.writestr(name, payload)
        return zip_path
    for name, payload in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(payload)
    return root


def _imagefolder_files(prefix: str = "", grey: bool = False) -> tuple[dict[str, bytes], dict[str, list]]:
    """Train/val splits of 5x6 PNGs in two classes; one train image of another size (constant colour,
    so that resizing keeps its pixels)."""
    rng = np.random.default_rng(3)
    shape = (5, 6) if grey else (5, 6, 3)
    files, written = {}, {"train": [], "test": []}
    for split, folder, count in (("train", "train", 3), ("test", "val", 2)):
        for label, cls in enumerate(("cat", "dog")):
            for k in range(count):
                pixels = rng.integers(0, 256, shape, dtype=np.uint8)
                files[f"{prefix}{folder}/{cls}/img{k}.png"] = _png(pixels)
                written[split].append((pixels, label))
    odd = np.full((10, 12) if grey else (10, 12, 3), 77, dtype=np.uint8)
    files[f"{prefix}train/dog/zz_big.png"] = _png(odd)
    written["train"].append((odd[:5, :6], 1))
    files[f"{prefix}train/dog/notes.txt"] = b"not an image, ignored"
    return files, written


@pytest.mark.parametrize("as_zip, grey", [(True, False), (False, False), (False, True)])
def test_imagefolder_pixel_exact(as_zip: bool, grey: bool, tmp_path: Path, isolated_cache: Path) -> None:
    files, written = _imagefolder_files(prefix="mydata/" if as_zip else "", grey=grey)
    root = _write_tree(files, tmp_path / "folder", tmp_path / "mine.zip" if as_zip else None)
    info = data.dataset_info("imagefolder", root)
    channels = 1 if grey else 3
    assert (
        info.class_names == ("cat", "dog") and info.num_classes == 2 and info.input_shape == (channels, 5, 6)
    )
    # Mean/std are computed from the train split's pixels.
    train_pixels = np.stack([p.reshape(5, 6, channels) for p, _ in written["train"]]).astype(np.float64) / 255
    np.testing.assert_allclose(info.mean, train_pixels.reshape(-1, channels).mean(0), rtol=1e-6)
    np.testing.assert_allclose(info.std, train_pixels.reshape(-1, channels).std(0), rtol=1e-6)
    for split in ("train", "test"):
        dataset, _ = data.load_dataset("imagefolder", split, root, augment=False)
        images, labels = data.first_samples(dataset, None)
        assert labels.tolist() == [label for _, label in written[split]]
        for i, (pixels, _) in enumerate(written[split]):
            torch.testing.assert_close(
                images[i], _normalised(pixels.reshape(5, 6, channels), info.mean, info.std)
            )
    assert any(isolated_cache.glob("imagefolder-train-*.npy"))


def test_imagefolder_errors(tmp_path: Path, isolated_cache: Path) -> None:
    with pytest.raises(LasnnError) as error:
        data.load_dataset("imagefolder", "train", tmp_path / "nothing")
    _assert_one_sentence(error, str(tmp_path / "nothing"), "train/<class>/<image>")
    files, _ = _imagefolder_files()
    only_train = {k: v for k, v in files.items() if k.startswith("train/")}
    root = _write_tree(only_train, tmp_path / "a")
    assert len(data.load_dataset("imagefolder", "train", root)[0]) == 7
    with pytest.raises(LasnnError) as error:
        data.load_dataset("imagefolder", "test", root)
    _assert_one_sentence(error, str(root), "test/<class>/<image>")
    root = _write_tree({**files, "val/bird/x.png": files["val/cat/img0.png"]}, tmp_path / "b")
    with pytest.raises(LasnnError) as error:
        data.load_dataset("imagefolder", "test", root)
    _assert_one_sentence(error, "bird")
    root = _write_tree({**files, "train/cat/broken.png": b"\x89PNG garbage"}, tmp_path / "c")
    with pytest.raises(LasnnError) as error:
        data.load_dataset("imagefolder", "train", root)
    _assert_one_sentence(error, "train/cat/broken.png", "not a readable image")


def test_decode_cache_follows_the_source(tmp_path: Path, isolated_cache: Path) -> None:
    """Cached pixels are reused while the zip is unchanged and re-decoded when it changes."""
    files, _ = _imagefolder_files()
    zip_path = _write_tree(files, tmp_path, tmp_path / "d.zip")
    first, _ = data.first_samples(data.load_dataset("imagefolder", "test", zip_path)[0], None)
    cached = sorted(isolated_cache.glob("imagefolder-test-*.npy"))
    assert len(cached) == 1
    np.save(cached[0], np.zeros((1, 1, 1, 1), np.uint8))  # a wrong cache entry is detected and redone
    again, _ = data.first_samples(data.load_dataset("imagefolder", "test", zip_path)[0], None)
    torch.testing.assert_close(again, first)
    files["val/cat/img0.png"] = _png(np.zeros((5, 6, 3), np.uint8))
    _write_tree(files, tmp_path, zip_path)
    changed, _ = data.first_samples(data.load_dataset("imagefolder", "test", zip_path)[0], None)
    assert not torch.equal(changed[0], first[0]) and torch.equal(changed[1:], first[1:])


# ------------------------------------------------------------------------------------------ Tiny ImageNet

_WNIDS = ["n03000000", "n01000000", "n02000000"]  # wnids.txt order; labels follow the sorted order
_COLOURS = {"n01000000": (200, 30, 30), "n02000000": (30, 200, 30), "n03000000": (30, 30, 200)}


def _jpeg(colour: tuple[int, int, int] | int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (64, 64), colour).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _tinyimagenet_files() -> tuple[dict[str, bytes], list[tuple[str, str]]]:
    files = {
        "tiny-imagenet-200/wnids.txt": ("\n".join(_WNIDS) + "\n").encode(),
        "tiny-imagenet-200/words.txt": b"n01000000\tred thing\n",
    }
    for wnid in _WNIDS:
        for k in range(2):
            files[f"tiny-imagenet-200/train/{wnid}/images/{wnid}_{k}.JPEG"] = _jpeg(_COLOURS[wnid])
        files[f"tiny-imagenet-200/train/{wnid}/{wnid}_boxes.txt"] = b"ignored\n"
    val = [
        ("val_0.JPEG", "n02000000"),
        ("val_1.JPEG", "n03000000"),
        ("val_2.JPEG", "n01000000"),
        ("val_3.JPEG", "n01000000"),
    ]
    for file, wnid in val[:-1]:
        files[f"tiny-imagenet-200/val/images/{file}"] = _jpeg(_COLOURS[wnid])
    files["tiny-imagenet-200/val/images/val_3.JPEG"] = _jpeg(128, mode="L")  # greyscale, as some real ones
    files["tiny-imagenet-200/val/val_annotations.txt"] = "".join(
        f"{file}\t{wnid}\t0\t0\t63\t63\n" for file, wnid in val
    ).encode()
    return files, val


def _mean_colour(image: torch.Tensor, info: data.DatasetInfo) -> np.ndarray:
    pixels = image * torch.tensor(info.std).view(3, 1, 1) + torch.tensor(info.mean).view(3, 1, 1)
    return (pixels.mean((1, 2)) * 255).numpy()


@pytest.mark.parametrize("layout", ["parent-folder", "folder", "zip", "folder-with-zip"])
def test_tinyimagenet_layouts(layout: str, tmp_path: Path, isolated_cache: Path) -> None:
    files, val = _tinyimagenet_files()
    if layout in ("zip", "folder-with-zip"):
        root = _write_tree(files, tmp_path, tmp_path / "tiny-imagenet-200.zip")
        root = tmp_path if layout == "folder-with-zip" else root
    else:
        _write_tree(files, tmp_path)
        root = tmp_path if layout == "parent-folder" else tmp_path / "tiny-imagenet-200"
    info = data.dataset_info("tinyimagenet", root)
    assert (
        info.class_names == tuple(sorted(_WNIDS))
        and info.num_classes == 3
        and info.input_shape == (3, 64, 64)
    )
    train, _ = data.load_dataset("tinyimagenet", "train", root, augment=False)
    images, labels = data.first_samples(train, None)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    for image, label in zip(images, labels, strict=True):
        np.testing.assert_allclose(_mean_colour(image, info), _COLOURS[info.class_names[label]], atol=2.5)
    test, _ = data.load_dataset("tinyimagenet", "test", root)
    assert not test.augment
    images, labels = data.first_samples(test, None)
    assert labels.tolist() == [info.class_names.index(wnid) for _, wnid in val]
    for image, (_, wnid) in zip(images[:3], val[:3], strict=True):
        np.testing.assert_allclose(_mean_colour(image, info), _COLOURS[wnid], atol=2.5)
    np.testing.assert_allclose(_mean_colour(images[3], info), [128, 128, 128], atol=1.5)  # grey -> RGB


def test_tinyimagenet_errors(tmp_path: Path, isolated_cache: Path) -> None:
    with pytest.raises(LasnnError) as error:
        data.dataset_info("tinyimagenet", tmp_path)
    _assert_one_sentence(error, str(tmp_path), "wnids.txt", "val_annotations.txt")
    files, _ = _tinyimagenet_files()
    no_wnids = {k: v for k, v in files.items() if not k.endswith("wnids.txt")}
    zip_path = _write_tree(no_wnids, tmp_path, tmp_path / "tiny-imagenet-200.zip")
    with pytest.raises(LasnnError) as error:
        data.load_dataset("tinyimagenet", "train", zip_path)
    _assert_one_sentence(error, str(zip_path), "wnids.txt")
    bad = dict(files)
    bad["tiny-imagenet-200/val/val_annotations.txt"] += b"val_9.JPEG\tn09999999\t0\t0\t1\t1\n"
    root = _write_tree(bad, tmp_path / "bad")
    with pytest.raises(LasnnError) as error:
        data.load_dataset("tinyimagenet", "test", root)
    _assert_one_sentence(error, "line 5", "val_annotations.txt", "n09999999")
    missing = {k: v for k, v in files.items() if not k.endswith("val_1.JPEG")}
    root = _write_tree(missing, tmp_path / "missing")
    with pytest.raises(LasnnError) as error:
        data.load_dataset("tinyimagenet", "test", root)
    _assert_one_sentence(error, "val_1.JPEG is missing")


# -------------------------------------------------------------------------------- real data (../shared)


def test_real_cifar10_zip(shared_datasets: Path) -> None:
    root = shared_datasets / "cifar10"
    if not (root / "train.zip").is_file():
        pytest.skip(f"{root}/train.zip is absent")
    info = data.dataset_info("cifar10", shared_datasets)  # finds cifar10/{train,test}.zip below the root
    assert info.class_names == tuple(CIFAR10_NAMES) and info.num_classes == 10
    train, _ = data.load_dataset("cifar10", "train", root)
    test, _ = data.load_dataset("cifar10", "test", root)
    assert (len(train), len(test)) == (50_000, 10_000)
    assert torch.bincount(train.labels).tolist() == [5000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    # The README's measured train channel means (125.3, 122.9, 113.9 on 0-255) match the constants used.
    np.testing.assert_allclose(_channel_stats(train.images)[0], info.mean, atol=0.002)
    # A few images, decoded straight from the zip here, equal the data set's items.
    images, labels = data.first_samples(test, None)
    with zipfile.ZipFile(root / "test.zip") as archive:
        for index, member, label in (
            (0, "test/airplane/0000.jpg", 0),
            (3000, "test/cat/0000.jpg", 3),
            (9999, "test/truck/0999.jpg", 9),
        ):
            pixels = np.asarray(Image.open(io.BytesIO(archive.read(member))).convert("RGB"))
            assert int(labels[index]) == label
            torch.testing.assert_close(images[index], _normalised(pixels, info.mean, info.std))


def test_real_tinyimagenet_subset_zip(shared_datasets: Path) -> None:
    zip_path = shared_datasets / "tiny-imagenet-200-subset.zip"
    if not zip_path.is_file():
        pytest.skip(f"{zip_path} is absent")
    info = data.dataset_info("tinyimagenet", shared_datasets)  # finds the zip in the folder
    assert info.num_classes == 200 and info.input_shape == (3, 64, 64)
    with zipfile.ZipFile(zip_path) as archive:
        wnids = sorted(archive.read("tiny-imagenet-200/wnids.txt").decode().split())
        annotations = [
            line.split("\t")
            for line in archive.read("tiny-imagenet-200/val/val_annotations.txt").decode().splitlines()
        ]
        assert info.class_names == tuple(wnids)
        test, _ = data.load_dataset("tinyimagenet", "test", zip_path)
        assert len(test) == 10_000 and torch.bincount(test.labels).tolist() == [50] * 200
        assert test.labels.tolist() == [wnids.index(fields[1]) for fields in annotations]
        images, _ = data.first_samples(test, 10)
        for index in (0, 7):
            member = f"tiny-imagenet-200/val/images/{annotations[index][0]}"
            pixels = np.asarray(Image.open(io.BytesIO(archive.read(member))).convert("RGB"))
            torch.testing.assert_close(images[index], _normalised(pixels, info.mean, info.std))
    train, _ = data.load_dataset("tinyimagenet", "train", zip_path)
    assert len(train) == 40_000 and torch.bincount(train.labels).tolist() == [200] * 200
    mean, std = _channel_stats(train.images)  # the constants were computed from this very subset
    np.testing.assert_allclose(mean, info.mean, atol=5e-4)
    np.testing.assert_allclose(std, info.std, atol=5e-4)
