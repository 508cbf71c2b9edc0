"""DDIM sampling through the :class:`~anyto3d.priors.base.Prior` interface only.

Used for the reference view (XBind footnote 2: an image sampled from the 2D prior conditioned on
C_m) and for prior sample sheets. It needs nothing but ``prior.schedule`` (ᾱ_t),
``prior.guided_noise`` (ε̂ with classifier-free guidance ``ε_u + s·(ε_c − ε_u)``) and
``prior.decode``, so every adapter — pixel-space or latent — samples the same way.

DDIM (Song et al. 2021, Eq. 12) from timestep t to the previous one s:

    x̂_0 = (z_t − √(1−ᾱ_t) ε̂) / √ᾱ_t
    σ   = η · √((1−ᾱ_s)/(1−ᾱ_t)) · √(1 − ᾱ_t/ᾱ_s)
    z_s = √ᾱ_s x̂_0 + √(1−ᾱ_s−σ²) ε̂ + σ ξ,   ξ ~ N(0, I)

η = 0 is the deterministic sampler, η = 1 the DDPM posterior. The last step goes to ᾱ = 1,
i.e. returns x̂_0. Timesteps are "trailing" (``round(T − k·T/n) − 1``, k = 0..n−1): the first
step is t = T−1, the noisiest level the prior knows, which is where pure noise belongs (the
"leading" spacing of older configs starts below it; Lin et al. 2024 discuss the mismatch).
"""

from __future__ import annotations

import torch

from anyto3d.priors.base import Condition, Prior


def ddim_timesteps(num_train_timesteps: int, steps: int) -> torch.Tensor:
    """Descending integer timesteps, trailing spacing: T−1, …, ≈T/n − 1 (``steps`` of them)."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be in [1, {num_train_timesteps}], got {steps}")
    ratio = num_train_timesteps / steps
    t = torch.round(num_train_timesteps - torch.arange(steps, dtype=torch.float64) * ratio) - 1
    return t.long()


def ddim_step(
    z_t: torch.Tensor,
    eps: torch.Tensor,
    alpha_t: torch.Tensor,
    alpha_prev: torch.Tensor,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    clip_x0: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM update (module docstring): returns (z_prev, x̂_0). ``alpha_*`` are scalars ᾱ."""
    x0 = (z_t - (1 - alpha_t).sqrt() * eps) / alpha_t.sqrt()
    if clip_x0 is not None:
        x0 = x0.clamp(-clip_x0, clip_x0)
        eps = (z_t - alpha_t.sqrt() * x0) / (1 - alpha_t).sqrt()  # keep ε consistent with the clipped x̂_0
    sigma = eta * ((1 - alpha_prev) / (1 - alpha_t)).sqrt() * (1 - alpha_t / alpha_prev).sqrt()
    z_prev = alpha_prev.sqrt() * x0 + (1 - alpha_prev - sigma**2).clamp_min(0).sqrt() * eps
    if eta > 0:
        if noise is None:
            raise ValueError("eta > 0 needs a noise tensor")
        z_prev = z_prev + sigma * noise
    return z_prev, x0


@torch.no_grad()
def ddim_sample(
    prior: Prior,
    cond: Condition,
    shape: tuple[int, ...],
    steps: int = 50,
    guidance_scale: float = 7.5,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    clip_x0: float | None = None,
    return_latents: bool = False,
) -> torch.Tensor:
    """Sample ``shape`` = [B, C, h, w] latents with DDIM and decode them -> images [B, 3, H, W] in [-1, 1].

    ``cond`` is the prior's conditioning for the batch (e.g. from ``prior.build_condition``);
    ``generator`` fixes the initial noise and every η-noise draw (drawn on the CPU, then moved,
    so a seed gives the same sample on any device). ``clip_x0`` clamps x̂_0 (useful for
    pixel-space priors, whose data live in [−1, 1]); ``return_latents`` skips decoding.
    """
    device = next((v.device for v in cond.values()), torch.device("cpu"))
    for p in prior.parameters():
        device = p.device
        break
    alphas = prior.schedule.alphas_cumprod.to(device=device, dtype=torch.float64)
    timesteps = ddim_timesteps(prior.schedule.num_timesteps, steps)
    z = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
    one = torch.ones((), dtype=torch.float64, device=device)
    for i, t in enumerate(timesteps.tolist()):
        t_batch = torch.full((shape[0],), t, dtype=torch.long, device=device)
        eps = prior.guided_noise(z, t_batch, cond, guidance_scale).to(torch.float64)
        alpha_prev = alphas[timesteps[i + 1]] if i + 1 < len(timesteps) else one
        noise = None
        if eta > 0 and i + 1 < len(timesteps):
            noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(device, torch.float64)
        z_next, _ = ddim_step(
            z.to(torch.float64), eps, alphas[t], alpha_prev, eta if noise is not None else 0.0, noise, clip_x0
        )
        z = z_next.to(torch.float32)
    if return_latents:
        return z
    return prior.decode(z).clamp(-1.0, 1.0)


__all__ = ["ddim_sample", "ddim_step", "ddim_timesteps"]
