"""The reference view x_r and its mask m (XBind Eq. 10–11 and footnote 2).

* **Text / audio prompts** (footnote 2): x_r is an image sampled from the 2D prior conditioned
  on the aligned embedding C_m, with a fixed seed (DDIM through the Prior interface,
  :func:`anyto3d.priors.sampling.ddim_sample`). Its mask: the background colour is the known one
  when the prior renders on a known plain background (the tiny world does), else it is estimated
  from the image border (median of a 2 % frame); the background is every pixel within a tolerance
  of it connected to the border; of the rest only the **largest connected component** is kept,
  holes filled — a sampled image may carry stray specks, and the object is one piece.
* **Image prompts**: x_r is the user's image with its mask (from :mod:`anyto3d.modality`: alpha,
  or a plain background).

Both are then **recentred** as Zero-1-to-3 expects its condition image (threestudio's and
DreamGaussian's image preprocessing, ``border_ratio`` 0.2): the mask's bounding box is scaled so
its longer side is ``object_fraction`` = 0.8 of a square frame of ``size`` px (default 256,
Zero-1-to-3's input), centred, on a white background. Zero-1-to-3 was trained on Objaverse
renders framed this way, so its camera conditioning presumes it.

The reference camera (research/papers_code.md §6, Magic123/threestudio): elevation 0°,
azimuth 0°, distance 2.5, fovy 40° — all configurable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from anyto3d.cameras import CameraBatch
from anyto3d.errors import InputError
from anyto3d.images import prior_to_renderer
from anyto3d.modality import (
    ImagePrompt,
    estimate_background_color,
    foreground_from_background,
    largest_component,
)
from anyto3d.priors.base import Condition, Prior
from anyto3d.priors.sampling import ddim_sample

WHITE = (1.0, 1.0, 1.0)


class NoForegroundError(InputError):
    """A reference image has no object that can be separated from its background."""


@dataclass(frozen=True)
class ReferenceViewConfig:
    # Reference camera (degrees, world units).
    elevation_deg: float = 0.0
    azimuth_deg: float = 0.0
    distance: float = 2.5
    fovy_deg: float = 40.0
    # Framing.
    size: int = 256
    recenter: bool = True
    object_fraction: float = 0.8  # longer side of the object's box / frame size
    # Sampling from the 2D prior (text/audio prompts). The paper gives no values: DDIM 50 steps,
    # η = 0, guidance 7.5 (BindDiffusion samples with 9; the tiny world measured 7.5 best for SDS).
    seed: int = 0
    steps: int = 50
    guidance_scale: float = 7.5
    eta: float = 0.0
    # Mask extraction for sampled images.
    background: tuple[float, float, float] | None = None  # known background colour; None = from the border
    background_tolerance: float = 0.1


@dataclass
class ReferenceView:
    """x_r ``rgb`` [H, W, 3] in [0, 1] (white where ``mask`` is 0), ``mask`` [H, W, 1] in [0, 1],
    and the reference ``camera`` (a batch of one)."""

    rgb: torch.Tensor
    mask: torch.Tensor
    camera: CameraBatch
    source: str = "image"  # "image" (user's image) or "prior" (sampled, footnote 2)

    def to(self, device: str | torch.device) -> "ReferenceView":
        """The images on ``device`` (where the renders they are compared with live). The camera
        stays on the CPU with the cameras the phases sample; the renderers move cameras."""
        return replace(self, rgb=self.rgb.to(device), mask=self.mask.to(device))


def reference_camera(cfg: ReferenceViewConfig = ReferenceViewConfig()) -> CameraBatch:
    """The reference viewpoint as a one-camera batch."""
    return CameraBatch.from_spherical(
        math.radians(cfg.elevation_deg), math.radians(cfg.azimuth_deg), cfg.distance, math.radians(cfg.fovy_deg)
    )


def extract_foreground_mask(
    rgb: torch.Tensor, background: tuple[float, float, float] | None = None, tolerance: float = 0.1
) -> torch.Tensor:
    """Mask [H, W, 1] of the largest object in ``rgb`` [H, W, 3] on a plain background (module docstring)."""
    image = rgb.detach().cpu().double().numpy()
    color = np.asarray(background) if background is not None else estimate_background_color(image, 0.02, tolerance)[0]
    fg = largest_component(foreground_from_background(image, color, tolerance))
    if fg.sum() == 0:
        raise NoForegroundError(
            f"no object found in the reference image: every pixel is within {tolerance} of the background colour "
            f"{np.round(color, 3).tolist()}"
        )
    return torch.from_numpy(fg.astype(np.float32))[..., None]


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[C, H, W] -> [C, h, w], bilinear, antialiased when shrinking."""
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def recenter(
    rgb: torch.Tensor,
    mask: torch.Tensor,
    size: int = 256,
    object_fraction: float = 0.8,
    background: tuple[float, float, float] = WHITE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop the mask's bounding box, scale its longer side to ``object_fraction·size`` and centre it
    in a ``size``² frame filled with ``background`` -> (rgb [size, size, 3], mask [size, size, 1]).

    ``rgb`` must already be composited onto ``background`` outside the object."""
    if not 0 < object_fraction <= 1:
        raise ValueError(f"object_fraction must be in (0, 1], got {object_fraction}")
    rows = torch.nonzero(mask[..., 0].amax(dim=1) > 0.5).flatten()
    cols = torch.nonzero(mask[..., 0].amax(dim=0) > 0.5).flatten()
    if rows.numel() == 0:
        raise NoForegroundError("cannot recentre: the mask is empty")
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    crop = torch.cat([rgb, mask], dim=-1)[top:bottom, left:right].permute(2, 0, 1).float()
    h, w = bottom - top, right - left
    scale = object_fraction * size / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    crop = _resize(crop, (new_h, new_w))
    canvas = torch.zeros(4, size, size)
    canvas[:3] = torch.tensor(background).view(3, 1, 1)
    y0, x0 = (size - new_h) // 2, (size - new_w) // 2
    # ``rgb`` is already composited onto ``background``, so the crop pastes straight in.
    canvas[:, y0 : y0 + new_h, x0 : x0 + new_w] = crop
    return canvas[:3].permute(1, 2, 0).clamp(0, 1).contiguous(), canvas[3:].permute(1, 2, 0).clamp(0, 1).contiguous()


def _frame(rgb: torch.Tensor, mask: torch.Tensor, cfg: ReferenceViewConfig) -> tuple[torch.Tensor, torch.Tensor]:
    if cfg.recenter:
        return recenter(rgb, mask, cfg.size, cfg.object_fraction, WHITE)
    # No recentring: pad to a square (centred, white) and resize, keeping the object's framing.
    h, w = rgb.shape[:2]
    side = max(h, w)
    canvas = torch.ones(4, side, side)
    canvas[3] = 0.0
    y0, x0 = (side - h) // 2, (side - w) // 2
    canvas[:, y0 : y0 + h, x0 : x0 + w] = torch.cat([rgb, mask], dim=-1).permute(2, 0, 1)
    canvas = _resize(canvas, (cfg.size, cfg.size))
    return canvas[:3].permute(1, 2, 0).clamp(0, 1).contiguous(), canvas[3:].permute(1, 2, 0).clamp(0, 1).contiguous()


def reference_view_from_image(prompt: ImagePrompt, cfg: ReferenceViewConfig = ReferenceViewConfig()) -> ReferenceView:
    """Image prompts: the user's image and its mask, framed for Zero-1-to-3."""
    # ImagePrompt.rgb is already composited onto white behind the object (anyto3d.modality).
    rgb, mask = _frame(prompt.rgb.float().cpu(), prompt.mask.float().cpu(), cfg)
    return ReferenceView(rgb, mask, reference_camera(cfg), source="image")


@torch.no_grad()
def reference_view_from_prior(
    prior: Prior,
    cond: Condition,
    cfg: ReferenceViewConfig = ReferenceViewConfig(),
    latent_shape: tuple[int, ...] | None = None,
) -> ReferenceView:
    """Text/audio prompts (XBind footnote 2): sample x_r from the 2D prior conditioned on C_m
    (``cond``, batch 1, e.g. ``prior.build_condition(...)``) with the fixed ``cfg.seed``; mask it."""
    if latent_shape is None:
        # The latent shape of one prior-resolution image, asked of the prior's own codec.
        probe = torch.zeros(1, 3, prior.image_size, prior.image_size, device=next(iter(cond.values())).device)
        latent_shape = tuple(prior.encode(probe).shape)
    generator = torch.Generator().manual_seed(cfg.seed)
    images = ddim_sample(
        prior, cond, latent_shape, steps=cfg.steps, guidance_scale=cfg.guidance_scale, eta=cfg.eta, generator=generator
    )
    rgb = prior_to_renderer(images)[0].float().cpu()
    mask = extract_foreground_mask(rgb, cfg.background, cfg.background_tolerance)
    rgb = rgb * mask + (1 - mask)
    rgb, mask = _frame(rgb, mask, cfg)
    return ReferenceView(rgb, mask, reference_camera(cfg), source="prior")


__all__ = [
    "NoForegroundError",
    "ReferenceView",
    "ReferenceViewConfig",
    "extract_foreground_mask",
    "recenter",
    "reference_camera",
    "reference_view_from_image",
    "reference_view_from_prior",
]
