"""End-to-end reconstruction through the whole 3D core (issue "3D core", acceptance figures).

A known procedural scene (a red box, a green tilted torus, a blue cone) is rasterised from 50
views at 64x64 by the project's mesh renderer; a NeRF is fitted photometrically; it is converted
to DMTet at 64^3 with XBind's density threshold and fitted again; the result is baked, exported
as GLB, reloaded and re-rendered. Each stage is checked on held-out views or against the truth.
The chain is ``anyto3d.reconstruct`` (also the ``anyto3d reconstruct`` demo).
"""

import time

import pytest
import torch

from anyto3d.cameras import orbit_cameras
from anyto3d.export.mesh_export import export_glb, load_mesh
from anyto3d.export.texture_bake import bake_texture
from anyto3d.images import mask_iou, psnr
from anyto3d.metrics.geometry import chamfer_distance
from anyto3d.reconstruct import ReconstructionConfig, fit_dmtet, fit_nerf, render_views
from anyto3d.render.mesh_renderer import MeshRenderer
from anyto3d.zoo.shapes import reconstruction_scene

pytestmark = pytest.mark.slow

CFG = ReconstructionConfig()
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def scene():
    return reconstruction_scene()


@pytest.fixture(scope="module")
def views(scene):
    return render_views(scene, CFG)


@pytest.fixture(scope="module")
def nerf(views):
    start = time.perf_counter()
    result = fit_nerf(views, CFG)
    TIMINGS["nerf_fit_s"] = time.perf_counter() - start
    return result


@pytest.fixture(scope="module")
def dmtet(views, nerf):
    start = time.perf_counter()
    result = fit_dmtet(nerf[0], views, CFG)
    TIMINGS["dmtet_fit_s"] = time.perf_counter() - start
    return result


def test_nerf_reconstruction_on_held_out_views(views, nerf):
    field, renderer, background = nerf
    with torch.no_grad():
        out = renderer.render(field, views.held_out, CFG.resolution, CFG.resolution, background, stratified=False)
    value = psnr(out.rgb, views.held_out_images.rgb)
    iou = mask_iou(out.opacity, views.held_out_images.opacity)
    print(f"\nNeRF held-out PSNR {value:.2f} dB, mask IoU {iou:.4f}, fit {TIMINGS['nerf_fit_s']:.1f} s")
    assert value >= 28.0
    assert iou >= 0.95


def test_dmtet_geometry_matches_the_truth(scene, views, dmtet):
    converted, fitted, texture = dmtet
    truth = scene.sample_surface(20000)
    lo, hi = scene.bounding_box()
    diagonal = float((hi - lo).norm())
    before, after = chamfer_distance(converted, truth), chamfer_distance(fitted, truth)
    with torch.no_grad():
        out = MeshRenderer().render(fitted, views.held_out, CFG.resolution, CFG.resolution, color_fn=texture)
    value = psnr(out.rgb, views.held_out_images.rgb)
    print(
        f"\nDMTet Chamfer {before / diagonal:.4%} of the diagonal after conversion, {after / diagonal:.4%} after "
        f"the fit ({TIMINGS['dmtet_fit_s']:.1f} s); held-out PSNR {value:.2f} dB"
    )
    assert after <= 0.01 * diagonal
    assert fitted.to_trimesh().is_watertight
    assert value >= 28.0


def test_exported_glb_reloads_and_renders_like_dmtet(tmp_path, dmtet):
    _, fitted, texture = dmtet
    with torch.no_grad():
        baked, image = bake_texture(fitted, texture, texture_size=CFG.texture_size, padding=4)
    mesh, reloaded_texture = load_mesh(export_glb(tmp_path / "scene.glb", baked, image))
    assert reloaded_texture is not None and mesh.uv is not None
    # Compared at 128^2 (XBind's Phase I render size): at 64^2 a few grazing silhouette pixels,
    # where one pixel spans many texels, dominate the error (measured 32 dB at 64^2, 36.6 at 128^2).
    cams = orbit_cameras(8, elevation_deg=20.0, distance=2.5)
    raster = MeshRenderer()
    with torch.no_grad():
        reference = raster.render(fitted, cams, 128, 128, color_fn=texture).rgb
        reloaded = raster.render(mesh, cams, 128, 128, texture=reloaded_texture).rgb
    value = psnr(reloaded, reference)
    print(f"\nGLB reload vs DMTet render PSNR {value:.2f} dB")
    assert value >= 30.0
