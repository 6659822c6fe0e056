"""Loaders for real data formats: small files written by hand in tmp_path, no downloads."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import re
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pspc.data.loaders import (
    FASHION_MNIST_CLASSES, load_array, load_cifar10, load_edm_zip, load_fashion_mnist, load_idx, load_image_folder,
    load_training_set
)
from pspc.data.training_set import TrainingSet, TrainingSetError

REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
RNG = np.random.default_rng(0)


def raises(path, problem: str):
    """TrainingSetError whose message names `path` and then matches `problem` (a regex)."""
    return pytest.raises(TrainingSetError, match=f"(?s){re.escape(str(path))}.*{problem}")


def random_uint8(*shape) -> np.ndarray:
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


# ---------------------------------------------------------------------------------------
# File writers
# ---------------------------------------------------------------------------------------
def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    array = np.asarray(array, dtype=np.uint8)
    magic = (0x08 << 8) | array.ndim if magic is None else magic
    return struct.pack(f">I{array.ndim}i", magic, *array.shape) + array.tobytes()


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_mnist_pair(root: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> tuple[Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    return (
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images, gz=True),
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels, gz=True),
    )


def write_cifar_batch(path: Path, data: np.ndarray, labels, *, protocol: int = 2, filenames=True) -> Path:
    """A batch as in cifar-10-batches-py: a dict with bytes keys (protocol 2 like the originals)."""
    batch = {b"batch_label": path.name.encode(), b"data": data, b"labels": list(labels)}
    if filenames:
        batch[b"filenames"] = [f"img_{path.name}_{i}.png".encode() for i in range(len(data))]
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    return path


def write_cifar_dir(root: Path, sizes=(3, 2), test_size=2, *, meta=True) -> dict[str, tuple[np.ndarray, list]]:
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    names = [f"data_batch_{i + 1}" for i in range(len(sizes))] + (["test_batch"] if test_size else [])
    for name, n in zip(names, list(sizes) + [test_size]):
        data, labels = random_uint8(n, 3072), RNG.integers(0, 10, n).tolist()
        write_cifar_batch(root / name, data, labels)
        written[name] = (data, labels)
    if meta:
        label_names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
        (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": label_names, b"num_vis": 3072}, protocol=2))
    return written


def save_image(path: Path, array: np.ndarray, mode: str | None = None, **params) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path, **params)
    return path


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_edm_zip(path: Path, images: dict[str, np.ndarray], labels=None, *, extra: dict[str, bytes] | None = None):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, array in images.items():
            zf.writestr(name, png_bytes(array))
        if labels is not ...:
            zf.writestr("dataset.json", json.dumps({"labels": labels}))
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


# ---------------------------------------------------------------------------------------
# IDX
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip_with_labels(tmp_path, gz):
    images, labels = random_uint8(5, 4, 6), np.array([3, 1, 4, 1, 5], np.uint8)
    suffix = ".gz" if gz else ""
    ipath = write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, gz=gz)
    lpath = write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, gz=gz)
    data = load_idx(ipath, lpath)
    assert isinstance(data, TrainingSet)
    assert data.images.shape == (5, 1, 4, 6) and data.images.dtype == torch.uint8
    assert np.array_equal(data.images[:, 0].numpy(), images)
    assert data.ids == [f"train-{i:05d}" for i in range(5)]
    assert [m["label"] for m in data.metadata] == [3, 1, 4, 1, 5]
    assert data.metadata[2]["source_uri"] == f"{ipath.resolve()}#2"
    assert data.source == str(ipath) and data.name == "train-images-idx3-ubyte"


def test_idx_gzip_detected_by_magic_bytes_not_extension(tmp_path):
    images = random_uint8(2, 3, 3)
    gz_without_suffix = write_idx(tmp_path / "t10k-images.idx", images, gz=True)
    raw_with_gz_suffix = write_idx(tmp_path / "raw-images.gz", images, gz=False)
    for path in (gz_without_suffix, raw_with_gz_suffix):
        assert np.array_equal(load_idx(path).images[:, 0].numpy(), images)
    assert load_idx(gz_without_suffix).ids == ["t10k-00000", "t10k-00001"]
    assert "label" not in load_idx(gz_without_suffix).metadata[0]


def test_idx_limit_reads_first_images_only(tmp_path):
    images, labels = random_uint8(10, 3, 3), np.arange(10, dtype=np.uint8)
    ipath, lpath = write_mnist_pair(tmp_path, "train", images, labels)
    data = load_idx(ipath, lpath, name="mini", limit=4)
    assert len(data) == 4 and data.name == "mini"
    assert np.array_equal(data.images[:, 0].numpy(), images[:4])
    assert [m["label"] for m in data.metadata] == [0, 1, 2, 3]
    assert len(load_idx(ipath, limit=99)) == 10


def test_idx_truncated_payload_reports_expected_and_actual_bytes(tmp_path):
    path = tmp_path / "cut-images-idx3-ubyte"
    path.write_bytes(idx_bytes(random_uint8(3, 4, 5))[:-10])
    with raises(path, r"truncated IDX payload: header declares 3 x \(4, 5\) = 60 bytes, file holds 50"):
        load_idx(path)
    with raises(path, "truncated"):  # also when the limit reaches into the missing part
        load_idx(path, limit=3)


def test_idx_trailing_data_is_rejected(tmp_path):
    path = tmp_path / "long-images-idx3-ubyte"
    path.write_bytes(idx_bytes(random_uint8(3, 4, 5)) + b"\0")
    with raises(path, "60 bytes, file holds 61"):
        load_idx(path)


def test_idx_wrong_magic_and_short_header(tmp_path):
    labels = write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(3, dtype=np.uint8))
    with raises(labels, "wrong magic number 0x00000801, expected 0x00000803"):
        load_idx(labels)
    images = write_idx(tmp_path / "train-images-idx3-ubyte", random_uint8(3, 2, 2))
    with raises(images, "wrong magic number 0x00000803, expected 0x00000801"):
        load_idx(images, images)
    short = tmp_path / "short-images"
    short.write_bytes(b"\0\0\x08\x03\0\0")
    with raises(short, "truncated IDX header"):
        load_idx(short)
    png = save_image(tmp_path / "not-idx.png", random_uint8(4, 4))
    with raises(png, "wrong magic number"):
        load_idx(png)


def test_idx_corrupt_gzip(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(random_uint8(20, 8, 8)))[:200])
    with raises(path, "corrupt or truncated IDX file"):
        load_idx(path)
    garbage = tmp_path / "garbage.gz"
    garbage.write_bytes(b"\x1f\x8b" + b"not really gzip" * 3)
    with raises(garbage, "corrupt or truncated IDX file"):
        load_idx(garbage)


def test_idx_label_count_mismatch_empty_and_missing(tmp_path):
    ipath = write_idx(tmp_path / "a-images", random_uint8(3, 2, 2))
    lpath = write_idx(tmp_path / "a-labels", np.arange(4, dtype=np.uint8))
    with raises(lpath, "4 labels for 3 images"):
        load_idx(ipath, lpath)
    empty = write_idx(tmp_path / "empty-images", np.zeros((0, 2, 2), np.uint8))
    with raises(empty, "no records"):
        load_idx(empty)
    with raises(tmp_path / "missing", "not found"):
        load_idx(tmp_path / "missing")
    with pytest.raises(TrainingSetError, match="limit must be a positive integer"):
        load_idx(ipath, limit=0)


# ---------------------------------------------------------------------------------------
# Fashion-MNIST
# ---------------------------------------------------------------------------------------
@pytest.mark.skipif(not REAL_FASHION_MNIST.is_dir(), reason=f"{REAL_FASHION_MNIST} absent: apt-get install -y dataset-fashion-mnist")
def test_real_fashion_mnist_slice(monkeypatch):
    monkeypatch.delenv("PSPC_FASHION_MNIST_ROOT", raising=False)
    first = load_fashion_mnist(limit=100)
    again = load_training_set("fashion-mnist:train", limit=100)
    assert first.images.shape == (100, 1, 28, 28)
    assert first.metadata[0]["label"] == 9 and first.metadata[0]["label_name"] == "Ankle boot"
    assert first.ids[:2] == ["train-00000", "train-00001"] and first.name == "fashion-mnist-train"
    assert first.fingerprint == again.fingerprint
    assert all(m["label_name"] == FASHION_MNIST_CLASSES[m["label"]] for m in first.metadata)
    test = load_fashion_mnist("test", limit=10)
    assert test.name == "fashion-mnist-test" and test.ids[0] == "t10k-00000"
    assert test.images.shape == (10, 1, 28, 28) and test.fingerprint != first.subset(slice(0, 10)).fingerprint


@pytest.fixture
def fake_fashion_root(tmp_path, monkeypatch):
    """A synthetic Fashion-MNIST directory, selected through PSPC_FASHION_MNIST_ROOT."""
    root = tmp_path / "fmnist"
    for prefix, n in (("train", 6), ("t10k", 4)):
        write_mnist_pair(root, prefix, random_uint8(n, 28, 28), np.arange(n, dtype=np.uint8) % 10)
    monkeypatch.setenv("PSPC_FASHION_MNIST_ROOT", str(root))
    return root


def test_fashion_mnist_root_from_environment(fake_fashion_root):
    train, test = load_fashion_mnist(), load_fashion_mnist("test")
    assert (len(train), len(test)) == (6, 4)
    assert train.source == str(fake_fashion_root / "train-images-idx3-ubyte.gz")
    assert [m["label_name"] for m in test.metadata] == ["T-shirt/top", "Trouser", "Pullover", "Dress"]
    assert test.ids[-1] == "t10k-00003"


def test_fashion_mnist_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("PSPC_FASHION_MNIST_ROOT", raising=False)
    with raises(tmp_path / "nope", re.escape("apt-get install -y dataset-fashion-mnist")):
        load_fashion_mnist(root=tmp_path / "nope")
    monkeypatch.setenv("PSPC_FASHION_MNIST_ROOT", str(tmp_path / "env-nope"))
    with raises(tmp_path / "env-nope", "not found"):
        load_fashion_mnist()
    with pytest.raises(TrainingSetError, match="unknown Fashion-MNIST split 'valid'"):
        load_fashion_mnist("valid", root=tmp_path)
    with raises(tmp_path / "train-images-idx3-ubyte.gz", "not found"):
        load_fashion_mnist(root=tmp_path)
    _, lpath = write_mnist_pair(tmp_path, "train", random_uint8(2, 28, 28), np.array([1, 12], np.uint8))
    with raises(lpath, "label 12 is not a Fashion-MNIST class"):
        load_fashion_mnist(root=tmp_path)


# ---------------------------------------------------------------------------------------
# CIFAR-10
# ---------------------------------------------------------------------------------------
def cifar_pixels(data: np.ndarray) -> np.ndarray:
    return data.reshape(-1, 3, 32, 32)


def test_cifar_directory_loads_data_batches_in_order(tmp_path):
    written = write_cifar_dir(tmp_path / "cifar-10-batches-py")
    data = load_cifar10(tmp_path / "cifar-10-batches-py")
    expected = np.concatenate([written["data_batch_1"][0], written["data_batch_2"][0]])
    assert data.images.shape == (5, 3, 32, 32) and data.name == "cifar10-train"
    assert np.array_equal(data.images.numpy(), cifar_pixels(expected))
    assert data.ids == ["data_batch_1-00000", "data_batch_1-00001", "data_batch_1-00002",
                        "data_batch_2-00000", "data_batch_2-00001"]
    labels = written["data_batch_1"][1] + written["data_batch_2"][1]
    assert [m["label"] for m in data.metadata] == labels
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert [m["label_name"] for m in data.metadata] == [names[i] for i in labels]
    assert data.metadata[3]["filename"] == "img_data_batch_2_0.png"
    assert data.metadata[3]["source_uri"] == f"{(tmp_path / 'cifar-10-batches-py/data_batch_2').resolve()}#0"


def test_cifar_batches_files_and_limit(tmp_path):
    root = tmp_path / "c"
    written = write_cifar_dir(root, meta=False)
    test = load_cifar10(root, batches=["test_batch"])
    assert test.name == "cifar10-test" and test.ids == ["test_batch-00000", "test_batch-00001"]
    assert "label_name" not in test.metadata[0]
    assert np.array_equal(test.images.numpy(), cifar_pixels(written["test_batch"][0]))
    files = load_cifar10([root / "test_batch", root / "data_batch_2"])
    assert files.name == "cifar10" and files.ids[2] == "data_batch_2-00000"
    limited = load_cifar10(root, limit=4)  # crosses the batch boundary
    assert limited.ids[-1] == "data_batch_2-00000" and len(limited) == 4
    only_test = tmp_path / "only-test"
    only_test.mkdir()
    (root / "test_batch").rename(only_test / "test_batch")
    assert load_cifar10(only_test).name == "cifar10-test"


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_pickle_protocols_and_str_keys(tmp_path, protocol):
    data = random_uint8(2, 3072)
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": data, "labels": np.array([4, 2])}, protocol=protocol))
    loaded = load_cifar10(path)
    assert np.array_equal(loaded.images.numpy(), cifar_pixels(data))
    assert [m["label"] for m in loaded.metadata] == [4, 2] and loaded.source == str(path)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_refuses_malicious_pickle(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": _Evil(marker), b"labels": [0]}))
    with raises(path, r"refusing to unpickle global (posix|os|nt)\.system"):
        load_cifar10(path)
    assert not marker.exists()
    eval_pickle = tmp_path / "eval_batch"
    eval_pickle.write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with raises(eval_pickle, r"refusing to unpickle global builtins\.eval"):
        load_cifar10([eval_pickle])
    codecs_pickle = tmp_path / "codecs_batch"  # _codecs.encode is only allowed for latin-1
    codecs_pickle.write_bytes(b"c_codecs\nencode\n(Vabc\nVrot13\ntR.")
    with raises(codecs_pickle, "refusing _codecs.encode"):
        load_cifar10([codecs_pickle])


def test_cifar_bad_files(tmp_path):
    cases = {
        "list": (pickle.dumps([1, 2, 3]), "not a CIFAR-10 batch: expected a dict"),
        "nokeys": (pickle.dumps({b"x": 1}), r"missing key\(s\) \['data', 'labels'\]"),
        "shape": (pickle.dumps({b"data": random_uint8(2, 100), b"labels": [0, 1]}), r"uint8 array \[n, 3072\]"),
        "dtype": (pickle.dumps({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}), "got float32"),
        "labels": (pickle.dumps({b"data": random_uint8(2, 3072), b"labels": [0]}), "1 CIFAR-10 labels for 2 images"),
        "strlabels": (pickle.dumps({b"data": random_uint8(1, 3072), b"labels": ["cat"]}), "list of integers"),
        "names": (pickle.dumps({b"data": random_uint8(1, 3072), b"labels": [0], b"filenames": 7}), "filenames"),
        "empty": (pickle.dumps({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}), "no images"),
        "garbage": (b"this is not a pickle", "corrupt or truncated pickle"),
        "truncated": (pickle.dumps({b"data": random_uint8(2, 3072), b"labels": [0, 1]})[:500], "corrupt or truncated"),
    }
    for name, (content, problem) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with raises(path, problem):
            load_cifar10([path])
    with raises(tmp_path, "no CIFAR-10 batches"):
        load_cifar10(tmp_path)
    with raises(tmp_path / "test_batch", "not found"):
        load_cifar10(tmp_path, batches=["test_batch"])
    meta_dir = tmp_path / "meta"
    write_cifar_dir(meta_dir, sizes=(1,), test_size=0, meta=False)
    (meta_dir / "batches.meta").write_bytes(pickle.dumps({b"other": 1}))
    with raises(meta_dir / "batches.meta", "label_names"):
        load_cifar10(meta_dir)


# ---------------------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------------------
def test_image_folder_grayscale_recursive_sorted(tmp_path):
    arrays = {"b.png": random_uint8(5, 7), "a/z.png": random_uint8(5, 7), "a/c.bmp": random_uint8(5, 7)}
    for rel, array in arrays.items():
        save_image(tmp_path / "imgs" / rel, array)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    save_image(tmp_path / "imgs" / ".hidden" / "x.png", random_uint8(9, 9))
    data = load_image_folder(tmp_path / "imgs")
    assert data.ids == ["a/c.bmp", "a/z.png", "b.png"]
    assert data.images.shape == (3, 1, 5, 7) and data.name == "imgs"
    for i, rel in enumerate(data.ids):
        assert np.array_equal(data.images[i, 0].numpy(), arrays[rel])
    assert data.metadata[2] == {"source_uri": (tmp_path / "imgs" / "b.png").resolve().as_uri()}
    assert len(load_image_folder(tmp_path / "imgs", limit=2)) == 2


def test_image_folder_channels(tmp_path):
    rgb, gray = random_uint8(4, 4, 3), random_uint8(4, 4)
    save_image(tmp_path / "mixed" / "0.png", rgb)
    save_image(tmp_path / "mixed" / "1.png", gray)
    mixed = load_image_folder(tmp_path / "mixed")
    assert mixed.images.shape == (2, 3, 4, 4)
    assert np.array_equal(mixed.images[0].numpy(), rgb.transpose(2, 0, 1))
    assert all(np.array_equal(mixed.images[1, c].numpy(), gray) for c in range(3))
    forced_gray = load_image_folder(tmp_path / "mixed", channels=1)
    assert forced_gray.images.shape == (2, 1, 4, 4)
    assert np.array_equal(forced_gray.images[0, 0].numpy(), np.asarray(Image.fromarray(rgb).convert("L")))
    save_image(tmp_path / "gray" / "g.png", gray)
    assert load_image_folder(tmp_path / "gray", channels=3).images.shape == (1, 3, 4, 4)
    with pytest.raises(TrainingSetError, match="channels must be None, 1 or 3"):
        load_image_folder(tmp_path / "gray", channels=4)


def test_image_folder_alpha_palette_and_jpeg(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (200, 100, 50, 255)  # opaque: kept
    rgba[0, 1] = (200, 100, 50, 0)  # transparent: black
    rgba[1, 0] = (200, 100, 50, 128)  # half: about half
    save_image(tmp_path / "alpha" / "a.png", rgba)
    out = load_image_folder(tmp_path / "alpha").images[0].numpy().transpose(1, 2, 0).astype(int)
    assert out[0, 0].tolist() == [200, 100, 50] and out[0, 1].tolist() == [0, 0, 0]
    assert np.abs(out[1, 0] - np.array([100, 50, 25])).max() <= 1
    palette = Image.new("P", (3, 2))
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "alpha" / "p.png")
    pal = load_image_folder(tmp_path / "alpha", resize="center-crop", size=(2, 3)).images[1].numpy()
    assert pal[:, 0, 0].tolist() == [255, 0, 0] and pal[:, 0, 1].tolist() == [0, 255, 0]
    smooth = np.tile(np.linspace(0, 255, 16, dtype=np.uint8), (16, 1))
    save_image(tmp_path / "jpeg" / "x.jpg", np.stack([smooth] * 3, axis=-1), quality=95)
    jpeg = load_image_folder(tmp_path / "jpeg")
    assert jpeg.images.shape == (1, 3, 16, 16)
    assert np.abs(jpeg.images[0].numpy().astype(int) - smooth.astype(int)).mean() < 4


def test_image_folder_size_policies(tmp_path):
    wide = random_uint8(8, 16)
    square = random_uint8(8, 8)
    save_image(tmp_path / "f" / "0.png", square)
    save_image(tmp_path / "f" / "1.png", wide)
    resized = load_image_folder(tmp_path / "f", resize="resize", size=8)
    assert resized.images.shape == (2, 1, 8, 8)
    assert np.array_equal(resized.images[0, 0].numpy(), square)  # already at size: untouched
    cropped = load_image_folder(tmp_path / "f", resize="center-crop", size=(8, 8))
    assert np.array_equal(cropped.images[1, 0].numpy(), wide[:, 4:12])
    padded = load_image_folder(tmp_path / "f", resize="pad", size=(16, 16))
    assert padded.images.shape == (2, 1, 16, 16)
    assert np.array_equal(padded.images[1, 0].numpy()[4:12], wide)
    assert not padded.images[1, 0, :4].any() and not padded.images[1, 0, 12:].any()
    assert load_image_folder(tmp_path / "f", resize="resize", size=(4, 6)).images.shape == (2, 1, 4, 6)


def test_image_folder_size_errors(tmp_path):
    save_image(tmp_path / "f" / "0.png", random_uint8(8, 8))
    save_image(tmp_path / "f" / "1.png", random_uint8(8, 16))
    with raises(tmp_path / "f" / "1.png", r"mixed image sizes: 1.png is 8x16 but 0.png is 8x8.*"
                                          r"\(command line: --resize POLICY --size HxW\)"):
        load_image_folder(tmp_path / "f")
    with raises(tmp_path / "f" / "0.png", "image is 8x8, expected 4x4"):
        load_image_folder(tmp_path / "f", size=4)
    with pytest.raises(TrainingSetError, match="resize='resize' needs a target size"):
        load_image_folder(tmp_path / "f", resize="resize")
    with pytest.raises(TrainingSetError, match="unknown resize policy 'stretch'"):
        load_image_folder(tmp_path / "f", resize="stretch", size=4)
    with pytest.raises(TrainingSetError, match="size must be an int or"):
        load_image_folder(tmp_path / "f", resize="resize", size="big")


def test_image_folder_bad_images_and_folders(tmp_path):
    good = save_image(tmp_path / "corrupt" / "a.png", random_uint8(8, 8))
    (tmp_path / "corrupt" / "b.png").write_bytes(b"definitely not a png")
    with raises(tmp_path / "corrupt" / "b.png", "unreadable, corrupt or truncated image"):
        load_image_folder(tmp_path / "corrupt")
    truncated = tmp_path / "truncated" / "t.png"
    truncated.parent.mkdir()
    truncated.write_bytes(png_bytes(random_uint8(64, 64, 3))[:-200])
    with raises(truncated, "corrupt or truncated image"):
        load_image_folder(tmp_path / "truncated")
    deep = tmp_path / "deep" / "d.png"
    save_image(deep, np.full((4, 4), 40000, np.uint16))
    with raises(deep, "unsupported image mode 'I;16'"):
        load_image_folder(tmp_path / "deep")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with raises(tmp_path / "empty", "no images"):
        load_image_folder(tmp_path / "empty")
    with raises(tmp_path / "missing", "not a directory"):
        load_image_folder(tmp_path / "missing")
    with raises(good, "not a directory"):
        load_image_folder(good)


def make_folder(tmp_path: Path, names=("x.png", "sub/y.png")) -> Path:
    for name in names:
        save_image(tmp_path / "imgs" / name, random_uint8(4, 4))
    return tmp_path / "imgs"


def test_image_folder_metadata_csv(tmp_path):
    folder = make_folder(tmp_path)
    csv_path = tmp_path / "meta.csv"
    csv_path.write_text("file,label,owner,license,note\nsub/y.png,7,Ann,CC-BY-4.0,\"a, b\"\nx.png,cat,,,\n")
    data = load_image_folder(folder, metadata=csv_path)
    y = data.metadata[data.index_of("sub/y.png")]
    assert y["label"] == 7 and y["owner"] == "Ann" and y["license"] == "CC-BY-4.0" and y["note"] == "a, b"
    assert y["source_uri"] == (folder / "sub" / "y.png").resolve().as_uri()
    assert data.metadata[data.index_of("x.png")] == {"source_uri": (folder / "x.png").resolve().as_uri(), "label": "cat"}
    id_csv = tmp_path / "ids.csv"
    id_csv.write_text("id,source_uri\n./x.png,https://example.org/x\n")
    with_ids = load_image_folder(folder, metadata=id_csv)
    assert with_ids.metadata[with_ids.index_of("x.png")]["source_uri"] == "https://example.org/x"


def test_image_folder_metadata_json(tmp_path):
    folder = make_folder(tmp_path)
    as_list = tmp_path / "list.json"
    as_list.write_text(json.dumps([{"file": "x.png", "label": 1, "owner": "Bo", "camera": "X100"}]))
    data = load_image_folder(folder, metadata=as_list)
    assert data.metadata[data.index_of("x.png")] == {
        "source_uri": (folder / "x.png").resolve().as_uri(), "label": 1, "owner": "Bo", "camera": "X100"}
    as_map = tmp_path / "map.json"
    as_map.write_text(json.dumps({"sub/y.png": {"license": "CC0-1.0"}}))
    mapped = load_image_folder(folder, metadata=as_map)
    assert mapped.metadata[mapped.index_of("sub/y.png")]["license"] == "CC0-1.0"


def test_image_folder_metadata_errors(tmp_path):
    folder = make_folder(tmp_path)
    cases = {
        "unknown.csv": ("file,label\nx.png,1\nghost.png,2\n", r"metadata for 1 file\(s\) not in .*ghost.png"),
        "nofile.csv": ("name,label\nx.png,1\n", "needs a 'file' or 'id' column"),
        "dup.csv": ("file,label\nx.png,1\nx.png,2\n", "duplicate metadata for 'x.png'"),
        "cells.csv": ("file,label\nx.png,1,extra\n", "more cells than header columns"),
        "unknown.json": (json.dumps({"ghost.png": {}}), "ghost.png"),
        "bad.json": ("{not json", "unreadable metadata JSON"),
        "scalar.json": ("3", "must be a list of objects or an object"),
        "nokey.json": (json.dumps([{"label": 1}]), "entry 0: expected an object with a 'file' key"),
        "fields.json": (json.dumps({"x.png": 5}), "metadata fields must be an object"),
        "meta.txt": ("file\nx.png\n", "must be .csv or .json"),
    }
    for name, (text, problem) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with raises(path, problem):
            load_image_folder(folder, metadata=path)
    with raises(tmp_path / "absent.csv", "not found"):
        load_image_folder(folder, metadata=tmp_path / "absent.csv")


# ---------------------------------------------------------------------------------------
# Arrays
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape, to_nchw",
    [
        ((4, 5, 6), lambda a: a[:, None]),
        ((4, 3, 5, 6), lambda a: a),
        ((4, 1, 5, 6), lambda a: a),
        ((4, 5, 6, 3), lambda a: a.transpose(0, 3, 1, 2)),
        ((4, 5, 6, 1), lambda a: a.transpose(0, 3, 1, 2)),
    ],
)
def test_array_layouts(tmp_path, shape, to_nchw):
    array = random_uint8(*shape)
    np.save(tmp_path / "faces.npy", array)
    data = load_array(tmp_path / "faces.npy")
    assert np.array_equal(data.images.numpy(), to_nchw(array))
    assert data.ids[0] == "faces-00000" and data.name == "faces"
    assert data.metadata[1]["source_uri"] == f"{(tmp_path / 'faces.npy').resolve()}#1"
    assert np.array_equal(load_array(tmp_path / "faces.npy", limit=2).images.numpy(), to_nchw(array)[:2])


def test_npz_keys_and_labels(tmp_path):
    images, labels = random_uint8(3, 4, 4), np.array([2, 0, 1])
    np.savez(tmp_path / "single.npz", whatever=images)
    np.savez(tmp_path / "named.npz", images=images, labels=labels)
    np.savez_compressed(tmp_path / "xy.npz", x=images, y=labels)
    np.savez(tmp_path / "many.npz", a=images, b=images[:, ::-1].copy())
    assert np.array_equal(load_array(tmp_path / "single.npz").images[:, 0].numpy(), images)
    for name in ("named.npz", "xy.npz"):
        data = load_array(tmp_path / name, limit=2)
        assert [m["label"] for m in data.metadata] == [2, 0]
        assert np.array_equal(data.images[:, 0].numpy(), images[:2])
    picked = load_array(tmp_path / "many.npz", key="b")
    assert np.array_equal(picked.images[:, 0].numpy(), images[:, ::-1])
    with raises(tmp_path / "many.npz", r"holds arrays \['a', 'b'\]; name the images with key="):
        load_array(tmp_path / "many.npz")
    with raises(tmp_path / "many.npz", r"no array 'c' in .npz; arrays are \['a', 'b'\]"):
        load_array(tmp_path / "many.npz", key="c")


def test_array_errors(tmp_path):
    def saved(name, array):
        np.save(tmp_path / name, array)
        return tmp_path / name

    cases = [
        (saved("float.npy", np.zeros((2, 4, 4), np.float32)), r"must be uint8 pixels 0..255, got float32.*astype\(np.uint8\)"),
        (saved("chan.npy", random_uint8(2, 5, 6, 7)), r"no channel axis of size 1 or 3"),
        (saved("flat.npy", random_uint8(2, 4)), r"must be \[N,H,W\], \[N,C,H,W\] or \[N,H,W,C\], got shape \(2, 4\)"),
        (saved("empty.npy", np.zeros((0, 4, 4), np.uint8)), "no images"),
        (saved("object.npy", np.array([{"a": 1}], dtype=object)), "corrupt or unreadable .npy/.npz file"),
    ]
    corrupt = tmp_path / "corrupt.npy"
    corrupt.write_bytes(b"\x93NUMPY garbage")
    cases.append((corrupt, "corrupt or unreadable"))
    badzip = tmp_path / "bad.npz"
    badzip.write_bytes(b"PK\x03\x04 truncated zip")
    cases.append((badzip, "corrupt or unreadable"))
    noise = tmp_path / "noise.npy"  # random bytes: not a pickle problem, whatever numpy says
    noise.write_bytes(np.random.default_rng(1).bytes(500))
    cases.append((noise, r"not a .npy file: it does not start with the NumPy header"))
    np.savez(tmp_path / "labels.npz", images=random_uint8(3, 4, 4), labels=np.arange(2))
    cases.append((tmp_path / "labels.npz", r"labels of shape \(2,\) do not match 3 images"))
    for path, problem in cases:
        with raises(path, problem) as error:
            load_array(path)
        assert "allow_pickle" not in str(error.value), path
    with raises(tmp_path / "float.npy", "key='x' given but this is a single .npy array"):
        load_array(tmp_path / "float.npy", key="x")


# ---------------------------------------------------------------------------------------
# EDM zips
# ---------------------------------------------------------------------------------------
def edm_images(n=3, shape=(4, 4, 3)) -> dict[str, np.ndarray]:
    return {f"{i // 2:05d}/img{i:08d}.png": random_uint8(*shape) for i in range(n)}


def test_edm_zip_round_trip(tmp_path):
    images = edm_images()
    names = sorted(images)
    path = write_edm_zip(tmp_path / "cifar-mini.zip", images, [[names[0], 6], [names[2], 1]])
    data = load_edm_zip(path)
    assert data.ids == names and data.name == "cifar-mini"
    assert data.images.shape == (3, 3, 4, 4)
    for i, name in enumerate(names):
        assert np.array_equal(data.images[i].numpy(), images[name].transpose(2, 0, 1))
    assert data.metadata[0]["label"] == 6 and "label" not in data.metadata[1] and data.metadata[2]["label"] == 1
    assert data.metadata[1]["source_uri"] == f"{path.resolve()}#{names[1]}"
    assert len(load_edm_zip(path, limit=2)) == 2


def test_edm_zip_grayscale_without_or_null_labels(tmp_path):
    images = edm_images(2, (5, 5))
    for labels in (..., None):
        path = write_edm_zip(tmp_path / "g.zip", images, labels, extra={"__MACOSX/._x.png": b"junk"})
        data = load_edm_zip(path)
        assert data.images.shape == (2, 1, 5, 5) and all("label" not in m for m in data.metadata)


def test_edm_zip_errors(tmp_path):
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(b"PK\x03\x04 this is not a zip file")
    with raises(corrupt, "corrupt or unreadable zip file"):
        load_edm_zip(corrupt)
    mixed = write_edm_zip(tmp_path / "mixed.zip", {"a.png": random_uint8(4, 4), "b.png": random_uint8(5, 4)}, ...)
    with raises(f"{mixed}:b.png", "mixed image sizes"):
        load_edm_zip(mixed)
    empty = write_edm_zip(tmp_path / "empty.zip", {}, None)
    with raises(empty, "no images"):
        load_edm_zip(empty)
    ghost = write_edm_zip(tmp_path / "ghost.zip", edm_images(1), [["ghost.png", 1]])
    with raises(f"{ghost}:dataset.json", r"labels for 1 file\(s\) not in the zip: \['ghost.png'\]"):
        load_edm_zip(ghost)
    for name, doc, problem in [("badjson", "{", "unreadable dataset.json"),
                               ("pairs", json.dumps({"labels": [1, 2]}), r"list of \[file, label\] pairs"),
                               ("scalar", "[]", "expected a JSON object")]:
        path = write_edm_zip(tmp_path / f"{name}.zip", edm_images(1), ..., extra={"dataset.json": doc.encode()})
        with raises(f"{path}:dataset.json", problem):
            load_edm_zip(path)
    bad_member = write_edm_zip(tmp_path / "member.zip", edm_images(1), ..., extra={"z.png": b"not a png"})
    with raises(f"{bad_member}:z.png", "corrupt or truncated image"):
        load_edm_zip(bad_member)


# ---------------------------------------------------------------------------------------
# load_training_set dispatch
# ---------------------------------------------------------------------------------------
def test_spec_fashion_mnist_forms(fake_fashion_root):
    for spec, n, name in [("fashion-mnist", 6, "fashion-mnist-train"), ("fashion-mnist:train", 6, "fashion-mnist-train"),
                          ("fashion-mnist:test", 4, "fashion-mnist-test")]:
        data = load_training_set(spec)
        assert (len(data), data.name) == (n, name)
        assert len(load_training_set(spec, limit=3)) == 3
    assert len(load_training_set("fashion-mnist", root=fake_fashion_root, limit=2)) == 2
    with pytest.raises(TrainingSetError, match="unknown Fashion-MNIST split 'dev'"):
        load_training_set("fashion-mnist:dev")


def test_spec_files_and_directories(tmp_path):
    images = random_uint8(4, 6, 6)
    np.save(tmp_path / "a.npy", images)
    np.savez(tmp_path / "b.npz", images=images, labels=np.arange(4))
    write_edm_zip(tmp_path / "c.zip", edm_images(4), None)
    ipath, _ = write_mnist_pair(tmp_path / "mnist", "train", images, np.arange(4, dtype=np.uint8))
    raw_idx = write_idx(tmp_path / "raw-images-idx3-ubyte", images)
    write_cifar_dir(tmp_path / "cifar", sizes=(2, 2))
    for i in range(4):
        save_image(tmp_path / "folder" / f"{i}.png", images[i])

    specs = {
        tmp_path / "a.npy": "a",
        tmp_path / "b.npz": "b",
        tmp_path / "c.zip": "c",
        ipath: "train-images-idx3-ubyte",
        raw_idx: "raw-images-idx3-ubyte",
        tmp_path / "cifar": "cifar10-train",
        tmp_path / "cifar" / "test_batch": "cifar10-test",
        tmp_path / "folder": "folder",
    }
    for spec, name in specs.items():
        data = load_training_set(str(spec))
        assert data.name == name, spec
        assert data.source == str(spec)
        assert len(load_training_set(spec, limit=1)) == 1
    assert [m["label"] for m in load_training_set(str(ipath)).metadata] == [0, 1, 2, 3]  # labels found beside
    assert "label" not in load_training_set(str(raw_idx)).metadata[0]
    assert load_training_set(str(tmp_path / "b.npz")).metadata[3]["label"] == 3
    assert load_training_set(str(tmp_path / "folder"), resize="resize", size=3).images.shape == (4, 1, 3, 3)
    assert len(load_training_set(str(tmp_path / "cifar"), batches=["test_batch"])) == 2


def test_spec_errors(tmp_path):
    with raises(tmp_path / "nowhere", "no such file or directory.*fashion-mnist:test.*FILE.npz.*FILE.zip"):
        load_training_set(str(tmp_path / "nowhere"))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with raises(text, "unrecognised training-set file type.*accepted training-set specs"):
        load_training_set(str(text))
    np.save(tmp_path / "a.npy", random_uint8(2, 3, 3))
    with raises(tmp_path / "a.npy", r"option\(s\) \['size'\] do not apply to load_array"):
        load_training_set(str(tmp_path / "a.npy"), size=4)
    with raises(tmp_path / "a.npy", r"option\(s\) \['path'\] do not apply"):
        load_training_set(str(tmp_path / "a.npy"), path="other.npy")


def test_loaders_re_exports_the_format_modules():
    from pspc.data import arrays, cifar, edm_zip, idx, image_folder, loaders

    assert loaders.load_idx is idx.load_idx and loaders.load_fashion_mnist is idx.load_fashion_mnist
    assert loaders.load_cifar10 is cifar.load_cifar10 and loaders.load_array is arrays.load_array
    assert loaders.load_edm_zip is edm_zip.load_edm_zip and loaders.load_image_folder is image_folder.load_image_folder
    assert loaders.decode_images is image_folder.decode_images
    assert loaders.IMAGE_SUFFIXES == image_folder.IMAGE_SUFFIXES and loaders.CIFAR10_FILES == cifar.CIFAR10_FILES
