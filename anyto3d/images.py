"""The two image layouts of the project and the one conversion each way (DESIGN §4).

* Renderer boundary: ``[B, H, W, 3]`` float in [0, 1] ("HWC01").
* Prior boundary: ``[B, 3, H, W]`` float in [-1, 1] ("CHW11"), or latents.
"""

from __future__ import annotations

import torch


def renderer_to_prior(images: torch.Tensor) -> torch.Tensor:
    """[B, H, W, C] in [0, 1] -> [B, C, H, W] in [-1, 1]."""
    return images.permute(0, 3, 1, 2) * 2.0 - 1.0


def prior_to_renderer(images: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] in [-1, 1] -> [B, H, W, C] in [0, 1] (clamped)."""
    return ((images.permute(0, 2, 3, 1) + 1.0) * 0.5).clamp(0.0, 1.0)


def to_uint8(images: torch.Tensor):
    """[..., H, W, C] in [0, 1] -> numpy uint8, for writing files."""
    return (images.detach().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Peak signal-to-noise ratio in dB between images in [0, 1] (optionally over a mask)."""
    err = (a - b) ** 2
    if mask is not None:
        m = mask.expand_as(err)
        mse = (err * m).sum() / m.sum().clamp_min(1)
    else:
        mse = err.mean()
    return float(-10.0 * torch.log10(mse.clamp_min(1e-12)))


def mask_iou(a: torch.Tensor, b: torch.Tensor, threshold: float = 0.5) -> float:
    """Intersection over union of two soft masks thresholded at ``threshold``."""
    a, b = a > threshold, b > threshold
    union = (a | b).sum()
    return float((a & b).sum() / union) if union > 0 else 1.0
