"""Reference view (XBind footnote 2): masks, framing for Zero-1-to-3, seeded sampling from a prior."""

import math

import numpy as np
import pytest
import torch

from anyto3d.errors import InputError
from anyto3d.images import mask_iou
from anyto3d.modality import image_prompt_from_arrays
from anyto3d.priors.base import NoiseSchedule, Prior
from anyto3d.reference_view import (
    NoForegroundError,
    ReferenceViewConfig,
    extract_foreground_mask,
    recenter,
    reference_camera,
    reference_view_from_image,
    reference_view_from_prior,
)


def soft_disc(size, radius, center):
    """Anti-aliased disc coverage in [0, 1] (4×4 supersampling) and its hard version."""
    s = 4
    yy, xx = np.mgrid[0 : size * s, 0 : size * s]
    inside = ((xx + 0.5) / s - center[0]) ** 2 + ((yy + 0.5) / s - center[1]) ** 2 <= radius**2
    cover = inside.reshape(size, s, size, s).mean(axis=(1, 3))
    return cover, cover >= 0.5


def disc_image(size=64, radius=14.0, center=(30.0, 34.0), color=(0.1, 0.3, 0.9), background=(1.0, 1.0, 1.0)):
    cover, hard = soft_disc(size, radius, center)
    rgb = cover[..., None] * np.asarray(color) + (1 - cover[..., None]) * np.asarray(background)
    return rgb, hard


def test_mask_of_a_disc_on_white():
    rgb, truth = disc_image()
    rng = np.random.default_rng(0)
    rgb = np.clip(rgb + rng.normal(0, 0.02, rgb.shape), 0, 1)  # sampler-like noise
    rgb[5:7, 55:57] = (0.0, 0.0, 0.0)  # a stray speck: not the largest component
    mask = extract_foreground_mask(torch.from_numpy(rgb).float())
    assert mask.shape == (64, 64, 1)
    assert mask_iou(mask[..., 0], torch.from_numpy(truth).float()) >= 0.95
    assert mask[5:7, 55:57].sum() == 0


def test_mask_with_a_known_background_colour():
    rgb, truth = disc_image(background=(0.5, 0.5, 0.5), color=(0.9, 0.9, 0.1))
    mask = extract_foreground_mask(torch.from_numpy(rgb).float(), background=(0.5, 0.5, 0.5))
    assert mask_iou(mask[..., 0], torch.from_numpy(truth).float()) >= 0.95


def test_blank_image_has_no_foreground():
    with pytest.raises(NoForegroundError, match="no object") as err:
        extract_foreground_mask(torch.ones(32, 32, 3))
    assert isinstance(err.value, InputError)


def test_recenter_frames_the_object_as_zero123_expects():
    rgb, _ = disc_image(size=64, radius=10.0, center=(15.0, 45.0))  # small, off-centre
    cover, _ = soft_disc(64, 10.0, (15.0, 45.0))
    mask = torch.from_numpy(cover).float()[..., None]  # soft mask, consistent with the anti-aliased rgb
    out_rgb, out_mask = recenter(torch.from_numpy(rgb).float(), mask, size=100, object_fraction=0.8)
    assert out_rgb.shape == (100, 100, 3) and out_mask.shape == (100, 100, 1)
    rows = torch.nonzero(out_mask[..., 0].amax(1) > 0.5).flatten()
    cols = torch.nonzero(out_mask[..., 0].amax(0) > 0.5).flatten()
    assert abs((rows[-1] - rows[0] + 1).item() - 80) <= 1 and abs((cols[-1] - cols[0] + 1).item() - 80) <= 1
    assert abs((rows[0] + rows[-1]).item() / 2 - 49.5) <= 1 and abs((cols[0] + cols[-1]).item() / 2 - 49.5) <= 1
    assert torch.allclose(out_rgb[out_mask[..., 0] == 0], torch.ones(1, 3))  # white outside the object
    centre = out_rgb[45:55, 45:55].reshape(-1, 3).mean(0)
    assert torch.allclose(centre, torch.tensor([0.1, 0.3, 0.9]), atol=1e-3)


def test_reference_camera_defaults_and_override():
    cam = reference_camera()
    assert len(cam) == 1
    assert torch.allclose(cam.position[0], torch.tensor([2.5, 0.0, 0.0]), atol=1e-6)  # elevation 0, azimuth 0
    assert cam.fovy.item() == pytest.approx(math.radians(40.0))
    cam = reference_camera(ReferenceViewConfig(elevation_deg=15.0, distance=3.0, fovy_deg=30.0))
    assert cam.elevation.item() == pytest.approx(math.radians(15.0)) and cam.distance.item() == 3.0


def test_image_prompt_reference_view():
    rgb, truth = disc_image()
    alpha = truth.astype(np.float64)
    prompt = image_prompt_from_arrays(rgb, alpha)
    view = reference_view_from_image(prompt, ReferenceViewConfig(size=128))
    assert view.source == "image" and view.rgb.shape == (128, 128, 3) and view.mask.shape == (128, 128, 1)
    area = (view.mask > 0.5).float().mean().item()
    assert area == pytest.approx(math.pi * 0.4**2, rel=0.05)  # a disc whose diameter is 0.8 of the frame
    assert torch.allclose(view.camera.position[0], torch.tensor([2.5, 0.0, 0.0]), atol=1e-6)


class NoisyDiscPrior(Prior):
    """Pixel-space prior of images ~ N(disc image of colour ``cond["color"]``, 0.03²) with exact ε̂."""

    image_size = 32

    def __init__(self):
        super().__init__(NoiseSchedule.cosine(1000))
        _, hard = soft_disc(32, 9.0, (16.0, 16.0))
        self.register_buffer("disc", torch.from_numpy(hard).float())
        self.std = 0.03

    def build_condition(self, color):
        return {"color": color}

    def unconditional(self, cond):
        return cond  # CFG is then the identity: the test is about seeds and masks

    def forward_model(self, z_t, t, cond):
        colour = cond["color"].view(-1, 3, 1, 1) * 2 - 1
        mean = self.disc * colour + (1 - self.disc) * 1.0  # white background in [-1, 1]
        a = self.schedule.alpha_bar(t, z_t)
        return (1 - a).sqrt() * (z_t - a.sqrt() * mean) / (a * self.std**2 + 1 - a)


def test_prior_reference_view_is_seeded_and_masked():
    prior = NoisyDiscPrior()
    cond = prior.build_condition(torch.tensor([[0.8, 0.2, 0.1]]))
    cfg = ReferenceViewConfig(size=32, recenter=False, steps=20)
    first = reference_view_from_prior(prior, cond, cfg)
    again = reference_view_from_prior(prior, cond, cfg)
    other = reference_view_from_prior(prior, cond, ReferenceViewConfig(size=32, recenter=False, steps=20, seed=1))
    assert first.source == "prior"
    assert torch.equal(first.rgb, again.rgb) and torch.equal(first.mask, again.mask)
    assert not torch.allclose(first.rgb, other.rgb)
    assert mask_iou(first.mask[..., 0], prior.disc) >= 0.95
    inside = first.rgb[prior.disc > 0.5].mean(0)
    assert torch.allclose(inside, torch.tensor([0.8, 0.2, 0.1]), atol=0.03)
    # Recentred by default: the object's longer side becomes 0.8 of the frame.
    framed = reference_view_from_prior(prior, cond, ReferenceViewConfig(size=64, steps=20))
    cols = torch.nonzero(framed.mask[..., 0].amax(0) > 0.5).flatten()
    assert abs((cols[-1] - cols[0] + 1).item() - 51) <= 1
