"""Denoiser networks with the EDM interface net(z, sigma) -> D(z, sigma) (Karras et al. 2022).

unet: the project's U-Net inside the EDM preconditioning, and its NetworkConfig;
checkpoints: its files (plain tensors + JSON) and TorchScript export;
loading: `load_network` for every network the tools accept; training: `train`.
"""

from pspc.networks.checkpoints import (
    CHECKPOINT_FORMAT, CHECKPOINT_VERSION, export_torchscript, load_checkpoint, read_checkpoint, save_network
)
from pspc.networks.loading import (
    NETWORK_KINDS, EDMPickleNetwork, VPEpsilonNetwork, check_network, detect_kind, load_network
)
from pspc.networks.unet import SIGMA_DATA, EDMPrecond, NetworkConfig, NetworkError, UNet, edm_preconditioning, sigma_batch

__all__ = [
    "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "NETWORK_KINDS", "SIGMA_DATA", "EDMPickleNetwork", "EDMPrecond",
    "NetworkConfig", "NetworkError", "UNet", "VPEpsilonNetwork", "check_network", "detect_kind",
    "edm_preconditioning", "export_torchscript", "load_checkpoint", "load_network", "read_checkpoint",
    "save_network", "sigma_batch",
]
