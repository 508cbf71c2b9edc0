"""Video SDS with a text-to-video prior (4D-fy Eq. 6; Zeroscope in the released code).

Contract with a video prior: its ``encode`` maps clips ``[B, 3, F, H, W]`` in [-1, 1] to latents
``[B, C, F, h, w]`` (frame by frame through the VAE for Zeroscope; the identity for a pixel-space
video prior) and its denoiser takes latents of that layout. The SDS mathematics is the image
case's (:func:`anyto3d.losses.sds.sds_latent_gradient`), with one t for the whole clip.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from anyto3d.errors import InputError
from anyto3d.images import renderer_to_prior
from anyto3d.losses.sds import (
    Weighting,
    finish_gradient,
    gradient_as_loss,
    gradient_diagnostics,
    sds_latent_gradient,
)
from anyto3d.priors.base import Condition, Prior


def frames_to_clip(frames: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Rendered frames ``[F,H,W,3]`` or ``[B,F,H,W,3]`` in [0,1] → a clip ``[B,3,F,H',W']`` in [-1,1].

    ``size`` (H', W') upsamples each frame bilinearly (4D-fy: 160×288 → 320×576).
    """
    if frames.dim() == 4:
        frames = frames[None]
    if frames.dim() != 5 or frames.shape[-1] != 3:
        raise InputError(f"video frames must be [F, H, W, 3] or [B, F, H, W, 3], got {tuple(frames.shape)}")
    B, nf, H, W, _ = frames.shape
    x = renderer_to_prior(frames.reshape(B * nf, H, W, 3))
    if size is not None and tuple(size) != (H, W):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return x.reshape(B, nf, 3, *x.shape[-2:]).permute(0, 2, 1, 3, 4)


def video_sds(
    prior: Prior,
    frames: torch.Tensor,
    cond: Condition,
    t,
    noise: torch.Tensor | None = None,
    *,
    size: tuple[int, int] | None = None,
    guidance_scale: float = 101.0,
    weighting: Weighting = "sds",
    grad_clip: float | None = None,
    generator: torch.Generator | None = None,
    return_diagnostics: bool = False,
):
    """Video SDS (4D-fy Eq. 6).

    ∇_θ L_VID = E_{t,ε}[ w(t) (ε_φ(z_t; t, y) − ε) ∂X/∂θ ],  X = [x^(1), ..., x^(V)] the clip.

    ``frames`` [F,H,W,3] (one clip) or [B,F,H,W,3]; ``size`` the frame size the prior expects
    (upsampled bilinearly); one t for the whole clip (per clip when B > 1 and ``t`` is [B]).
    Default CFG 101 in the standard form = Zeroscope's released 100 in threestudio's form;
    w(t) = 1−ᾱ; the released loss weight (0.1) belongs to the loss configuration.
    """
    clip = frames_to_clip(frames, size)
    z = prior.encode(clip)
    if z.dim() != 5:
        raise InputError(f"a video prior's encode must return latents [B, C, F, h, w], got {tuple(z.shape)}")
    grad, info = sds_latent_gradient(
        prior, z, cond, t, noise, guidance_scale=guidance_scale, weighting=weighting, generator=generator
    )
    grad = finish_gradient(grad, grad_clip)
    loss = gradient_as_loss(z, grad)
    if return_diagnostics:
        return loss, gradient_diagnostics(grad, info["t"], info["w"])
    return loss


__all__ = ["frames_to_clip", "video_sds"]
