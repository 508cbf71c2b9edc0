"""Consistency distillation sampling (CDS; XBind Eq. 3, from Consistent3D), as released.

The pieces:

* :class:`FixedNoise` — the fixed Gaussian ε* drawn once per optimisation (the caller keeps
  the holder for the phase; it is re-created identically from its seed on resume).
* :class:`CDSTimestepConfig` + :func:`sample_cds_timesteps` — t2 annealed by a square-root
  schedule, t1 = t2 + a random gap; presets for the released coarse / refine / texture stages.
* :func:`consistency_distillation` — the loss.

Released-code facts (``research/papers_code.md`` §3): VE form σ_t = √((1−ᾱ_t)/ᾱ_t); the UNet
sees z/√(1+σ²) = √ᾱ z_p + √(1−ᾱ) ε*; one Euler (DDIM) step from t1 to t2; the weight w is
``uniform`` (coarse) or 1−ᾱ (refine, texture) evaluated at t1; with the x0 std rescale off the
gradient on the latents is w·(ε̂(t1) − ε̂(t2)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from anyto3d.errors import InputError
from anyto3d.losses.sds import (
    Weighting,
    as_timesteps,
    batch_condition,
    check_timesteps,
    finish_gradient,
    gradient_as_loss,
    gradient_diagnostics,
    render_to_latents,
    rescale_x0_std,
    timestep_weight,
)
from anyto3d.priors.base import Condition, Prior
from anyto3d.schedules import SqrtAnneal


class FixedNoise:
    """The fixed noise ε* of CDS, drawn once (from ``seed``) at the first call's latent shape.

    ``shared=True`` (Consistent3D's ``share_noise``) uses one ε* of shape [1, ...] for every
    batch item and every step; ``shared=False`` draws one per batch item, so the batch size
    must then stay fixed. Calling with latents of another shape is an error, not a silent redraw.
    """

    def __init__(self, seed: int = 0, shared: bool = True):
        self.seed = int(seed)
        self.shared = shared
        self.noise: torch.Tensor | None = None

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        shape = (1, *like.shape[1:]) if self.shared else tuple(like.shape)
        if self.noise is None:
            generator = torch.Generator().manual_seed(self.seed)
            self.noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        if tuple(self.noise.shape) != shape:
            raise InputError(
                f"the fixed CDS noise was drawn for latents {tuple(self.noise.shape)}, now called with "
                f"{tuple(like.shape)}; use one FixedNoise per latent shape"
            )
        return self.noise.to(device=like.device, dtype=like.dtype).expand(like.shape)


@dataclass
class CDSTimestepConfig:
    """t2 = sqrt-anneal(t2_start → t2_end over ``anneal_steps``); t1 = t2 + U[gap_min, gap_min + gap_span).

    All values are fractions of T (×1000 gives Consistent3D's integers). Bounds as released: t2
    is clamped to [min_fraction, max_fraction − gap_min], t1 to [min_fraction, max_fraction].
    ``anneal_steps`` should be the phase length. Defaults: the released coarse stage.
    """

    t2_start: float = 0.7
    t2_end: float = 0.1
    anneal_steps: int = 3000
    gap_min: float = 0.1
    gap_span: float = 0.2
    min_fraction: float = 0.1
    max_fraction: float = 0.98
    weighting: Weighting = "uniform"

    def __post_init__(self):
        if not 0 <= self.min_fraction < self.max_fraction <= 1:
            raise InputError(f"need 0 <= min_fraction < max_fraction <= 1, got {self.min_fraction}, {self.max_fraction}")
        if self.gap_min <= 0 or self.gap_span <= 0:
            raise InputError("CDS needs t1 > t2: gap_min and gap_span must be positive")
        if self.max_fraction - self.gap_min < self.min_fraction:
            raise InputError("the t range is narrower than the minimum gap between t1 and t2")


#: Released Consistent3D stages (``research/papers_code.md`` §3.3).
CDS_COARSE = CDSTimestepConfig(0.7, 0.1, 3000, 0.1, 0.2, 0.1, 0.98, "uniform")
CDS_REFINE = CDSTimestepConfig(0.3, 0.02, 3000, 0.1, 0.1, 0.02, 0.5, "sds")
CDS_TEXTURE = CDSTimestepConfig(0.5, 0.02, 5000, 0.1, 0.1, 0.02, 0.98, "sds")


def sample_cds_timesteps(
    cfg: CDSTimestepConfig, step: int, num_timesteps: int, generator: torch.Generator | None = None
) -> tuple[int, int]:
    """(t1, t2) integers in [0, T) with t1 > t2, shared by the batch (see :class:`CDSTimestepConfig`)."""
    T = num_timesteps
    lo, hi = int(T * cfg.min_fraction), min(int(T * cfg.max_fraction), T - 1)
    gap, span = max(1, int(T * cfg.gap_min)), max(1, int(T * cfg.gap_span))
    t2 = int(T * SqrtAnneal(cfg.t2_start, cfg.t2_end, cfg.anneal_steps)(step))
    t2 = min(max(t2, lo), hi - gap)
    t1 = t2 + gap + int(torch.randint(0, span, (1,), generator=generator))
    t1 = min(max(t1, lo), hi)
    if t1 <= t2:
        raise InputError(f"CDS timesteps collapsed (t1={t1}, t2={t2}); widen the t range")
    return t1, t2


def consistency_distillation(
    prior: Prior,
    images: torch.Tensor,
    cond: Condition,
    t1,
    t2,
    noise: torch.Tensor | FixedNoise,
    *,
    guidance_scale: float = 51.0,
    weighting: Weighting = "uniform",
    weight_at: str = "t1",
    x0_std_rescale: float = 0.0,
    grad_clip: float | None = None,
    return_diagnostics: bool = False,
):
    """Consistency distillation sampling (XBind Eq. 3; Consistent3D).

    E_p[ λ(t2) ‖D_φ(z_{t1}, t1, C_m) − sg(D_φ(ẑ_{t2}, t2, C_m))‖² ],
    z_{t1} = z_p + σ_{t1} ε*,  ẑ_{t2} = z_{t1} + (σ_{t2} − σ_{t1})/σ_{t1} · (z_{t1} − D_φ(z_{t1}, t1, C_m)).

    In the VE form (σ_t = √((1−ᾱ_t)/ᾱ_t), D(z, t) = z − σ_t ε̂, prior input z/√(1+σ_t²)):
    ε̂1 = ε̂(z_{t1}, t1) with CFG; ẑ_{t2} = z_{t1} + (σ_{t2} − σ_{t1}) ε̂1 (one Euler/DDIM step);
    ε̂2 = ε̂(ẑ_{t2}, t2) with CFG. The gradient on the latents (before the / B of the loss) is,
    as released,

        w · [ (ε̃1 − ε̂2) − (σ_{t1}/σ_{t2})(ε̃1 − ε̂1) ]

    where ε̃1 is ε̂1 after the x0 std rescale (``x0_std_rescale``: the one-step x0 of the CFG ε̂1
    has its std pulled toward that of the non-CFG x0; 0, as in every released config, gives
    ε̃1 = ε̂1). **With the rescale off this is exactly w·(ε̂(t1) − ε̂(t2))**, w = w(t) of
    ``weighting`` (``uniform`` 1; ``sds`` 1−ᾱ; ``fantasia3d``) at t1 (``weight_at="t1"``,
    the released code) or at t2 (``"t2"``, the paper's λ(t2)); ``grad_clip`` clamps it.

    Sign: Eq. 3 read literally (differentiating through D(z_{t1}) with the network Jacobian
    dropped, as SDS does) gives 2λσ_{t2}(ε̂2 − ε̂1), the *opposite* sign. We follow the released
    code: for Gaussian data N(μ, s²) its gradient is w·s²(σ1 − σ2)(z_{t1} − μ)/((s²+σ1²)(s²+σ2²)),
    which pulls z toward the data, and it is Consistent3D's consistency analogue of SDS's ε̂ − ε.

    ``noise`` is ε* — a tensor (batch 1 or B) or a :class:`FixedNoise` holder, which the caller
    keeps for the whole optimisation. ``t1 > t2`` are integers (shared by the batch); draw them
    with :func:`sample_cds_timesteps`. Default CFG 51 in the standard form = the released
    texture stage's 50 in threestudio's form (its coarse stage anneals 100 → 50, i.e. 101 → 51).
    """
    if weight_at not in ("t1", "t2"):
        raise InputError(f"weight_at must be 't1' or 't2', got {weight_at!r}")
    z = render_to_latents(prior, images)
    B = z.shape[0]
    t1 = as_timesteps(t1, B, z.device)
    t2 = as_timesteps(t2, B, z.device)
    check_timesteps(prior, t1)
    check_timesteps(prior, t2)
    if not bool((t1 > t2).all()):
        raise InputError(f"CDS needs t1 > t2, got t1={t1.tolist()} t2={t2.tolist()}")
    eps_star = noise(z) if isinstance(noise, FixedNoise) else noise.to(z).expand_as(z)
    cond = batch_condition(cond, B)
    schedule = prior.schedule
    with torch.no_grad():
        s1, s2 = schedule.sigma_ve(t1, z), schedule.sigma_ve(t2, z)
        z_t1 = z.detach() + s1 * eps_star  # VE
        vp_t1 = z_t1 / (1 + s1**2).sqrt()
        eps1, eps1_cond = prior.guided_noise(vp_t1, t1, cond, guidance_scale, return_conditional=True)
        eps1_tilde = eps1
        if x0_std_rescale:
            a1 = schedule.alpha_bar(t1, z)
            x0 = rescale_x0_std(
                schedule.predict_x0(vp_t1, eps1, t1), schedule.predict_x0(vp_t1, eps1_cond, t1), x0_std_rescale
            )
            eps1_tilde = (vp_t1 - a1.sqrt() * x0) / (1 - a1).sqrt()
        z_t2 = z_t1 + (s2 - s1) * eps1_tilde  # one Euler step of the probability-flow ODE (VE)
        eps2 = prior.guided_noise(z_t2 / (1 + s2**2).sqrt(), t2, cond, guidance_scale)
    w = timestep_weight(prior, t1 if weight_at == "t1" else t2, z, weighting)
    grad = w * ((eps1_tilde - eps2) - (s1 / s2) * (eps1_tilde - eps1))
    grad = finish_gradient(grad, grad_clip)
    loss = gradient_as_loss(z, grad)
    if return_diagnostics:
        return loss, gradient_diagnostics(grad, t1, w, t2=t2.detach().cpu())
    return loss


__all__ = [
    "CDS_COARSE",
    "CDS_REFINE",
    "CDS_TEXTURE",
    "CDSTimestepConfig",
    "FixedNoise",
    "consistency_distillation",
    "sample_cds_timesteps",
]
