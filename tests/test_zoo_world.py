"""The tiny world's objects, facing labels, compositions, motions and splits (anyto3d/zoo)."""

import math

import numpy as np
import pytest
import torch

from anyto3d.cameras import CameraBatch
from anyto3d.errors import InputError
from anyto3d.zoo import motion, splits
from anyto3d.zoo.dataset import render_views
from anyto3d.zoo import shapes
from anyto3d.zoo.shapes import ACCENT, COLORS, reconstruction_scene
from anyto3d.zoo.world import (
    ASYMMETRIC_SHAPES,
    COLOR_NAMES,
    RADIUS,
    SECONDARY,
    SHAPES,
    TILTABLE,
    Item,
    WorldObject,
    all_compositions,
    behind,
    bounding_radius,
    catalogue,
    composition_objects,
    facing,
    facing_index,
    single_objects,
)

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def world():
    return catalogue()


def _cams(azimuths_deg, elevation_deg=15.0, distance=2.5, fovy_deg=40.0):
    n = len(azimuths_deg)
    return CameraBatch.from_spherical(
        torch.full((n,), math.radians(elevation_deg)),
        torch.deg2rad(torch.tensor(azimuths_deg, dtype=torch.float32)),
        torch.full((n,), distance),
        torch.full((n,), math.radians(fovy_deg)),
    )


def _mask_iou(a, b):
    a, b = a > 0.5, b > 0.5
    return float((a & b).sum()) / float((a | b).sum())


# --- catalogue -------------------------------------------------------------------------------


def test_at_least_eight_shapes_by_eight_colours(world):
    assert len(SHAPES) >= 8 and len(COLOR_NAMES) >= 8
    ids = {o.id for o in world}
    for shape in SHAPES:
        for color in COLOR_NAMES:
            assert f"{shape}-{color}" in ids
    for shape in TILTABLE:
        assert f"{shape}-tilted-red" in ids
    assert len(ids) == len(world), "object ids must be unique"
    assert {o.relation for o in world} == {None, "on", "left_of", "in_front_of"}


def test_ids_are_deterministic_and_round_trip(world):
    assert [o.id for o in catalogue()] == [o.id for o in world]
    for obj in world:
        assert WorldObject.from_id(obj.id) == obj
    assert WorldObject.single("torus", "blue", "tilted").id == "torus-tilted-blue"
    comp = WorldObject.composition(Item("cone", "red"), "on", Item("cube", "blue"))
    assert comp.id == "cone-red.on.cube-blue"


def test_a_second_colour_other_than_the_pairing_is_named_and_rendered():
    house = Item("house", "blue", second="red")
    assert house.id == "house-blue+red" and house.secondary == "red"
    assert Item.from_id("house-blue+red") == house and WorldObject.from_id("house-blue+red").secondary == "red"
    # the world's fixed pairing has one name only
    assert Item("house", "blue", second=SECONDARY["blue"]) == Item("house", "blue")
    assert Item("house", "blue", second=SECONDARY["blue"]).id == "house-blue"
    with pytest.raises(InputError):
        Item("cube", "blue", second="red")  # a one-colour shape
    with pytest.raises(InputError):
        Item("house", "blue", second="blue")
    # the second colour is the roof's: the mesh carries red, not the pairing's orange
    colours = {tuple(round(float(x), 2) for x in c) for c in WorldObject.from_id("house-blue+red").mesh().colors}
    assert tuple(round(x, 2) for x in COLORS["red"]) in colours
    assert tuple(round(x, 2) for x in COLORS[SECONDARY["blue"]]) not in colours


def test_original_palette_is_kept():
    assert COLORS["red"] == (0.85, 0.15, 0.12) and COLORS["yellow"] == (0.92, 0.82, 0.15)
    assert reconstruction_scene().num_faces > 0


def test_every_part_is_closed_and_every_mesh_fits_the_radius(world):
    for obj in world:
        for part in obj.solid_parts():
            assert part.is_watertight, f"{obj.id}: a part is not closed"
            assert part.volume > 0, f"{obj.id}: a part is inside out"
        mesh = obj.mesh()
        assert torch.isfinite(mesh.vertices).all() and torch.isfinite(mesh.colors).all()
        assert bounding_radius(mesh) <= 0.8
        assert bounding_radius(mesh) == pytest.approx(RADIUS, abs=1e-4)
        lo, hi = mesh.bounding_box()
        assert torch.allclose((lo + hi) / 2, torch.zeros(3), atol=1e-5), f"{obj.id} is not centred"
        assert mesh.colors.min() >= 0 and mesh.colors.max() <= 1


def test_bad_objects_are_refused():
    with pytest.raises(InputError):
        Item("teapot", "red")
    with pytest.raises(InputError):
        Item("cube", "mauve")
    with pytest.raises(InputError):
        Item("cube", "red", "tilted")  # cubes have no tilted variant
    with pytest.raises(InputError):
        WorldObject.composition(Item("cone", "red"), "on", Item("cube", "red"))  # same colour
    with pytest.raises(InputError):
        WorldObject.composition(Item("cube", "red"), "on", Item("sphere", "blue"))  # no flat top
    with pytest.raises(InputError):
        WorldObject.from_id("cube-red.beside")


def test_crease_splitting_keeps_faces_and_flattens_boxes_only():
    box = shapes.box((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5))
    mesh = shapes.parts_to_mesh([shapes.ColoredPart(box, (1.0, 0.0, 0.0))])
    assert mesh.num_vertices == 24 and mesh.num_faces == 12  # 4 corners per face, faces kept
    # Same faces in the same order: each face's corners are where they were.
    assert torch.allclose(mesh.face_vertices(), torch.as_tensor(box.vertices[box.faces], dtype=torch.float32))
    # Vertex normals are the face normals: a box renders flat.
    normals = mesh.vertex_normals()[mesh.faces]  # [F, 3, 3]
    assert torch.allclose(normals, mesh.face_normals()[:, None].expand_as(normals), atol=1e-6)
    ball = shapes.sphere(0.5, subdivisions=2)
    smooth = shapes.parts_to_mesh([shapes.ColoredPart(ball, (0.0, 1.0, 0.0))])
    assert smooth.num_vertices == len(ball.vertices)  # no crease on a sphere: nothing split
    # A colour boundary splits even where the surface is smooth.
    colors = np.where((ball.triangles_center[:, 0] > 0)[:, None], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0])
    two_tone = shapes.parts_to_mesh([shapes.ColoredPart(ball, face_colors=colors)])
    assert two_tone.num_vertices > len(ball.vertices)
    face_colors = two_tone.colors[two_tone.faces]  # [F, 3 corners, 3]
    assert torch.allclose(face_colors, face_colors[:, :1].expand_as(face_colors))  # never blended


# --- asymmetry and facing --------------------------------------------------------------------


def test_facing_labels():
    assert facing(0) == "front" and facing(90) == "side" and facing(180) == "back"
    assert facing(-90) == "side" and facing(-180) == "back" and facing(360) == "front"
    assert facing(45) == "front" and facing(46) == "side" and facing(134) == "side" and facing(135) == "back"
    assert facing(-45) == "front" and facing(-135) == "back" and facing(270) == "side"
    np.testing.assert_array_equal(facing_index(np.array([0.0, 90.0, 180.0, 225.0, 240.0, 315.0])), [0, 1, 2, 2, 1, 0])
    assert WorldObject.single("house", "red").facing(170) == "back"


def test_asymmetric_objects_differ_front_to_back_and_symmetric_ones_do_not():
    cams = _cams([0.0, 180.0])
    asymmetric = [WorldObject.single(s, "red") for s in ASYMMETRIC_SHAPES]
    asymmetric += [WorldObject.single(s, "blue", "tilted") for s in TILTABLE]
    asymmetric += [o for o in composition_objects(1) if o.relation != "on"]
    for obj in asymmetric:
        assert obj.has_front
        x = render_views(obj, cams, 32)
        diff = (x[0] - x[1]).abs().mean().item()
        assert diff > 0.01, f"{obj.id}: front and back renders differ by only {diff:.4f}"
    for shape in ("sphere", "cone", "cylinder", "torus", "capsule"):
        obj = WorldObject.single(shape, "green")
        assert obj.symmetry == "rotational" and not obj.has_front
        x = render_views(obj, cams, 32)
        assert (x[0] - x[1]).abs().mean().item() < 0.003, shape


def test_mirror_shaped_objects_show_mirror_images_front_and_back():
    # Arrow, L-block, mug and tilted torus are symmetric under x -> -x, so the back view is the
    # front view flipped left-right, and (being asymmetric in y) not the front view itself.
    cams = _cams([0.0, 180.0], elevation_deg=0.0)
    for obj in [WorldObject.single(s, "red") for s in ("arrow", "lblock", "mug")] + [
        WorldObject.single("torus", "red", "tilted")
    ]:
        alpha = render_views(obj, cams, 32)[..., 3]
        assert _mask_iou(alpha[0].flip(1), alpha[1]) > 0.97, obj.id
        assert _mask_iou(alpha[0], alpha[1]) < 0.92, obj.id


def _color_pixels(rgb, color, tol=0.06):
    return ((rgb - torch.tensor(color)).abs().max(dim=-1).values < tol)


def test_front_features_are_seen_from_the_front_only():
    cams = _cams([0.0, 180.0])
    house = render_views(WorldObject.single("house", "red"), cams, 48, lighting="albedo")[..., :3]
    door = [int(_color_pixels(v, ACCENT).sum()) for v in house]
    assert door[0] > 20 and door[1] == 0  # door and windows on the front wall only
    cube = WorldObject.single("marked_cube", "yellow")
    rgb = render_views(cube, cams, 32, lighting="albedo")[..., :3]
    marked = [int(_color_pixels(v, COLORS[SECONDARY["yellow"]]).sum()) for v in rgb]
    assert marked[0] > 100 and marked[1] == 0


def test_orientation_conventions_left_is_minus_y_and_tilt_leans_left():
    # Seen from the front camera, image-right is +y: the arrow's head is on the right, the mug's
    # handle on the right, and the tilted torus's top leans left.
    cams = _cams([0.0], elevation_deg=0.0)
    for shape in ("arrow", "mug"):
        alpha = render_views(WorldObject.single(shape, "red"), cams, 32)[0, ..., 3]
        cols = torch.nonzero(alpha > 0.5)[:, 1].float()
        height = (alpha > 0.5).sum(0).float()  # per column
        assert height[cols.max().long() - 3] > 0 and alpha.shape[1] / 2 < cols.mean() + 3
        if shape == "arrow":  # the head (taller than the shaft) is right of centre
            assert height[:16].max() < height[16:].max()
    # A tilted cylinder's axis leans left (its top end is left of centre); a tilted torus's
    # axis leans the same way, so its ring rises from lower left to upper right.
    for shape, top_left in (("cylinder", True), ("torus", False)):
        alpha = render_views(WorldObject.single(shape, "red", "tilted"), cams, 32)[0, ..., 3]
        pixels = torch.nonzero(alpha > 0.5)
        top = pixels[pixels[:, 0] == pixels[:, 0].min(), 1].float().mean()
        bottom = pixels[pixels[:, 0] == pixels[:, 0].max(), 1].float().mean()
        assert (top < 16 < bottom) if top_left else (bottom < 16 < top), shape


def test_composition_relations_hold_geometrically():
    for relation in ("on", "left_of", "in_front_of"):
        for obj in all_compositions(relation)[::97]:
            a, b = (m.vertices for m in obj.item_meshes())
            if relation == "on":
                assert a[:, 2].min() >= b[:, 2].max() - 1e-5
                assert abs(a[:, :2].mean(0)).max() < 0.05 and abs(b[:, :2].mean(0)).max() < 0.05
            elif relation == "left_of":
                assert a[:, 1].max() < b[:, 1].min()
                assert float(a[:, 2].min()) == pytest.approx(float(b[:, 2].min()), abs=1e-5)  # one ground
            else:
                assert a[:, 0].min() > b[:, 0].max()
                assert float(a[:, 2].min()) == pytest.approx(float(b[:, 2].min()), abs=1e-5)


def test_left_of_is_left_in_the_front_camera_image():
    obj = WorldObject.composition(Item("sphere", "green"), "left_of", Item("cube", "yellow"))
    rgb = render_views(obj, _cams([0.0, 180.0]), 32, lighting="albedo")[..., :3]
    front_a = torch.nonzero(_color_pixels(rgb[0], COLORS["green"]))[:, 1].float().mean()
    front_b = torch.nonzero(_color_pixels(rgb[0], COLORS["yellow"]))[:, 1].float().mean()
    back_a = torch.nonzero(_color_pixels(rgb[1], COLORS["green"]))[:, 1].float().mean()
    back_b = torch.nonzero(_color_pixels(rgb[1], COLORS["yellow"]))[:, 1].float().mean()
    assert front_a < front_b and back_a > back_b  # left from the front, right from the back


def test_left_of_seen_from_behind_is_its_mirror_seen_from_the_front():
    obj = WorldObject.composition(Item("cone", "green"), "left_of", Item("cube", "yellow"))
    mirror = WorldObject.composition(Item("cube", "yellow"), "left_of", Item("cone", "green"))
    assert obj.mirrored == mirror and mirror.mirrored == obj
    # the picture itself: from 180° and 150° it is the mirror composition from 0° and -30°
    back = render_views(obj, _cams([180.0, 150.0]), 32, lighting="albedo")
    front = render_views(mirror, _cams([0.0, -30.0]), 32, lighting="albedo")
    assert torch.allclose(back, front, atol=1e-4)
    # and it is named that way from the back half only (exactly side-on is the front half's)
    assert obj.seen_from(180.0) == (mirror, 360.0) and obj.seen_from(-100.0) == (mirror, 80.0)
    assert obj.seen_from(90.0) == (obj, 90.0) and obj.seen_from(-45.0) == (obj, -45.0)
    assert behind(91.0) and not behind(90.0) and behind(np.array([0.0, 135.0, -135.0])).tolist() == [False, True, True]


def test_marked_cube_seen_from_behind_is_a_plain_cube():
    obj, plain = WorldObject.from_id("marked_cube-green"), WorldObject.from_id("cube-green")
    # any camera behind the marked face's plane: back half, high and low, near and far
    cams = CameraBatch.from_spherical(
        torch.tensor([0.0, 40.0, -40.0, 10.0]).deg2rad(), torch.tensor([180.0, 95.0, -120.0, 150.0]).deg2rad(),
        torch.tensor([2.5, 1.5, 3.0, 1.5]), torch.tensor([40.0, 30.0, 60.0, 45.0]).deg2rad(),
    )
    assert torch.allclose(render_views(obj, cams, 32), render_views(plain, cams, 32), atol=1e-4)
    assert not torch.allclose(render_views(obj, _cams([60.0]), 32), render_views(plain, _cams([60.0]), 32), atol=1e-2)
    assert obj.seen_from_behind == plain and obj.seen_from(-120.0) == (plain, -120.0)
    assert obj.seen_from(60.0) == (obj, 60.0) and obj.seen_from(90.0) == (obj, 90.0)
    assert plain.seen_from_behind == plain and WorldObject.from_id("house-red").seen_from_behind.id == "house-red"


def test_only_left_of_is_renamed_from_behind():
    for oid in ("cone-red.on.cube-blue", "sphere-red.in_front_of.cube-blue", "house-red", "cube-red"):
        obj = WorldObject.from_id(oid)
        assert obj.mirrored == obj and obj.seen_from(180.0) == (obj, 180.0)
    # "in front of" is not its mirror from behind: the front part is the smaller one
    obj = WorldObject.from_id("sphere-red.in_front_of.cube-blue")
    other = WorldObject.from_id("cube-blue.in_front_of.sphere-red")
    assert not torch.allclose(render_views(obj, _cams([180.0]), 32, lighting="albedo"),
                              render_views(other, _cams([0.0]), 32, lighting="albedo"), atol=1e-2)  # fmt: skip


# --- motion ----------------------------------------------------------------------------------


def test_spin_preserves_radius_and_bounce_moves_up():
    obj = WorldObject.single("house", "red")
    frames = motion.clip(obj, "spin", 8)
    radii = [bounding_radius(m) for m in frames]
    assert np.allclose(radii, RADIUS * motion.BASE_SCALE, atol=1e-5)
    assert not torch.allclose(frames[0].vertices, frames[2].vertices)
    # A quarter turn maps the front (+x) to +y.
    quarter = motion.apply(obj.mesh(), motion.transform("spin", 0.25)).vertices
    base = obj.mesh().vertices * motion.BASE_SCALE
    assert torch.allclose(quarter[:, 0], -base[:, 1], atol=1e-5)
    assert torch.allclose(quarter[:, 1], base[:, 0], atol=1e-5)

    bounce = motion.clip(obj, "bounce", 8)
    lows = [float(m.vertices[:, 2].min()) for m in bounce]
    assert lows[2] - lows[0] == pytest.approx(motion.AMPLITUDE, abs=1e-5)  # t = 1/4: top of the hop
    assert all(low >= lows[0] - 1e-6 for low in lows)
    centres_xy = [m.vertices[:, :2].mean(0) for m in bounce]
    assert all(torch.allclose(c, centres_xy[0], atol=1e-6) for c in centres_xy)


def test_slide_pulse_grow_and_frames_differ():
    obj = WorldObject.single("cube", "blue")
    slide = motion.clip(obj, "slide", 12)
    ys = [float(m.vertices[:, 1].mean()) for m in slide]
    assert max(ys) - min(ys) == pytest.approx(2 * motion.AMPLITUDE, abs=0.02)
    pulse = [bounding_radius(m) for m in motion.clip(obj, "pulse", 8)]
    assert pulse[2] > pulse[0] > pulse[6]
    grow = [bounding_radius(m) for m in motion.clip(obj, "grow", 10)]
    assert all(b > a for a, b in zip(grow, grow[1:]))
    for name in motion.MOTIONS:
        frames = motion.clip(obj, name, 8)
        assert len(frames) == 8
        assert max(bounding_radius(m) for m in frames) < 0.9
        assert any(not torch.allclose(frames[0].vertices, f.vertices) for f in frames[1:]), name
    with pytest.raises(InputError):
        motion.clip(obj, "wobble", 8)


def test_motion_captions():
    obj = WorldObject.single("cube", "red")
    assert motion.motion_caption(obj, "spin") == "a red cube spinning"
    texts = motion.motion_captions(obj, "bounce", 12, 0)
    assert all(any(w in t for w in ("bounc", "hop", "jump")) for t in texts)
    assert len(set(texts)) > 3


# --- splits ----------------------------------------------------------------------------------


def test_no_heldout_combination_is_in_training(world):
    train, held = splits.train_objects(world), splits.heldout_objects(world)
    assert len(train) + len(held) == len(world) and len(held) > 0
    held_items = {(s, o, c) for (s, o), c in splits.HELDOUT_COLOR.items()}
    for obj in train:
        for item in obj.items:
            assert (item.shape, item.orientation, item.color) not in held_items, obj.id
    assert not {o.id for o in train} & {o.id for o in held}
    held_comps = [o for o in held if o.relation is not None]
    assert len(held_comps) >= 6 and {o.relation for o in held_comps} == {"on", "left_of", "in_front_of"}
    # Every shape variant and every colour is still seen in training.
    assert {(o.shape, o.orientation) for o in train if o.relation is None} == set(splits.HELDOUT_COLOR)
    assert {o.color for o in train} == set(COLOR_NAMES)
    assert len(single_objects()) - len(splits.HELDOUT_COLOR) == sum(o.relation is None for o in train)


def test_the_judges_extra_objects_are_never_held_out_nor_in_the_catalogue(world):
    extra = splits.judge_objects()
    ids = [o.id for o in extra]
    assert len(set(ids)) == len(ids) and not set(ids) & {o.id for o in world}
    assert not any(splits.is_heldout(o) for o in extra)
    comps = [o for o in extra if o.relation is not None]
    assert {o.relation for o in comps} == {"on", "left_of", "in_front_of"}
    # many more compositions than the catalogue's training ones, and every subject colour
    assert len(comps) > 10 * sum(o.relation is not None for o in splits.train_objects(world))
    assert {o.color for o in comps} == set(COLOR_NAMES)
    two_colour = [o for o in extra if o.relation is None]
    assert two_colour and all(o.secondary not in (o.color, SECONDARY[o.color]) for o in two_colour)
    assert {o.secondary for o in two_colour if o.id.startswith("house-red+")} == set(COLOR_NAMES) - {"red", "blue"}


def test_suites_are_heldout_and_include_asymmetric_objects(world):
    asym = splits.suite("asymmetric")
    assert len(asym) == 8 and all(o.has_front and splits.is_heldout(o) for o in asym)
    evaluation = splits.suite("eval", world)
    assert len(evaluation) == 16 and all(splits.is_heldout(o) for o in evaluation)
    assert {o.relation for o in splits.suite("compositions", world)} >= {"on", "left_of", "in_front_of"}
    assert [o.id for o in splits.suite("audio", world)] == [o.id for o in evaluation]
    with pytest.raises(InputError):
        splits.suite("nope")
