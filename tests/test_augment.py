"""Batched tensor augmentations: each op does what it says, stays in range, keeps shapes, and is fixed by a seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imclust.nn import augment as A


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_every_policy_is_reproducible_under_a_seed_and_stays_in_range():
    x = torch.rand(8, 3, 20, 20)
    policies = [A.ContrastiveAugment(blur_p=0.5, solarize_p=0.2), A.WeakAugment(), A.StrongAugment()]
    for pol in policies:
        a, b = pol(x, gen(5), size=16), pol(x, gen(5), size=16)
        c = pol(x, gen(6), size=16)
        assert a.shape == (8, 3, 16, 16)
        assert torch.equal(a, b), type(pol).__name__
        assert not torch.equal(a, c), type(pol).__name__
        assert a.min() >= 0 and a.max() <= 1


def test_policies_do_not_change_the_input_and_handle_one_channel():
    x = torch.rand(5, 1, 12, 12)
    keep = x.clone()
    for pol in (A.ContrastiveAugment(blur_p=1.0, solarize_p=0.5), A.StrongAugment()):
        y = pol(x, gen(1))
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert torch.equal(x, keep)


def test_horizontal_flip_mirrors_exactly_the_chosen_images():
    x = torch.rand(40, 3, 6, 7)
    y = A.horizontal_flip(x, 0.5, gen(0))
    flipped = [torch.equal(y[i], x[i].flip(-1)) for i in range(40)]
    kept = [torch.equal(y[i], x[i]) for i in range(40)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 5 < sum(flipped) < 35
    assert torch.equal(A.horizontal_flip(x, 0.0, gen(0)), x)
    assert torch.equal(A.horizontal_flip(x, 1.0, gen(0)), x.flip(-1))


def test_hue_rotation_keeps_luma_and_grey_and_turns_colours():
    x = torch.rand(4, 3, 5, 5)
    shift = torch.tensor([0.0, 0.25, 0.5, 1.0])
    y = A.adjust_hue(x, shift)
    assert torch.allclose(y[0], x[0], atol=1e-5) and torch.allclose(y[3], x[3], atol=1e-5)  # no turn, a full turn
    grey = torch.full((2, 3, 3, 3), 0.4)
    assert torch.allclose(A.adjust_hue(grey, torch.tensor([0.3, 0.7])), grey, atol=1e-6)
    # a mid-saturated colour (no clipping): luma is kept, the colour changes, and a half turn twice is identity
    c = torch.tensor([0.6, 0.4, 0.45]).view(1, 3, 1, 1)
    half = A.adjust_hue(c, torch.tensor([0.5]))
    assert torch.allclose(A._grey(half), A._grey(c), atol=1e-5) and not torch.allclose(half, c, atol=0.05)
    assert torch.allclose(A.adjust_hue(half, torch.tensor([0.5])), c, atol=1e-5)
    # a third of a turn moves a reddish colour's dominant channel to green
    third = A.adjust_hue(c, torch.tensor([1 / 3]))
    assert int(third.flatten().argmax()) == 1


def test_color_jitter_factors_and_probability():
    x = torch.full((3, 3, 4, 4), 0.4)
    x[:, 0] = 0.6
    assert torch.allclose(A.adjust_brightness(x, 0.5), x * 0.5)
    assert torch.allclose(A.adjust_saturation(x, 0.0), A._grey(x).expand_as(x))
    flat = torch.rand(2, 3, 1, 1).expand(2, 3, 4, 4)
    assert torch.allclose(A.adjust_contrast(flat, 0.0), A._grey(flat).mean(dim=(1, 2, 3), keepdim=True).expand_as(flat))
    y = A.color_jitter(torch.rand(64, 3, 6, 6), 0.4, gen(2), hue=0.1, p=0.5)
    assert y.min() >= 0 and y.max() <= 1
    x2 = torch.rand(64, 3, 6, 6)
    y2 = A.color_jitter(x2, 0.4, gen(2), hue=0.1, p=0.5)
    unchanged = sum(torch.equal(y2[i], x2[i]) for i in range(64))
    assert 10 < unchanged < 54  # about half the images are left alone
    assert torch.equal(A.color_jitter(x2, 0.0), x2)


def test_random_grayscale_makes_equal_channels_for_chosen_images():
    x = torch.rand(50, 3, 5, 5)
    y = A.random_grayscale(x, 0.3, gen(0))
    grey = [bool(torch.allclose(y[i, 0], y[i, 1]) and torch.allclose(y[i, 1], y[i, 2])) for i in range(50)]
    assert 3 < sum(grey) < 30
    for i in range(50):
        if grey[i]:
            assert torch.allclose(y[i, 0], 0.299 * x[i, 0] + 0.587 * x[i, 1] + 0.114 * x[i, 2])
        else:
            assert torch.equal(y[i], x[i])


def test_solarize_inverts_values_above_the_threshold():
    x = torch.linspace(0, 1, 16).view(1, 1, 4, 4).repeat(2, 1, 1, 1)
    y = A.solarize(x, 1.0, 0.5, gen(0))
    assert torch.allclose(y[x >= 0.5], 1 - x[x >= 0.5]) and torch.equal(y[x < 0.5], x[x < 0.5])
    assert torch.equal(A.solarize(x, 0.0, 0.5, gen(0)), x)


def test_gaussian_blur_smooths_keeps_flat_images_and_matches_a_direct_convolution():
    x = torch.rand(4, 3, 16, 16)
    y = A.gaussian_blur(x, 1.0, sigma=(1.5, 1.5), kernel_size=5, generator=gen(0))
    assert y.shape == x.shape
    assert y.std() < x.std() * 0.7  # noise is smoothed away
    flat = torch.full((2, 1, 9, 9), 0.3)
    assert torch.allclose(A.gaussian_blur(flat, 1.0, generator=gen(0)), flat, atol=1e-6)
    # the centre pixel equals a direct 2-D convolution with the outer product of the 1-D kernel
    k1 = A._blur_kernels(torch.tensor([1.5]), 5)[0]
    k2 = torch.outer(k1, k1)
    direct = (x[0, 0, 6:11, 6:11] * k2).sum()
    assert torch.allclose(y[0, 0, 8, 8], direct, atol=1e-5)
    with pytest.raises(ValueError):
        A.gaussian_blur(x, 1.0, kernel_size=4, generator=gen(0))


def test_cutout_fills_one_square():
    x = torch.zeros(20, 1, 16, 16)
    y = A.cutout(x, 0.5, fill=0.5, generator=gen(3))
    filled = (y == 0.5).float().sum(dim=(1, 2, 3))
    assert filled.max() <= 8 * 8 + 1e-6 and filled.max() > 0
    i = int(filled.argmax())
    rows, cols = torch.nonzero(y[i, 0] == 0.5, as_tuple=True)
    # the filled pixels form one axis-aligned rectangle
    assert len(rows) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)


def test_equalize_matches_pil():
    from PIL import Image, ImageOps

    rng = np.random.RandomState(0)
    img = (rng.beta(2, 5, size=(12, 10, 3)) * 255).astype(np.uint8)
    ours = A.equalize(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255)
    pil = np.asarray(ImageOps.equalize(Image.fromarray(img)))
    assert np.array_equal((ours[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), pil)


def test_autocontrast_posterize_and_sharpness():
    x = torch.rand(3, 3, 8, 8) * 0.5 + 0.2
    ac = A.autocontrast(x)
    assert torch.allclose(ac.amin(dim=(2, 3)), torch.zeros(3, 3)) and torch.allclose(ac.amax(dim=(2, 3)), torch.ones(3, 3))
    p = A.posterize(x, torch.tensor([1.0, 4.0, 8.0]))
    assert set(torch.unique((p[0] * 255).round()).tolist()) <= {0.0, 128.0}
    assert torch.allclose(p[2], (x[2] * 255).round() / 255)
    assert torch.allclose(A.adjust_sharpness(x, torch.ones(3, 1, 1, 1)), x)
    smooth = A.adjust_sharpness(x, torch.zeros(3, 1, 1, 1))
    assert smooth[:, :, 1:-1, 1:-1].std() < x[:, :, 1:-1, 1:-1].std()


def test_geometric_ops_rotate_and_translate():
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 6] = 1.0  # a dot right of the centre
    rot = A._affine(x, A._rotation(torch.tensor([90.0]), 9, 9), fill=0.0)
    assert rot[0, 0].argmax() // 9 != 4  # the dot left the centre row
    assert abs(float(rot.sum()) - 1.0) < 1e-4
    right = A._affine(x, A._translate(torch.tensor([-2 / 9]), "x"), fill=0.0)
    assert torch.allclose(right[0, 0, 4, 8], torch.tensor(1.0), atol=1e-5)  # moved two pixels right


def test_rand_augment_uses_several_ops_and_identity_is_identity():
    x = torch.rand(32, 3, 12, 12)
    assert torch.equal(A.rand_augment(x, 2, generator=gen(0), ops=["identity"]), x)
    y = A.rand_augment(x, 4, generator=gen(0))
    changed = sum(not torch.allclose(y[i], x[i]) for i in range(32))
    assert changed > 24
    with pytest.raises(ValueError):
        A.rand_augment(x, 1, generator=gen(0), ops=["nope"])


def test_rand_augment_gives_each_image_the_operation_it_drew():
    """The batched round (images grouped by operation, the geometric ones resampled together) equals running
    each image's own draw on that image alone."""
    x = torch.rand(40, 3, 12, 12, generator=gen(1))
    names = ["rotate", "brightness", "identity", "shear_y", "equalize", "translate_x", "solarize"]
    y = A.rand_augment(x, 1, generator=gen(7), ops=names)
    g = gen(7)  # the same draws, in rand_augment's order
    choice = torch.randint(len(names), (40,), generator=g)
    mag = torch.rand(40, generator=g)
    sign = torch.where(torch.rand(40, generator=g) < 0.5, -1.0, 1.0)
    assert len(torch.unique(choice)) == len(names)
    for i in range(40):
        alone = A.RAND_AUGMENT_OPS[names[int(choice[i])]](x[i:i + 1], mag[i:i + 1], sign[i:i + 1]).clamp(0, 1)
        assert torch.allclose(y[i:i + 1], alone, atol=1e-6), names[int(choice[i])]


def test_augmentations_run_on_the_batch_device_in_channels_last():
    x = torch.rand(4, 3, 10, 10).contiguous(memory_format=torch.channels_last)
    for pol in (A.ContrastiveAugment(blur_p=1.0, solarize_p=1.0), A.StrongAugment()):
        y = pol(x, gen(0))
        assert y.device == x.device and y.dtype == x.dtype
        assert torch.allclose(y, pol(x.contiguous(), gen(0)), atol=1e-5)
