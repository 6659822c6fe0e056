"""Descriptors: SSCD TorchScript loading (local, URL + cache + sha256), preprocessing, fallback.

No weights can be downloaded here, so a tiny TorchScript conv net with SSCD's interface
(images [B, 3, H, W] -> [B, 512]) goes through the real loading and scoring code, and URLs
are file:// URLs or a replaced `checkpoints.open_url`. Preprocessing is checked against a hand-written
PIL reference (float mode 'F', bilinear, which PIL antialiases when downscaling).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from auditor.similarity import checkpoints, descriptors
from auditor.similarity.descriptors import (
    IMAGENET_MEAN, IMAGENET_STD, OFFICIAL_SSCD_CHECKPOINTS, DescriptorError, FallbackDescriptorWarning,
    PixelCorrelationDescriptor, Preprocessing, SSCDDescriptor, load_descriptor
)
from pspc.data.training_set import to_uint8
from tests.support.networks import TinySSCD, save_script

pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")]


# -- tiny TorchScript stand-ins for SSCD --------------------------------------------------

class FourDimensional(TinySSCD):
    def forward(self, x):
        return self.embed(x)[:, :, None, None]


class AlwaysNaN(TinySSCD):
    def forward(self, x):
        return self.embed(x) * float("nan")


class NaNOnWhite(TinySSCD):
    """Finite on the random probe; NaN for an image whose top-left pixel is pure white."""

    def forward(self, x):
        y = self.embed(x)
        white = (x[:, 0, 0, 0] > 2.24).float()  # 255 gives 2.2489, 254 gives 2.2318
        return y + (white / (1.0 - white) * 0.0)[:, None]  # 0 * inf = NaN where white


class GrayOnly(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


def tiny_sscd_file(folder: Path, name: str = "tiny.torchscript.pt", dim: int = 512) -> Path:
    return save_script(TinySSCD(dim), Path(folder) / name)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory) -> Path:
    return tiny_sscd_file(tmp_path_factory.mktemp("sscd"))


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch, tmp_path):
    """No test sees a user's checkpoint configuration or writes to the real cache."""
    for name in (descriptors.CHECKPOINT_ENV, descriptors.SHA256_ENV, descriptors.PREPROCESSING_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(descriptors.CACHE_ENV, str(tmp_path / "default-cache"))


def random_uint8(shape, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


# -- hand-written references ---------------------------------------------------------------

def reference_preprocess(images: torch.Tensor, policy: str) -> np.ndarray:
    """torchvision's Resize(288) / Resize([320, 320]) + ToTensor + Normalize, per image and
    channel with PIL in float mode (no 8-bit rounding), grayscale replicated as convert('RGB')."""
    kind, size = policy.split("-")
    size = int(size)
    out = []
    for image in images.numpy():
        if image.shape[0] == 1:
            image = np.repeat(image, 3, axis=0)
        h, w = image.shape[1:]
        if kind == "fixed":
            oh, ow = size, size
        elif h <= w:
            oh, ow = size, int(size * w / h)
        else:
            oh, ow = int(size * h / w), size
        channels = []
        for c in range(3):
            plane = Image.fromarray(image[c].astype(np.float32) / 255.0)
            resized = np.asarray(plane.resize((ow, oh), Image.BILINEAR), dtype=np.float64)
            channels.append((resized - IMAGENET_MEAN[c]) / IMAGENET_STD[c])
        out.append(np.stack(channels))
    return np.stack(out)


def reference_pixel_correlation(images: torch.Tensor, size: int) -> np.ndarray:
    """Luma (ITU-R 601-2) of the [0, 1] image, PIL float bilinear resize, centred, unit norm."""
    rows = []
    for image in images.numpy().astype(np.float64) / 255.0:
        luma = image[0] if image.shape[0] == 1 else 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]
        small = np.asarray(Image.fromarray(luma.astype(np.float32)).resize((size, size), Image.BILINEAR), np.float64)
        v = small.flatten() - small.mean()
        rows.append(v / np.linalg.norm(v))
    return np.stack(rows)


# -- preprocessing -------------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["resize-288", "fixed-320"])
@pytest.mark.parametrize("shape", [(2, 1, 28, 40), (2, 3, 30, 20), (1, 3, 400, 330), (1, 1, 28, 28)])
def test_preprocessing_matches_pil_reference(policy, shape):
    images = random_uint8(shape, seed=sum(shape))
    ours = Preprocessing.named(policy)(images)
    reference = reference_preprocess(images, policy)
    assert ours.dtype == torch.float32 and ours.shape == reference.shape
    assert np.abs(ours.numpy() - reference).max() < 2e-4


def test_preprocessing_sizes_follow_torchvision_resize():
    short = Preprocessing.named("resize-288")
    assert short.output_size(28, 40) == (288, 411)  # int(288 * 40 / 28) = int(411.43)
    assert short.output_size(40, 28) == (411, 288)
    assert short.output_size(32, 32) == (288, 288)
    assert Preprocessing.named("fixed-320").output_size(28, 40) == (320, 320)


def test_preprocessing_record_names_policy_normalisation_and_channels():
    record = Preprocessing.named("resize-288").describe()
    assert record["name"] == "resize-288" and record["resize"] == "short-edge" and record["size"] == 288
    assert record["mean"] == list(IMAGENET_MEAN) and record["std"] == list(IMAGENET_STD)
    assert "replicated" in record["channel_handling"]
    assert Preprocessing.named("fixed-320").describe()["resize"] == "fixed"


def test_float_images_are_scored_as_their_uint8_pixels():
    floats = torch.rand(3, 3, 20, 24, generator=torch.Generator().manual_seed(2)) * 4 - 2  # samples overshoot [-1, 1]
    prep = Preprocessing.named("fixed-320")
    assert torch.equal(prep(floats), prep(to_uint8(floats)))


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(2, 3, 8), "[B, C, H, W]"),
    (torch.zeros(2, 2, 8, 8, dtype=torch.uint8), "1 or 3 channels"),
    (torch.zeros(2, 3, 8, 8, dtype=torch.int64), "uint8 or float"),
    (torch.full((2, 3, 8, 8), 255.0), "[-1, 1]"),
    (torch.tensor(float("nan")).expand(2, 3, 8, 8), "NaN"),
    ("not an image", "tensor or array"),
])
def test_bad_images_are_refused_with_the_problem_named(bad, message):
    with pytest.raises(DescriptorError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Preprocessing.named("resize-288")(bad)


def test_unknown_preprocessing_is_refused():
    with pytest.raises(DescriptorError, match="resize-288"):
        Preprocessing.named("center-crop-224")


# -- SSCD from a local file ------------------------------------------------------------------

def test_sscd_local_file_scores_like_the_module_on_reference_input(tiny_file):
    descriptor = SSCDDescriptor.load(tiny_file)
    module = torch.jit.load(str(tiny_file))
    images = random_uint8((5, 1, 28, 28), seed=4)
    out = descriptor(images, batch_size=2)
    assert out.dtype == torch.float32 and out.shape == (5, 512)
    assert torch.allclose(out.norm(dim=1), torch.ones(5), atol=1e-6)
    with torch.no_grad():
        expected = F.normalize(module(torch.from_numpy(reference_preprocess(images, "resize-288")).float()), dim=1)
    assert torch.allclose(out, expected, atol=1e-4)
    assert torch.allclose(out, descriptor(images, batch_size=5), atol=1e-6)  # batching does not change the result


def test_sscd_describe_records_checkpoint_preprocessing_and_dimension(tiny_file):
    descriptor = SSCDDescriptor.load(tiny_file, preprocessing="fixed-320")
    record = descriptor.describe()
    assert record["name"] == "tiny" and record["kind"] == "sscd" and record["dimension"] == 512
    assert record["checkpoint"]["sha256"] == sha256_of(tiny_file)
    assert record["checkpoint"]["source"] == str(tiny_file.resolve())
    assert record["preprocessing"]["name"] == "fixed-320"
    assert record["fingerprint"] == descriptor.fingerprint
    assert descriptor.fingerprint != SSCDDescriptor.load(tiny_file).fingerprint  # preprocessing is part of it


def test_sscd_local_file_with_pinned_sha256(tiny_file):
    assert SSCDDescriptor.load(tiny_file, sha256=sha256_of(tiny_file)).sha256 == sha256_of(tiny_file)
    with pytest.raises(DescriptorError, match="sha256 mismatch.*left in place"):
        SSCDDescriptor.load(tiny_file, sha256="0" * 64)
    assert tiny_file.is_file()  # a user's own file is never removed
    with pytest.raises(DescriptorError, match="64 hex digits"):
        SSCDDescriptor.load(tiny_file, sha256="abc")


def test_not_torchscript_files_are_refused(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"definitely not a zip archive")
    with pytest.raises(DescriptorError, match="not a TorchScript file"):
        SSCDDescriptor.load(garbage)
    weights = tmp_path / "sscd_disc_mixup.torchvision.pt"
    torch.save(TinySSCD().state_dict(), weights)
    with pytest.raises(DescriptorError, match="not a TorchScript file.*torchscript.pt"):
        SSCDDescriptor.load(weights)
    with pytest.raises(DescriptorError, match="no such checkpoint file"):
        SSCDDescriptor.load(tmp_path / "missing.pt")


@pytest.mark.parametrize("module, message", [
    (FourDimensional(), r"returned \(2, 512, 1, 1\).*expected \[2, D\]"),
    (AlwaysNaN(), "NaN"),
    (GrayOnly(), r"fails on a \[2, 3, 288, 288\] input"),
])
def test_models_with_the_wrong_interface_are_refused_at_load(tmp_path, module, message):
    with pytest.raises(DescriptorError, match=message):
        SSCDDescriptor.load(save_script(module, tmp_path / "bad.torchscript.pt"))


def test_nan_descriptor_during_scoring_names_the_image(tmp_path):
    descriptor = SSCDDescriptor.load(save_script(NaNOnWhite(), tmp_path / "nan.torchscript.pt"))
    images = random_uint8((4, 3, 16, 16), seed=1)
    images[:, 0, 0, 0] = 0
    assert torch.isfinite(descriptor(images)).all()
    images[2, :, 0, 0] = 255
    with pytest.raises(DescriptorError, match=r"NaN or infinite descriptor for images \[2\]"):
        descriptor(images, batch_size=2)


def test_official_name_with_wrong_dimension_is_refused(tmp_path):
    path = tiny_sscd_file(tmp_path, "sscd_disc_large.torchscript.pt", dim=512)
    with pytest.raises(DescriptorError, match="should give 1024-d"):
        SSCDDescriptor.load(path)


# -- SSCD from a URL: cache and sha256 -------------------------------------------------------

def test_url_download_is_cached_and_verified(tiny_file, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    sha = sha256_of(tiny_file)
    url = tiny_file.as_uri()
    loaded = SSCDDescriptor.load(url, sha256=sha, cache_dir=cache)
    cached = cache / f"{sha[:16]}-{tiny_file.name}"
    assert cached.is_file() and sha256_of(cached) == sha
    assert loaded.describe()["checkpoint"] == {"source": url, "sha256": sha, "official_name": None}
    assert sorted(p.name for p in cache.iterdir()) == [cached.name]  # no partial files left

    def offline(_url):
        raise AssertionError("the cached copy should have been used")

    monkeypatch.setattr(checkpoints, "open_url", offline)
    again = SSCDDescriptor.load(url, sha256=sha, cache_dir=cache)
    images = random_uint8((2, 3, 12, 12))
    assert torch.equal(again(images), loaded(images))


def test_corrupted_cache_is_fetched_again(tiny_file, tmp_path, monkeypatch):
    cache, sha = tmp_path / "cache", sha256_of(tiny_file)
    SSCDDescriptor.load(tiny_file.as_uri(), sha256=sha, cache_dir=cache)
    cached = cache / f"{sha[:16]}-{tiny_file.name}"
    cached.write_bytes(cached.read_bytes()[:100])  # truncated download
    calls = []
    real_open = checkpoints.open_url
    monkeypatch.setattr(checkpoints, "open_url", lambda url: calls.append(url) or real_open(url))
    SSCDDescriptor.load(tiny_file.as_uri(), sha256=sha, cache_dir=cache)
    assert calls == [tiny_file.as_uri()] and sha256_of(cached) == sha


def test_sha256_mismatch_removes_the_download(tiny_file, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(DescriptorError, match="sha256 mismatch.*downloaded file was removed"):
        SSCDDescriptor.load(tiny_file.as_uri(), sha256="f" * 64, cache_dir=cache)
    assert list(cache.iterdir()) == []


def test_url_needs_a_pinned_sha256(tiny_file, tmp_path):
    with pytest.raises(DescriptorError, match="needs a pinned sha256"):
        SSCDDescriptor.load(tiny_file.as_uri(), cache_dir=tmp_path)
    sha = sha256_of(tiny_file)
    pinned = SSCDDescriptor.load(f"{tiny_file.as_uri()}#sha256={sha}", cache_dir=tmp_path)
    assert pinned.sha256 == sha and pinned.source == tiny_file.as_uri()
    with pytest.raises(DescriptorError, match="contradicts"):
        SSCDDescriptor.load(f"{tiny_file.as_uri()}#sha256={sha}", sha256="e" * 64, cache_dir=tmp_path)


def test_download_failure_is_reported(tmp_path):
    missing = (tmp_path / "nowhere.torchscript.pt").as_uri()
    with pytest.raises(DescriptorError, match="cannot download"):
        SSCDDescriptor.load(missing, sha256="a" * 64, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_default_cache_dir_follows_the_environment(tiny_file, tmp_path, monkeypatch):
    monkeypatch.setenv(descriptors.CACHE_ENV, str(tmp_path / "env-cache"))
    sha = sha256_of(tiny_file)
    SSCDDescriptor.load(tiny_file.as_uri(), sha256=sha)
    assert (tmp_path / "env-cache" / f"{sha[:16]}-{tiny_file.name}").is_file()
    monkeypatch.delenv(descriptors.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert descriptors.default_cache_dir() == tmp_path / "xdg" / "pspc-auditor" / "sscd"


def test_official_checkpoint_table_and_download_by_name(tiny_file, tmp_path, monkeypatch):
    mixup = OFFICIAL_SSCD_CHECKPOINTS["sscd_disc_mixup"]
    assert mixup.url == "https://dl.fbaipublicfiles.com/sscd-copy-detection/sscd_disc_mixup.torchscript.pt"
    assert mixup.dimension == 512 and OFFICIAL_SSCD_CHECKPOINTS["sscd_disc_large"].dimension == 1024
    with pytest.raises(DescriptorError, match="publish no checksums"):
        SSCDDescriptor.load("sscd_disc_mixup", cache_dir=tmp_path)
    served = []
    monkeypatch.setattr(checkpoints, "open_url", lambda url: served.append(url) or io.BytesIO(tiny_file.read_bytes()))
    sha = sha256_of(tiny_file)
    descriptor = SSCDDescriptor.load("sscd_disc_mixup", sha256=sha, cache_dir=tmp_path)
    assert served == [mixup.url]
    record = descriptor.describe()
    assert record["name"] == "sscd_disc_mixup" and record["checkpoint"]["official_name"] == "sscd_disc_mixup"
    assert (tmp_path / f"{sha[:16]}-sscd_disc_mixup.torchscript.pt").is_file()
    by_url = SSCDDescriptor.load(f"{mixup.url}#sha256={sha}", cache_dir=tmp_path)  # cached: no second download
    assert served == [mixup.url] and by_url.describe()["checkpoint"]["official_name"] == "sscd_disc_mixup"
    renamed = tmp_path / "sscd_disc_mixup.torchscript.pt"
    renamed.write_bytes(tiny_file.read_bytes())
    local = SSCDDescriptor.load(renamed)  # a file name is no proof of origin
    assert local.name == "sscd_disc_mixup" and local.describe()["checkpoint"]["official_name"] is None


# -- the fallback ----------------------------------------------------------------------------

def test_pixel_correlation_is_the_pearson_correlation_of_downscaled_pixels():
    descriptor = PixelCorrelationDescriptor(size=16)
    images = random_uint8((4, 3, 40, 30), seed=7)
    out = descriptor(images)
    reference = reference_pixel_correlation(images, 16)
    assert out.shape == (4, 256)
    assert np.abs(out.numpy() - reference).max() < 1e-4
    assert np.abs(out.numpy() @ out.numpy().T - reference @ reference.T).max() < 1e-4


def test_pixel_correlation_is_clearly_not_sscd():
    descriptor = PixelCorrelationDescriptor()
    record = descriptor.describe()
    assert "sscd" not in record["kind"].lower() and "not SSCD" in record["name"]
    assert not record["name"].lower().startswith("sscd") and "not SSCD" in record["note"]
    assert record["dimension"] == 32 * 32 and record["preprocessing"]["channels"] == "luma"


@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (2, 3, 45, 37)])
def test_pixel_correlation_constant_image_scores_zero(shape):
    images = random_uint8(shape)
    images[1] = 77  # float rounding in luma and resize must not turn "no pattern" into unit-norm noise
    out = PixelCorrelationDescriptor()(images)
    assert torch.equal(out[1], torch.zeros(32 * 32)) and abs(out[0].norm().item() - 1) < 1e-6


# -- the factory -----------------------------------------------------------------------------

def test_load_descriptor_falls_back_with_a_warning_when_nothing_is_configured():
    with pytest.warns(FallbackDescriptorWarning, match="NOT SSCD"):
        descriptor = load_descriptor()
    assert isinstance(descriptor, PixelCorrelationDescriptor)
    with pytest.raises(DescriptorError, match="no SSCD checkpoint configured"):
        load_descriptor("sscd")


def test_load_descriptor_specs(tiny_file, monkeypatch):
    assert load_descriptor("pixel-correlation:16").dimension == 256
    assert isinstance(load_descriptor(f"sscd:{tiny_file}"), SSCDDescriptor)
    assert load_descriptor(str(tiny_file), preprocessing="fixed-320").preprocessing.name == "fixed-320"
    existing = PixelCorrelationDescriptor()
    assert load_descriptor(existing) is existing
    monkeypatch.setenv(descriptors.CHECKPOINT_ENV, str(tiny_file))
    monkeypatch.setenv(descriptors.PREPROCESSING_ENV, "fixed-320")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a configured checkpoint is no fallback
        configured = load_descriptor()
    assert isinstance(configured, SSCDDescriptor) and configured.preprocessing.name == "fixed-320"
    assert load_descriptor("sscd").sha256 == sha256_of(tiny_file)
    with pytest.raises(DescriptorError, match="unknown descriptor"):
        load_descriptor("clip-vit")
    with pytest.raises(DescriptorError, match="fixed preprocessing"):
        load_descriptor("pixel-correlation", preprocessing="fixed-320")
