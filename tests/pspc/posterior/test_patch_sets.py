"""Patch sets: the two linear maps, mirroring, Flex masks (Eq. 12), validation."""

import pytest
import torch

from pspc.posterior.patch_sets import MaskPatches, PatchSetError, WindowPatches, flex_masks, square_patches
from pspc.posterior.sensitivity import isotropic_sensitivity, isotropic_width, network_sensitivity
from tests.support.data import random_training_set


def _dense(patch_set):
    return patch_set.masks().to(torch.float64)


def _random_masks():
    masks = torch.rand(9, 5, 6, generator=torch.Generator().manual_seed(0)) < 0.4
    masks[0] = True  # covers every pixel
    return MaskPatches(masks)


@pytest.mark.parametrize("patch_set", [WindowPatches(6, 7, 3), WindowPatches(6, 7, 2, 5), WindowPatches(5, 5, 5),
                                       _random_masks()])
def test_maps_equal_their_mask_definitions(patch_set):
    masks = _dense(patch_set)
    values = torch.rand(2, 3, patch_set.height, patch_set.width, dtype=torch.float64)
    weights = torch.rand(2, patch_set.num_patches, dtype=torch.float64)
    assert torch.allclose(patch_set.patch_sums(values), torch.einsum("bchw,khw->bck", values, masks))
    assert torch.allclose(patch_set.spread(weights), torch.einsum("bk,khw->bhw", weights, masks))
    mirrored = masks.flip(-1)
    assert torch.allclose(patch_set.flipped_patch_sums(values), torch.einsum("bchw,khw->bck", values, mirrored))
    assert torch.allclose(patch_set.flipped_spread(weights), torch.einsum("bk,khw->bhw", weights, mirrored))
    assert torch.equal(patch_set.coverage(), masks.sum(0))


def test_window_positions_and_source_boxes():
    windows = WindowPatches(6, 7, 3)
    assert windows.num_patches == 4 * 5
    assert windows.position(6) == (1, 1)
    assert windows.source_box(6) == (1, 1, 3, 3)
    assert windows.source_box(6, flip=True) == (1, 7 - 3 - 1, 3, 3)  # mirrored columns
    mask = windows.masks()[6].flip(-1)
    top, left, height, width = windows.source_box(6, flip=True)
    assert mask[top : top + height, left : left + width].all() and mask.sum() == height * width


def test_square_patches_clip_to_the_image():
    assert square_patches(28, 28, 32).num_patches == 1
    with pytest.raises(PatchSetError, match="patch size must be >= 1"):
        square_patches(28, 28, 0)
    with pytest.raises(PatchSetError, match="does not fit"):
        WindowPatches(5, 5, 6)


def test_mask_sets_are_validated():
    uncovered = torch.ones(2, 3, 3, dtype=torch.bool)
    uncovered[:, 2, 1] = False
    with pytest.raises(PatchSetError, match=r"pixel \(2, 1\) is covered by no mask"):
        MaskPatches(uncovered)
    masks = torch.ones(2, 3, 3, dtype=torch.bool)
    masks[1] = False
    with pytest.raises(PatchSetError, match="mask 1 is empty"):
        MaskPatches(masks)
    with pytest.raises(PatchSetError, match=r"\[K, H, W\]"):
        MaskPatches(torch.ones(3, 3, dtype=torch.bool))


def test_flex_masks_follow_eq_12():
    generator = torch.Generator().manual_seed(0)
    sensitivity = torch.rand(4, 4, 4, 4, generator=generator, dtype=torch.float64)
    for lam in (0.1, 0.5, 0.9):
        masks = flex_masks(sensitivity, lam)
        for k in range(16):
            g = sensitivity.flatten(0, 1)[k].flatten()
            order = g.argsort(descending=True)
            count = 1
            while g[order[:count]].sum() < lam * g.sum():  # smallest prefix covering lam
                count += 1
            expected = torch.zeros(16, dtype=torch.bool)
            expected[order[:count]] = True
            expected[k] = True  # the output pixel is always in its own mask
            assert torch.equal(masks[k].flatten(), expected)
    assert flex_masks(sensitivity, 1.0).all()
    # G peaking away from the output pixel (here: every output looks only at pixel 0) still
    # gives a patch set covering every pixel
    shifted = torch.zeros(4, 4, 4, 4, dtype=torch.float64)
    shifted[:, :, 0, 0] = 1.0
    masks = flex_masks(shifted, 0.3)
    assert masks.sum(0).min() >= 1 and MaskPatches(masks).num_patches == 16
    with pytest.raises(PatchSetError, match="lambda"):
        flex_masks(sensitivity, 0.0)
    with pytest.raises(PatchSetError, match="non-negative"):
        flex_masks(-sensitivity, 0.5)


def test_isotropic_sensitivity_matches_fig_3_half_mass_sides():
    for t, side in ((0.03, 3.0), (30.0, 13.0)):
        rho = isotropic_width(t, 32)
        g = isotropic_sensitivity(32, 32)(t)[16, 16]
        # a centred square of the Fig. 3 side holds about half of G (up to pixelisation)
        half = int(side // 2)
        inner = g[16 - half : 16 + half + 1, 16 - half : 16 + half + 1].sum() / g.sum()
        assert 0.4 < float(inner) < 0.75, (t, rho, float(inner))
    masks = flex_masks(isotropic_sensitivity(28, 28)(1.0), 0.4)
    assert masks[14 * 28 + 14, 14, 14]  # the pixel itself is in its own mask


def test_network_sensitivity_is_the_mean_absolute_jacobian():
    class Blur(torch.nn.Module):  # a linear "network": constant Jacobian
        def forward(self, z, sigma):
            return 0.5 * z + 0.25 * z.roll(1, -1) + 0.25 * z.roll(-1, -1)

    training_set = random_training_set(count=4, height=3, width=4)
    g = network_sensitivity(Blur(), training_set, t=1.0, num_samples=2)
    assert g.shape == (3, 4, 3, 4)
    assert g[1, 1, 1, 1] == pytest.approx(0.5)
    assert g[1, 1, 1, 0] == pytest.approx(0.25) and g[1, 1, 1, 2] == pytest.approx(0.25)
    assert g[1, 1, 0, 1] == 0
