"""Project network files: checkpoints as plain tensors plus a JSON config, and TorchScript export.

A checkpoint is {format, version, config (NetworkConfig as JSON), weights, record (JSON)},
read with `torch.load(weights_only=True)`: no code is unpickled, unlike EDM's pickles that
embed their source.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from pspc.networks.unet import EDMPrecond, NetworkConfig, NetworkError

CHECKPOINT_FORMAT = "pspc-unet"
CHECKPOINT_VERSION = 1


def save_network(path: str | os.PathLike, net: EDMPrecond, *, half: bool = False, record: dict | None = None,
                 extra: dict | None = None) -> Path:
    """Write the network as {format, version, config (JSON), weights, record (JSON)}.

    half=True stores float16 weights (half the size; `load_checkpoint` converts back to
    float32). `extra` adds tensor/primitive entries (the trainer's resume state). The file
    is written beside the target and renamed, so an interrupted save never leaves a
    truncated checkpoint."""
    path = Path(path)
    weights = {k: (v.detach().half() if half and v.is_floating_point() else v.detach()).cpu().clone()
               for k, v in net.state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": net.config.to_json(),
               "weights": weights, "weights_dtype": "float16" if half else "float32",
               "record": json.dumps(record or {}, default=str), **(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(payload, partial)
    os.replace(partial, path)
    return path


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw checkpoint dict (tensors and primitives only), validated for format."""
    path = Path(path)
    if not path.is_file():
        raise NetworkError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
        raise NetworkError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        keys = sorted(payload)[:8] if isinstance(payload, dict) else type(payload).__name__
        raise NetworkError(f"{path}: a torch file but not a {CHECKPOINT_FORMAT} checkpoint (found {keys}); "
                           f"TorchScript modules load directly, state dicts need their architecture")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise NetworkError(f"{path}: checkpoint version {payload.get('version')}, this code reads {CHECKPOINT_VERSION}")
    for key in ("config", "weights"):
        if key not in payload:
            raise NetworkError(f"{path}: checkpoint lacks its {key!r} entry")
    return payload


def load_checkpoint(path: str | os.PathLike) -> tuple[EDMPrecond, dict]:
    """(network in eval mode with float32 weights, training record) from a project checkpoint."""
    path = Path(path)
    payload = read_checkpoint(path)
    try:
        config = NetworkConfig.from_dict(json.loads(payload["config"]))
        net = EDMPrecond(config)
        weights = {k: v.float() if v.is_floating_point() else v for k, v in payload["weights"].items()}
        net.load_state_dict(weights)
        record = json.loads(payload.get("record") or "{}")
    except (NetworkError, ValueError, RuntimeError, TypeError) as exc:
        raise NetworkError(f"{path}: checkpoint does not match its config ({str(exc).splitlines()[0]})") from None
    return net.eval(), record



def export_torchscript(net: nn.Module, path: str | os.PathLike, image_shape=None) -> Path:
    """Trace net(z, sigma) to a TorchScript file any EDM-interface consumer can load."""
    shape = tuple(image_shape or net.config.image_shape)
    z = torch.zeros((2, *shape))
    sigma = torch.tensor([0.5, 2.0])
    was_training = net.training
    net.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks are constant at a fixed shape
        traced = torch.jit.trace(net, (z, sigma), check_trace=False)
    net.train(was_training)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    traced.save(str(path))
    return path
