"""The modality similarity (MS) loss (XBind Eq. 2) and its differentiable augmentations.

Renders x go through three kinds of augmentation — G (global random perspective), L (random
crop + perspective) and Z (normalisation only) — into the image encoder E (CLIP's image tower;
the tiny world's binder), and are compared by cosine with the prompt's aligned embedding C_m.

Choices the paper leaves open (exposed in :class:`ModalitySimilarityConfig`):

* **Sign.** Eq. 2 writes the weighted *similarity*; as a loss to minimise we use 1 − cos, which
  has the gradient of −cos and is 0 at perfect alignment.
* **Z** is the identity here: the encoder's ``embed_image`` already resizes and normalises with
  its own mean/std (``anyto3d.encoders.base.clip_preprocess``). Z is deterministic, so its n
  terms are one evaluation times Σ W_i.
* **Defaults** (no values in the paper): n = 2 augmentations of each random kind per step;
  W_i = 1/n; ω_g = ω_l = 0.25, ω_z = 0.5 (so L_MS ∈ [0, 2] and ω_ms alone sets its scale; the
  un-augmented view carries half the weight, the augmentations guard against adversarial
  pixel patterns that fool one view of the encoder); G moves each corner inward by up to 0.5
  of the half-size (torchvision's ``RandomPerspective`` default); L crops a square of side
  U(0.5, 0.9) of the image at a random position, then a milder perspective (0.25); pixels
  outside the warped image take ``fill`` (white, the tiny world's background).

The augmentations are one ``grid_sample`` each (bilinear), so gradients reach the render, and
every random draw comes from the ``generator`` passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from anyto3d.errors import InputError
from anyto3d.losses.sds import check_renders


@dataclass
class ModalitySimilarityConfig:
    """Weights and augmentation strengths of the MS loss (module docstring for the choices)."""

    n_augmentations: int = 2
    augmentation_weights: tuple[float, ...] | None = None  # W_i; None → 1/n each
    weight_global: float = 0.25  # ω_g
    weight_local: float = 0.25  # ω_l
    weight_normalised: float = 0.5  # ω_z
    global_distortion: float = 0.5
    local_crop_scale: tuple[float, float] = (0.5, 0.9)
    local_distortion: float = 0.25
    fill: float = 1.0

    def __post_init__(self):
        if self.n_augmentations < 1:
            raise InputError(f"n_augmentations must be >= 1, got {self.n_augmentations}")
        if self.augmentation_weights is not None:
            self.augmentation_weights = tuple(float(w) for w in self.augmentation_weights)
            if len(self.augmentation_weights) != self.n_augmentations:
                raise InputError(
                    f"augmentation_weights has {len(self.augmentation_weights)} entries for "
                    f"{self.n_augmentations} augmentations"
                )
        lo, hi = self.local_crop_scale
        if not 0 < lo <= hi <= 1:
            raise InputError(f"local_crop_scale must satisfy 0 < lo <= hi <= 1, got {self.local_crop_scale}")
        for name in ("global_distortion", "local_distortion"):
            if not 0 <= getattr(self, name) < 1:
                raise InputError(f"{name} must lie in [0, 1), got {getattr(self, name)}")

    @property
    def weights(self) -> tuple[float, ...]:
        """W_1..W_n."""
        n = self.n_augmentations
        return self.augmentation_weights if self.augmentation_weights is not None else (1.0 / n,) * n


#: The default; a CPU preset with one augmentation of each random kind.
MS_DEFAULT = ModalitySimilarityConfig()
MS_CPU = ModalitySimilarityConfig(n_augmentations=1)


# ---------------------------------------------------------------------------------------------
# Differentiable augmentations
# ---------------------------------------------------------------------------------------------


def homography_from_points(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """The 3×3 homographies [N,3,3] mapping 4 points ``src`` [N,4,2] onto ``dst`` [N,4,2] (h33 = 1)."""
    src, dst = src.double(), dst.double()
    x, y = src[..., 0], src[..., 1]
    u, v = dst[..., 0], dst[..., 1]
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rows_u = torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], dim=-1)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], dim=-1)
    A = torch.cat([rows_u, rows_v], dim=1)  # [N, 8, 8]
    b = torch.cat([u, v], dim=1)  # [N, 8]
    h = torch.linalg.solve(A, b)
    return torch.cat([h, torch.ones_like(h[:, :1])], dim=1).view(-1, 3, 3)


def _pixel_centres(H: int, W: int, device, dtype) -> torch.Tensor:
    """Normalised coordinates [H, W, 2] (x, y) of pixel centres, as grid_sample(align_corners=False)."""
    ys = (torch.arange(H, device=device, dtype=dtype) * 2 + 1) / H - 1
    xs = (torch.arange(W, device=device, dtype=dtype) * 2 + 1) / W - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def random_perspective(
    n: int, distortion: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """[n,3,3] homographies from output to input coordinates of a random perspective warp.

    As torchvision's ``RandomPerspective``: each image corner moves inward by U(0, distortion)
    of the half-size along each axis; the image is warped so that its corners land there (the
    content shrinks into a random quadrilateral; the rest is fill). distortion 0 is the identity.
    """
    corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    inward = -corners.sign() * distortion * torch.rand((n, 4, 2), generator=generator)
    landed = corners + inward
    return homography_from_points(landed, corners.expand(n, 4, 2))


def warp(images: torch.Tensor, homographies: torch.Tensor, fill: float = 1.0,
         crop_centre: torch.Tensor | None = None, crop_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Resample ``images`` [N,H,W,C] through output→input homographies [N,3,3] (and a crop).

    Output pixel p maps to q = H·p in normalised coordinates, then (with a crop) to
    ``crop_centre + crop_scale·q`` in the input. Outside the input: ``fill``. Bilinear, differentiable.
    """
    N, H, W, C = images.shape
    p = _pixel_centres(H, W, images.device, torch.float64).reshape(1, H * W, 2).expand(N, -1, -1)
    ph = torch.cat([p, torch.ones_like(p[..., :1])], dim=-1)
    q = ph @ homographies.to(images.device, torch.float64).transpose(1, 2)
    q = q[..., :2] / q[..., 2:]
    if crop_centre is not None:
        q = crop_centre.to(q).view(N, 1, 2) + crop_scale.to(q).view(N, 1, 1) * q
    grid = q.reshape(N, H, W, 2).to(images.dtype)
    x = images.permute(0, 3, 1, 2) - fill
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
    return out.permute(0, 2, 3, 1)


def global_augmentation(images: torch.Tensor, cfg: ModalitySimilarityConfig, generator=None) -> torch.Tensor:
    """G: a random perspective of the whole render."""
    return warp(images, random_perspective(images.shape[0], cfg.global_distortion, generator), cfg.fill)


def local_augmentation(images: torch.Tensor, cfg: ModalitySimilarityConfig, generator=None) -> torch.Tensor:
    """L: a random square crop (side U(local_crop_scale)), resized to full size, then a random perspective."""
    n = images.shape[0]
    lo, hi = cfg.local_crop_scale
    scale = lo + (hi - lo) * torch.rand(n, generator=generator)
    centre = (torch.rand((n, 2), generator=generator) * 2 - 1) * (1 - scale)[:, None]
    homography = random_perspective(n, cfg.local_distortion, generator)
    return warp(images, homography, cfg.fill, crop_centre=centre, crop_scale=scale)


# ---------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------


def modality_similarity(
    images: torch.Tensor,
    target_embedding: torch.Tensor,
    image_encoder: Callable[[torch.Tensor], torch.Tensor],
    cfg: ModalitySimilarityConfig | None = None,
    generator: torch.Generator | None = None,
    return_diagnostics: bool = False,
):
    """The modality similarity loss (XBind Eq. 2), as 1 − cos.

    L_MS = ω_g L_ms-g + ω_l L_ms-l + ω_z L_ms-z,
    L_ms-a = Σ_{i=1..n} W_i · avg_views[ 1 − cos(C_m, E(A_i(x))) ],  A ∈ {G, L, Z}.

    ``images`` the renders of the step's views [V,H,W,3] in [0,1]; ``target_embedding`` C_m
    [D], [1,D] or [V,D]; ``image_encoder`` an encoder (its ``embed_image`` is used) or any
    callable [N,H,W,3] → [N,D]. All augmented views go through the encoder in one batch; a
    kind whose ω is 0 is not computed.
    """
    cfg = cfg or MS_DEFAULT
    check_renders(images)
    encode = getattr(image_encoder, "embed_image", image_encoder)
    V = images.shape[0]
    target = target_embedding.reshape(-1, target_embedding.shape[-1]).to(images)
    if target.shape[0] not in (1, V):
        raise InputError(f"target embedding has batch {target.shape[0]}, renders have {V} views")

    n = cfg.n_augmentations
    kinds: list[tuple[str, float, list[torch.Tensor]]] = []
    if cfg.weight_global:
        kinds.append(("global", cfg.weight_global, [global_augmentation(images, cfg, generator) for _ in range(n)]))
    if cfg.weight_local:
        kinds.append(("local", cfg.weight_local, [local_augmentation(images, cfg, generator) for _ in range(n)]))
    if cfg.weight_normalised:
        kinds.append(("normalised", cfg.weight_normalised, [images]))
    if not kinds:
        raise InputError("all MS loss weights (ω_g, ω_l, ω_z) are zero")

    batch = torch.cat([aug for _, _, augs in kinds for aug in augs], dim=0)
    embeddings = encode(batch)
    if embeddings.dim() != 2 or embeddings.shape[0] != batch.shape[0]:
        raise InputError(f"image encoder returned {tuple(embeddings.shape)} for {batch.shape[0]} images")
    if embeddings.shape[1] != target.shape[1]:
        raise InputError(f"image embedding dim {embeddings.shape[1]} != target embedding dim {target.shape[1]}")
    cos = F.cosine_similarity(embeddings.view(-1, V, embeddings.shape[1]), target[None], dim=-1)  # [A, V]

    W = torch.tensor(cfg.weights, dtype=cos.dtype, device=cos.device)
    total = cos.new_zeros(())
    diagnostics, row = {}, 0
    for name, omega, augs in kinds:
        dissimilarity = 1 - cos[row : row + len(augs)].mean(dim=1)  # avg over views, per augmentation
        row += len(augs)
        term = (W * dissimilarity).sum() if len(augs) == n else W.sum() * dissimilarity[0]
        total = total + omega * term
        diagnostics[f"cos_{name}"] = (1 - dissimilarity).mean().item()
    if return_diagnostics:
        return total, diagnostics
    return total


__all__ = [
    "MS_CPU",
    "MS_DEFAULT",
    "ModalitySimilarityConfig",
    "global_augmentation",
    "homography_from_points",
    "local_augmentation",
    "modality_similarity",
    "random_perspective",
    "warp",
]
