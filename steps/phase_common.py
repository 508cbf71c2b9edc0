"""The one body of the three phase steps (``nerf_coarse``, ``dmtet_geometry``, ``dmtet_texture``).

A phase step runs the method's enabled phases of one representation, in order, on the state it
is given (``previous``) or on a fresh initial representation:

* ``nerf``: a new NeRF (CPU dense-grid preset at the tiny scale, the Instant-NGP preset at paper scale);
* ``dmtet_geometry``: after a NeRF, :func:`~anyto3d.optimize.nerf_to_dmtet` with the phase's
  ``dmtet`` grid; without one (Fantasia3D), a sphere SDF through ``DMTetGeometry.from_sdf``;
* ``dmtet_texture``: the previous DMTet (converted from a NeRF if need be), geometry frozen.

Every phase checkpoints into ``work_dir/<phase>/`` every ``phase.checkpoint_every`` iterations
and after its last one (:class:`anyto3d.checkpoints.CheckpointManager`); a re-run of the same store key
resumes from the newest checkpoint of the latest phase that has one, so an interrupted run ends
in exactly the state an uninterrupted one would. Outputs: ``state/`` (:mod:`anyto3d.state_io`),
``preview.png`` (4 views) and metrics (each phase's final losses, seconds, iterations, start step).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from anyto3d.cameras import headlight, orbit_cameras
from anyto3d.checkpoints import CheckpointManager
from anyto3d.errors import InputError
from anyto3d.fields.dmtet import DMTetConfig, DMTetGeometry
from anyto3d.fields.nerf import CPU_DENSE_NERF, PAPER_NERF, NeRFField, NeRFFieldConfig
from anyto3d.fields.texture import CPU_TEXTURE_FIELD, TextureField, TextureFieldConfig
from anyto3d.images import to_uint8
from anyto3d.methods import MethodConfig, PhaseConfig, method_from_config
from anyto3d.models import build_supervision, load_models, needs_for
from anyto3d.optimize import (
    OptimState,
    load_checkpoint,
    nerf_to_dmtet,
    render_state,
    run_phase,
)
from anyto3d.reference_view import ReferenceView, ReferenceViewConfig, reference_camera
from anyto3d.render.volume import CPU_VOLUME_RENDERER, VolumeRendererConfig
from anyto3d.state_io import load_state, save_state

STATE_DIR = "state"
PREVIEW = "preview.png"
EMBEDDING_FILE = "embedding.safetensors"
PROMPT_FILE = "prompt.json"
REFERENCE_PNG = "reference.png"
REFERENCE_JSON = "reference.json"
#: Radius of Fantasia3D's initial sphere (the box is [-1, 1]^3).
SPHERE_RADIUS = 0.5


@dataclass(frozen=True)
class ScalePreset:
    """What the method config leaves to the scale: field, renderer and texture sizes."""

    nerf: NeRFFieldConfig
    volume: VolumeRendererConfig
    texture: TextureFieldConfig
    reference: ReferenceViewConfig
    texture_size: int  # baked GLB texture, texels per side
    extract_resolution: int  # DMTet grid for a NeRF-only state's mesh
    # NeRF density at that mesh's surface: XBind's NeRF -> DMTet threshold 10 (§V-A) at paper
    # scale; the CPU dense NeRF peaks near 10-12 after its tiny SDS runs (measured), so tiny uses
    # 5, as the methods' tiny DMTet phases do.
    extract_threshold: float = 10.0


SCALES = {
    # Tiny: the CPU presets; the reference sampled at the zoo's 32^2 and framed at 64^2 (the phases
    # render 32^2); the tiny world renders on white, so the reference mask uses the known colour.
    "tiny": ScalePreset(CPU_DENSE_NERF, CPU_VOLUME_RENDERER, CPU_TEXTURE_FIELD,
                        ReferenceViewConfig(size=64, background=(1.0, 1.0, 1.0)), 256, 32, 5.0),
    "paper": ScalePreset(PAPER_NERF, VolumeRendererConfig(), TextureFieldConfig(), ReferenceViewConfig(), 1024, 128, 10.0),
}


def scale_of(cfg: dict) -> str:
    name = (cfg.get("model") or {}).get("name")
    if name not in SCALES:
        raise InputError(f"model.name must be one of {sorted(SCALES)}, got {name!r}")
    return name


def preset(cfg: dict) -> ScalePreset:
    return SCALES[scale_of(cfg)]


# ---------------------------------------------------------------------------------------------
# Reading the earlier steps' outputs
# ---------------------------------------------------------------------------------------------


def read_embedding(encoded: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    path = Path(encoded) / EMBEDDING_FILE
    if not path.is_file():
        raise InputError(f"{encoded} is not an encode_modality output (no {EMBEDDING_FILE})")
    return load_file(str(path))["embedding"].float()


def read_prompt(encoded: Path) -> dict:
    import json

    return json.loads((Path(encoded) / PROMPT_FILE).read_text())


def prompt_text(prompt: dict) -> list[str] | None:
    texts = [p["text"] for p in prompt.get("parts", []) if p.get("modality") == "text"]
    return [" ".join(texts)] if texts else None


def read_reference(reference: Path) -> ReferenceView:
    """The ``reference_view`` step's output back as a :class:`ReferenceView`."""
    import json

    from PIL import Image

    reference = Path(reference)
    if not (reference / REFERENCE_PNG).is_file():
        raise InputError(f"{reference} is not a reference_view output (no {REFERENCE_PNG})")
    rgba = np.asarray(Image.open(reference / REFERENCE_PNG).convert("RGBA"), dtype=np.float32) / 255.0
    meta = json.loads((reference / REFERENCE_JSON).read_text())
    cam = meta["camera"]
    camera = reference_camera(ReferenceViewConfig(elevation_deg=cam["elevation_deg"], azimuth_deg=cam["azimuth_deg"],
                                                  distance=cam["distance"], fovy_deg=cam["fovy_deg"]))
    rgba_t = torch.from_numpy(rgba)
    return ReferenceView(rgb=rgba_t[..., :3].contiguous(), mask=rgba_t[..., 3:].contiguous(), camera=camera,
                         source=meta.get("source", "image"))


# ---------------------------------------------------------------------------------------------
# Initial representations
# ---------------------------------------------------------------------------------------------


def _sphere_sdf(points: torch.Tensor) -> torch.Tensor:
    return points.norm(dim=-1) - SPHERE_RADIUS


def initial_state(representation: str, phase: PhaseConfig, previous: OptimState | None, cfg: dict,
                  device: str) -> OptimState:
    """The state a step of ``representation`` starts from (module docstring)."""
    p = preset(cfg)
    dmtet_cfg = phase.dmtet or DMTetConfig()
    if representation == "nerf":
        if previous is not None and previous.field is not None:
            return previous
        return OptimState(field=NeRFField(p.nerf, device=device), volume=p.volume)
    if representation == "dmtet_geometry":
        if previous is None:  # Fantasia3D: DMTet from a sphere, no NeRF
            geometry = DMTetGeometry.from_sdf(_sphere_sdf, dmtet_cfg, device=device)
            return OptimState(geometry=geometry, texture=TextureField(p.texture, device=device), volume=p.volume)
        if previous.geometry is None:
            return nerf_to_dmtet(previous, dmtet_cfg, p.texture)
        return previous
    if representation == "dmtet_texture":
        if previous is None:
            raise InputError("dmtet_texture needs a previous phase's state (a DMTet or a NeRF to convert)")
        state = previous if previous.geometry is not None else nerf_to_dmtet(previous, dmtet_cfg, p.texture)
        if state.texture is None:
            state.texture = TextureField(p.texture, device=device)
        state.geometry.freeze_geometry()
        return state
    raise InputError(f"no phase step runs representation {representation!r} yet (4D: motion_4d is a later step)")


# ---------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------


def _progress(total: int, initial: int, desc: str):
    from tqdm import tqdm

    disable = os.environ.get("ANYTO3D_PROGRESS", "1") == "0"
    return tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, dynamic_ncols=True, mininterval=1.0,
                leave=True, disable=disable, unit="it")


# ---------------------------------------------------------------------------------------------
# The step body
# ---------------------------------------------------------------------------------------------


def phases_of(method: MethodConfig, representation: str) -> list[PhaseConfig]:
    return [p for p in method.active_phases if p.representation == representation]


def phase_roles(representation: str):
    """``roles(cfg)``: the model roles the method's phases of ``representation`` load under a
    config (:func:`~anyto3d.models.needs_for`) — what a phase step loads and its store key holds."""

    def roles(cfg: Mapping) -> set[str]:
        method = method_from_config(cfg)
        return needs_for(MethodConfig(method.name, phases_of(method, representation), method.description), scale_of(cfg))

    return roles


def run_phase_step(step_name: str, representation: str, inputs: dict[str, Path], cfg: dict, out_dir: Path,
                   device: str, work_dir: Path) -> dict:
    """Run the method's phases of ``representation`` (module docstring); returns the step's metrics."""
    method = method_from_config(cfg)
    phases = phases_of(method, representation)
    if not phases:
        raise InputError(f"method {method.name!r} has no enabled {representation} phase; "
                         f"steps.pipeline.stages_for({method.name!r}) does not list {step_name}")
    seed = int(cfg.get("seed", 0))
    embedding = read_embedding(inputs["encoded"])
    reference = read_reference(inputs["reference"]).to(device)
    text = prompt_text(read_prompt(inputs["encoded"]))
    models = load_models(cfg["model"], phase_roles(representation)(cfg), device)
    previous = load_state(Path(inputs["previous"]) / STATE_DIR, device) if inputs.get("previous") else None

    state = initial_state(representation, phases[0], previous, cfg, device).to(device)
    generator = torch.Generator().manual_seed(seed)
    managers = [CheckpointManager(Path(work_dir) / p.name, max(1, p.checkpoint_every)) for p in phases]
    # Resume: the newest checkpoint of the latest phase that has one; earlier phases are done.
    first, resume = 0, None
    for i in range(len(phases) - 1, -1, -1):
        found = managers[i].latest()
        if found is not None:
            first, resume = i, found[1]
            break

    metrics: dict = {"iterations": 0}
    total_t0 = time.perf_counter()
    for i, phase in enumerate(phases):
        if i < first:
            done = managers[i].latest()
            metrics.update(_phase_metrics(phase, done[1] if done else {}, start_step=phase.iterations))
            continue
        start = 0
        if i == first and resume is not None:
            start = load_checkpoint(state, resume, generator)
        supervision = build_supervision(models, embedding, reference, phase, prompt_text=text, seed=seed)
        last: dict[str, float] = dict(resume.get("last", {})) if (i == first and resume is not None) else {}
        seconds0 = float(resume.get("seconds", 0.0)) if (i == first and resume is not None) else 0.0
        t0 = time.perf_counter()
        bar = _progress(phase.iterations, start, f"{step_name}:{phase.name}")

        def on_step(step_i: int, losses: dict[str, float], _bar=bar, _last=last) -> None:
            _last.clear()
            _last.update(losses)
            _bar.update(1)
            _bar.set_postfix(loss=f"{losses.get('loss/total', float('nan')):.4g}", refresh=False)

        def checkpoint(ckpt: dict, _mgr=managers[i], _last=last, _t0=t0, _s0=seconds0) -> None:
            _mgr.save(ckpt["step"], {**ckpt, "last": {k: float(v) for k, v in _last.items()},
                                     "seconds": _s0 + time.perf_counter() - _t0})

        try:
            run_phase(phase, state, supervision, generator=generator, start_step=start, on_step=on_step,
                      checkpoint=checkpoint)
        finally:
            bar.close()
        if start == phase.iterations and phase.iterations > 0 and not last:
            last.update(resume.get("last", {}) if resume else {})
        metrics.update(_phase_metrics(phase, {"last": last, "seconds": seconds0 + time.perf_counter() - t0},
                                      start_step=start))
        metrics["iterations"] += phase.iterations
    metrics["seconds"] = round(time.perf_counter() - total_t0, 3)
    metrics["representation"] = representation
    metrics["phases"] = ",".join(p.name for p in phases)

    save_state(state, Path(out_dir) / STATE_DIR)
    write_preview(state, phases[-1], Path(out_dir) / PREVIEW)
    return metrics


def _phase_metrics(phase: PhaseConfig, ckpt: dict, start_step: int) -> dict:
    out = {f"{phase.name}.{k}": float(v) for k, v in dict(ckpt.get("last", {})).items() if math.isfinite(float(v))}
    out[f"{phase.name}.iterations"] = phase.iterations
    out[f"{phase.name}.start_step"] = int(start_step)
    if "seconds" in ckpt:
        out[f"{phase.name}.seconds"] = round(float(ckpt["seconds"]), 3)
    return out


# ---------------------------------------------------------------------------------------------
# Preview
# ---------------------------------------------------------------------------------------------


def preview_images(state: OptimState, phase: PhaseConfig, size: int, n_views: int = 4) -> torch.Tensor:
    """``n_views`` renders around the object (what the phase's priors saw: RGB or normals), [V, H, W, 3]."""
    cams = orbit_cameras(n_views, elevation_deg=15.0)
    view_phase = replace(phase, name="preview")
    shaded = phase.shading == "lambertian"  # DreamFusion's phase: shade under a headlight, as it trained
    with torch.no_grad():
        out = render_state(state, view_phase, cams, size, size, lights=headlight(cams) if shaded else None,
                           with_normal=phase.render == "normal" or shaded, stratified=False)
    if phase.render == "normal" and phase.representation in ("nerf", "dynamic_nerf"):
        return out.normal_image()
    return out.rgb


def write_preview(state: OptimState, phase: PhaseConfig, path: Path) -> Path:
    """A 1 x 4 strip of :func:`preview_images` at the phase's final render size (at least 64 px)."""
    from PIL import Image

    size = max(64, round(float(phase.resolution(max(phase.iterations - 1, 0)))))
    images = to_uint8(preview_images(state, phase, size))
    strip = np.concatenate(list(np.asarray(images)), axis=1)
    Image.fromarray(strip).save(path)
    return path


__all__ = [
    "SCALES",
    "ScalePreset",
    "initial_state",
    "phases_of",
    "preset",
    "preview_images",
    "read_embedding",
    "read_prompt",
    "read_reference",
    "run_phase_step",
    "scale_of",
    "write_preview",
]
