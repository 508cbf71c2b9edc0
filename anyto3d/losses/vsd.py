"""Variational score distillation as 4D-fy uses it (4D-fy Eq. 4–5; ProlificDreamer without particles).

Two priors, one protocol:

* ``prior`` — the pretrained text-to-image model (SD 2.1 base in 4D-fy), CFG 7.5;
* ``lora_prior`` — any :class:`~anyto3d.priors.base.Prior` whose condition carries the render's
  camera T and whose ``unconditional`` drops it (the zero camera), CFG 1 by default. In 4D-fy it
  is SD 2.1 (v-prediction, converted to ε by ``predict_noise``) with LoRA adapters and a camera
  embedding (``anyto3d.priors.sd_vsd``); in the tests it is a second small pixel prior.

The noisy latents are built once, with the pretrained prior's codec and schedule (the two models
share the VAE and ᾱ in 4D-fy); both priors see the same z_t. The LoRA model is then fine-tuned on
the same renders, detached, by :func:`lora_finetune_loss`. ``vsd_loss + lora_loss`` can be summed
and stepped by one optimiser: the first has gradients only on the render, the second only on the
LoRA parameters.
"""

from __future__ import annotations

import torch

from anyto3d.errors import InputError
from anyto3d.losses.diffusion import diffusion_loss, drop_condition
from anyto3d.losses.sds import (
    Weighting,
    as_timesteps,
    batch_condition,
    check_timesteps,
    finish_gradient,
    gradient_as_loss,
    gradient_diagnostics,
    render_to_latents,
    resolve_noise,
    timestep_weight,
)
from anyto3d.priors.base import Condition, Prior


def _check_same_schedule(prior: Prior, lora_prior: Prior) -> None:
    a, b = prior.schedule.alphas_cumprod, lora_prior.schedule.alphas_cumprod
    if a.shape != b.shape or not torch.allclose(a.cpu(), b.cpu(), atol=1e-5):
        raise InputError("VSD needs the pretrained and LoRA priors to share one noise schedule (ᾱ_t)")


def variational_score_distillation(
    prior: Prior,
    lora_prior: Prior,
    images: torch.Tensor,
    cond: Condition,
    lora_cond: Condition,
    t,
    noise: torch.Tensor | None = None,
    *,
    guidance_scale: float = 7.5,
    lora_guidance_scale: float = 1.0,
    weighting: Weighting = "sds",
    grad_clip: float | None = None,
    generator: torch.Generator | None = None,
    return_diagnostics: bool = False,
):
    """Variational score distillation (4D-fy Eq. 4).

    ∇_θ L_IMG = E_{t,ε,T}[ w(t) (ε_φ(z_t; t, y) − ε'_φ(z_t; t, y, T)) ∂x/∂θ ].

    ``cond`` conditions the pretrained prior (CFG ``guidance_scale``, 7.5 as released);
    ``lora_cond`` the LoRA prior, including the camera T (CFG ``lora_guidance_scale`` against its
    unconditional, 1.0 as released, i.e. the conditional branch only). ``weighting`` w(t) is
    1−ᾱ_t by default. ``t`` shared by the batch; ``noise`` ε only enters z_t (it cancels from the
    gradient). With ``return_diagnostics=True`` the diagnostics include ``latents``, the detached
    z the LoRA step should train on.
    """
    _check_same_schedule(prior, lora_prior)
    z = render_to_latents(prior, images)
    B = z.shape[0]
    t = as_timesteps(t, B, z.device)
    check_timesteps(prior, t)
    noise = resolve_noise(noise, z, generator)
    with torch.no_grad():
        z_t = prior.schedule.add_noise(z.detach(), noise, t)
        eps_pretrained = prior.guided_noise(z_t, t, batch_condition(cond, B), guidance_scale)
        eps_lora = lora_prior.guided_noise(z_t, t, batch_condition(lora_cond, B), lora_guidance_scale)
    w = timestep_weight(prior, t, z, weighting)
    grad = finish_gradient(w * (eps_pretrained - eps_lora), grad_clip)
    loss = gradient_as_loss(z, grad)
    if return_diagnostics:
        return loss, gradient_diagnostics(grad, t, w, latents=z.detach())
    return loss


def lora_finetune_loss(
    lora_prior: Prior,
    latents: torch.Tensor,
    lora_cond: Condition,
    *,
    camera_dropout: float = 0.1,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The LoRA model's fine-tuning objective (4D-fy Eq. 5): min E_{t,ε,T} ‖ε'_φ(z_t; t, y, T) − ε‖².

    On the renders' latents (detached here), with t ~ U[0, T) and fresh noise per item (as
    released), the standard diffusion loss of :func:`anyto3d.losses.diffusion.diffusion_loss`
    (ε target, or v for a v-prediction LoRA model); each item's condition is replaced by
    ``lora_prior.unconditional`` (the zero camera) with probability ``camera_dropout`` (10 %).
    """
    latents = latents.detach()
    cond = drop_condition(lora_prior, batch_condition(lora_cond, latents.shape[0]), camera_dropout, generator)
    return diffusion_loss(lora_prior, latents, cond, t=t, noise=noise, generator=generator)


__all__ = ["lora_finetune_loss", "variational_score_distillation"]
