"""The standard diffusion training objective, for the VSD LoRA step and the tiny zoo's priors.

``diffusion_loss`` is the DDPM "simple" loss on the network's *raw* output: the noise ε for an
ε-prediction prior, the velocity v = √ᾱ ε − √(1−ᾱ) z0 for a v-prediction prior (4D-fy Eq. 5
writes the ε form; its released LoRA model is v-prediction and trains on v).
With ``snr_gamma`` each item is re-weighted by :func:`min_snr_weight` (Hang et al. 2023); with
``timestep_power`` > 1 the steps are drawn towards the noisy end (:func:`draw_timesteps`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from anyto3d.errors import InputError
from anyto3d.priors.base import Condition, Prior, repeat_condition


def drop_condition(prior: Prior, cond: Condition, p: float, generator: torch.Generator | None = None) -> Condition:
    """Replace each item's condition by the prior's null condition with probability ``p``.

    Classifier-free-guidance training (the null condition is what ``prior.unconditional`` gives:
    zeros for the pixel prior, the zero camera for the VSD LoRA model).
    """
    if not 0.0 <= p <= 1.0:
        raise InputError(f"condition dropout probability must be in [0, 1], got {p}")
    if p == 0.0:
        return cond
    null = prior.unconditional(cond)
    B = next(iter(cond.values())).shape[0]
    drop = torch.rand(B, generator=generator) < p
    out = {}
    for key, value in cond.items():
        mask = drop.to(value.device).view(B, *([1] * (value.dim() - 1)))
        out[key] = torch.where(mask, null[key].to(value), value)
    return out


def diffusion_target(prior: Prior, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the raw network should output: ε, or v = √ᾱ ε − √(1−ᾱ) z0."""
    if prior.prediction_type == "epsilon":
        return noise
    if prior.prediction_type == "v_prediction":
        a = prior.schedule.alpha_bar(t, z0)
        return a.sqrt() * noise - (1 - a).sqrt() * z0
    raise InputError(f"unsupported prediction_type {prior.prediction_type!r}")


def draw_timesteps(
    num_timesteps: int, n: int, generator: torch.Generator | None = None, power: float = 1.0
) -> torch.Tensor:
    """``n`` training steps in [0, T): uniform at ``power`` 1, else t = ⌊T·u^(1/power)⌋, u ~ U(0, 1),
    whose density grows as t^(power−1) — more of the noisy steps where an object's layout is set.
    """
    if power <= 0:
        raise InputError(f"timestep_power must be positive, got {power}")
    if power == 1.0:  # the published recipes' draw, kept bit for bit
        return torch.randint(0, num_timesteps, (n,), generator=generator)
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return (num_timesteps * u ** (1.0 / power)).long().clamp(max=num_timesteps - 1)


def min_snr_weight(prior: Prior, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-item loss weights [B] of Min-SNR-γ weighting: the x0-space weight min(SNR, γ),
    SNR = ᾱ/(1−ᾱ), divided by what the raw target already carries (SNR for ε, SNR + 1 for v).

    Uniform weighting of v spends most of the gradient on nearly clean steps (x0 weight SNR + 1);
    capping it at γ moves effort to the mid-noise steps where an object's shape is decided.
    """
    if gamma <= 0:
        raise InputError(f"snr_gamma must be positive, got {gamma}")
    a = prior.schedule.alphas_cumprod[t.long().cpu()].double()
    snr = a / (1 - a)
    if prior.prediction_type == "epsilon":
        w = (gamma / snr).clamp(max=1.0)  # = min(SNR, γ)/SNR, and 1 where SNR is 0
    elif prior.prediction_type == "v_prediction":
        w = snr.clamp(max=gamma) / (snr + 1)
    else:
        raise InputError(f"unsupported prediction_type {prior.prediction_type!r}")
    return w.float()


def diffusion_loss(
    prior: Prior,
    z0: torch.Tensor,
    cond: Condition,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    snr_gamma: float | None = None,
    timestep_power: float = 1.0,
) -> torch.Tensor:
    """Mean-squared error of the prior's raw output against ε (or v) at z_t = √ᾱ z0 + √(1−ᾱ) ε.

    ``t`` defaults to one :func:`draw_timesteps` draw per item (uniform at ``timestep_power`` 1); ``noise`` to N(0, I). ``z0`` is
    treated as data (detach it when it comes from a render). Gradients flow into the prior.
    ``snr_gamma``: weight each item by :func:`min_snr_weight` (None: the plain mean).
    """
    B = z0.shape[0]
    T = prior.schedule.num_timesteps
    if t is None:
        t = draw_timesteps(T, B, generator, timestep_power)
    t = torch.as_tensor(t).reshape(-1).long().to(z0.device)
    if t.numel() == 1:
        t = t.expand(B)
    if t.numel() != B:
        raise InputError(f"got {t.numel()} timesteps for a batch of {B}")
    if bool((t < 0).any()) or bool((t >= T).any()):
        raise InputError(f"timesteps must lie in [0, {T}), got {t.unique().tolist()}")
    if noise is None:
        noise = torch.randn(z0.shape, generator=generator, dtype=z0.dtype).to(z0.device)
    z_t = prior.schedule.add_noise(z0, noise, t)
    out = prior.forward_model(z_t, t, repeat_condition(cond, B))
    target = diffusion_target(prior, z0, noise, t)
    if snr_gamma is None:
        return F.mse_loss(out, target)
    per_item = (out - target).pow(2).flatten(1).mean(1)
    return (min_snr_weight(prior, t, snr_gamma).to(per_item) * per_item).mean()


__all__ = ["diffusion_loss", "diffusion_target", "draw_timesteps", "drop_condition", "min_snr_weight"]
