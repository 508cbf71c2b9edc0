"""Step ``render_views``: the final state → evaluation views, turntable, contact sheet and GLB.

Renders the evaluation orbit (:func:`anyto3d.cameras.orbit_cameras`, ``render.views`` azimuths
uniform over 360° at 15° elevation, ``render.resolution``² px) with
:func:`anyto3d.optimize.render_views` — the NeRF when the state has one, else the textured DMTet.
Writes ``views.npz`` (``rgb`` uint8 [V, H, W, 3], ``alpha`` uint8 [V, H, W], ``elevation`` /
``azimuth`` in radians, ``c2w`` [V, 4, 4]), ``turntable.mp4`` (the same frames at ``render.fps``),
``contact_sheet.png`` (12 of them) and ``mesh.glb``: the DMTet surface with its texture field
baked into a UV atlas (as :mod:`anyto3d.reconstruct` does); for a NeRF-only state the surface is
extracted through :func:`~anyto3d.optimize.nerf_to_dmtet` (density threshold 10) and coloured from
the NeRF's albedo.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from anyto3d.cameras import orbit_cameras
from anyto3d.errors import InputError
from anyto3d.export.mesh_export import export_glb
from anyto3d.export.texture_bake import bake_texture
from anyto3d.export.video import contact_sheet, write_video
from anyto3d.fields.dmtet import DMTetConfig
from anyto3d.images import to_uint8
from anyto3d.optimize import OptimState, nerf_to_dmtet, render_views
from anyto3d.state_io import load_state
from steps.contract import step
from steps.phase_common import STATE_DIR, preset

ELEVATION_DEG = 15.0
SHEET_VIEWS = 12


def _setting(render: dict, key: str, kind):
    if key not in render:
        raise InputError(f"config render.{key} is missing (render: {{views, resolution, fps}})")
    value = render[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise InputError(f"config render.{key} must be a positive number, got {value!r}")
    return kind(value)


def textured_mesh(state: OptimState, texture_size: int, extract_resolution: int, extract_threshold: float):
    """(mesh with UVs, texture [S, S, 3]) of the state: DMTet + texture field, or the NeRF's surface."""
    if state.geometry is not None:
        if state.texture is None:
            raise InputError("the DMTet state has no texture field to bake")
        mesh, color_fn = state.geometry.mesh().detach(), state.texture
    else:
        if state.field is None:
            raise InputError("the state has neither a NeRF nor a DMTet")
        converted = nerf_to_dmtet(state, DMTetConfig(resolution=extract_resolution, isosurface_threshold=extract_threshold))
        mesh = converted.geometry.mesh().detach()
        field = state.field

        def color_fn(points: torch.Tensor) -> torch.Tensor:
            return field(points).albedo

    with torch.no_grad():
        return bake_texture(mesh, color_fn, texture_size=texture_size, padding=4)


@step("render_views", 1, config_keys=("model", "render"), inputs=("state",),
      code_modules=("anyto3d.state_io", "steps.phase_common"), roles=lambda cfg: frozenset())  # loads no model
def run(inputs: dict[str, Path], cfg: dict, out_dir: Path, device: str, work_dir: Path) -> dict:
    from PIL import Image

    render = cfg.get("render") or {}
    n_views = _setting(render, "views", int)
    resolution = _setting(render, "resolution", int)
    fps = _setting(render, "fps", float)
    p = preset(cfg)
    state = load_state(Path(inputs["state"]) / STATE_DIR, device)
    for module in state.modules().values():
        module.eval()

    cams = orbit_cameras(n_views, elevation_deg=ELEVATION_DEG)
    out = render_views(state, cams, resolution, resolution, with_normal=False)  # NeRF normals cost ~6x
    rgb = to_uint8(out.rgb)
    alpha = to_uint8(out.opacity)[..., 0]
    np.savez_compressed(out_dir / "views.npz", rgb=rgb, alpha=alpha, elevation=cams.elevation.numpy(),
                        azimuth=cams.azimuth.numpy(), fovy=cams.fovy.numpy(), c2w=cams.c2w.numpy())
    write_video(out_dir / "turntable.mp4", rgb, fps=fps)
    pick = np.linspace(0, n_views, min(SHEET_VIEWS, n_views), endpoint=False).astype(int)
    Image.fromarray(contact_sheet(rgb[pick], columns=min(6, len(pick)))).save(out_dir / "contact_sheet.png")

    mesh, texture = textured_mesh(state, p.texture_size, p.extract_resolution, p.extract_threshold)
    export_glb(out_dir / "mesh.glb", mesh, texture)
    return {"views": n_views, "resolution": resolution, "mesh_vertices": mesh.num_vertices,
            "mesh_faces": mesh.num_faces, "mean_alpha": round(float(alpha.mean()) / 255.0, 6),
            "source": "dmtet" if state.geometry is not None else "nerf"}


STEP = run
