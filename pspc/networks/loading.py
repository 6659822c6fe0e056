"""One entry point for every network the tools accept, as a `NetworkDenoiser`.

`load_network` opens a project checkpoint, a TorchScript module with net(z, sigma), an EDM
pickle, an epsilon-prediction variance-preserving model converted to x-prediction (Eq. 13)
or an in-memory module, checks it against the training set's channels and resolution, and
records where it came from (path, sha256, kind, config, how it was trained).
"""

from __future__ import annotations

import importlib.util
import json
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from pspc.data.training_set import TrainingSet
from pspc.denoisers import NetworkDenoiser
from pspc.networks.checkpoints import CHECKPOINT_FORMAT, load_checkpoint
from pspc.networks.unet import EDMPrecond, NetworkError, sigma_batch
from pspc.record import file_sha256


# ---------------------------------------------------------------------------------------
# Other networks: EDM pickles, VP epsilon-prediction models
# ---------------------------------------------------------------------------------------
class EDMPickleNetwork(nn.Module):
    """An EDM network (`EDMPrecond`, `VPPrecond`, ... from NVlabs/edm): unconditional use,
    float32 output."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, z: torch.Tensor, sigma) -> torch.Tensor:
        sigma = sigma_batch(sigma, z)
        return self.module(z.float(), sigma).to(z.dtype)


class VPEpsilonNetwork(nn.Module):
    """An epsilon-prediction variance-preserving model as an EDM x-predictor (paper Eq. 13).

    The VP forward process x_s = sqrt(a_s) x + sqrt(1 - a_s) eps (a_s = alpha-bar at step s)
    is z = x + sigma eps scaled by sqrt(a_s), with sigma = sqrt((1 - a_s) / a_s). So for EDM
    noise level sigma the model sees x_s = z / sqrt(1 + sigma^2) at the step s(sigma), and

        D(z, sigma) = z - sigma * eps_theta(z / sqrt(1 + sigma^2), s(sigma)).

    `alphas_cumprod` [M] is the model's discrete schedule; s(sigma) is the step whose sigma
    is nearest in log sigma ("nearest", as EDM does for iDDPM) or the fractional step
    interpolated linearly in log sigma ("interpolate", for models with continuous time
    embeddings). The exact sigma is always used in the conversion itself.
    """

    def __init__(self, model: nn.Module, alphas_cumprod, timestep: str = "nearest"):
        super().__init__()
        alphas = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if alphas.numel() < 2 or not ((alphas > 0) & (alphas < 1)).all():
            raise NetworkError("alphas_cumprod must hold at least 2 values in (0, 1)")
        if not (alphas[1:] < alphas[:-1]).all():
            raise NetworkError("alphas_cumprod must decrease with the step (more noise at later steps)")
        if timestep not in ("nearest", "interpolate"):
            raise NetworkError(f"timestep must be 'nearest' or 'interpolate', got {timestep!r}")
        self.model = model
        self.timestep = timestep
        self.register_buffer("log_sigmas", (((1 - alphas) / alphas).sqrt().log()).float())

    @staticmethod
    def linear_schedule(beta_start: float = 1e-4, beta_end: float = 0.02, steps: int = 1000) -> torch.Tensor:
        """alpha-bar of the DDPM linear beta schedule (Ho et al. 2020)."""
        betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
        return torch.cumprod(1 - betas, 0)

    def steps(self, sigma: torch.Tensor) -> torch.Tensor:
        """s(sigma): the model's step for each noise level (float steps for 'interpolate')."""
        log_sigma = sigma.float().log()
        if self.timestep == "nearest":
            return (log_sigma[:, None] - self.log_sigmas[None, :]).abs().argmin(1)
        grid = self.log_sigmas
        right = torch.searchsorted(grid, log_sigma.contiguous()).clamp(1, grid.numel() - 1)
        left = right - 1
        frac = ((log_sigma - grid[left]) / (grid[right] - grid[left])).clamp(0, 1)
        return left.float() + frac

    def forward(self, z: torch.Tensor, sigma) -> torch.Tensor:
        """D(z, sigma) = z - sigma eps(z / sqrt(1 + sigma^2), s(sigma)) (Eq. 13)."""
        sigma = sigma_batch(sigma, z)
        x_vp = z.float() / (1 + sigma.square()).sqrt()[:, None, None, None]
        eps = self.model(x_vp, self.steps(sigma))
        return (z - sigma.to(z.dtype)[:, None, None, None] * eps.to(z.dtype))



# ---------------------------------------------------------------------------------------
# One loader for all of them
# ---------------------------------------------------------------------------------------
NETWORK_KINDS = ("auto", "checkpoint", "torchscript", "edm-pickle", "module", "vp-epsilon")


def detect_kind(path: Path) -> str:
    """'checkpoint' (torch.save zip), 'torchscript' (zip with code/) or 'edm-pickle' (plain pickle)."""
    if not path.is_file():
        raise NetworkError(f"{path}: no such network file")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise NetworkError(f"{path}: damaged archive ({exc})") from None
        if any("/code/" in n for n in names) or any(n.endswith("constants.pkl") for n in names):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "checkpoint"
        raise NetworkError(f"{path}: a zip archive but neither a torch checkpoint nor a TorchScript module")
    with open(path, "rb") as f:
        head = f.read(2)
    if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "edm-pickle"
    raise NetworkError(f"{path}: unrecognised network file (expected a {CHECKPOINT_FORMAT} checkpoint, "
                       f"a TorchScript module or an EDM .pkl)")


def _edm_source_importable() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("dnnlib", "torch_utils"))


def _load_edm_pickle(path: Path) -> tuple[nn.Module, tuple[int, int, int] | None, dict]:
    """The ['ema'] network of an EDM training snapshot. EDM pickles embed their source and
    unpickling runs it: load only files you trust."""
    if not _edm_source_importable():
        raise NetworkError(f"{path}: EDM pickles need the EDM source (its dnnlib and torch_utils packages) "
                           f"on PYTHONPATH, e.g. PYTHONPATH=/path/to/NVlabs/edm")
    try:
        with open(path, "rb") as f:
            snapshot = pickle.load(f)  # noqa: S301 - EDM's format; see docstring
    except Exception as exc:  # noqa: BLE001
        raise NetworkError(f"{path}: cannot unpickle the EDM snapshot ({type(exc).__name__}: {exc})") from None
    if not isinstance(snapshot, dict) or "ema" not in snapshot or not isinstance(snapshot["ema"], nn.Module):
        found = sorted(snapshot)[:8] if isinstance(snapshot, dict) else type(snapshot).__name__
        raise NetworkError(f"{path}: expected an EDM snapshot dict with an 'ema' network, found {found}")
    module = snapshot["ema"]
    if int(getattr(module, "label_dim", 0) or 0) > 0:
        raise NetworkError(f"{path}: class-conditional EDM network (label_dim={module.label_dim}); "
                           f"only unconditional networks are supported")
    shape = None
    if hasattr(module, "img_channels") and hasattr(module, "img_resolution"):
        r = module.img_resolution
        shape = (int(module.img_channels), *(tuple(r) if isinstance(r, (tuple, list)) else (int(r), int(r))))
    info = {"class": f"{type(module).__module__}.{type(module).__qualname__}"}
    return EDMPickleNetwork(module.eval().requires_grad_(False)), shape, info


def _load_torchscript(path: Path, device) -> nn.Module:
    try:
        return torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # noqa: BLE001
        raise NetworkError(f"{path}: not a loadable TorchScript module ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def _shape_text(shape) -> str:
    c, h, w = shape
    return f"{c} channel(s) at {h}x{w}"


def check_network(net: nn.Module, image_shape: tuple[int, int, int], where: str) -> None:
    """Run the network once on [2, C, H, W] (two noise levels): it must accept the shape
    and return the same shape, finite."""
    device = next((p.device for p in list(net.parameters()) + list(net.buffers())), torch.device("cpu"))
    z = torch.randn((2, *image_shape), generator=torch.Generator().manual_seed(0)).to(device)
    sigma = torch.tensor([0.5, 5.0], device=device)
    try:
        with torch.no_grad():
            out = net(z, sigma)
    except Exception as exc:  # noqa: BLE001 - the network's own message says what it wanted
        message = str(exc).strip().splitlines()
        raise NetworkError(f"{where}: the network fails on the training set's images ({_shape_text(image_shape)}): "
                           f"{type(exc).__name__}: {message[-1] if message else ''}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(z.shape):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise NetworkError(f"{where}: net(z, sigma) returned {got} for z of shape {tuple(z.shape)}; "
                           f"expected the EDM interface (same shape as z)")
    if not torch.isfinite(out).all():
        raise NetworkError(f"{where}: the network returns NaN or infinite values")


def _open_source(source, kind: str, device) -> tuple[nn.Module, str, str, tuple | None, dict]:
    """(module, kind, where, image shape if the network records one, provenance) for a path or module."""
    if isinstance(source, nn.Module):
        where = type(source).__name__
        if isinstance(source, EDMPrecond):
            return source, "checkpoint" if kind == "auto" else kind, where, source.config.image_shape, \
                {"config": json.loads(source.config.to_json())}
        return source, "module" if kind == "auto" else kind, where, None, {}
    path = Path(source)
    detected = detect_kind(path)
    record = {"path": str(path.resolve()), "sha256": file_sha256(path), "file": detected}
    if kind == "vp-epsilon":
        if detected == "checkpoint":
            raise NetworkError(f"{path}: a {CHECKPOINT_FORMAT} checkpoint is an x-predictor; drop kind='vp-epsilon'")
        model = _load_torchscript(path, device) if detected == "torchscript" else _load_edm_pickle(path)[0]
        return model, kind, str(path), None, record
    if kind not in ("auto", detected):
        raise NetworkError(f"{path}: is a {detected} file, not {kind}")
    if detected == "torchscript":
        return _load_torchscript(path, device), detected, str(path), None, record
    if detected == "edm-pickle":
        net, shape, info = _load_edm_pickle(path)
        return net, detected, str(path), shape, {**record, **info}
    net, trained = load_checkpoint(path)
    record["config"] = json.loads(net.config.to_json())
    record["training"] = {k: trained[k] for k in ("command", "iterations", "final_loss", "dataset") if k in trained}
    return net, detected, str(path), net.config.image_shape, record


def load_network(source, training_set: TrainingSet | None = None, *, image_shape=None, kind: str = "auto",
                 alphas_cumprod=None, timestep: str = "nearest", device="cpu", name: str | None = None,
                 check: bool = True) -> NetworkDenoiser:
    """A denoiser network as a `NetworkDenoiser` (D(z, t) = net(z, sigma = t)).

    source: a path (project checkpoint, TorchScript file with net(z, sigma), EDM .pkl
    snapshot whose ['ema'] is used) or an nn.Module with net(z, sigma). kind="vp-epsilon"
    wraps an epsilon-prediction VP model eps(x_s, step) (TorchScript file, EDM-style pickle
    or module) with `VPEpsilonNetwork(alphas_cumprod, timestep)`. The image shape comes from
    the network when it records one, else from the training set or `image_shape`; when
    several are known they must agree, and the network is probed once on that shape
    (check=False skips the probe). describe() of the result records the source (path,
    sha256, kind, config, how it was trained).
    """
    if kind not in NETWORK_KINDS:
        raise NetworkError(f"unknown network kind {kind!r}; choose one of {', '.join(NETWORK_KINDS)}")
    net, kind, where, net_shape, record = _open_source(source, kind, device)
    if kind == "vp-epsilon":
        if alphas_cumprod is None:
            raise NetworkError(f"{where}: kind='vp-epsilon' needs the model's alphas_cumprod schedule "
                               f"(e.g. VPEpsilonNetwork.linear_schedule())")
        net = VPEpsilonNetwork(net, alphas_cumprod, timestep)
        record.update(conversion="D = z - sigma * eps(z / sqrt(1 + sigma^2), s(sigma)) (Eq. 13)",
                      timestep=timestep, schedule_steps=int(net.log_sigmas.numel()))

    data_shape = tuple(training_set.image_shape) if training_set is not None else None
    given = tuple(int(v) for v in image_shape) if image_shape is not None else None
    if net_shape is not None:
        for other, what in ((data_shape, "the training set"), (given, "image_shape")):
            if other is not None and tuple(other) != tuple(net_shape):
                raise NetworkError(f"{where}: the network takes {_shape_text(net_shape)}, "
                                   f"{what} has {_shape_text(other)}")
    if data_shape is not None and given is not None and data_shape != given:
        raise NetworkError(f"image_shape {given} disagrees with the training set ({_shape_text(data_shape)})")
    shape = tuple(net_shape or data_shape or given or ())
    if not shape:
        raise NetworkError(f"{where}: the network does not record its image shape; pass the training set "
                           f"or image_shape")
    net = net.to(device).eval()
    if check:
        check_network(net, shape, where)
    record.update(kind=kind, image_shape=list(shape))
    return NetworkDenoiser(net, shape, name=name or Path(where).stem, record=record)
