"""The one interface every diffusion prior sits behind (DESIGN §3 "Prior").

A prior is: a latent codec (a VAE, or the identity for pixel-space priors), a noise schedule
(ᾱ_t over integer timesteps in [0, T)), ``predict_noise(z_t, t, cond)`` returning ε (a
v-prediction model is converted), a conditioning builder, and classifier-free guidance in the
standard form ``ε_u + s·(ε_c − ε_u)``.

threestudio's SDS guidance and its Zeroscope guidance compute ``ε_c + s·(ε_c − ε_u)``, which
is this form with scale ``s + 1``: a config that reproduces their numbers must add 1 to the
scale (and say so).

Losses (``anyto3d.losses``) are written once against this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

# A conditioning is a dict of batched tensors (dim 0 = batch). Keys are prior-specific,
# e.g. {"embedding": [B, D]} or {"image_latent": [B,4,h,w], "camera": [B, 4]}.
Condition = dict[str, torch.Tensor]


def concat_conditions(a: Condition, b: Condition) -> Condition:
    """Concatenate two conditionings with the same keys along the batch dimension."""
    if a.keys() != b.keys():
        raise KeyError(f"conditionings differ in keys: {sorted(a)} vs {sorted(b)}")
    return {k: torch.cat([a[k], b[k]], dim=0) for k in a}


def repeat_condition(cond: Condition, n: int) -> Condition:
    """Repeat a batch-1 (or batch-B) conditioning ``n`` times along dim 0."""
    return {k: v.repeat_interleave(n, dim=0) if v.shape[0] != n else v for k, v in cond.items()}


@dataclass
class NoiseSchedule:
    """Discrete variance-preserving schedule: z_t = √ᾱ_t z_0 + √(1−ᾱ_t) ε, t ∈ [0, T)."""

    alphas_cumprod: torch.Tensor  # [T]

    @property
    def num_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    @classmethod
    def from_scheduler(cls, scheduler) -> "NoiseSchedule":
        """Take ᾱ from any diffusers scheduler (DDPM/DDIM/...)."""
        return cls(scheduler.alphas_cumprod.detach().clone().float())

    @classmethod
    def cosine(cls, num_timesteps: int = 1000, s: float = 0.008) -> "NoiseSchedule":
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        f = torch.cos((steps + s) / (1 + s) * torch.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        return cls(torch.cumprod(1 - betas, 0).float())

    def alpha_bar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """ᾱ_t broadcast to the shape of ``like`` ([B, ...])."""
        a = self.alphas_cumprod.to(like.device)[t.long().to(like.device)]
        return a.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def add_noise(self, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.alpha_bar(t, z0)
        return a.sqrt() * z0 + (1 - a).sqrt() * noise

    def predict_x0(self, z_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.alpha_bar(t, z_t)
        return (z_t - (1 - a).sqrt() * eps) / a.sqrt()

    def sigma_ve(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Variance-exploding noise level σ_t = √((1−ᾱ_t)/ᾱ_t) (CDS works in this form)."""
        a = self.alpha_bar(t, like)
        return ((1 - a) / a).sqrt()

    def v_to_eps(self, z_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Convert a v-prediction to ε: ε = √ᾱ v + √(1−ᾱ) z_t."""
        a = self.alpha_bar(t, z_t)
        return a.sqrt() * v + (1 - a).sqrt() * z_t


def classifier_free_guidance(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Standard CFG: ε_u + s·(ε_c − ε_u). (threestudio SDS/Zeroscope use s+1 in this form.)"""
    return eps_uncond + scale * (eps_cond - eps_uncond)


class Prior(nn.Module, ABC):
    """A diffusion prior behind one interface; subclasses wrap diffusers/own models.

    Image tensors at this boundary are [B, 3, H, W] in [-1, 1] (``anyto3d.images``).
    """

    #: "epsilon" or "v_prediction": what the underlying network outputs.
    prediction_type: str = "epsilon"
    #: Resolution (pixels) images are resized to before encoding.
    image_size: int | tuple[int, int] = 32

    def __init__(self, schedule: NoiseSchedule):
        super().__init__()
        self.schedule = schedule

    # -- latent codec ---------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B,3,H,W] in [-1,1] -> latents z (identity for pixel-space priors)."""
        return images

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images [B,3,H,W] in [-1,1] (identity for pixel-space priors)."""
        return latents

    # -- conditioning -----------------------------------------------------------------------
    @abstractmethod
    def build_condition(self, **inputs) -> Condition:
        """Turn prompt-side inputs (embeddings, reference image, cameras, ...) into a Condition."""

    @abstractmethod
    def unconditional(self, cond: Condition) -> Condition:
        """The null conditioning matching ``cond``'s batch (for CFG and dropout)."""

    # -- denoiser ---------------------------------------------------------------------------
    @abstractmethod
    def forward_model(self, z_t: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        """The raw network output (ε or v, per ``prediction_type``)."""

    def predict_noise(self, z_t: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        """ε̂(z_t; cond, t), converting a v-prediction."""
        t = t.to(z_t.device).long().reshape(-1).expand(z_t.shape[0])
        out = self.forward_model(z_t, t, cond)
        if self.prediction_type == "v_prediction":
            return self.schedule.v_to_eps(z_t, out, t)
        if self.prediction_type != "epsilon":
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")
        return out

    def guided_noise(
        self, z_t: torch.Tensor, t: torch.Tensor, cond: Condition, guidance_scale: float, return_conditional: bool = False
    ):
        """CFG noise prediction, conditional and unconditional branches in one batch.

        With ``return_conditional`` also returns the conditional ε (MVDream SDS and CDS rescale
        the x0 std toward the non-CFG prediction).
        """
        if guidance_scale == 1.0:
            eps = self.predict_noise(z_t, t, cond)
            return (eps, eps) if return_conditional else eps
        t = t.to(z_t.device).long().reshape(-1).expand(z_t.shape[0])
        both = concat_conditions(cond, self.unconditional(cond))
        eps = self.predict_noise(torch.cat([z_t, z_t]), torch.cat([t, t]), both)
        eps_c, eps_u = eps.chunk(2)
        guided = classifier_free_guidance(eps_u, eps_c, guidance_scale)
        return (guided, eps_c) if return_conditional else guided
