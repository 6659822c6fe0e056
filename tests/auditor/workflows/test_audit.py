"""Auditing external images (auditor.workflows.audit): input checks, the PF-ODE inversion and its
replay, the direct path without a network, and `auditor audit`.

Data: 12 random 8x8 images with x-flips; network: tests.support.networks.TinyDenoiser.
"""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from auditor.errors import UserError
from auditor.store import attribution, database
from auditor.store.recorder import from_blob
from auditor.workflows.audit import AuditInputError, load_audit_image, record_audit
from auditor.workflows.options import AuditOptions
from pspc.denoisers import NetworkDenoiser, build_denoiser
from pspc.networks import export_torchscript
from pspc.samplers import SamplerConfig, initial_noise, invert, sample
from tests.support.cli import run_cli
from tests.support.data import random_set
from tests.support.networks import SHAPE, tiny_network
from tests.support.store import fetch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DESCRIPTOR = "pixel-correlation:8"


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "audit.duckdb"
    database.upgrade(path)
    return path


def save_png(path, pixels: np.ndarray):
    Image.fromarray(pixels).save(path)
    return path


# ---------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------
def test_images_and_arrays_load_exactly(tmp_path):
    pixels = random_set().images[4, 0].numpy()  # uint8 [8, 8]
    expected = torch.from_numpy(pixels.astype(np.float32) / 127.5 - 1)[None]
    png = save_png(tmp_path / "x.png", pixels)
    image, info = load_audit_image(png, SHAPE)
    assert torch.equal(image, expected)
    assert info["sha256"] == hashlib.sha256(png.read_bytes()).hexdigest() and info["format"] == "png"
    rgb, info = load_audit_image(save_png(tmp_path / "rgb.png", np.stack([pixels] * 3, -1)), SHAPE)
    assert torch.equal(rgb, expected) and "grayscale" in info["converted"]
    floats = expected.numpy()
    for name, array in [("hw", pixels), ("chw", pixels[None]), ("hwc", pixels[:, :, None]),
                        ("nchw", pixels[None, None]), ("float-chw", floats), ("float-hw", floats[0].astype(np.float64))]:
        np.save(tmp_path / f"{name}.npy", array)
        image, info = load_audit_image(tmp_path / f"{name}.npy", SHAPE)
        assert torch.allclose(image, expected, atol=1e-7), name
        assert info["shape"] == [1, 8, 8]


def bad_inputs(tmp_path) -> list[tuple[str, str]]:
    rng = np.random.RandomState(0)
    cases = []

    def add(name, writer, message):
        path = tmp_path / name
        writer(path)
        cases.append((path, message))

    add("colour.png", lambda p: save_png(p, rng.randint(0, 256, (8, 8, 3)).astype(np.uint8)), "colour image")
    add("big.png", lambda p: save_png(p, rng.randint(0, 256, (9, 8)).astype(np.uint8)),
        r"the image is 9x8 \(HxW\), the training set's images are 8x8")
    add("truncated.png", lambda p: p.write_bytes(save_png(tmp_path / "ok.png", np.zeros((8, 8), np.uint8))
                                                 .read_bytes()[:40]), "corrupt or truncated")
    add("text.png", lambda p: p.write_text("not an image"), "unreadable")
    add("nan.npy", lambda p: np.save(p, np.full((8, 8), np.nan, np.float32)), "NaN or infinite")
    add("ints.npy", lambda p: np.save(p, np.zeros((8, 8), np.int16)), "dtype int16")
    add("range.npy", lambda p: np.save(p, np.full((8, 8), 200.0)), r"diffusion range \[-1, 1\]")
    add("axes.npy", lambda p: np.save(p, np.zeros((2, 8, 8), np.uint8)), "no channel axis")
    add("batch.npy", lambda p: np.save(p, np.zeros((2, 1, 8, 8), np.uint8)), "expected one image")
    add("garbage.npy", lambda p: p.write_bytes(b"\x93NUMPY garbage"), "not a readable .npy")
    add("noise.npy", lambda p: p.write_bytes(bytes(range(256)) * 2), "does not start with the NumPy header")
    add("pair.npy", lambda p: p.write_bytes(b"PK\x03\x04..."), "a .npz archive")
    add("notes.txt", lambda p: p.write_text("x"), "unsupported file type '.txt'")
    cases.append((tmp_path / "missing.png", "no such file"))
    cases.append((tmp_path, "not a regular file"))
    return cases


def test_bad_images_get_a_clear_error_naming_the_file(tmp_path):
    for path, message in bad_inputs(tmp_path):
        with pytest.raises(AuditInputError, match=message) as error:
            load_audit_image(path, SHAPE)
        assert str(path) in str(error.value), path


def test_wrong_channel_count_for_a_colour_training_set(tmp_path):
    png = save_png(tmp_path / "gray.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(AuditInputError, match="1 channel\\(s\\), the training set's images have 3"):
        load_audit_image(png, (3, 8, 8))


# ---------------------------------------------------------------------------------------
# Inversion
# ---------------------------------------------------------------------------------------
def roundtrip_error(network, x, method, steps) -> float:
    config = SamplerConfig(method=method, num_steps=steps)
    return float((sample(network, invert(network, x, config), config) - x).abs().max())


def test_inversion_then_replay_returns_close_to_the_image():
    """Invert with the network's PF-ODE, replay forward: the image comes back.

    Tolerance, and why: inverting Euler with Euler is not exact: each step's slope is taken
    at the other end of the step, so the round trip's error is first order in the step
    (halving it halves the error). Heun's trapezoidal rule is symmetric to second order: the
    error falls at least 4x per halving until it reaches a floor the ODE cannot remove: the
    sampler's last step returns D(z, t_min) instead of z, which differs from x by
    |D(x, t_min) - x| = O(t_min) (c_out(t_min) ~ t_min for the EDM preconditioning)."""
    network = NetworkDenoiser(tiny_network(), SHAPE)
    x = random_set().as_float()[:3]
    euler = [roundtrip_error(network, x, "euler", n) for n in (32, 64)]
    assert 1.7 <= euler[0] / euler[1] <= 2.3  # first order
    heun = [roundtrip_error(network, x, "heun", n) for n in (16, 32, 64)]
    assert heun[0] / heun[1] >= 4  # at least second order
    floor = float((network(x, 0.002) - x).abs().max())
    assert heun[2] <= floor + 5e-4
    assert heun[1] < 1e-2  # 32 Heun steps: within 1/100 of the data range's half-width


@pytest.mark.slow
def test_audit_with_a_network_inverts_and_replays_with_attribution(db, tmp_path):
    data = random_set()
    png = save_png(tmp_path / "train3.png", data.images[3, 0].numpy())
    net = tiny_network()
    result = record_audit(db, data, png, network=net, options=AuditOptions(
        steps=10, sampler="heun", seed=0, top_k=64, mass=1.0, patch_size=3, descriptor=DESCRIPTOR, copy_k=2))
    assert result.method == "inversion" and result.network_id == 1
    (kind, network_id, details, status), = fetch(db, "SELECT kind, network_id, details, status FROM runs")
    details = json.loads(details)
    assert (kind, network_id, status, details["method"]) == ("external-audit", 1, "complete", "inversion")
    assert details["input"]["sha256"] == hashlib.sha256(png.read_bytes()).hexdigest()
    # the replay starts from the inversion of the image and is the network's trajectory
    network, config = NetworkDenoiser(net, SHAPE), SamplerConfig(method="heun", num_steps=10)
    x = data.as_float()[3:4]
    z_t = invert(network, x, config)
    rows = fetch(db, "SELECT step, t, z, denoised FROM steps ORDER BY step")
    assert len(rows) == 10
    assert torch.allclose(from_blob(rows[0][2], SHAPE), z_t[0], atol=1e-4)
    replayed = sample(network, z_t, config)
    expected = float((replayed - x).abs().max())
    assert details["reconstruction"]["max_abs_error"] == pytest.approx(expected, abs=1e-5)
    assert details["reconstruction"]["max_abs_error"] < 0.3  # 10 Heun steps (see the convergence test)
    (last,), = fetch(db, "SELECT network_denoised FROM step_agreement WHERE step = 9")
    assert torch.allclose(from_blob(last, SHAPE), replayed[0], atol=1e-5)
    # the final image is the audited image; every step is attributed (Eq. 11 from the stored weights)
    assert torch.equal(from_blob(fetch(db, "SELECT final_image FROM samples")[0][0], SHAPE), x[0])
    pspc = build_denoiser("pspc-square", data, patch_size=3)
    for step, t, z, denoised in rows:
        assert torch.allclose(from_blob(denoised, SHAPE), pspc(from_blob(z, SHAPE)[None], t)[0], atol=1e-6)
        recomposed, stored, _ = attribution.recompose_step(db, result.run_id, 0, step, data)
        assert (recomposed - stored).abs().max() < 1e-5
    assert [r["step"] for r in result.agreement] == list(range(10))
    # the image is training image 3: copy detection finds it
    (image_index, flip, score, flagged), = fetch(db, "SELECT image_index, flip, score, flagged FROM copy_matches "
                                                     "WHERE rank = 0")
    assert (image_index, flip, flagged) == (3, False, True) and score == pytest.approx(1.0, abs=1e-5)


def test_audit_without_a_network_attributes_at_noise_levels(db):
    data = random_set()
    x = data.as_float()[5]
    result = record_audit(db, data, x, options=AuditOptions(noise_levels=(0.5, 2.0, 1.0), draws=2, seed=7, top_k=64,
                                                            mass=1.0, patch_size=3, copy_k=0))
    assert result.method == "direct" and result.network_id is None and result.agreement == []
    (kind, network_id, details, sampler, num_samples), = fetch(
        db, "SELECT kind, network_id, details, sampler, num_samples FROM runs")
    assert (kind, network_id, json.loads(details)["method"], num_samples) == ("external-audit", None, "direct", 2)
    assert json.loads(sampler)["noise_levels"] == [2.0, 1.0, 0.5]
    eps = initial_noise(2, SHAPE, 7, 1.0)
    pspc = build_denoiser("pspc-square", data, patch_size=3)
    rows = fetch(db, "SELECT sample_index, step, t, t_next, z, denoised FROM steps ORDER BY sample_index, step")
    assert [(s, k, t, t_next) for s, k, t, t_next, _, _ in rows] == [
        (s, k, t, t_next) for s in range(2) for k, (t, t_next) in enumerate([(2.0, 1.0), (1.0, 0.5), (0.5, 0.0)])]
    for s, k, t, _, z, denoised in rows:
        assert torch.allclose(from_blob(z, SHAPE), x + t * eps[s], atol=1e-6)
        assert torch.allclose(from_blob(denoised, SHAPE), pspc(from_blob(z, SHAPE)[None], t)[0], atol=1e-6)
    for s in range(2):
        assert torch.equal(from_blob(fetch(db, "SELECT final_image FROM samples WHERE sample_index = ?", [s])[0][0],
                                     SHAPE), x)
        shares = attribution.sample_sources(db, result.run_id, s, top=100)
        lowest = attribution.sample_sources(db, result.run_id, s, step=2, top=100)  # t = 0.5
        assert [(r["image_index"], r["share"]) for r in shares] == [(r["image_index"], r["share"]) for r in lowest]
        assert sum(r["share"] for r in shares) == pytest.approx(1.0, abs=1e-5)
    assert fetch(db, "SELECT count(*) FROM step_agreement") == [(0,)]


def test_bad_audits_write_nothing(db, tmp_path):
    data = random_set()
    x = data.as_float()[0]
    cases = [
        (dict(image=tmp_path / "missing.png"), AuditInputError, "no such file"),
        (dict(image=torch.zeros(1, 9, 8)), AuditInputError, "shape"),
        (dict(network=tiny_network(), steps=1), UserError, "steps >= 2"),
        (dict(noise_levels=(1.0, -1.0)), UserError, "> 0"),
        (dict(noise_levels=(1.0, 1.0)), UserError, "repeat"),
        (dict(noise_levels=()), UserError, "at least one"),
        (dict(noise_levels=(1.0, 1e-300)), UserError, r"must be in \[1e-06, 10000\], got \[1e-300\]"),
        (dict(noise_levels=(1e5,)), UserError, r"must be in \[1e-06, 10000\]"),
        (dict(draws=0), UserError, "draws"),
        (dict(explainer="gaussian"), UserError, "posterior weights"),
        (dict(thresholds=(2.0,)), ValueError, r"\[-1, 1\]"),
        (dict(network=tiny_network((1, 9, 8))), ValueError, "image|shape|9"),
    ]
    for change, error, message in cases:
        options = {"image": x, "descriptor": DESCRIPTOR, **change}
        image, network = options.pop("image"), options.pop("network", None)
        with pytest.raises(error, match=message):
            record_audit(db, data, image, network=network, options=AuditOptions(**options))
    for table in ("runs", "datasets", "networks"):
        assert fetch(db, f"SELECT count(*) FROM {table}") == [(0,)], table


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------
@pytest.fixture
def cli_files(tmp_path, db):
    data = random_set()
    array = tmp_path / "tiny.npy"
    np.save(array, data.images.numpy())
    png = save_png(tmp_path / "train2.png", data.images[2, 0].numpy())
    network = export_torchscript(tiny_network(), tmp_path / "tiny.pt", SHAPE)
    return db, array, png, network


@pytest.mark.slow
def test_cli_audit_both_ways(cli_files, capsys):
    db, array, png, network = cli_files
    code, out, err = run_cli(capsys, "--db", db, "audit", png, "--no-network", "--data", array, "--noise-levels",
                             "1,0.3", "--patch-size", 3, "--descriptor", DESCRIPTOR, "--copy-k", 1)
    assert code == 0, err
    assert "run 1: audit of" in out and "method: direct (no network)" in out and "t = 1, 0.3" in out
    assert re.search(r"audited image\s+0\s+tiny-00002\s+.*1\.0000", out)
    code, out, err = run_cli(capsys, "--db", db, "audit", png, "--network", network, "--data", array, "--steps", 4,
                             "--patch-size", 3, "--copy-k", 0)
    assert code == 0, err
    assert "run 2: audit of" in out and "method: inversion with network tiny" in out and "reconstruction: MSE" in out
    assert fetch(db, "SELECT kind, json_extract_string(details, '$.method') FROM runs ORDER BY id") == [
        ("external-audit", "direct"), ("external-audit", "inversion")]


def test_cli_audit_errors_change_nothing(cli_files, capsys, tmp_path, monkeypatch):
    db, array, png, network = cli_files
    monkeypatch.chdir(tmp_path)  # no checkpoints/fmnist-unet.pt here
    code, _, err = run_cli(capsys, "--db", db, "audit", png, "--data", array)
    assert code == 2 and "checkpoints/fmnist-unet.pt: no network file" in err and "--no-network" in err
    big = save_png(tmp_path / "big.png", np.zeros((9, 8), np.uint8))
    code, _, err = run_cli(capsys, "--db", db, "audit", big, "--no-network", "--data", array)
    assert code == 2 and str(big) in err and "9x8" in err
    code, _, err = run_cli(capsys, "--db", db, "audit", tmp_path / "nope.png", "--no-network", "--data", array)
    assert code == 2 and "nope.png: no such file" in err
    code, _, err = run_cli(capsys, "--db", db, "audit", png, "--no-network", "--data", array, "--noise-levels", "1,x")
    assert code == 2 and "--noise-levels takes comma-separated numbers" in err
    code, _, err = run_cli(capsys, "--db", db, "audit", png, "--network", network, "--no-network", "--data", array)
    assert code == 2
    assert fetch(db, "SELECT count(*) FROM runs") == [(0,)]


def test_cli_audit_refuses_noise_levels_out_of_range(cli_files, capsys):
    """--noise-levels 1e-300 used to record a 'complete' run with captured mass 0 and no sources."""
    db, array, png, _ = cli_files
    runs = fetch(db, "SELECT count(*) FROM runs")
    code, _, err = run_cli(capsys, "--db", db, "audit", png, "--no-network", "--data", array, "--noise-levels",
                           "1e-300", "--patch-size", 3, "--copy-k", 0)
    assert code == 2 and "must be in [1e-06, 10000]" in err and "1e-300" in err, err
    assert fetch(db, "SELECT count(*) FROM runs") == runs == [(0,)]
