"""The `pspc` command line, run in-process through main([...]) on tiny data sets.

Checks that each command writes what it promises (arrays of the right shape and range,
PNG grids, a run.json that identifies the data) and that bad input ends with exit
status 2 and a one-line `pspc: error: ...` instead of a traceback.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pspc.cli import main
from pspc.denoisers import build_denoiser
from pspc.data.images import save_grid
from pspc.data.loaders import load_training_set
from pspc.data.training_set import to_uint8

REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fashion_mnist = pytest.mark.skipif(not REAL_FASHION_MNIST.is_dir(),
                                         reason=f"{REAL_FASHION_MNIST} absent: apt-get install -y dataset-fashion-mnist")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    """20 random uint8 images 1x8x8 in an .npz file (the --data spec)."""
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    images = np.random.default_rng(0).integers(0, 256, size=(20, 1, 8, 8), dtype=np.uint8)
    np.savez(path, images=images)
    return str(path)


def run(*argv) -> int:
    return main([str(a) for a in argv])


def load_run(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


def assert_error(code: int, capsys, *needles: str) -> str:
    """Exit status 2 with `pspc: error: ...` naming the problem, and no traceback."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("pspc: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


# -- pspc denoise ---------------------------------------------------------------------
def test_denoise_forward_process_writes_arrays_grid_and_record(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert run("denoise", "--data", tiny, "--t", 0.5, "--num", 4, "--seed", 3, "--out", out) == 0
    printed = capsys.readouterr().out
    for name in ("z.npy", "denoised.npy", "clean.npy", "grid.png", "run.json"):
        assert (out / name).is_file() and name in printed

    clean, z, denoised = (np.load(out / f"{n}.npy") for n in ("clean", "z", "denoised"))
    assert clean.shape == z.shape == denoised.shape == (4, 1, 8, 8)
    data = load_training_set(tiny)
    record = load_run(out)
    np.testing.assert_array_equal(clean, data.as_float()[record["picked_indices"]].numpy())
    assert len(set(record["picked_indices"])) == 4
    assert 0.3 < np.std(z - clean) < 0.7  # z = x + t eps with t = 0.5
    # PSPC output pixels are convex combinations of training pixels.
    assert np.isfinite(denoised).all() and np.abs(denoised).max() <= 1 + 1e-6
    assert np.abs(denoised - clean).mean() < np.abs(z - clean).mean()

    assert record["denoiser"]["dataset"]["fingerprint"] == data.fingerprint
    assert record["denoiser"]["kind"] == "pspc-square" and record["denoiser"]["dataset"]["xflip"] is True
    assert record["t"] == 0.5 and record["seed"] == 3 and record["argv"][:2] == ["pspc", "denoise"]
    assert record["picked_ids"] == [data.ids[i] for i in record["picked_indices"]]
    assert {"python", "torch", "numpy", "pspc-auditor"} <= set(record["versions"])
    assert record["device"] == "cpu" and record["wall_seconds"] >= 0 and record["timestamp"]

    grid = Image.open(out / "grid.png")  # 3 rows (clean / z / denoised) of 4, scale 4, padding 1
    assert grid.mode == "L" and grid.size == (4 * 33 + 1, 3 * 33 + 1)

    # Same seed, same picks and noise.
    assert run("denoise", "--data", tiny, "--t", 0.5, "--num", 4, "--seed", 3, "--out", tmp_path / "again") == 0
    np.testing.assert_array_equal(np.load(tmp_path / "again" / "z.npy"), z)


def test_denoise_input_matches_library_call(tiny, tmp_path):
    z = np.random.default_rng(1).normal(size=(3, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    out = tmp_path / "run"
    assert run("denoise", "--data", tiny, "--no-xflip", "--patch-size", 3, "--t", 0.8,
               "--input", tmp_path / "z.npy", "--out", out) == 0
    assert not (out / "clean.npy").exists()
    denoised = np.load(out / "denoised.npy")
    expected = build_denoiser("pspc-square", load_training_set(tiny), patch_size=3)(torch.from_numpy(z), 0.8)
    np.testing.assert_allclose(denoised, expected.numpy(), atol=1e-6)
    record = load_run(out)
    assert record["denoiser"]["schedule"] == {"patch_size": 3} and record["denoiser"]["dataset"]["xflip"] is False
    assert record["input_sha256"] and record["grid_rows"] == ["z", "denoised"]
    assert Image.open(out / "grid.png").size == (3 * 33 + 1, 2 * 33 + 1)


def test_denoise_weights(tiny, tmp_path):
    out = tmp_path / "run"
    assert run("denoise", "--data", tiny, "--t", 0.3, "--num", 2, "--patch-size", 5, "--weights", 3, "--out", out) == 0
    with np.load(out / "weights.npz") as w:
        num_patches = (8 - 5 + 1) ** 2
        assert w["entry"].shape == w["weight"].shape == w["image_id"].shape == (2, num_patches, 3)
        assert w["mass"].shape == w["entropy"].shape == w["ess"].shape == (2, num_patches)
        assert ((w["entry"] >= -1) & (w["entry"] < 40)).all()  # 20 images + 20 mirrored entries
        np.testing.assert_allclose(w["weight"].sum(-1), w["mass"], atol=1e-5)
        assert (w["mass"] <= 1 + 1e-6).all() and (w["ess"] >= 1 - 1e-6).all()
        assert set(w["image_id"][w["entry"] >= 0].tolist()) <= set(load_training_set(tiny).ids)


@pytest.mark.parametrize("make, needle", [
    (lambda p: np.save(p, np.zeros((2, 1, 9, 9), np.float32)), "expected [B, 1, 8, 8]"),
    (lambda p: np.save(p, np.zeros((2, 3, 8, 8), np.float32)), "(2, 3, 8, 8) does not match"),
    (lambda p: np.save(p, np.zeros((1, 8, 8), np.float32)), "(1, 8, 8) does not match"),
    (lambda p: np.save(p, np.zeros((2, 1, 8, 8), np.uint8)), "expected a float array"),
    (lambda p: np.save(p, np.full((2, 1, 8, 8), np.nan, np.float32)), "NaN"),
    (lambda p: p.write_text("not numpy"), "not a .npy file: it does not start with the NumPy header"),
    (lambda p: np.savez(p.with_suffix(""), a=np.zeros(2)) or p.with_suffix(".npz").rename(p), "a .npz archive"),
    (lambda p: None, "no such file"),
])
def test_denoise_bad_input(tiny, tmp_path, capsys, make, needle):
    path = tmp_path / "z.npy"
    make(path)
    code = run("denoise", "--data", tiny, "--t", 1, "--input", path, "--out", tmp_path / "run")
    assert_error(code, capsys, str(path), needle)


# -- pspc sample ----------------------------------------------------------------------
def test_sample(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert run("sample", "--data", tiny, "--num", 3, "--steps", 3, "--seed", 5, "--out", out) == 0
    assert "samples.png" in capsys.readouterr().out
    samples = np.load(out / "samples.npy")
    assert samples.dtype == np.float32 and samples.shape == (3, 1, 8, 8)
    assert np.isfinite(samples).all() and np.abs(samples).max() <= 1
    assert samples.std() > 0.1 and not np.allclose(samples[0], samples[1])
    record = load_run(out)
    assert record["sampler"]["num_steps"] == 3 and record["sampler"]["method"] == "euler"
    assert record["sample_seeds"] == [5, 7] and len(record["time_steps"]) == 4
    assert record["denoiser"]["dataset"]["fingerprint"] == load_training_set(tiny).fingerprint
    assert Image.open(out / "samples.png").size == (2 * 33 + 1, 2 * 33 + 1)


def test_sample_heun_gaussian(tiny, tmp_path):
    out = tmp_path / "run"
    assert run("sample", "--data", tiny, "--denoiser", "gaussian", "--rank", 8, "--sampler", "heun",
               "--num", 2, "--steps", 4, "--out", out) == 0
    assert np.load(out / "samples.npy").shape == (2, 1, 8, 8)
    denoiser = load_run(out)["denoiser"]
    assert denoiser["kind"] == "gaussian" and denoiser["rank"] == 8


def test_default_out_dir(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run("denoise", "--data", tiny, "--t", 2, "--num", 1, "--denoiser", "empirical") == 0
    (out,) = (tmp_path / "out").iterdir()
    assert out.name.startswith("denoise-") and (out / "denoised.npy").is_file()


# -- pspc info ------------------------------------------------------------------------
def test_info(tiny, capsys):
    assert run("info", "--data", tiny) == 0
    printed = capsys.readouterr().out
    assert load_training_set(tiny).fingerprint in printed and "20 images" in printed and "1 x 8 x 8" in printed
    steps = re.findall(r"^ +(\d+) +([\d.]+) +(\d+)$", printed, flags=re.M)  # step, t, s
    assert [int(step) for step, _, _ in steps] == list(range(18))
    assert float(steps[0][1]) == 80.0 and int(steps[0][2]) == 8 and int(steps[-1][2]) == 3


# -- errors ---------------------------------------------------------------------------
@pytest.mark.parametrize("argv, needles", [
    (["denoise", "--t", 0], ["--t must be > 0"]),
    (["denoise", "--t", -1.5], ["--t must be > 0"]),
    (["denoise", "--t", 1e-300], ["must be in [1e-06, 10000]", "1e-300"]),
    (["denoise", "--t", 1e5], ["must be in [1e-06, 10000]"]),
    (["denoise", "--t", 1, "--num", 21], ["--num 21 exceeds the 20"]),
    (["denoise", "--t", 1, "--limit", 0], ["limit"]),
    (["sample", "--steps", 0], ["--steps must be > 0"]),
    (["sample", "--denoiser", "gaussian", "--patch-size", 3], ["--patch-size applies to --denoiser pspc-square"]),
    (["denoise", "--t", 1, "--denoiser", "gaussian", "--weights", 4], ["--weights needs a PSPC denoiser"]),
    (["denoise", "--t", 1, "--device", "nonsense"], ["--device"]),
])
def test_bad_parameters(tiny, tmp_path, capsys, argv, needles):
    assert_error(run(*argv, "--data", tiny, "--out", tmp_path / "run"), capsys, *needles)
    assert not (tmp_path / "run" / "run.json").exists()


def test_denoise_refuses_huge_input(tiny, tmp_path, capsys):
    np.save(tmp_path / "z.npy", np.full((2, 1, 8, 8), 1e37, dtype=np.float32))
    out = tmp_path / "run"
    code = run("denoise", "--data", tiny, "--t", 1, "--input", tmp_path / "z.npy", "--out", out)
    assert_error(code, capsys, "|z| must be <= 1e+06")
    assert not (out / "run.json").exists() and not (out / "denoised.npy").exists()


def test_unknown_data_spec(tmp_path, capsys):
    missing = tmp_path / "no-such-data"
    assert_error(run("denoise", "--data", missing, "--t", 1, "--out", tmp_path / "run"), capsys, str(missing))
    assert_error(run("info", "--data", "fashion-mnist:validation"), capsys, "validation")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_unavailable(tiny, tmp_path, capsys):
    assert_error(run("sample", "--data", tiny, "--device", "cuda", "--out", tmp_path / "run"), capsys,
                 "CUDA is not available")


def test_usage_errors_return_2(capsys):
    assert run("denoise", "--num", 3) == 2  # --t is required; argparse prints the usage
    assert "--t" in capsys.readouterr().err
    assert run("--help") == 0


# -- Fashion-MNIST --------------------------------------------------------------------
@needs_fashion_mnist
def test_fashion_mnist_denoise_and_sample(tmp_path):
    assert run("denoise", "--limit", 50, "--t", 1.0, "--num", 3, "--out", tmp_path / "d") == 0
    denoised = np.load(tmp_path / "d" / "denoised.npy")
    assert denoised.shape == (3, 1, 28, 28) and np.isfinite(denoised).all()
    record = load_run(tmp_path / "d")
    assert record["denoiser"]["dataset"]["fingerprint"] == load_training_set("fashion-mnist", limit=50).fingerprint
    assert record["denoiser"]["dataset"]["count"] == 50 and record["picked_ids"][0].startswith("train-")

    assert run("sample", "--limit", 50, "--num", 2, "--steps", 3, "--out", tmp_path / "s") == 0
    samples = np.load(tmp_path / "s" / "samples.npy")
    assert samples.shape == (2, 1, 28, 28) and np.abs(samples).max() <= 1 and samples.std() > 0.1


# -- pspc.data.images ----------------------------------------------------------------------
def test_save_grid(tmp_path):
    images = torch.linspace(-1, 1, 5 * 3 * 2 * 2).view(5, 3, 2, 2)
    path = save_grid(images, tmp_path / "g.png", columns=2, scale=3, padding=2)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (3 * (6 + 2) + 2, 2 * (6 + 2) + 2, 3)
    assert (grid[:2] == 255).all()  # padding
    first = grid[2:8, 2:8]  # image 0 enlarged 3x by repetition: blocks of equal pixels
    assert (first[:3, :3] == first[0, 0]).all() and (first[0, 0] == to_uint8(images[0])[:, 0, 0].numpy()).all()
    with pytest.raises(ValueError, match="C = 1 or 3"):
        save_grid(torch.zeros(1, 2, 4, 4), tmp_path / "bad.png")
