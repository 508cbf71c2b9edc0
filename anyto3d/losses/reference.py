"""The reference-view loss (XBind Eq. 11).

XBind writes both terms as squared L2 norms, so the mask term here is an MSE by default
(``mask_loss="mse"``). Magic123 (threestudio and official) uses binary cross-entropy on the
opacity instead, and an RGB MSE over the whole image against ``rgb·mask + background·(1−mask)``;
``mask_loss="bce"`` gives the former. Both terms are means over pixels (not sums), so the
weights do not depend on the render resolution; threestudio's Magic123 weights are
ω_rgb = 1000, ω_mask = 100 on the same means, the official Magic123's 5 and 0.5.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from anyto3d.errors import InputError
from anyto3d.render.output import RenderOutput


def reference_view_loss(
    render: RenderOutput,
    reference_rgb: torch.Tensor,
    reference_mask: torch.Tensor,
    w_rgb: float = 1000.0,
    w_mask: float = 100.0,
    *,
    mask_loss: Literal["mse", "bce"] = "mse",
    return_diagnostics: bool = False,
):
    """Reference view loss (XBind Eq. 11).

    L_ref = ω_rgb ‖m ⊙ (x_r − x̂_r)‖² + ω_mask ‖m − M(x̂_r)‖²,

    with x̂_r = ``render.rgb`` rendered from the reference camera, M(x̂_r) = ``render.opacity``
    (its foreground mask), x_r = ``reference_rgb`` [B,H,W,3] and m = ``reference_mask``
    [B,H,W,1] in [0,1]. Norms are means over elements (module docstring).
    """
    rgb, opacity = render.rgb, render.opacity
    if reference_rgb.shape != rgb.shape:
        raise InputError(
            f"reference image {tuple(reference_rgb.shape)} does not match the reference render {tuple(rgb.shape)}; "
            "render the reference view at the reference image's resolution"
        )
    if reference_mask.shape != opacity.shape:
        raise InputError(f"reference mask {tuple(reference_mask.shape)} does not match the render opacity {tuple(opacity.shape)}")
    if mask_loss not in ("mse", "bce"):
        raise InputError(f"mask_loss must be 'mse' or 'bce', got {mask_loss!r}")
    m = reference_mask.to(rgb)
    rgb_term = ((m * (reference_rgb.to(rgb) - rgb)) ** 2).mean()
    if mask_loss == "mse":
        mask_term = ((m - opacity) ** 2).mean()
    else:
        mask_term = F.binary_cross_entropy(opacity.clamp(1e-5, 1 - 1e-5), m)
    loss = w_rgb * rgb_term + w_mask * mask_term
    if return_diagnostics:
        return loss, {"rgb": rgb_term.item(), "mask": mask_term.item()}
    return loss


__all__ = ["reference_view_loss"]
