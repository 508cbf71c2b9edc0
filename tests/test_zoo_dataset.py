"""The tiny world's rendered dataset and ground-truth export (anyto3d/zoo/dataset.py)."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import trimesh

from anyto3d.cameras import CameraBatch, LightBatch
from anyto3d.errors import InputError
from anyto3d.zoo.captions import COLOR_WORDS, mentions
from anyto3d.zoo.dataset import (
    TINY,
    DatasetConfig,
    export_ground_truth,
    load_dataset,
    render_clips,
    render_dataset,
    render_object_views,
    render_views,
    sample_view_cameras,
    whole_in_frame,
)
from anyto3d.zoo.world import WorldObject, composition_objects

torch.set_num_threads(2)

OBJECTS = [
    WorldObject.single("sphere", "red"),
    WorldObject.single("house", "blue"),
    WorldObject.single("torus", "green", "tilted"),
    WorldObject.single("arrow", "yellow"),
    WorldObject.single("chair", "purple"),
    composition_objects(1)[2],
]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo")
    index = render_dataset(OBJECTS, 4, out, resolution=32, seed=3, cfg=replace(TINY, shard_size=10))
    return out, index


def test_tiny_dataset_reloads_with_the_right_shapes(written):
    out, index = written
    ds = load_dataset(out, verify=True)
    assert len(ds) == 24 == index["n_images"]
    assert ds.rgba.shape == (24, 32, 32, 4) and ds.rgba.dtype == np.uint8
    assert [s["count"] for s in index["shards"]] == [10, 10, 4]
    for key in ("elevation", "azimuth", "distance", "fovy", "object_index", "facing", "caption_id", "ambient"):
        assert ds.arrays[key].shape == (24,), key
    assert ds.c2w.shape == (24, 4, 4) and ds.light_position.shape == (24, 3)
    np.testing.assert_array_equal(ds.object_index, np.repeat(np.arange(6), 4))
    assert [o.id for o in ds.objects] == [o.id for o in OBJECTS]
    assert ds.images().shape == (24, 32, 32, 4) and float(ds.images().max()) <= 1.0
    assert index["presets"] == ["xbind_phase_i", "xbind_phase_ii", "fourdfy"]
    assert {r["split"] for r in index["objects"]} <= {"train", "heldout"}


def test_alpha_is_where_the_object_is_and_background_is_white(written):
    out, _ = written
    ds = load_dataset(out)
    alpha = ds.rgba[..., 3]
    assert (alpha > 0).any(axis=(1, 2)).all(), "every view sees its object"
    bg = alpha == 0
    assert (ds.rgba[..., :3][bg] == 255).all()
    # The stored image is the object seen from the stored camera and light: render it again
    # from the reloaded camera and light, and compare.
    cams = ds.cameras()
    for i in range(0, len(ds), 5):
        obj = ds.object(i)
        lights = LightBatch(torch.from_numpy(ds.light_position[i : i + 1]), torch.from_numpy(ds.ambient[i : i + 1]))
        again = render_views(obj, cams[i], 32, lighting="sampled", lights=lights)
        stored = torch.from_numpy(ds.rgba[i]).float() / 255
        assert torch.allclose(stored, again[0], atol=1 / 255 + 1e-6)
        assert float(np.linalg.norm(ds.c2w[i][:3, 3])) == pytest.approx(float(ds.distance[i]), rel=1e-4)


def test_cameras_and_labels_are_consistent(written):
    out, index = written
    ds = load_dataset(out)
    cams = ds.cameras()
    rebuilt = CameraBatch.from_spherical(cams.elevation, cams.azimuth, cams.distance, cams.fovy)
    assert torch.allclose(rebuilt.c2w, cams.c2w, atol=1e-5)
    az = np.rad2deg(ds.azimuth)
    rel = np.abs((az + 180) % 360 - 180)
    np.testing.assert_array_equal(ds.facing, np.where(rel <= 45, 0, np.where(rel >= 135, 2, 1)))
    for i in range(len(ds)):
        preset = index["presets"][ds.preset[i]]
        el = math.degrees(float(ds.elevation[i]))
        if preset == "xbind_phase_ii":
            assert -10 - 1e-4 <= el <= 45 + 1e-4 and 1.5 - 1e-5 <= ds.distance[i] <= 2.0 + 1e-5
        elif preset == "xbind_phase_i":
            assert ds.distance[i] == pytest.approx(2.5) and math.degrees(float(ds.fovy[i])) == pytest.approx(40.0)
        else:
            assert 0 - 1e-4 <= el <= 30 + 1e-4
        text = ds.caption(i)
        assert mentions(text, COLOR_WORDS[ds.object(i).color]), text
        start = int(ds.object_index[i]) * index["captions_per_object"]
        assert start <= ds.caption_id[i] < start + index["captions_per_object"]


def test_views_depend_only_on_seed_and_object(written):
    out, _ = written
    ds = load_dataset(out)
    alone = render_object_views(OBJECTS[1], 4, TINY, seed=3)  # not rendered among the others
    np.testing.assert_array_equal(alone["rgba"], ds.rgba[4:8])
    np.testing.assert_array_equal(alone["azimuth"], ds.azimuth[4:8])
    cfg = replace(TINY, camera_mix=(("xbind_phase_i", 1.0),))
    a = render_object_views(OBJECTS[1], 3, cfg, seed=5)
    b = render_object_views(OBJECTS[1], 3, cfg, seed=5)
    c = render_object_views(OBJECTS[1], 3, cfg, seed=6)
    np.testing.assert_array_equal(a["rgba"], b["rgba"])
    assert not np.array_equal(a["azimuth"], c["azimuth"])


def test_supersampling_and_lighting_options():
    cams = CameraBatch.from_spherical(0.3, 0.5, 2.5, math.radians(40))
    obj = OBJECTS[0]
    analytic = render_views(obj, cams, 32)
    super2 = render_views(obj, cams, 32, supersample=2)
    # Same coverage (a disk): areas agree within a pixel's worth of boundary.
    assert abs(float(analytic[..., 3].sum() - super2[..., 3].sum())) < 8.0
    albedo = render_views(obj, cams, 32, lighting="albedo")
    inside = albedo[0, ..., 3] >= 1.0 - 1e-6  # pixels the edge antialiasing did not blend
    assert torch.allclose(albedo[0][inside][:, :3], torch.tensor([0.85, 0.15, 0.12]), atol=1e-4)
    with pytest.raises(InputError):
        render_views(obj, cams, 32, lighting="sampled")  # no lights given


def test_multiview_groups_share_elevation_and_are_90_degrees_apart():
    cfg = replace(TINY, views_per_group=4)
    cams, presets = sample_view_cameras(cfg, 8, torch.Generator().manual_seed(0))
    for g in range(2):
        block = slice(4 * g, 4 * g + 4)
        assert torch.allclose(cams.elevation[block], cams.elevation[4 * g].expand(4))
        steps = torch.remainder(torch.diff(cams.azimuth[block]), 2 * math.pi)
        assert torch.allclose(steps, torch.full((3,), math.pi / 2), atol=1e-5)
        assert len(set(presets[block].tolist())) == 1
    with pytest.raises(InputError):
        sample_view_cameras(cfg, 6, torch.Generator())


def test_bad_configurations_are_refused(tmp_path):
    with pytest.raises(InputError):
        render_dataset(OBJECTS[:1], 2, tmp_path, camera_mix={"dreamfusion": 1.0})
    with pytest.raises(InputError):
        render_dataset([], 2, tmp_path)
    with pytest.raises(InputError):
        render_dataset(OBJECTS[:1] * 2, 2, tmp_path)
    with pytest.raises(InputError):
        render_dataset(OBJECTS[:1], 2, tmp_path, cfg=DatasetConfig(lighting="neon"))
    with pytest.raises(InputError):
        load_dataset(tmp_path / "missing")


def test_ground_truth_export_reloads(tmp_path):
    index = export_ground_truth(OBJECTS, tmp_path, formats=("ply", "glb"))
    listed = json.loads((tmp_path / "index.json").read_text())
    assert listed == index and [r["id"] for r in listed["objects"]] == [o.id for o in OBJECTS]
    for obj, record in zip(OBJECTS, listed["objects"]):
        mesh = obj.mesh()
        ply = trimesh.load(tmp_path / record["files"]["ply"], process=False)
        assert ply.vertices.shape == tuple(mesh.vertices.shape) and ply.faces.shape == tuple(mesh.faces.shape)
        np.testing.assert_allclose(ply.vertices, mesh.vertices.numpy(), atol=1e-6)  # z-up, as rendered
        assert record["radius"] <= 0.8 and record["n_faces"] == mesh.num_faces
        # Welding the split vertices gives back a union of closed parts: every edge is used by
        # an even number of faces (two per part that has it).
        welded = ply.copy()
        welded.merge_vertices(merge_tex=True, merge_norm=True)
        _, uses = np.unique(welded.edges_sorted, axis=0, return_counts=True)
        assert (uses % 2 == 0).all(), obj.id
        if len(obj.solid_parts()) == 1:
            assert welded.is_watertight, obj.id
        glb = trimesh.load(tmp_path / record["files"]["glb"], force="mesh")
        assert len(glb.faces) == mesh.num_faces
        assert record["caption"] and record["has_front"] == obj.has_front


def test_motion_clips_are_written_with_one_camera_per_clip(tmp_path):
    from anyto3d.zoo import motion

    obj = OBJECTS[1]
    index = render_clips([obj], tmp_path, motions=("spin", "bounce"), n_frames=4, seed=1)
    data = np.load(tmp_path / "clips.npz")
    assert data["rgba"].shape == (2, 4, 32, 32, 4) and data["rgba"].dtype == np.uint8
    assert index["n_clips"] == 2 and index["motions"] == ["spin", "bounce"]
    assert "spin" in index["captions"][0] or "rotat" in index["captions"][0] or "turn" in index["captions"][0]
    for clip_rgba in data["rgba"]:
        assert not np.array_equal(clip_rgba[0], clip_rgba[1])  # the object moves
    # Frame 0 of "spin" is the object at its base scale, from the clip's own camera.
    first = {k: torch.from_numpy(data[k][:1]) for k in ("c2w", "fovy", "elevation", "azimuth", "distance")}
    cam = CameraBatch(**first)
    still = motion.apply(obj.mesh(), motion.transform("spin", 0.0))
    frame0 = render_views(still, cam, 32, lighting="albedo")
    coverage = torch.from_numpy(data["rgba"][0, 0, ..., 3]).float() / 255
    assert torch.allclose(coverage, frame0[0, ..., 3], atol=1 / 255 + 1e-6)
    with pytest.raises(InputError):
        render_clips([obj], tmp_path, motions=("wobble",))


def test_rendering_twice_gives_identical_files(tmp_path):
    objects = OBJECTS[:2]
    a = render_dataset(objects, 2, tmp_path / "a", seed=9, cfg=TINY)
    b = render_dataset(objects, 2, tmp_path / "b", seed=9, cfg=TINY)
    assert (tmp_path / "a" / "index.json").read_bytes() == (tmp_path / "b" / "index.json").read_bytes()
    assert a["shards"] == b["shards"] and "images_per_s" in a
    assert json.loads((tmp_path / "a" / "timing.json").read_text())["elapsed_s"] > 0


def test_whole_in_frame_keeps_views_that_show_the_whole_object(written):
    alpha = np.zeros((3, 8, 8), np.uint8)
    alpha[0, 2:6, 2:6] = 255  # inside
    alpha[1, 2:6, 5:8] = 255  # crosses the right edge
    alpha[2, 0, 3] = 100  # a faint border pixel (antialiasing) does not count
    assert whole_in_frame(alpha).tolist() == [True, False, True]
    assert whole_in_frame(alpha.astype(np.float32) / 255).tolist() == [True, False, True]
    house = WorldObject.single("house", "blue")
    far, close = (CameraBatch.from_spherical(torch.tensor([0.3]), torch.tensor([0.5]), torch.tensor([d]),
                                             torch.tensor([math.radians(f)])) for d, f in ((2.5, 40.0), (1.5, 30.0)))
    assert whole_in_frame(render_views(house, far, 32)[..., 3].numpy()).tolist() == [True]
    assert whole_in_frame(render_views(house, close, 32)[..., 3].numpy()).tolist() == [False]
    data = load_dataset(written[0])
    assert data.framed.dtype == bool and data.framed.tolist() == whole_in_frame(data.rgba[..., 3]).tolist()
