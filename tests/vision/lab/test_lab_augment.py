"""SimCLR's augmentations (lpft/vision/lab/augment.py): per-image draws, seeded, within range."""

import pytest
import torch

from lpft.vision.lab.augment import AugmentConfig, _affine, augment

NONE = AugmentConfig(rotation_deg=0.0, scale=0.0, shear=0.0, shift_px=0.0, gain=(1.0, 1.0), log_gamma=0.0,
                     blur_p=0.0, noise_std=0.0, erase_p=0.0)


def _digits(n=8):
    x = torch.zeros(n, 1, 8, 8)
    x[:, :, 1:7, 3:5] = 1.0  # a vertical bar
    return x


def test_seeded_and_per_image():
    x = _digits()
    a = augment(x, AugmentConfig(), torch.Generator().manual_seed(0))
    b = augment(x, AugmentConfig(), torch.Generator().manual_seed(0))
    c = augment(x, AugmentConfig(), torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # the same image, 8 times: every copy gets its own parameters
    assert len({tuple(v.flatten().tolist()) for v in a}) == len(a)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= AugmentConfig().gain[1]


def test_identity_settings_change_nothing():
    x = _digits()
    assert torch.allclose(augment(x, NONE, torch.Generator().manual_seed(0)), x, atol=1e-6)


def test_shift_moves_ink_by_whole_pixels():
    x = _digits(1)
    cfg = AugmentConfig(rotation_deg=0.0, scale=0.0, shear=0.0, shift_px=1.0)
    g = torch.Generator().manual_seed(0)
    out = _affine(x, cfg, g)
    # the ink's centre of mass moves by at most one pixel along each axis
    ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    def centre(img):
        m = img[0, 0]
        return float((m * ys).sum() / m.sum()), float((m * xs).sum() / m.sum())
    (y0, x0), (y1, x1) = centre(x), centre(out)
    assert abs(y1 - y0) <= 1.0 + 1e-5 and abs(x1 - x0) <= 1.0 + 1e-5 and (y0, x0) != (y1, x1)


def test_erase_zeroes_a_square():
    x = torch.ones(64, 1, 8, 8)
    cfg = AugmentConfig(rotation_deg=0.0, scale=0.0, shear=0.0, shift_px=0.0, gain=(1.0, 1.0), log_gamma=0.0,
                        blur_p=0.0, noise_std=0.0, erase_p=1.0, erase_px=2)
    out = augment(x, cfg, torch.Generator().manual_seed(0))
    # zero padding of the affine step darkens nothing here (no geometry); each image loses exactly 4 pixels
    assert ((out == 0).sum(dim=(1, 2, 3)) == 4).all()


def test_bad_shape_is_refused():
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\]"):
        augment(torch.zeros(2, 3, 8, 8), AugmentConfig(), torch.Generator())
