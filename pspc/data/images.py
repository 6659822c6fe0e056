"""Image grids as PNG files, for looking at denoiser outputs and samples.

Pixels are shown exactly: each image is converted with `to_uint8` (values outside [-1, 1]
are clipped, e.g. noisy inputs) and enlarged by pixel repetition (nearest neighbour), so no
smoothing invents detail that is not in the data.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from PIL import Image

from pspc.data.training_set import to_uint8
from pspc.errors import InputError


def save_grid(images: torch.Tensor, path: str | os.PathLike, *, columns: int | None = None,
              scale: int = 4, padding: int = 1, pad_value: int = 255) -> str:
    """Write images [B, C, H, W] in [-1, 1] (C = 1: grayscale, C = 3: RGB) as one PNG grid.

    Images fill the grid row by row, `columns` per row (default: a near-square grid);
    each is enlarged `scale` times and separated by `padding` pixels of `pad_value`
    (on the enlarged grid). Returns the path written.
    """
    images = torch.as_tensor(images)
    if images.ndim != 4 or images.shape[0] == 0 or images.shape[1] not in (1, 3):
        raise InputError(f"save_grid needs images [B, C, H, W] with B >= 1 and C = 1 or 3, got shape {tuple(images.shape)}")
    if scale < 1 or padding < 0 or not 0 <= pad_value <= 255:
        raise InputError(f"need scale >= 1, padding >= 0 and 0 <= pad_value <= 255, got {scale}, {padding}, {pad_value}")
    count, channels, height, width = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    if columns < 1:
        raise InputError(f"columns must be >= 1, got {columns}")
    rows = math.ceil(count / columns)

    pixels = to_uint8(images).cpu().numpy().transpose(0, 2, 3, 1)  # [B, H, W, C]
    pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
    cell_h, cell_w = height * scale + padding, width * scale + padding
    canvas = np.full((rows * cell_h + padding, columns * cell_w + padding, channels), pad_value, dtype=np.uint8)
    for i, image in enumerate(pixels):
        y, x = padding + (i // columns) * cell_h, padding + (i % columns) * cell_w
        canvas[y : y + height * scale, x : x + width * scale] = image
    # uint8 [h, w] becomes an "L" image, [h, w, 3] an "RGB" one.
    Image.fromarray(canvas[..., 0] if channels == 1 else canvas).save(path, format="PNG")
    return os.fspath(path)
