"""Score distillation sampling and its variants, written once against :class:`~anyto3d.priors.base.Prior`.

* :func:`score_distillation_sampling` — SDS (XBind Eq. 4; DreamFusion).
* :func:`augmented_sds` — SDS plus HiFA's image-space term (XBind Eq. 5).
* :func:`sds_3d` — SDS under the novel-view prior's condition (XBind Eq. 10).
* :func:`multiview_sds` — MVDream SDS on groups of views, optionally in x0-reconstruction
  form (4D-fy Eq. 3).

Conventions shared by every loss in :mod:`anyto3d.losses`:

* Renders enter as ``[B, H, W, 3]`` in [0, 1]; :func:`render_to_latents` converts them
  (``anyto3d.images.renderer_to_prior``, then ``prior.encode``, which resizes to the prior's
  resolution for latent priors; identity for pixel priors).
* ``t`` is an integer timestep: a scalar (or one-element tensor) is **one t shared by the whole
  batch** (the default everywhere here, as threestudio's unified guidance and MVDream); a ``[B]``
  tensor gives one t per item. Draw it with :func:`anyto3d.schedules.sample_timestep`.
* Classifier-free guidance is the standard ``ε_u + s·(ε_c − ε_u)`` (``prior.guided_noise``).
  threestudio's SDS guidance computes ``ε_c + s·(ε_c − ε_u)``: to reproduce its numbers pass
  ``s + 1`` (e.g. its 100 is our 101).
* A loss returns a scalar whose gradient with respect to the latents is exactly the method's
  gradient divided by the batch size: ``0.5·‖z − sg(z − g)‖²`` summed over all elements, / B
  (:func:`gradient_as_loss`); autograd carries it back to the render. Its *value* is
  ``0.5‖g‖²/B``, a diagnostic of the gradient's size, not an objective. With
  ``return_diagnostics=True`` a loss returns ``(loss, diagnostics)``.
"""

from __future__ import annotations

from typing import Literal

import torch

from anyto3d.errors import InputError
from anyto3d.images import renderer_to_prior
from anyto3d.priors.base import Condition, Prior, repeat_condition

Weighting = Literal["sds", "uniform", "fantasia3d"]
WEIGHTINGS = ("sds", "uniform", "fantasia3d")


# ---------------------------------------------------------------------------------------------
# Shared helpers (used by every distillation loss in this package)
# ---------------------------------------------------------------------------------------------


def check_renders(images: torch.Tensor, what: str = "images") -> None:
    """Renders must be ``[B, H, W, 3]`` floats (the renderer boundary)."""
    if not torch.is_tensor(images) or images.dim() != 4 or images.shape[-1] != 3:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise InputError(f"{what} must be renders [B, H, W, 3] in [0, 1], got {shape}")
    if not images.is_floating_point():
        raise InputError(f"{what} must be a float tensor, got {images.dtype}")


def render_to_latents(prior: Prior, images: torch.Tensor) -> torch.Tensor:
    """Renders ``[B,H,W,3]`` in [0,1] → the prior's latents ``z`` (differentiable)."""
    check_renders(images)
    return prior.encode(renderer_to_prior(images))


def as_timesteps(t, batch: int, device: torch.device) -> torch.Tensor:
    """An int / 0-d / [1] / [B] timestep → int64 ``[B]`` (a single value is shared by the batch)."""
    t = torch.as_tensor(t, device=device).reshape(-1)
    if t.is_floating_point():
        if not torch.equal(t, t.round()):
            raise InputError(f"timesteps are integers in [0, T), got {t.tolist()}")
    t = t.long()
    if t.numel() == 1:
        return t.expand(batch).clone()
    if t.numel() != batch:
        raise InputError(f"got {t.numel()} timesteps for a batch of {batch}")
    return t


def check_timesteps(prior: Prior, t: torch.Tensor) -> None:
    T = prior.schedule.num_timesteps
    if bool((t < 0).any()) or bool((t >= T).any()):
        raise InputError(f"timesteps must lie in [0, {T}), got {t.unique().tolist()}")


def batch_condition(cond: Condition, batch: int) -> Condition:
    """A batch-1 conditioning repeated to ``batch``; a batch-``batch`` one unchanged."""
    for key, value in cond.items():
        if value.shape[0] not in (1, batch):
            raise InputError(f"condition {key!r} has batch {value.shape[0]}, renders have batch {batch}")
    return repeat_condition(cond, batch)


def timestep_weight(prior: Prior, t: torch.Tensor, like: torch.Tensor, weighting: Weighting) -> torch.Tensor:
    """w(t) broadcast like ``like``: ``sds`` 1−ᾱ_t (DreamFusion), ``uniform`` 1, ``fantasia3d`` √ᾱ_t(1−ᾱ_t)."""
    if weighting not in WEIGHTINGS:
        raise InputError(f"weighting {weighting!r} is not one of {WEIGHTINGS}")
    a = prior.schedule.alpha_bar(t, like)
    if weighting == "sds":
        return 1 - a
    if weighting == "uniform":
        return torch.ones_like(a)
    return a.sqrt() * (1 - a)


def gradient_as_loss(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """A scalar whose gradient w.r.t. ``x`` is ``grad / B``: ``0.5·‖x − sg(x − grad)‖²`` summed, / B."""
    target = (x - grad).detach()
    return 0.5 * ((x - target) ** 2).sum() / x.shape[0]


def finish_gradient(grad: torch.Tensor, grad_clip: float | None) -> torch.Tensor:
    """NaN/Inf → finite (threestudio does the same), then the optional element-wise clamp."""
    grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
    if grad_clip is not None:
        if grad_clip <= 0:
            raise InputError(f"grad_clip must be positive or None, got {grad_clip}")
        grad = grad.clamp(-grad_clip, grad_clip)
    return grad


def rescale_x0_std(x0: torch.Tensor, x0_reference: torch.Tensor, strength: float, group: int = 1) -> torch.Tensor:
    """Pull the std of ``x0`` toward that of ``x0_reference`` (MVDream's ``recon_std_rescale``).

    Over each group of ``group`` consecutive items (MVDream: its 4 views together), factor =
    std(x0_reference)/std(x0); result = strength·factor·x0 + (1 − strength)·x0. Strength 0 is
    the identity. Counters the over-saturation of a large guidance scale.
    """
    if strength == 0:
        return x0
    B = x0.shape[0]
    if B % group:
        raise InputError(f"batch {B} is not a multiple of the view group {group}")
    grouped = x0.reshape(B // group, -1)
    ref = x0_reference.reshape(B // group, -1)
    factor = (ref.std(dim=1, keepdim=True) + 1e-8) / (grouped.std(dim=1, keepdim=True) + 1e-8)
    factor = factor.repeat_interleave(group, dim=0).view(B, *([1] * (x0.dim() - 1)))
    return strength * factor * x0 + (1 - strength) * x0


def resolve_noise(noise: torch.Tensor | None, z: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if noise is None:
        return torch.randn(z.shape, generator=generator, device="cpu" if generator is not None else z.device,
                           dtype=z.dtype).to(z.device)
    if noise.shape != z.shape:
        raise InputError(f"noise has shape {tuple(noise.shape)}, latents have {tuple(z.shape)}")
    return noise.to(device=z.device, dtype=z.dtype)


def gradient_diagnostics(grad: torch.Tensor, t: torch.Tensor, w: torch.Tensor, **extra) -> dict:
    out = {
        "t": t.detach().cpu(),
        "w": w.detach().reshape(w.shape[0], -1)[:, 0].cpu(),
        "grad_norm": grad.detach().reshape(grad.shape[0], -1).norm(dim=1).mean().item(),
    }
    out.update(extra)
    return out


# ---------------------------------------------------------------------------------------------
# SDS
# ---------------------------------------------------------------------------------------------


def sds_latent_gradient(
    prior: Prior,
    z: torch.Tensor,
    cond: Condition,
    t,
    noise: torch.Tensor | None = None,
    *,
    guidance_scale: float,
    weighting: Weighting = "sds",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict]:
    """The SDS gradient w(t)(ε̂(z_t; c, t) − ε) on latents of any layout [B, ...] (no clipping).

    Shared by :func:`score_distillation_sampling`, :func:`multiview_sds` and
    :func:`anyto3d.losses.video_sds.video_sds`. Returns the gradient and a dict with ``t``,
    ``noise``, ``z_t`` and the guided ``eps``.
    """
    B = z.shape[0]
    t = as_timesteps(t, B, z.device)
    check_timesteps(prior, t)
    noise = resolve_noise(noise, z, generator)
    cond = batch_condition(cond, B)
    with torch.no_grad():
        z_t = prior.schedule.add_noise(z.detach(), noise, t)
        eps = prior.guided_noise(z_t, t, cond, guidance_scale)
    w = timestep_weight(prior, t, z, weighting)
    return w * (eps - noise), {"t": t, "noise": noise, "z_t": z_t, "eps": eps, "w": w}


def score_distillation_sampling(
    prior: Prior,
    images: torch.Tensor,
    cond: Condition,
    t,
    noise: torch.Tensor | None = None,
    *,
    guidance_scale: float = 100.0,
    weighting: Weighting = "sds",
    grad_clip: float | None = None,
    generator: torch.Generator | None = None,
    return_diagnostics: bool = False,
):
    """Score distillation sampling (XBind Eq. 4; DreamFusion).

    ∇_θ L_SDS = E_{t,ε}[ w(t) (ε̂_φ(z_t; C_m, t) − ε) ∂z/∂θ ],  z_t = √ᾱ_t z + √(1−ᾱ_t) ε.

    ``images`` are renders [B,H,W,3] in [0,1]; ``cond`` a batch-1 or batch-B conditioning;
    ``t`` one shared timestep (or [B]); ``noise`` ε (drawn from ``generator`` when None);
    ``weighting`` w(t): ``sds`` 1−ᾱ (default), ``uniform``, ``fantasia3d`` √ᾱ(1−ᾱ);
    ``grad_clip`` clamps the weighted gradient element-wise. Default CFG 100 (DreamFusion; the
    tiny world's pixel prior does best near 7.5). The gradient of the returned scalar w.r.t.
    the latents is the SDS gradient / B.
    """
    z = render_to_latents(prior, images)
    grad, info = sds_latent_gradient(
        prior, z, cond, t, noise, guidance_scale=guidance_scale, weighting=weighting, generator=generator
    )
    grad = finish_gradient(grad, grad_clip)
    loss = gradient_as_loss(z, grad)
    if return_diagnostics:
        return loss, gradient_diagnostics(grad, info["t"], info["w"])
    return loss


def sds_3d(
    prior: Prior,
    images: torch.Tensor,
    t,
    noise: torch.Tensor | None = None,
    *,
    guidance_scale: float = 5.0,
    weighting: Weighting = "sds",
    grad_clip: float | None = None,
    generator: torch.Generator | None = None,
    return_diagnostics: bool = False,
    **condition_inputs,
):
    """3D SDS (XBind Eq. 10): SDS under the novel-view prior's condition c(x_r, R, T).

    ∇_θ L_3D-SDS = E_{t,ε}[ λ(t) (ε̂_φ(z_t; c(x_r, R, T), t) − ε) ∂z/∂θ ].

    The only step added to :func:`score_distillation_sampling` is building the condition:
    ``condition_inputs`` (the reference view and the relative cameras of the renders, under the
    keyword names the novel-view prior's ``build_condition`` takes) go to
    ``prior.build_condition``. Default CFG scale 5, as Zero-1-to-3 in Magic123 (standard form).
    """
    cond = prior.build_condition(**condition_inputs)
    return score_distillation_sampling(
        prior, images, cond, t, noise, guidance_scale=guidance_scale, weighting=weighting,
        grad_clip=grad_clip, generator=generator, return_diagnostics=return_diagnostics,
    )


# ---------------------------------------------------------------------------------------------
# Augmented SDS (HiFA)
# ---------------------------------------------------------------------------------------------


def denoise_to_x0(
    prior: Prior,
    z_t: torch.Tensor,
    t: torch.Tensor,
    cond: Condition,
    *,
    guidance_scale: float,
    steps: int = 1,
    eta: float = 0.0,
    first_eps: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """ẑ_0 from z_t by ``steps`` DDIM steps on the even grid t = t_0 > t_1 > ... > t_steps = clean.

    ``steps=1`` is the one-step estimate (z_t − √(1−ᾱ) ε̂)/√ᾱ. ``eta`` is DDIM's stochasticity
    (0 deterministic; HiFA's official code uses 1.0 with 4 steps). ``first_eps`` reuses an ε̂ at
    t_0 that the caller already has. Runs without gradients; ``t`` is [B] with one shared value
    per call in practice (the grid is built per item).
    """
    if steps < 1:
        raise InputError(f"denoising steps must be >= 1, got {steps}")
    schedule = prior.schedule
    with torch.no_grad():
        z = z_t
        for k in range(steps):
            t_k = torch.div(t * (steps - k), steps, rounding_mode="floor")
            eps = first_eps if (k == 0 and first_eps is not None) else prior.guided_noise(z, t_k, cond, guidance_scale)
            x0 = schedule.predict_x0(z, eps, t_k)
            if k + 1 < steps:  # DDIM update to the next grid point
                t_next = torch.div(t * (steps - k - 1), steps, rounding_mode="floor")
                a, a_next = schedule.alpha_bar(t_k, z), schedule.alpha_bar(t_next, z)
                sigma = eta * ((1 - a_next) / (1 - a) * (1 - a / a_next)).clamp_min(0).sqrt()
                z = a_next.sqrt() * x0 + (1 - a_next - sigma**2).clamp_min(0).sqrt() * eps
                if eta > 0:
                    z = z + sigma * resolve_noise(None, z, generator)
    return x0


def augmented_sds(
    prior: Prior,
    images: torch.Tensor,
    cond: Condition,
    t,
    noise: torch.Tensor | None = None,
    *,
    guidance_scale: float = 100.0,
    weighting: Weighting = "sds",
    image_weight: float = 0.01,
    image_scale: Literal["snr", "none"] = "snr",
    denoise_steps: int = 1,
    latent_form: Literal["eps", "x0"] = "eps",
    eta: float = 0.0,
    grad_clip: float | None = None,
    generator: torch.Generator | None = None,
    return_diagnostics: bool = False,
):
    """Augmented SDS, the SDS* of XBind Eq. 5 (from HiFA).

    ∇_θ L_SDS* = E_{t,ε}{ λ(t) [ (z − ẑ) ∂z/∂θ + ω_img (x − x̂) ∂x/∂θ ] },  x̂ = decode(ẑ).

    * Latent term: ``latent_form="eps"`` is w(t)(ε̂ − ε) (Eq. 4's first form; threestudio);
      ``"x0"`` is w(t)(z − ẑ) with ẑ from ``denoise_steps`` (HiFA's official form).
      The two agree up to the factor √((1−ᾱ)/ᾱ) when ẑ is the one-step estimate.
    * Image term: w(t)·ω_img·(x − x̂)·s with x the render in the prior's image layout at the
      decoder's resolution, x̂ = decode(ẑ) and ``image_scale`` s = √ᾱ/√(1−ᾱ) (``"snr"``,
      threestudio's ``use_img_loss``, which puts the term in ε units) or 1 (``"none"``, HiFA).
      ẑ comes from one step (``denoise_steps=1``) or a short DDIM run (HiFA: 4 steps, η 1).
    * ``image_weight=0`` skips the decode altogether (threestudio decodes every step anyway).

    Defaults follow threestudio's ``hifa.yaml`` ratio (ω_img 0.01 against 1 with ``snr``);
    HiFA's own code uses ``latent_form="x0"``, ``image_scale="none"``, ω_img 0.1, 4 steps.
    Eq. 8's ω* and the z-variance term L_nz are weights in the loss configuration
    (:mod:`anyto3d.losses.hybrid`); L_nz is :mod:`anyto3d.losses.regularizers`.
    """
    if image_scale not in ("snr", "none"):
        raise InputError(f"image_scale must be 'snr' or 'none', got {image_scale!r}")
    if latent_form not in ("eps", "x0"):
        raise InputError(f"latent_form must be 'eps' or 'x0', got {latent_form!r}")
    check_renders(images)
    x = renderer_to_prior(images)
    z = prior.encode(x)
    grad_z, info = sds_latent_gradient(
        prior, z, cond, t, noise, guidance_scale=guidance_scale, weighting=weighting, generator=generator
    )
    t_b, w = info["t"], info["w"]
    need_x0 = image_weight != 0 or latent_form == "x0"
    z0_hat = None
    if need_x0:
        z0_hat = denoise_to_x0(
            prior, info["z_t"], t_b, batch_condition(cond, z.shape[0]), guidance_scale=guidance_scale,
            steps=denoise_steps, eta=eta, first_eps=info["eps"], generator=generator,
        )
    if latent_form == "x0":
        grad_z = w * (z.detach() - z0_hat)
    grad_z = finish_gradient(grad_z, grad_clip)
    loss = gradient_as_loss(z, grad_z)
    diagnostics = gradient_diagnostics(grad_z, t_b, w)
    if image_weight != 0:
        with torch.no_grad():
            x_hat = prior.decode(z0_hat)
        x_res = x if x.shape[-2:] == x_hat.shape[-2:] else torch.nn.functional.interpolate(
            x, size=x_hat.shape[-2:], mode="bilinear", align_corners=False
        )
        w_img = timestep_weight(prior, t_b, x_res, weighting)
        grad_x = w_img * image_weight * (x_res.detach() - x_hat)
        if image_scale == "snr":
            a = prior.schedule.alpha_bar(t_b, x_res)
            grad_x = grad_x * a.sqrt() / (1 - a).sqrt()
        grad_x = finish_gradient(grad_x, grad_clip)
        image_loss = gradient_as_loss(x_res, grad_x)
        loss = loss + image_loss
        diagnostics["image_grad_norm"] = grad_x.detach().reshape(grad_x.shape[0], -1).norm(dim=1).mean().item()
    if return_diagnostics:
        return loss, diagnostics
    return loss


# ---------------------------------------------------------------------------------------------
# MVDream SDS
# ---------------------------------------------------------------------------------------------


def multiview_sds(
    prior: Prior,
    images: torch.Tensor,
    cond: Condition,
    t,
    noise: torch.Tensor | None = None,
    *,
    n_views: int = 4,
    guidance_scale: float = 50.0,
    weighting: Weighting = "sds",
    reconstruction: bool = True,
    recon_std_rescale: float = 0.5,
    grad_clip: float | None = None,
    generator: torch.Generator | None = None,
    return_diagnostics: bool = False,
):
    """3D-aware (MVDream) SDS on groups of ``n_views`` renders (4D-fy Eq. 3).

    ∇_θ L_3D = E_{t,ε,T}[ w(t) (ε_φ(z_t; t, y, T) − ε) ∂x/∂θ ], one t shared by all views.

    ``images`` is [B·n_views, H, W, 3], consecutive ``n_views`` renders forming one group (the
    prior denoises a group jointly; ``cond`` carries the per-view cameras). With
    ``reconstruction=False`` this is plain SDS on the batch. With ``reconstruction=True``
    (MVDream's x0-reconstruction form, 4D-fy's released config) the loss is
    ``0.5‖z − sg(x̂0)‖²/B`` where x̂0 is the CFG one-step x0 with its std, over each view group,
    pulled toward that of the non-CFG x0 by ``recon_std_rescale`` (0.5 in MVDream); without the
    rescale its gradient is √((1−ᾱ)/ᾱ)(ε̂ − ε), i.e. SDS with that weight. ``weighting`` and
    ``grad_clip`` apply to the SDS form only (the x0 form has neither, as released).
    """
    check_renders(images)
    if images.shape[0] % n_views:
        raise InputError(f"multi-view SDS needs a multiple of {n_views} renders, got {images.shape[0]}")
    if not reconstruction:
        return score_distillation_sampling(
            prior, images, cond, t, noise, guidance_scale=guidance_scale, weighting=weighting,
            grad_clip=grad_clip, generator=generator, return_diagnostics=return_diagnostics,
        )
    z = render_to_latents(prior, images)
    B = z.shape[0]
    t_b = as_timesteps(t, B, z.device)
    if t_b.unique().numel() != 1:
        raise InputError("multi-view SDS shares one t across all views; got several")
    check_timesteps(prior, t_b)
    noise = resolve_noise(noise, z, generator)
    cond = batch_condition(cond, B)
    with torch.no_grad():
        z_t = prior.schedule.add_noise(z.detach(), noise, t_b)
        eps, eps_c = prior.guided_noise(z_t, t_b, cond, guidance_scale, return_conditional=True)
        x0 = prior.schedule.predict_x0(z_t, eps, t_b)
        if recon_std_rescale:
            x0 = rescale_x0_std(x0, prior.schedule.predict_x0(z_t, eps_c, t_b), recon_std_rescale, group=n_views)
    grad = torch.nan_to_num(z.detach() - x0)
    loss = gradient_as_loss(z, grad)
    if return_diagnostics:
        return loss, gradient_diagnostics(grad, t_b, torch.ones(B, device=z.device))
    return loss


__all__ = [
    "WEIGHTINGS",
    "Weighting",
    "augmented_sds",
    "denoise_to_x0",
    "gradient_as_loss",
    "multiview_sds",
    "render_to_latents",
    "rescale_x0_std",
    "score_distillation_sampling",
    "sds_3d",
    "sds_latent_gradient",
    "timestep_weight",
]
