"""The one phase loop every method uses (DESIGN §2): representation + renderer + weighted losses.

:func:`run_phase` runs one :class:`~anyto3d.methods.PhaseConfig` on an :class:`OptimState`:
each step it samples cameras (and lights), renders the representation (volume rendering for a
NeRF; rasterised DMTet mesh — normal maps in XBind Phase II, RGB in Phase III), evaluates the
phase's enabled loss terms through :data:`TERMS` (one registry of thin adapters from the step's
context to the functions in :mod:`anyto3d.losses`; no loss mathematics here), weights them with
:class:`~anyto3d.losses.hybrid.LossTerms`, and takes an optimiser step.

Determinism and resumption: every random draw of the loop (cameras, lights, timesteps, noise,
ray jitter, MS augmentations, alternation) comes from the one ``generator``. A checkpoint is a
dict of tensors and primitives only (model and optimiser state dicts, the generator's state,
the step); :func:`load_checkpoint` restores it, and ``run_phase(..., start_step=ckpt["step"])``
then continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace
from dataclasses import field as dc_field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anyto3d.cameras import (
    CameraBatch,
    LightSamplerConfig,
    headlight,
    relative_camera,
    sample_cameras,
    sample_lights,
    sample_multiview_cameras,
    sample_video_cameras,
)
from anyto3d.errors import InputError, NonFiniteError
from anyto3d.fields.dmtet import DMTetConfig, DMTetGeometry
from anyto3d.fields.texture import CPU_TEXTURE_FIELD, TextureField, TextureFieldConfig
from anyto3d.images import renderer_to_prior
from anyto3d.losses.cds import (
    CDSTimestepConfig,
    FixedNoise,
    consistency_distillation,
    sample_cds_timesteps,
)
from anyto3d.losses.hybrid import LossResult, LossTerms
from anyto3d.losses.modality_similarity import (
    ModalitySimilarityConfig,
    modality_similarity,
)
from anyto3d.losses.reference import reference_view_loss
from anyto3d.losses.regularizers import (
    laplacian_smoothness,
    mesh_normal_consistency,
    normal_smoothness_2d,
    opacity_entropy_loss,
    orientation_loss,
    sparsity_loss,
    z_variance_loss,
)
from anyto3d.losses.sds import (
    augmented_sds,
    multiview_sds,
    score_distillation_sampling,
    sds_3d,
)
from anyto3d.losses.video_sds import video_sds
from anyto3d.losses.vsd import lora_finetune_loss, variational_score_distillation
from anyto3d.methods import LOSS_TERMS, LossTermConfig, PhaseConfig
from anyto3d.priors.base import Condition, Prior
from anyto3d.reference_view import ReferenceView
from anyto3d.render.background import SolidBackground
from anyto3d.render.mesh_renderer import MeshRenderer, MeshRendererConfig
from anyto3d.render.output import RenderOutput
from anyto3d.render.volume import (
    CPU_VOLUME_RENDERER,
    VolumeRenderer,
    VolumeRendererConfig,
)
from anyto3d.schedules import TimestepRange, sample_timestep

#: The t-range a distillation term uses when its config gives none (DreamFusion's [0.02, 0.98]).
DEFAULT_T_RANGE = TimestepRange.parse([0.02, 0.98])


# ---------------------------------------------------------------------------------------------
# State and supervision
# ---------------------------------------------------------------------------------------------


@dataclass
class Supervision:
    """Everything the loss terms read that is not the representation.

    ``prior2d`` (unCLIP / SD / the tiny 2D prior) with its condition ``prior2d_condition`` built
    from C_m by the caller (each prior has its own builder); ``novel_view`` (Zero-1-to-3 / tiny)
    conditioned on ``reference`` and the relative camera (``novel_view_inputs`` are extra
    ``build_condition`` inputs); ``binder`` the aligned encoder (``embed_image``) or a callable
    images → embeddings for the MS loss, with ``embedding`` C_m; ``cds_noise`` the fixed ε* of
    CDS; for 4D-fy ``multiview`` (MVDream or tiny, prompt inputs ``multiview_inputs``), ``lora`` (VSD) and ``video``
    (Zeroscope, ``video_condition``).
    """

    prior2d: Prior | None = None
    prior2d_condition: Condition | None = None
    novel_view: Prior | None = None
    novel_view_inputs: dict[str, Any] = dc_field(default_factory=dict)
    reference: ReferenceView | None = None
    binder: Any = None
    embedding: torch.Tensor | None = None
    cds_noise: FixedNoise = dc_field(default_factory=lambda: FixedNoise(seed=0))
    multiview: Prior | None = None
    lora: Prior | None = None
    video: Prior | None = None
    video_condition: Condition | None = None
    multiview_inputs: dict[str, Any] | None = None  # {"text": …} (MVDream) or {"embedding": C_m} (tiny)
    prompt_text: list[str] | None = None

    def require(self, name: str, term: str):
        value = getattr(self, name)
        if value is None:
            raise InputError(f"loss term {term!r} needs Supervision.{name}, which is not set")
        return value


@dataclass
class OptimState:
    """The representation being optimised, across phases.

    ``field`` (NeRF or 4D NeRF) in volume phases; ``geometry`` (DMTet) and ``texture`` after
    :func:`nerf_to_dmtet`; ``background`` composited behind both. ``optimizer_state`` is a
    ``(phase name, state dict)`` pair set by :func:`load_checkpoint` for the next
    :func:`run_phase` of that phase.
    """

    field: nn.Module | None = None
    geometry: DMTetGeometry | None = None
    texture: TextureField | None = None
    background: nn.Module = dc_field(default_factory=SolidBackground)
    volume: VolumeRendererConfig = CPU_VOLUME_RENDERER
    optimizer_state: tuple[str, dict] | None = None

    def modules(self) -> dict[str, nn.Module]:
        named = {"field": self.field, "geometry": self.geometry, "texture": self.texture, "background": self.background}
        return {k: m for k, m in named.items() if m is not None}

    @property
    def device(self) -> torch.device:
        """Where the representation lives (its first parameter or buffer; the CPU if it has none)."""
        for module in self.modules().values():
            for tensor in itertools.chain(module.parameters(), module.buffers()):
                return tensor.device
        return torch.device("cpu")

    def to(self, device: str | torch.device) -> "OptimState":
        """Move every module (the background too) to ``device``, in place."""
        for module in self.modules().values():
            module.to(device)
        return self

    def state_dict(self) -> dict[str, dict]:
        return {k: m.state_dict() for k, m in self.modules().items()}

    def load_state_dict(self, states: dict[str, dict]) -> None:
        modules = self.modules()
        missing = sorted(set(states) - set(modules))
        if missing:
            raise InputError(f"checkpoint has state for {missing}, which this OptimState lacks (build them first)")
        for key, sd in states.items():
            modules[key].load_state_dict(sd)


@dataclass
class PhaseResult:
    name: str
    steps: int  # steps run in this call
    last: dict[str, float]  # the final step's log_dict
    history: list[float]  # total loss per step run


# ---------------------------------------------------------------------------------------------
# The step's context: renders computed once, on first use
# ---------------------------------------------------------------------------------------------


def _mesh_background(background: nn.Module):
    """The mesh renderer takes a function of [B, H, W, 3] directions; our backgrounds take [N, 3]."""
    return lambda dirs: background(dirs.reshape(-1, 3)).reshape(dirs.shape)


class StepContext:
    """What a loss-term adapter sees at one step: the phase, state, supervision, cameras, renders."""

    def __init__(self, phase: PhaseConfig, state: OptimState, supervision: Supervision, step: int,
                 cameras: CameraBatch, lights, resolution: int, generator: torch.Generator, aux: dict):
        self.phase, self.state, self.supervision, self.step = phase, state, supervision, step
        self.cameras, self.lights, self.resolution, self.generator, self.aux = cameras, lights, resolution, generator, aux
        self._main: RenderOutput | None = None
        self._reference: RenderOutput | None = None

    @property
    def needs_normals(self) -> bool:
        terms = set(self.phase.enabled_terms())
        return self.phase.render == "normal" or self.phase.shading == "lambertian" or bool(
            terms & {"orientation", "normal_smoothness_2d"})

    def render(self, cameras: CameraBatch, lights=None) -> RenderOutput:
        return render_state(self.state, self.phase, cameras, self.resolution, self.resolution, lights=lights,
                            with_normal=self.needs_normals, generator=self.generator)

    @property
    def main(self) -> RenderOutput:
        if self._main is None:
            self._main = self.render(self.cameras, self.lights)
        return self._main

    @property
    def images(self) -> torch.Tensor:
        """What the priors see: RGB, or the normal map in [0, 1] (XBind Phase II)."""
        out = self.main
        if self.phase.render == "normal" and self.phase.representation in ("nerf", "dynamic_nerf"):
            return out.normal_image()
        return out.rgb  # the mesh renderer's "normal" shading already gives the normal colours

    @property
    def reference_render(self) -> RenderOutput:
        if self._reference is None:
            ref = self.supervision.require("reference", "reference")
            cam = ref.camera
            if self.phase.representation == "dynamic_nerf" and cam.times is None:
                cam = replace(cam, times=torch.zeros(len(cam)))
            lights = headlight(cam) if self.phase.shading == "lambertian" else None
            self._reference = self.render(cam, lights)
        return self._reference

    def timestep(self, term: LossTermConfig, prior: Prior) -> torch.Tensor:
        return sample_timestep(term.t_range or DEFAULT_T_RANGE, self.step, prior.schedule.num_timesteps,
                               generator=self.generator)


def render_state(state: OptimState, phase: PhaseConfig, cameras: CameraBatch, height: int, width: int, *,
                 lights=None, with_normal: bool = False, generator: torch.Generator | None = None,
                 stratified: bool | None = None) -> RenderOutput:
    """Render the phase's representation: volume for (4D) NeRF, rasterised mesh for DMTet, on the
    state's device (cameras and lights are sampled on the CPU, from the step's CPU generator)."""
    rep = phase.representation
    cameras = cameras.to(state.device)
    lights = None if lights is None else lights.to(state.device)
    if rep in ("nerf", "dynamic_nerf"):
        if state.field is None:
            raise InputError(f"phase {phase.name!r} renders a NeRF but OptimState.field is None")
        renderer = VolumeRenderer(replace(state.volume, shading=phase.shading))
        return renderer.render(state.field, cameras, height, width, state.background, lights=lights,
                               with_normal=with_normal, generator=generator, stratified=stratified)
    if state.geometry is None:
        raise InputError(f"phase {phase.name!r} renders DMTet but OptimState.geometry is None (run nerf_to_dmtet)")
    shading = "normal" if phase.render == "normal" else phase.shading
    color_fn = state.texture if (state.texture is not None and shading != "normal") else None
    renderer = MeshRenderer(MeshRendererConfig(shading=shading))
    return renderer.render(state.geometry.mesh(), cameras, height, width, color_fn=color_fn,
                           background=_mesh_background(state.background), lights=lights)


# ---------------------------------------------------------------------------------------------
# Loss-term adapters: (context, term config) -> scalar. The registry is TERMS.
# ---------------------------------------------------------------------------------------------


def _distill_kwargs(term: LossTermConfig, *extra: str) -> dict:
    keys = ("guidance_scale", "weighting", "grad_clip") + extra
    return {k: term.options[k] for k in keys if k in term.options}


def _term_sds(ctx: StepContext, term: LossTermConfig):
    prior = ctx.supervision.require("prior2d", term.name)
    cond = ctx.supervision.require("prior2d_condition", term.name)
    return score_distillation_sampling(prior, ctx.images, cond, ctx.timestep(term, prior), generator=ctx.generator,
                                       **_distill_kwargs(term))


def _term_augmented_sds(ctx: StepContext, term: LossTermConfig):
    prior = ctx.supervision.require("prior2d", term.name)
    cond = ctx.supervision.require("prior2d_condition", term.name)
    kwargs = _distill_kwargs(term, "image_weight", "image_scale", "denoise_steps", "latent_form", "eta")
    return augmented_sds(prior, ctx.images, cond, ctx.timestep(term, prior), generator=ctx.generator, **kwargs)


def _term_cds(ctx: StepContext, term: LossTermConfig):
    prior = ctx.supervision.require("prior2d", term.name)
    return _cds(ctx, term, prior, ctx.supervision.require("prior2d_condition", term.name))


def _cds(ctx: StepContext, term: LossTermConfig, prior: Prior, cond: Condition):
    timing = {k: term.options[k] for k in term.options if k in CDSTimestepConfig.__dataclass_fields__}
    timing.setdefault("anneal_steps", max(ctx.phase.iterations, 1))
    schedule = CDSTimestepConfig(**timing)
    t1, t2 = sample_cds_timesteps(schedule, ctx.step, prior.schedule.num_timesteps, ctx.generator)
    kwargs = _distill_kwargs(term, "weight_at", "x0_std_rescale")
    kwargs.setdefault("weighting", schedule.weighting)
    return consistency_distillation(prior, ctx.images, cond, t1, t2, ctx.supervision.cds_noise, **kwargs)


def _term_cds_3d(ctx: StepContext, term: LossTermConfig):
    """CDS under the novel-view prior (the ZeroStableCDS-3D baseline's 3D supervision)."""
    prior = ctx.supervision.require("novel_view", term.name)
    cond = prior.build_condition(**_novel_view_inputs(ctx, prior, term.name))
    return _cds(ctx, term, prior, cond)


def _term_modality_similarity(ctx: StepContext, term: LossTermConfig):
    encoder = ctx.supervision.require("binder", term.name)
    target = ctx.supervision.require("embedding", term.name)
    opts = dict(term.options)
    if "local_crop_scale" in opts:
        opts["local_crop_scale"] = tuple(opts["local_crop_scale"])
    return modality_similarity(ctx.images, target, encoder, ModalitySimilarityConfig(**opts), generator=ctx.generator)


def _novel_view_inputs(ctx: StepContext, prior: Prior, term_name: str) -> dict:
    """c(x_r, R, T)'s inputs: the reference view (encoded once per phase) and the relative cameras."""
    sup = ctx.supervision
    ref = sup.require("reference", term_name)
    inputs = dict(sup.novel_view_inputs)
    inputs["relative_camera"] = relative_camera(ref.camera, ctx.cameras)
    if "reference" not in inputs and "reference_image" not in inputs:
        image = renderer_to_prior(ref.rgb[None])
        if hasattr(prior, "encode_reference"):  # encode x_r once per phase, not per step
            if "reference" not in ctx.aux:
                with torch.no_grad():
                    ctx.aux["reference"] = prior.encode_reference(image)
            inputs["reference"] = ctx.aux["reference"]
        else:
            inputs["reference_image"] = image
    return inputs


def _term_sds_3d(ctx: StepContext, term: LossTermConfig):
    prior = ctx.supervision.require("novel_view", term.name)
    inputs = _novel_view_inputs(ctx, prior, term.name)
    return sds_3d(prior, ctx.images, ctx.timestep(term, prior), generator=ctx.generator, **_distill_kwargs(term), **inputs)


def _resized_reference(ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
    ref, size = ctx.supervision.reference, ctx.resolution
    key = ("reference_images", size)
    if key not in ctx.aux:
        rgb = ref.rgb.permute(2, 0, 1)[None].float()
        mask = ref.mask.permute(2, 0, 1)[None].float()
        if rgb.shape[-1] != size or rgb.shape[-2] != size:
            rgb = F.interpolate(rgb, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            mask = F.interpolate(mask, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        ctx.aux[key] = (rgb.permute(0, 2, 3, 1).clamp(0, 1), mask.permute(0, 2, 3, 1).clamp(0, 1))
    return ctx.aux[key]


def _term_reference(ctx: StepContext, term: LossTermConfig):
    ctx.supervision.require("reference", term.name)
    rgb, mask = _resized_reference(ctx)
    return reference_view_loss(ctx.reference_render, rgb, mask, **term.options)


def _term_orientation(ctx: StepContext, term: LossTermConfig):
    out = ctx.main
    return orientation_loss(out.weights, out.sample_normals, out.ray_dirs, **term.options)


def _term_sparsity(ctx: StepContext, term: LossTermConfig):
    return sparsity_loss(ctx.main.opacity, **term.options)


def _term_opacity_entropy(ctx: StepContext, term: LossTermConfig):
    return opacity_entropy_loss(ctx.main.opacity, **term.options)


def _term_z_variance(ctx: StepContext, term: LossTermConfig):
    return z_variance_loss(ctx.main.z_variance, ctx.main.opacity, **term.options)


def _term_normal_smoothness_2d(ctx: StepContext, term: LossTermConfig):
    out = ctx.main
    return normal_smoothness_2d(out.normal, out.opacity.detach())


def _term_normal_consistency(ctx: StepContext, term: LossTermConfig):
    return mesh_normal_consistency(ctx.main.mesh)


def _term_laplacian(ctx: StepContext, term: LossTermConfig):
    return laplacian_smoothness(ctx.main.mesh)


def _term_multiview_sds(ctx: StepContext, term: LossTermConfig):
    """4D-fy Eq. 3: its own group of ``n_views`` cameras (MVDream renders a ring of views)."""
    sup = ctx.supervision
    prior = sup.require("multiview", term.name)
    n_views = int(term.options.get("n_views", 4))
    cams = sample_multiview_cameras(ctx.phase.cameras, n_views, ctx.generator)
    if ctx.phase.representation == "dynamic_nerf":
        cams = replace(cams, times=torch.rand(1, generator=ctx.generator).expand(n_views).clone())
    images = ctx.render(cams).rgb
    cond = prior.build_condition(cameras=cams, **sup.require("multiview_inputs", term.name))
    kwargs = _distill_kwargs(term, "reconstruction", "recon_std_rescale")
    return multiview_sds(prior, images, cond, ctx.timestep(term, prior), n_views=n_views, generator=ctx.generator, **kwargs)


def _term_vsd(ctx: StepContext, term: LossTermConfig):
    """4D-fy Eq. 4, with the LoRA model's Eq. 5 step taken on the same noisy renders."""
    sup = ctx.supervision
    prior, lora = sup.require("prior2d", term.name), sup.require("lora", term.name)
    text = sup.require("prompt_text", term.name)
    cond = sup.prior2d_condition if sup.prior2d_condition is not None else prior.build_condition(text=text)
    c2w = ctx.cameras.c2w
    lora_cond = lora.build_condition(text=text, camera_c2w=c2w)
    kwargs = _distill_kwargs(term, "lora_guidance_scale")
    loss, info = variational_score_distillation(prior, lora, ctx.images, cond, lora_cond, ctx.timestep(term, prior),
                                                generator=ctx.generator, return_diagnostics=True, **kwargs)
    if "lora_optimizer" not in ctx.aux:
        trainable = [p for p in lora.parameters() if p.requires_grad]
        ctx.aux["lora_optimizer"] = torch.optim.AdamW(trainable, lr=float(term.options.get("lora_lr", 1e-3)))
    opt = ctx.aux["lora_optimizer"]
    opt.zero_grad(set_to_none=True)
    lora_loss = lora_finetune_loss(lora, info["latents"], lora_cond, generator=ctx.generator,
                                   camera_dropout=float(term.options.get("camera_dropout", 0.1)))
    lora_loss.backward()
    opt.step()
    return loss


def _term_video_sds(ctx: StepContext, term: LossTermConfig):
    """4D-fy Eq. 6: its own clip of ``n_frames`` frames from one camera."""
    sup = ctx.supervision
    prior = sup.require("video", term.name)
    cams = sample_video_cameras(ctx.phase.cameras, int(term.options.get("n_frames", 16)), ctx.generator)
    frames = ctx.render(cams).rgb
    size = term.options.get("size")
    return video_sds(prior, frames, sup.require("video_condition", term.name), ctx.timestep(term, prior),
                     size=tuple(size) if size else None, generator=ctx.generator, **_distill_kwargs(term))


#: THE registry: loss term name (as in configs) → adapter(context, term config) -> scalar.
TERMS: dict[str, Callable[[StepContext, LossTermConfig], torch.Tensor]] = {
    "sds": _term_sds,
    "augmented_sds": _term_augmented_sds,
    "cds": _term_cds,
    "modality_similarity": _term_modality_similarity,
    "sds_3d": _term_sds_3d,
    "cds_3d": _term_cds_3d,
    "reference": _term_reference,
    "orientation": _term_orientation,
    "sparsity": _term_sparsity,
    "opacity_entropy": _term_opacity_entropy,
    "z_variance": _term_z_variance,
    "normal_smoothness_2d": _term_normal_smoothness_2d,
    "normal_consistency": _term_normal_consistency,
    "laplacian": _term_laplacian,
    "multiview_sds": _term_multiview_sds,
    "vsd": _term_vsd,
    "video_sds": _term_video_sds,
}
assert set(TERMS) == set(LOSS_TERMS), "methods.LOSS_TERMS and optimize.TERMS must name the same terms"


def build_loss_terms(phase: PhaseConfig) -> LossTerms:
    """The phase's terms as a :class:`LossTerms` (each adapter bound to its term config)."""

    def bind(term: LossTermConfig):
        return lambda ctx: TERMS[term.name](ctx, term)

    return LossTerms({name: (bind(t), t.weight) for name, t in phase.losses.items()})


# ---------------------------------------------------------------------------------------------
# Optimiser
# ---------------------------------------------------------------------------------------------


def parameter_groups(phase: PhaseConfig, state: OptimState) -> list[dict]:
    """Named parameter groups of the phase's representation (names = ``methods.LR_GROUPS``)."""
    rep = phase.representation
    if rep in ("nerf", "dynamic_nerf"):
        if state.field is None:
            raise InputError(f"phase {phase.name!r} optimises a NeRF but OptimState.field is None")
        groups = state.field.param_groups()
        if rep == "dynamic_nerf":
            names = {"static_grid", "dynamic_grid", "mlp"}
            if {g["name"] for g in groups} != names:
                raise InputError(f"phase {phase.name!r} is dynamic_nerf but the field is not a DynamicNeRFField")
    elif rep == "dmtet_geometry":
        if state.geometry is None:
            raise InputError(f"phase {phase.name!r} optimises DMTet geometry but OptimState.geometry is None")
        if state.geometry.is_frozen:
            raise InputError(f"phase {phase.name!r} optimises DMTet geometry but it is frozen")
        groups = [{"name": "sdf", "params": [state.geometry.sdf]},
                  {"name": "deformation", "params": [state.geometry.deformation_offset]}]
        if phase.render == "rgb" and state.texture is not None:  # Magic3D-style: geometry and texture together
            groups.append({"name": "texture", "params": list(state.texture.parameters())})
    else:  # dmtet_texture: geometry frozen (XBind Phase III)
        if state.geometry is None or state.texture is None:
            raise InputError(f"phase {phase.name!r} optimises a DMTet texture: OptimState needs geometry and texture")
        state.geometry.freeze_geometry()
        groups = [{"name": "texture", "params": list(state.texture.parameters())}]
    background = [p for p in state.background.parameters() if p.requires_grad]
    groups.append({"name": "background", "params": background})
    groups = [{"name": g["name"], "params": [p for p in g["params"] if p.requires_grad]} for g in groups]
    return [g for g in groups if g["params"]]


def build_optimizer(phase: PhaseConfig, state: OptimState) -> torch.optim.Optimizer:
    groups = parameter_groups(phase, state)
    cfg = phase.optimizer
    for g in groups:
        g["lr"] = cfg.lr[g["name"]](0)
    if not groups:
        raise InputError(f"phase {phase.name!r} has no trainable parameters")
    if cfg.type == "adam":
        betas = cfg.betas or (0.9, 0.99)
        return torch.optim.Adam(groups, betas=betas[:2], eps=cfg.eps, weight_decay=cfg.weight_decay)
    from timm.optim import Adan  # optional import: only Phase II-style configs use it

    betas = cfg.betas or (0.98, 0.92, 0.99)
    if len(betas) != 3:
        raise InputError(f"phase {phase.name!r}: Adan takes 3 betas, got {betas}")
    return Adan(groups, betas=betas, eps=max(cfg.eps, 1e-8), weight_decay=cfg.weight_decay)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def _active_terms(phase: PhaseConfig, generator: torch.Generator) -> set[str] | None:
    """4D-fy's alternation: one group of terms per step, drawn with the groups' probabilities;
    terms in no group always run. ``None`` = no alternation."""
    if not phase.alternate:
        return None
    u = float(torch.rand(1, generator=generator))
    cumulative, chosen = 0.0, phase.alternate[-1]
    for group in phase.alternate:
        cumulative += float(group["probability"])
        if u < cumulative:
            chosen = group
            break
    grouped = {t for g in phase.alternate for t in g["terms"]}
    return (set(phase.losses) - grouped) | set(chosen["terms"])


def _sample_step_cameras(phase: PhaseConfig, generator: torch.Generator):
    cams = sample_cameras(phase.cameras, phase.batch, generator)
    if phase.representation == "dynamic_nerf":
        cams = replace(cams, times=torch.rand(phase.batch, generator=generator))
    lights = sample_lights(cams, LightSamplerConfig(), generator) if phase.lights else None
    if lights is None and phase.shading == "lambertian":
        lights = headlight(cams)
    return cams, lights


def make_checkpoint(phase: PhaseConfig, state: OptimState, optimizer: torch.optim.Optimizer, step: int,
                    generator: torch.Generator) -> dict:
    """Resumable state: tensors and primitives only (loadable with ``torch.load(weights_only=True)``)."""
    return {
        "phase": phase.name,
        "step": int(step),
        "model": state.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "geometry_frozen": bool(state.geometry is not None and state.geometry.is_frozen),
    }


def load_checkpoint(state: OptimState, checkpoint: dict, generator: torch.Generator) -> int:
    """Restore a :func:`make_checkpoint` dict into ``state`` and ``generator``; returns the step to resume at."""
    for key in ("phase", "step", "model", "optimizer", "generator"):
        if key not in checkpoint:
            raise InputError(f"checkpoint lacks {key!r}; keys: {sorted(checkpoint)}")
    state.load_state_dict(checkpoint["model"])
    if checkpoint.get("geometry_frozen") and state.geometry is not None:
        state.geometry.freeze_geometry()
    state.optimizer_state = (checkpoint["phase"], checkpoint["optimizer"])
    generator.set_state(checkpoint["generator"])
    return int(checkpoint["step"])


def run_phase(
    phase: PhaseConfig,
    state: OptimState,
    supervision: Supervision,
    *,
    generator: torch.Generator,
    start_step: int = 0,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    checkpoint: Callable[[dict], None] | None = None,
) -> PhaseResult:
    """Run ``phase`` from ``start_step`` to ``phase.iterations`` on ``state`` (in place).

    ``on_step(step, losses)`` after each step (``losses``: the total and each unweighted term);
    ``checkpoint(dict)`` every ``phase.checkpoint_every`` steps and after the last step, with
    the dict of :func:`make_checkpoint` (its ``step`` is the number of completed steps).
    """
    if not 0 <= start_step <= phase.iterations:
        raise InputError(f"start_step {start_step} outside [0, {phase.iterations}] for phase {phase.name!r}")
    optimizer = build_optimizer(phase, state)
    if state.optimizer_state is not None:
        saved_phase, saved = state.optimizer_state
        if saved_phase == phase.name:
            optimizer.load_state_dict(saved)
        state.optimizer_state = None
    terms = build_loss_terms(phase)
    lr = phase.optimizer.lr
    aux: dict = {}
    history: list[float] = []
    last: dict[str, float] = {}
    for module in state.modules().values():
        module.train()
    for step in range(start_step, phase.iterations):
        for group in optimizer.param_groups:
            group["lr"] = lr[group["name"]](step)
        active = _active_terms(phase, generator)
        step_terms = terms if active is None else terms.with_weights(**{n: 0.0 for n in phase.losses if n not in active})
        cams, lights = _sample_step_cameras(phase, generator)
        resolution = max(1, round(phase.resolution(step)))
        ctx = StepContext(phase, state, supervision, step, cams, lights, resolution, generator, aux)
        result: LossResult = step_terms(ctx, step)
        if not torch.isfinite(result.total):
            raise NonFiniteError(f"phase {phase.name!r} step {step}: loss is {float(result.total)} ({result.log_dict()})")
        optimizer.zero_grad(set_to_none=True)
        result.total.backward()
        optimizer.step()
        last = result.log_dict()
        history.append(last["loss/total"])
        if on_step is not None:
            on_step(step, last)
        done = step + 1
        if checkpoint is not None and phase.checkpoint_every and done % phase.checkpoint_every == 0:
            checkpoint(make_checkpoint(phase, state, optimizer, done, generator))
    if checkpoint is not None and history and not (phase.checkpoint_every and phase.iterations % phase.checkpoint_every == 0):
        checkpoint(make_checkpoint(phase, state, optimizer, phase.iterations, generator))
    return PhaseResult(phase.name, len(history), last, history)


# ---------------------------------------------------------------------------------------------
# Phase transitions and evaluation renders
# ---------------------------------------------------------------------------------------------


def nerf_to_dmtet(state: OptimState, dmtet_cfg: DMTetConfig | None = None,
                  texture_cfg: TextureFieldConfig | None = None) -> OptimState:
    """XBind Phase I → II: DMTet from the NeRF density (sdf = threshold − density, threshold 10
    by default) plus a fresh texture field for Phase III. The background carries over; the NeRF
    itself is dropped (its colours are not copied: Phase III learns the texture under the priors).
    """
    if state.field is None:
        raise InputError("nerf_to_dmtet needs OptimState.field (a NeRF from Phase I)")
    field_ = state.field
    device = next(field_.parameters()).device
    was_training = field_.training
    field_.eval()
    def density(points: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if getattr(field_, "requires_times", False):
                return field_.density(points, torch.zeros(points.shape[0], device=points.device))
            return field_.density(points)

    try:
        geometry = DMTetGeometry.from_density(density, dmtet_cfg or DMTetConfig(), device=device)
    finally:
        field_.train(was_training)
    texture = TextureField(texture_cfg or CPU_TEXTURE_FIELD, device=device)
    return OptimState(field=None, geometry=geometry, texture=texture, background=state.background, volume=state.volume)


def freeze_geometry(state: OptimState) -> OptimState:
    """XBind Phase III: stop gradients to the DMTet sdf and deformation (mesh cached)."""
    if state.geometry is None:
        raise InputError("freeze_geometry needs OptimState.geometry")
    state.geometry.freeze_geometry()
    return state


def render_views(state: OptimState, cameras: CameraBatch, height: int, width: int, *, chunk: int = 8,
                 shading: str = "albedo", with_normal: bool = True) -> RenderOutput:
    """Deterministic renders for evaluation and turntables (no ray jitter, no gradients), in
    chunks of ``chunk`` views. Renders the NeRF if there is one, else the textured DMTet mesh.
    ``with_normal=False`` skips normals (a NeRF's finite-difference normals cost ~6x a render)."""
    rep = "nerf" if state.field is not None else "dmtet_texture"
    if rep == "nerf" and getattr(state.field, "requires_times", False):
        rep = "dynamic_nerf"
        if cameras.times is None:
            cameras = replace(cameras, times=torch.zeros(len(cameras)))
    phase = PhaseConfig(name="render", representation=rep, shading=shading)
    outs = []
    with torch.no_grad():
        for i in range(0, len(cameras), chunk):
            cams = cameras[i:i + chunk]
            lights = headlight(cams) if shading == "lambertian" else None
            out = render_state(state, phase, cams, height, width, lights=lights, with_normal=with_normal or shading == "lambertian",
                               stratified=False)
            outs.append(out)
    cat = lambda name: None if getattr(outs[0], name) is None else torch.cat([getattr(o, name) for o in outs])
    return RenderOutput(rgb=cat("rgb"), opacity=cat("opacity"), depth=cat("depth"), normal=cat("normal"))


__all__ = [
    "DEFAULT_T_RANGE",
    "TERMS",
    "OptimState",
    "PhaseResult",
    "StepContext",
    "Supervision",
    "build_loss_terms",
    "build_optimizer",
    "freeze_geometry",
    "load_checkpoint",
    "make_checkpoint",
    "nerf_to_dmtet",
    "parameter_groups",
    "render_state",
    "render_views",
    "run_phase",
]
