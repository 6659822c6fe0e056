"""Exact copies by hash (auditor.similarity.hashing): the store's pixel sha256 from a file, and `auditor hash`."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from auditor.similarity.hashing import ExactHashes, HashError, file_hashes, pixel_sha256
from tests.support.cli import run_cli
from tests.support.data import random_set


def test_pixel_hash_is_the_stores_training_image_hash():
    data = random_set()
    for i in range(len(data)):
        assert pixel_sha256(data.images[i]) == data.image_sha256(i)
    pixels = data.images[3].numpy()
    expected = hashlib.sha256(b"uint8:1x8x8" + pixels.tobytes()).hexdigest()
    assert pixel_sha256(pixels) == expected


def test_file_hashes_of_a_png_and_an_npy_match_the_store(tmp_path):
    data = random_set()
    png, npy, bmp = tmp_path / "img.png", tmp_path / "img.npy", tmp_path / "img.bmp"
    Image.fromarray(data.images[4, 0].numpy()).save(png)
    Image.fromarray(data.images[4, 0].numpy()).save(bmp)
    np.save(npy, data.images[4].numpy())
    records = [file_hashes(p) for p in (png, bmp, npy)]
    assert {r["pixel_sha256"] for r in records} == {data.image_sha256(4)}
    assert records[0]["file_sha256"] == hashlib.sha256(png.read_bytes()).hexdigest()
    assert records[0]["file_sha256"] != records[1]["file_sha256"]  # same pixels, other bytes


def test_equal_rgb_channels_hash_as_gray_only_when_asked(tmp_path):
    data = random_set()
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.repeat(data.images[1, 0].numpy()[..., None], 3, axis=2)).save(rgb)
    assert file_hashes(rgb)["shape"] == [3, 8, 8]
    assert file_hashes(rgb, channels=1)["pixel_sha256"] == data.image_sha256(1)


def test_bad_files_are_named(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    (tmp_path / "x.txt").write_text("x")
    np.save(tmp_path / "f.npy", np.full((8, 8), 3.0))
    for name, message in (("missing.png", "no such file"), ("bad.png", "bad.png"), ("x.txt", "unsupported"),
                          ("f.npy", "uint8 pixels or finite floats")):
        with pytest.raises(HashError, match=message):
            file_hashes(tmp_path / name)


def test_exact_hashes_find_originals_and_mirrors():
    data = random_set()
    exact = ExactHashes(data.images)
    assert exact.entries(data.images[5]) == [5]
    assert exact.entries(data.images[5].flip(-1)) == [5 + len(data)]
    assert exact.entries(torch.zeros(1, 8, 8, dtype=torch.uint8)) == []


def test_cli_hash_prints_both_hashes(tmp_path, capsys):
    data = random_set()
    png = tmp_path / "img.png"
    Image.fromarray(data.images[2, 0].numpy()).save(png)
    code, out, err = run_cli(capsys, "hash", png)
    assert code == 0, err
    assert f"{data.image_sha256(2)}  pixels 1x8x8" in out
    assert hashlib.sha256(png.read_bytes()).hexdigest() + "  file bytes" in out
    code, out, err = run_cli(capsys, "hash", tmp_path / "nope.png")
    assert code == 2 and "no such file" in err
