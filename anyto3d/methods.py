"""Methods as configuration (DESIGN §2): typed phase and method configs read from plain dicts.

A method (XBind, its baselines, DreamFusion-/Magic3D-/Fantasia3D-/ProlificDreamer-style recipes,
4D-fy) is an ordered set of phases; a phase is a representation, a camera sampler, a renderer
setting, an optimiser and a set of named, weighted loss terms. :mod:`anyto3d.optimize` runs any
phase with one loop; nothing here computes anything.

The dict form (``conf/method/*.yaml``)::

    name: xbind
    phases:                      # a mapping, in run order (so experiments can override one key)
      coarse:
        representation: nerf     # nerf | dmtet_geometry | dmtet_texture | dynamic_nerf
        iterations: 600
        resolution: 128          # a schedule (number, knots, sqrt_anneal, threestudio list)
        batch: 1
        cameras: xbind_phase_i   # a name in anyto3d.cameras.PRESETS or {elevation_deg: [lo, hi], ...}
        render: rgb              # what the priors see: rgb | normal
        lights: false
        shading: albedo          # albedo | lambertian
        optimizer: {type: adam, lr: {grid: 0.01, mlp: 0.001}}
        losses:
          augmented_sds: {weight: 1.0, guidance_scale: 7.5, t_range: [0.02, 0.98]}
          z_variance: {weight: 10.0}
        checkpoint_every: 100
    tiny:  {coarse: {iterations: 150, resolution: 32}}     # applied when model=tiny
    paper: {coarse: {iterations: 5000, resolution: 128}}   # applied when model=paper

**Scale selection.** ``tiny:`` and ``paper:`` hold per-phase overrides (deep-merged into
``phases``); :func:`method_from_config` picks the block named by ``cfg["model"]["name"]``, so
``model=tiny|paper`` on the command line selects the iteration counts and resolutions. A
phase may set ``enabled: false`` (the "w/o three-phase" ablation disables Phases II and III).

Validation is strict: an unknown key, loss-term name, option or a bad value raises
:class:`~anyto3d.errors.InputError` naming it and listing the valid names.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from anyto3d.cameras import PRESETS as CAMERA_PRESETS
from anyto3d.cameras import CameraSamplerConfig
from anyto3d.errors import InputError
from anyto3d.fields.dmtet import DMTetConfig
from anyto3d.schedules import Schedule, TimestepRange, parse_schedule

REPRESENTATIONS = ("nerf", "dmtet_geometry", "dmtet_texture", "dynamic_nerf")
RENDER_MODES = ("rgb", "normal")
SHADINGS = ("albedo", "lambertian")
OPTIMIZERS = ("adam", "adan")
SCALES = ("tiny", "paper")
WEIGHTINGS = ("sds", "uniform", "fantasia3d")

#: The learning-rate groups each representation's parameters fall into.
LR_GROUPS = {
    "nerf": ("grid", "mlp", "background"),
    "dynamic_nerf": ("static_grid", "dynamic_grid", "mlp", "background"),
    "dmtet_geometry": ("sdf", "deformation", "texture", "background"),  # texture: Magic3D-style RGB refine
    "dmtet_texture": ("texture", "background"),
}

# Options every distillation term shares.
_DISTILL = {"guidance_scale", "t_range", "weighting", "grad_clip"}
_CDS_TIMESTEPS = {"t2_start", "t2_end", "anneal_steps", "gap_min", "gap_span", "min_fraction", "max_fraction"}
_MS_OPTIONS = {
    "n_augmentations", "augmentation_weights", "weight_global", "weight_local", "weight_normalised",
    "global_distortion", "local_crop_scale", "local_distortion", "fill",
}

#: Loss term name → (options it accepts besides ``weight``, the supervision it needs).
LOSS_TERMS: dict[str, tuple[frozenset[str], tuple[str, ...]]] = {
    "sds": (frozenset(_DISTILL), ("prior2d",)),
    "augmented_sds": (
        frozenset(_DISTILL | {"image_weight", "image_scale", "denoise_steps", "latent_form", "eta"}), ("prior2d",)),
    "cds": (frozenset({"guidance_scale", "weighting", "weight_at", "x0_std_rescale", "grad_clip"} | _CDS_TIMESTEPS), ("prior2d",)),
    "modality_similarity": (frozenset(_MS_OPTIONS), ("binder",)),
    "sds_3d": (frozenset(_DISTILL), ("novel_view", "reference")),
    "cds_3d": (frozenset({"guidance_scale", "weighting", "weight_at", "x0_std_rescale", "grad_clip"} | _CDS_TIMESTEPS), ("novel_view", "reference")),
    "reference": (frozenset({"w_rgb", "w_mask", "mask_loss"}), ("reference",)),
    "orientation": (frozenset({"detach_weights"}), ()),
    "sparsity": (frozenset({"eps"}), ()),
    "opacity_entropy": (frozenset({"eps"}), ()),
    "z_variance": (frozenset({"threshold"}), ()),
    "normal_smoothness_2d": (frozenset(), ()),
    "normal_consistency": (frozenset(), ()),
    "laplacian": (frozenset(), ()),
    "multiview_sds": (frozenset(_DISTILL | {"n_views", "reconstruction", "recon_std_rescale"}), ("multiview",)),
    "vsd": (frozenset(_DISTILL | {"lora_guidance_scale", "camera_dropout", "lora_lr"}), ("prior2d", "lora")),
    "video_sds": (frozenset(_DISTILL | {"n_frames", "size"}), ("video",)),
}
#: Terms that read the volume renderer's per-sample outputs (NeRF phases only).
VOLUME_ONLY_TERMS = frozenset({"orientation", "z_variance"})
#: Terms that read the rasterised mesh (DMTet phases only).
MESH_ONLY_TERMS = frozenset({"normal_consistency", "laplacian"})
#: Everything a method can ask for; "reference" (the reference view) is implied by the term.
NEEDS = ("prior2d", "novel_view", "multiview", "video", "lora", "binder", "reference")


def _fail(where: str, message: str) -> InputError:
    return InputError(f"{where}: {message}")


def _check_keys(d: Mapping, allowed, where: str) -> None:
    if not isinstance(d, Mapping):
        raise _fail(where, f"expected a mapping, got {type(d).__name__} {d!r}")
    unknown = sorted(str(k) for k in d if k not in allowed)
    if unknown:
        raise _fail(where, f"unknown key(s) {unknown}; valid keys: {sorted(allowed)}")


def _choice(value, options, where: str) -> str:
    if value not in options:
        raise _fail(where, f"{value!r} is not one of {list(options)}")
    return value


def _positive_int(value, where: str, minimum: int = 1) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _fail(where, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _schedule(value, where: str) -> Schedule:
    try:
        return parse_schedule(value)
    except InputError as err:
        raise _fail(where, str(err)) from None


def deep_merge(base: Mapping, override: Mapping) -> dict:
    """``override`` merged into a copy of ``base`` (mappings recursively; anything else replaces)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# ---------------------------------------------------------------------------------------------
# Typed configs
# ---------------------------------------------------------------------------------------------


@dataclass
class LossTermConfig:
    """One named loss term: its weight schedule and the options its adapter passes on."""

    name: str
    weight: Schedule
    options: dict[str, Any] = field(default_factory=dict)
    t_range: TimestepRange | None = None

    @property
    def needs(self) -> tuple[str, ...]:
        return LOSS_TERMS[self.name][1]

    def is_off(self) -> bool:
        """A constant zero weight: the term never runs (and its prior is not needed)."""
        spec = self.weight.spec()
        return spec.get("type") == "constant" and spec["value"] == 0.0


@dataclass
class OptimizerConfig:
    """``type`` adam | adan; ``lr`` per parameter group (each a schedule); Adam/Adan extras."""

    type: str = "adam"
    lr: dict[str, Schedule] = field(default_factory=dict)
    betas: tuple[float, ...] | None = None
    eps: float = 1e-15
    weight_decay: float = 0.0


@dataclass
class PhaseConfig:
    """One optimisation phase (module docstring for the dict form)."""

    name: str
    representation: str = "nerf"
    iterations: int = 100
    resolution: Schedule = field(default_factory=lambda: parse_schedule(32))
    batch: int = 1
    cameras: CameraSamplerConfig = field(default_factory=lambda: CAMERA_PRESETS["xbind_phase_i"])
    render: str = "rgb"
    lights: bool = False
    shading: str = "albedo"
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    losses: dict[str, LossTermConfig] = field(default_factory=dict)
    alternate: list[dict[str, Any]] = field(default_factory=list)
    checkpoint_every: int = 0
    enabled: bool = True
    dmtet: DMTetConfig | None = None  # grid for the NeRF -> DMTet transition into this phase

    def enabled_terms(self) -> list[str]:
        return [n for n, t in self.losses.items() if not t.is_off()]


@dataclass
class MethodConfig:
    name: str
    phases: list[PhaseConfig]
    description: str = ""

    @property
    def needs(self) -> list[str]:
        """The priors/encoders/inputs the enabled terms of the enabled phases use (in NEEDS order)."""
        used = {n for p in self.phases if p.enabled for t in p.losses.values() if not t.is_off() for n in t.needs}
        return [n for n in NEEDS if n in used]

    def phase(self, name: str) -> PhaseConfig:
        for p in self.phases:
            if p.name == name:
                return p
        raise InputError(f"method {self.name!r} has no phase {name!r}; phases: {[p.name for p in self.phases]}")

    @property
    def active_phases(self) -> list[PhaseConfig]:
        return [p for p in self.phases if p.enabled]


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------

_PHASE_KEYS = {f.name for f in fields(PhaseConfig)} - {"name"}
_METHOD_KEYS = {"name", "phases", "description", "tiny", "paper"}
_CAMERA_KEYS = {f.name for f in fields(CameraSamplerConfig)}


def _cameras(value, where: str) -> CameraSamplerConfig:
    if isinstance(value, str):
        if value not in CAMERA_PRESETS:
            raise _fail(where, f"unknown camera preset {value!r}; valid presets: {sorted(CAMERA_PRESETS)}")
        return CAMERA_PRESETS[value]
    _check_keys(value, _CAMERA_KEYS, where)
    kwargs = {}
    for key, v in value.items():
        if key == "sphere_uniform_prob":
            if not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise _fail(f"{where}.{key}", f"must be a probability, got {v!r}")
            kwargs[key] = float(v)
            continue
        if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v) and v[0] <= v[1]):
            raise _fail(f"{where}.{key}", f"must be [low, high] with low <= high, got {v!r}")
        kwargs[key] = (float(v[0]), float(v[1]))
    return CameraSamplerConfig(**kwargs)


def _dmtet(value, representation: str, where: str) -> DMTetConfig | None:
    if value is None:
        return None
    if not representation.startswith("dmtet"):
        raise _fail(where, f"only DMTet phases take a dmtet grid, not {representation!r}")
    _check_keys(value, {f.name for f in fields(DMTetConfig)}, where)
    try:
        return DMTetConfig(**value)
    except (TypeError, ValueError) as err:
        raise _fail(where, str(err)) from None


def _optimizer(value, representation: str, where: str) -> OptimizerConfig:
    _check_keys(value, {"type", "lr", "betas", "eps", "weight_decay"}, where)
    kind = _choice(value.get("type", "adam"), OPTIMIZERS, f"{where}.type")
    lr_spec = value.get("lr", 0.01)
    groups = LR_GROUPS[representation]
    if not isinstance(lr_spec, Mapping):  # one value for every group
        lr_spec = {g: lr_spec for g in groups}
    _check_keys(lr_spec, groups, f"{where}.lr (groups of a {representation} phase)")
    # groups not named keep threestudio's defaults: grids/geometry 1e-2, MLPs and background 1e-3
    lr = {g: _schedule(lr_spec.get(g, 0.001 if g in ("mlp", "background") else 0.01), f"{where}.lr.{g}") for g in groups}
    for g, sched in lr.items():
        if sched(0) < 0:
            raise _fail(f"{where}.lr.{g}", f"learning rate must be >= 0, got {sched(0)}")
    betas = value.get("betas")
    if betas is not None:
        if not (isinstance(betas, (list, tuple)) and len(betas) in (2, 3) and all(0 <= b < 1 for b in betas)):
            raise _fail(f"{where}.betas", f"must be 2 (adam) or 3 (adan) numbers in [0, 1), got {betas!r}")
        betas = tuple(float(b) for b in betas)
    return OptimizerConfig(kind, lr, betas, float(value.get("eps", 1e-15)), float(value.get("weight_decay", 0.0)))


def _loss_term(name: str, value, where: str) -> LossTermConfig:
    if name not in LOSS_TERMS:
        raise _fail(where, f"unknown loss term {name!r}; valid terms: {sorted(LOSS_TERMS)}")
    if isinstance(value, (int, float, list)) and not isinstance(value, bool):
        value = {"weight": value}  # shorthand: just a weight
    allowed, _ = LOSS_TERMS[name]
    _check_keys(value, allowed | {"weight"}, f"{where}.{name}")
    if "weight" not in value:
        raise _fail(f"{where}.{name}", "needs a 'weight' (a number or a schedule)")
    weight = _schedule(value["weight"], f"{where}.{name}.weight")
    options = {k: v for k, v in value.items() if k not in ("weight", "t_range")}
    if "weighting" in options:
        _choice(options["weighting"], WEIGHTINGS, f"{where}.{name}.weighting")
    if "guidance_scale" in options and not (isinstance(options["guidance_scale"], (int, float)) and options["guidance_scale"] >= 0):
        raise _fail(f"{where}.{name}.guidance_scale", f"must be a number >= 0, got {options['guidance_scale']!r}")
    t_range = None
    if "t_range" in value:
        try:
            t_range = TimestepRange.parse(value["t_range"])
            t_range.bounds(0, 1000)
        except InputError as err:
            raise _fail(f"{where}.{name}.t_range", str(err)) from None
    return LossTermConfig(name, weight, options, t_range)


def phase_from_dict(name: str, d: Mapping, where: str = "phase") -> PhaseConfig:
    where = f"{where} {name!r}"
    _check_keys(d, _PHASE_KEYS, where)
    rep = _choice(d.get("representation", "nerf"), REPRESENTATIONS, f"{where}.representation")
    losses_spec = d.get("losses", {})
    _check_keys(losses_spec, LOSS_TERMS, f"{where}.losses (loss term names)")
    losses = {n: _loss_term(n, v, f"{where}.losses") for n, v in losses_spec.items()}
    for n in losses:
        if n in VOLUME_ONLY_TERMS and rep not in ("nerf", "dynamic_nerf"):
            raise _fail(f"{where}.losses.{n}", f"needs a volume-rendered phase, not {rep!r}")
        if n in MESH_ONLY_TERMS and not rep.startswith("dmtet"):
            raise _fail(f"{where}.losses.{n}", f"needs a DMTet phase, not {rep!r}")
    alternate = d.get("alternate", [])
    if not isinstance(alternate, list):
        raise _fail(f"{where}.alternate", "must be a list of {terms: [...], probability: p}")
    total = 0.0
    for i, group in enumerate(alternate):
        _check_keys(group, {"terms", "probability"}, f"{where}.alternate[{i}]")
        missing = sorted(set(group.get("terms", [])) - set(losses))
        if missing:
            raise _fail(f"{where}.alternate[{i}].terms", f"{missing} are not loss terms of this phase ({sorted(losses)})")
        total += float(group.get("probability", 0))
    if alternate and abs(total - 1.0) > 1e-6:
        raise _fail(f"{where}.alternate", f"probabilities must sum to 1, got {total}")
    resolution = _schedule(d.get("resolution", 32), f"{where}.resolution")
    if resolution(0) < 1:
        raise _fail(f"{where}.resolution", f"must be >= 1 pixel, got {resolution(0)}")
    enabled = d.get("enabled", True)
    lights = d.get("lights", False)
    for key, v in (("enabled", enabled), ("lights", lights)):
        if not isinstance(v, bool):
            raise _fail(f"{where}.{key}", f"must be true or false, got {v!r}")
    return PhaseConfig(
        name=name,
        representation=rep,
        iterations=_positive_int(d.get("iterations", 100), f"{where}.iterations", 0),
        resolution=resolution,
        batch=_positive_int(d.get("batch", 1), f"{where}.batch"),
        cameras=_cameras(d.get("cameras", "xbind_phase_i"), f"{where}.cameras"),
        render=_choice(d.get("render", "rgb"), RENDER_MODES, f"{where}.render"),
        lights=lights,
        shading=_choice(d.get("shading", "albedo"), SHADINGS, f"{where}.shading"),
        optimizer=_optimizer(d.get("optimizer", {}), rep, f"{where}.optimizer"),
        losses=losses,
        alternate=[dict(g) for g in alternate],
        checkpoint_every=_positive_int(d.get("checkpoint_every", 0), f"{where}.checkpoint_every", 0),
        enabled=enabled,
        dmtet=_dmtet(d.get("dmtet"), rep, f"{where}.dmtet"),
    )


def method_from_dict(d: Mapping, scale: str | None = None) -> MethodConfig:
    """A :class:`MethodConfig` from a plain dict; ``scale`` ("tiny" | "paper") applies that block."""
    if not isinstance(d, Mapping):
        raise InputError(f"a method config must be a mapping, got {type(d).__name__}")
    name = d.get("name", "<unnamed>")
    where = f"method {name!r}"
    _check_keys(d, _METHOD_KEYS, where)
    phases_spec = d.get("phases")
    if not isinstance(phases_spec, Mapping) or not phases_spec:
        raise _fail(f"{where}.phases", "must be a non-empty mapping of phase name -> phase settings")
    for block in SCALES:
        if block in d:
            _check_keys(d[block], set(phases_spec), f"{where}.{block} (phase names)")
    if scale is not None:
        _choice(scale, SCALES, f"{where}: model scale")
        if scale in d:
            phases_spec = deep_merge(phases_spec, d[scale])
    phases = [phase_from_dict(str(n), p, where) for n, p in phases_spec.items()]
    if not any(p.enabled for p in phases):
        raise _fail(where, "every phase is disabled")
    return MethodConfig(name=str(name), phases=phases, description=str(d.get("description", "")))


def method_from_config(cfg: Mapping) -> MethodConfig:
    """From a composed config (``flows.config.compose``): ``cfg["method"]`` at ``cfg["model"]["name"]``'s scale."""
    scale = (cfg.get("model") or {}).get("name")
    return method_from_dict(cfg["method"], scale if scale in SCALES else None)


__all__ = [
    "LOSS_TERMS",
    "LR_GROUPS",
    "REPRESENTATIONS",
    "LossTermConfig",
    "MethodConfig",
    "OptimizerConfig",
    "PhaseConfig",
    "deep_merge",
    "method_from_config",
    "method_from_dict",
    "phase_from_dict",
]
