"""Asset export: formats reload in trimesh, closed meshes stay closed, baked textures round-trip,
videos open with the right frames, and bad input fails loudly without leaving files behind."""

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import trimesh

from anyto3d.cameras import CameraBatch
from anyto3d.errors import EmptyGeometryError, InputError, NonFiniteError
from anyto3d.export.mesh_export import (
    export_glb,
    export_mesh,
    export_obj,
    export_ply,
    sample_texture,
    split_uv_seams,
    yup_to_zup,
    zup_to_yup,
)
from anyto3d.export.sequence import SEQUENCE_FILE, export_mesh_sequence, load_sequence_index
from anyto3d.export.texture_bake import bake_texture, pad_seams
from anyto3d.export.video import contact_sheet, turntable, write_video
from anyto3d.mesh import Mesh


def smooth_color(points: torch.Tensor) -> torch.Tensor:
    """A smooth colour field over the unit sphere's neighbourhood, in [0, 1]."""
    return (0.5 + 0.45 * torch.sin(1.5 * points + torch.tensor([0.0, 1.0, 2.0]))).clamp(0, 1)


@pytest.fixture(scope="module")
def sphere() -> Mesh:
    # Shifted off-centre along every axis so an axis mix-up would move the bounds.
    tm = trimesh.creation.icosphere(subdivisions=2)
    tm.vertices = tm.vertices * np.array([1.0, 0.8, 0.6]) + np.array([0.1, 0.2, 0.3])
    return Mesh.from_trimesh(tm)


@pytest.fixture(scope="module")
def baked(sphere):
    return bake_texture(sphere, smooth_color, texture_size=256, padding=4)


def load_single(path) -> trimesh.Trimesh:
    return trimesh.load(str(path), force="mesh", process=False)


def merged_by_position(tm: trimesh.Trimesh) -> trimesh.Trimesh:
    # Rebuild without visuals so merge_vertices only looks at positions (UV seams merge too).
    plain = trimesh.Trimesh(tm.vertices.copy(), tm.faces.copy(), process=False)
    plain.merge_vertices()
    return plain


# --------------------------------------------------------------------------------------------- axes


def test_axis_conversion_is_a_rotation_and_its_inverse():
    p = np.random.default_rng(0).normal(size=(10, 3))
    assert np.allclose(yup_to_zup(zup_to_yup(p)), p)
    assert np.allclose(zup_to_yup(np.array([0.0, 0.0, 1.0])), [0.0, 1.0, 0.0])  # z-up becomes y-up
    rot = zup_to_yup(np.eye(3))
    assert np.isclose(np.linalg.det(rot), 1.0)  # no reflection: winding is kept


# --------------------------------------------------------------------------------------------- untextured


@pytest.mark.parametrize("fmt", ["glb", "obj", "ply"])
def test_formats_reload_with_same_vertices_and_bounds(tmp_path, sphere, fmt):
    mesh = Mesh(sphere.vertices, sphere.faces, colors=(sphere.vertices * 0.5 + 0.5).clamp(0, 1))
    path = export_mesh(tmp_path / f"m.{fmt}", mesh)
    tm = load_single(path)
    vertices = yup_to_zup(tm.vertices) if fmt == "glb" else tm.vertices
    assert len(tm.vertices) == sphere.num_vertices
    assert len(tm.faces) == sphere.num_faces
    lo, hi = sphere.bounding_box()
    assert np.allclose(vertices.min(0), lo.numpy(), atol=1e-5)
    assert np.allclose(vertices.max(0), hi.numpy(), atol=1e-5)
    assert tm.is_watertight
    # Outward winding survives the axis conversion (positive enclosed volume).
    assert tm.volume > 0
    if fmt in ("ply", "glb"):
        colors = tm.visual.vertex_colors[:, :3] / 255.0
        assert np.abs(colors - mesh.colors.numpy()).max() <= 1 / 255 + 1e-6


def test_glb_raw_axes_are_y_up(tmp_path, sphere):
    tm = load_single(export_glb(tmp_path / "m.glb", sphere))
    lo, hi = sphere.bounding_box()
    # Project z (height) becomes glTF y.
    assert np.isclose(tm.vertices[:, 1].max(), hi[2].item(), atol=1e-5)
    assert np.isclose(tm.vertices[:, 2].max(), -lo[1].item(), atol=1e-5)


# --------------------------------------------------------------------------------------------- baking


def test_bake_keeps_geometry_and_face_order(sphere, baked):
    mesh, texture = baked
    assert torch.equal(mesh.vertices, sphere.vertices) and torch.equal(mesh.faces, sphere.faces)
    assert texture.shape == (256, 256, 3) and texture.min() >= 0 and texture.max() <= 1
    assert mesh.uv_faces.shape == mesh.faces.shape
    assert mesh.uv.min() >= 0 and mesh.uv.max() <= 1
    # Each UV triangle belongs to the same mesh triangle (xatlas keeps face order).
    positions, faces, uv, source = split_uv_seams(mesh)
    assert np.allclose(positions[faces], sphere.vertices[sphere.faces].numpy())


def test_baked_texture_round_trip_at_vertices(baked):
    mesh, texture = baked
    positions, _, uv, _ = split_uv_seams(mesh)
    sampled = sample_texture(texture.numpy(), uv)
    expected = smooth_color(torch.as_tensor(positions)).numpy()
    assert np.abs(sampled - expected).mean() < 0.03


def test_seam_padding_fills_texels_next_to_charts():
    covered = torch.zeros(12, 12, dtype=torch.bool)
    covered[4:8, 4:8] = True
    texture = torch.zeros(12, 12, 3)
    texture[covered] = torch.tensor([0.2, 0.4, 0.6])
    padded = pad_seams(texture, covered, padding=2, background=1.0)
    # Within 2 texels (diagonals included, as two 3x3 dilations would reach): the chart colour.
    assert torch.allclose(padded[2:10, 2:10], torch.tensor([0.2, 0.4, 0.6]).expand(8, 8, 3))
    assert torch.equal(padded[1, 5], torch.ones(3))  # 3 texels away: background
    assert torch.equal(padded[1, 1], torch.ones(3))
    assert torch.equal(padded[covered], texture[covered])  # covered texels untouched
    # Each padded texel takes the colour of its nearest chart: two charts, two colours.
    covered2 = torch.zeros(1, 10, dtype=torch.bool)
    covered2[0, 0] = covered2[0, 9] = True
    tex2 = torch.zeros(1, 10, 1)
    tex2[0, 9] = 1.0
    padded2 = pad_seams(tex2, covered2, padding=4, background=-1.0)
    assert padded2[0, :, 0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]


def test_baked_texture_has_no_background_next_to_charts(baked):
    mesh, texture = baked
    # Every texel a bilinear lookup at a vertex UV touches must be coloured (not the 0 background).
    positions, _, uv, _ = split_uv_seams(mesh)
    size = texture.shape[0]
    x = uv[:, 0] * size - 0.5
    y = (1 - uv[:, 1]) * size - 0.5
    for dx in (0, 1):
        for dy in (0, 1):
            cols = np.clip(np.floor(x).astype(int) + dx, 0, size - 1)
            rows = np.clip(np.floor(y).astype(int) + dy, 0, size - 1)
            assert (texture[rows, cols].sum(-1) > 0.05).all()


# --------------------------------------------------------------------------------------------- textured files


def test_textured_glb_round_trip(tmp_path, baked):
    mesh, texture = baked
    tm = load_single(export_glb(tmp_path / "t.glb", mesh, texture))
    image = np.asarray(tm.visual.material.baseColorTexture.convert("RGB"))
    assert image.shape == (256, 256, 3)
    assert tm.visual.material.metallicFactor == 0.0
    colors = sample_texture(image, tm.visual.uv) / 255.0
    expected = smooth_color(torch.as_tensor(yup_to_zup(tm.vertices), dtype=torch.float32)).numpy()
    assert np.abs(colors - expected).mean() < 0.03
    assert merged_by_position(tm).is_watertight
    assert len(merged_by_position(tm).vertices) == mesh.num_vertices


def test_textured_obj_writes_mtl_and_png_and_round_trips(tmp_path, baked):
    mesh, texture = baked
    path = export_obj(tmp_path / "asset.obj", mesh, texture)
    assert (tmp_path / "asset.mtl").is_file() and (tmp_path / "asset.png").is_file()
    mtl = (tmp_path / "asset.mtl").read_text()
    assert "map_Kd asset.png" in mtl and "Kd 1.0" in mtl
    assert "mtllib asset.mtl" in path.read_text()
    tm = load_single(path)
    assert merged_by_position(tm).is_watertight
    lo, hi = mesh.bounding_box()
    assert np.allclose(tm.vertices.min(0), lo.numpy(), atol=1e-5) and np.allclose(tm.vertices.max(0), hi.numpy(), atol=1e-5)
    image = iio.imread(tmp_path / "asset.png")[..., :3]
    colors = sample_texture(image, tm.visual.uv) / 255.0
    assert np.abs(colors - smooth_color(torch.as_tensor(tm.vertices, dtype=torch.float32)).numpy()).mean() < 0.03
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left


def test_ply_from_texture_gets_vertex_colours(tmp_path, baked):
    mesh, texture = baked
    tm = load_single(export_ply(tmp_path / "c.ply", mesh, texture))
    assert len(tm.vertices) == mesh.num_vertices and tm.is_watertight
    colors = tm.visual.vertex_colors[:, :3] / 255.0
    assert np.abs(colors - smooth_color(mesh.vertices).numpy()).mean() < 0.03


# --------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("fmt", ["glb", "obj", "ply"])
def test_empty_and_nan_meshes_raise_and_leave_no_file(tmp_path, sphere, fmt):
    empty = Mesh(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.long))
    with pytest.raises(EmptyGeometryError, match="empty"):
        export_mesh(tmp_path / f"e.{fmt}", empty)
    nan = Mesh(sphere.vertices.clone(), sphere.faces)
    nan.vertices[3, 1] = float("nan")
    with pytest.raises(NonFiniteError, match="non-finite"):
        export_mesh(tmp_path / f"n.{fmt}", nan)
    assert list(tmp_path.iterdir()) == []


def test_export_failure_midway_keeps_the_previous_file(tmp_path, sphere, baked):
    path = export_glb(tmp_path / "keep.glb", sphere)
    before = path.read_bytes()
    bad_texture = torch.full((8, 8, 3), float("nan"))
    with pytest.raises(NonFiniteError):
        export_glb(path, baked[0], bad_texture)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.glb"]


def test_texture_without_uv_and_degenerate_faces(tmp_path, sphere):
    with pytest.raises(InputError, match="no UVs"):
        export_glb(tmp_path / "x.glb", sphere, torch.rand(8, 8, 3))
    # A repeated-index face is dropped, not exported.
    faces = torch.cat([sphere.faces, torch.tensor([[0, 0, 1]])])
    tm = load_single(export_ply(tmp_path / "d.ply", Mesh(sphere.vertices, faces)))
    assert len(tm.faces) == sphere.num_faces
    with pytest.raises(InputError, match="extension"):
        export_mesh(tmp_path / "x.stl", sphere)


def test_bake_rejects_bad_colour_functions(sphere):
    with pytest.raises(NonFiniteError):
        bake_texture(sphere, lambda p: torch.full_like(p, float("nan")), texture_size=32)
    with pytest.raises(InputError, match="color_fn"):
        bake_texture(sphere, lambda p: p[:, :2], texture_size=32)


# --------------------------------------------------------------------------------------------- video


def _gradient_frames(n=6, h=24, w=40):
    frames = np.zeros((n, h, w, 3), dtype=np.uint8)
    for k in range(n):
        frames[k, ..., 0] = 40 * k
        frames[k, ..., 1] = np.linspace(0, 255, w, dtype=np.uint8)[None]
    return frames


def test_mp4_and_gif_open_with_n_frames(tmp_path):
    frames = _gradient_frames()
    mp4 = iio.imread(write_video(tmp_path / "v.mp4", frames, fps=12), plugin="pyav")
    assert mp4.shape == frames.shape
    assert np.abs(mp4.astype(int) - frames.astype(int)).mean() < 8  # lossy, but the same content
    gif = iio.imread(write_video(tmp_path / "v.gif", torch.as_tensor(frames) / 255.0))
    assert gif.shape[:3] == frames.shape[:3]
    assert np.abs(gif[..., :3].astype(int) - frames.astype(int)).mean() < 8


def test_mp4_odd_size_is_padded_to_even(tmp_path):
    frames = _gradient_frames(3, 23, 37)
    video = iio.imread(write_video(tmp_path / "odd.mp4", frames), plugin="pyav")
    assert video.shape == (3, 24, 38, 3)


def test_video_bad_input(tmp_path):
    with pytest.raises(InputError, match="mp4 or .gif"):
        write_video(tmp_path / "v.avi", _gradient_frames())
    with pytest.raises(InputError):
        write_video(tmp_path / "v.mp4", np.zeros((0, 8, 8, 3), dtype=np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_contact_sheet_layout():
    frames = np.stack([np.full((2, 3, 3), 10 * (k + 1), dtype=np.uint8) for k in range(5)])
    sheet = contact_sheet(frames, columns=3)
    assert sheet.shape == (4, 9, 3)
    assert sheet[0, 0, 0] == 10 and sheet[0, 3, 0] == 20 and sheet[0, 6, 0] == 30
    assert sheet[2, 0, 0] == 40 and sheet[2, 3, 0] == 50 and sheet[2, 6, 0] == 255  # empty cell


def test_turntable_batches_the_evaluation_orbit():
    seen = []

    def render(cams: CameraBatch) -> torch.Tensor:
        seen.append(cams.azimuth.clone())
        # Encode the azimuth in the red channel so frame order can be checked.
        red = (torch.remainder(cams.azimuth, 2 * torch.pi) / (2 * torch.pi)).view(-1, 1, 1, 1)
        return torch.cat([red.expand(-1, 4, 6, 1), torch.zeros(len(cams), 4, 6, 2)], dim=-1)

    frames = turntable(render, n_views=10, batch_size=4)
    assert frames.shape == (10, 4, 6, 3) and frames.dtype == np.uint8
    assert [len(a) for a in seen] == [4, 4, 2]
    expected = np.round(np.arange(10) / 10 * 255).astype(int)
    assert np.abs(frames[:, 0, 0, 0].astype(int) - expected).max() <= 1


# --------------------------------------------------------------------------------------------- 4D


@pytest.mark.parametrize("fmt", ["glb", "ply", "obj"])
def test_mesh_sequence_writes_frames_and_index(tmp_path, sphere, fmt):
    meshes = [Mesh(sphere.vertices + torch.tensor([0.0, 0.0, 0.1 * k]), sphere.faces) for k in range(3)]
    times = [0.0, 0.25, 0.5]
    index_path = export_mesh_sequence(tmp_path / "seq", meshes, times, fmt=fmt)
    index = json.loads(index_path.read_text())
    assert index == load_sequence_index(tmp_path / "seq")
    assert index["format"] == fmt and index["num_frames"] == 3
    assert [f["time"] for f in index["frames"]] == times
    for k, frame in enumerate(index["frames"]):
        tm = load_single(tmp_path / "seq" / frame["file"])
        z = yup_to_zup(tm.vertices)[:, 2] if fmt == "glb" else tm.vertices[:, 2]
        assert np.isclose(z.max(), meshes[k].vertices[:, 2].max().item(), atol=1e-5)


def test_mesh_sequence_validates_everything_first(tmp_path, sphere):
    nan = Mesh(sphere.vertices.clone(), sphere.faces)
    nan.vertices[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="frame 1"):
        export_mesh_sequence(tmp_path / "seq", [sphere, nan], [0.0, 0.5])
    assert not (tmp_path / "seq").exists()
    with pytest.raises(InputError, match="times"):
        export_mesh_sequence(tmp_path / "seq", [sphere], [0.0, 1.0])
    with pytest.raises(InputError, match="non-decreasing"):
        export_mesh_sequence(tmp_path / "seq", [sphere, sphere], [0.5, 0.0])
    with pytest.raises(InputError, match="format"):
        export_mesh_sequence(tmp_path / "seq", [sphere], [0.0], fmt="fbx")
    with pytest.raises(InputError, match="sequence.json"):
        load_sequence_index(tmp_path)
    assert SEQUENCE_FILE == "sequence.json"


def test_glb_reload_renders_like_the_baked_source(tmp_path):
    """Export a baked GLB, reload it (UVs + texture, back to z-up), and rasterise both: the
    reloaded asset must look like the source colour field (differentiable texture lookup)."""
    import trimesh as _trimesh

    from anyto3d.cameras import orbit_cameras
    from anyto3d.export.mesh_export import export_glb, load_mesh
    from anyto3d.export.texture_bake import bake_texture
    from anyto3d.images import psnr
    from anyto3d.mesh import Mesh
    from anyto3d.render.mesh_renderer import MeshRenderer

    sphere = Mesh.from_trimesh(_trimesh.creation.icosphere(subdivisions=3, radius=0.7))

    def color_fn(p):
        return (p * 0.6 + 0.5).clamp(0, 1)

    baked, texture = bake_texture(sphere, color_fn, texture_size=256, padding=4)
    export_glb(tmp_path / "a.glb", baked, texture)
    mesh, tex = load_mesh(tmp_path / "a.glb")
    assert tex is not None and mesh.uv is not None
    assert torch.allclose(mesh.bounding_box()[0], sphere.bounding_box()[0], atol=1e-4)
    cams = orbit_cameras(4, elevation_deg=20, distance=2.5)
    renderer = MeshRenderer()
    reference = renderer.render(sphere, cams, 64, 64, color_fn=color_fn).rgb
    reloaded = renderer.render(mesh, cams, 64, 64, texture=tex).rgb
    assert psnr(reloaded, reference) > 30.0
    # The lookup is differentiable in the texture (Phase III could optimise a texture directly).
    tex = tex.clone().requires_grad_(True)
    renderer.render(mesh, cams[:1], 32, 32, texture=tex).rgb.mean().backward()
    assert tex.grad is not None and tex.grad.abs().sum() > 0
