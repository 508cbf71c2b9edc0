"""View consistency from synthetic judge outputs: agreement, facing, and the Janus detector."""

import math

import pytest
import torch
import torch.nn.functional as F

from anyto3d.cameras import orbit_cameras
from anyto3d.errors import InputError
from anyto3d.metrics.consistency import (
    NO_FACING,
    expected_facing,
    facing_accuracy,
    facing_balanced,
    majority_agreement,
    view_consistency,
)
from anyto3d.zoo.world import COLOR_NAMES, FACINGS, SHAPES, WorldObject

torch.set_num_threads(1)

AZ = orbit_cameras(120).azimuth  # 0°, 3°, ..., 357°
HOUSE = WorldObject.single("house", "red")


def one_hot(labels, classes):
    return F.one_hot(torch.as_tensor(labels), len(classes)).float()


def outputs(shape="house", color="red", facing=None, n=120):
    shapes = [SHAPES.index(shape)] * n if isinstance(shape, str) else [SHAPES.index(s) for s in shape]
    out = {"shape": one_hot(shapes, SHAPES), "color": one_hot([COLOR_NAMES.index(color)] * n, COLOR_NAMES)}
    if facing is not None:
        out["facing"] = one_hot(facing, FACINGS)
    return out


def true_facing():
    # By hand: front for azimuth ≤ 45° or ≥ 315°, back for 135°..225°, side otherwise.
    degrees = [3 * j for j in range(120)]
    return [0 if (a <= 45 or a >= 315) else 2 if 135 <= a <= 225 else 1 for a in degrees]


def test_correct_asset_is_fully_consistent():
    got = view_consistency(outputs(facing=true_facing()), AZ, HOUSE)
    assert got["facing_accuracy"] == got["facing_balanced"] == 1.0
    assert got["shape_agreement"] == got["color_agreement"] == 1.0
    assert got["shape_accuracy"] == got["color_accuracy"] == 1.0
    assert got["view_consistency"] == 1.0


def test_janus_asset_scores_lower_facing_accuracy():
    janus = view_consistency(outputs(facing=[0] * 120), AZ, HOUSE)
    # Only the 31 truly frontal views (0..45° and 315..357° in 3° steps: 16 + 15) are right.
    assert janus["facing_accuracy"] == pytest.approx(31 / 120)
    # balanced: the front sector all right, the side and back sectors all wrong
    assert janus["facing_balanced"] == pytest.approx(1 / 3)
    assert janus["view_consistency"] == pytest.approx(1 / 3)
    correct = view_consistency(outputs(facing=true_facing()), AZ, HOUSE)
    assert janus["view_consistency"] < correct["view_consistency"] - 0.5


def test_shape_disagreement_enters_the_product():
    shapes = ["house"] * 90 + ["cube"] * 30
    got = view_consistency(outputs(shape=shapes, facing=true_facing()), AZ, HOUSE)
    assert got["shape_agreement"] == pytest.approx(0.75)
    assert got["view_consistency"] == pytest.approx(0.75)
    # A Janus pattern on top multiplies: 0.75 × 1/3.
    both = view_consistency(outputs(shape=shapes, facing=[0] * 120), AZ, HOUSE)
    assert both["view_consistency"] == pytest.approx(0.75 / 3)


def test_a_featureless_asset_is_no_more_consistent_than_a_janus_one():
    # A symmetrised blob reads "side" everywhere: 58 of 120 views are side views (48°..132°
    # and 228°..312° in 3° steps: 29 + 29), so its plain facing accuracy beats Janus's 31/120.
    blob = view_consistency(outputs(facing=[1] * 120), AZ, HOUSE)
    janus = view_consistency(outputs(facing=[0] * 120), AZ, HOUSE)
    assert blob["facing_accuracy"] == pytest.approx(58 / 120) and blob["facing_accuracy"] > janus["facing_accuracy"]
    assert blob["facing_balanced"] == janus["facing_balanced"] == pytest.approx(1 / 3)
    assert blob["view_consistency"] == pytest.approx(janus["view_consistency"])


def test_no_facing_without_a_front_or_a_target():
    for target in (None, WorldObject.single("cube", "red")):
        got = view_consistency(outputs(shape="cube"), AZ, target)
        assert "facing_accuracy" not in got
        assert got["view_consistency"] == 1.0
    assert "shape_accuracy" not in view_consistency(outputs(), AZ, None)


def test_wrong_object_is_consistent_but_inaccurate():
    got = view_consistency(outputs(shape="sphere", color="blue", facing=true_facing()), AZ, HOUSE)
    assert got["shape_accuracy"] == 0.0 and got["color_accuracy"] == 0.0
    assert got["view_consistency"] == 1.0  # consistency is not accuracy


def test_helpers_by_hand():
    assert majority_agreement(torch.tensor([1, 1, 2, 3])) == 0.5
    az = torch.tensor([0.0, math.pi / 2, math.pi, -math.pi / 4])
    assert facing_accuracy(torch.tensor([0, 1, 2, 0]), az) == 1.0
    assert facing_accuracy(torch.tensor([0, 0, 0, 0]), az) == 0.5
    # sectors: front (0°, −45°), side (90°), back (180°); all front: 1, 0, 0 per sector
    assert facing_balanced(torch.tensor([0, 0, 0, 0]), az) == pytest.approx(1 / 3)
    assert facing_balanced(torch.tensor([0, 1, 2, 1]), az) == pytest.approx((0.5 + 1 + 1) / 3)


def test_bad_input():
    with pytest.raises(InputError):
        view_consistency(outputs(), AZ, HOUSE)  # house has a front: facing head needed
    with pytest.raises(InputError):
        view_consistency(outputs(n=10), AZ, None)  # 10 predictions for 120 views


def _left_of_readings(subject_everywhere: bool):
    """Judge outputs over the orbit for "cone-green left of cube-yellow": the judge names views
    view-relatively, so a right asset reads the yellow cube as the subject from behind; an asset
    that shows the green cone on the image's left from every side (a front painted all round)
    reads the cone as the subject everywhere."""
    degrees = [3 * j for j in range(120)]
    back = [90 < a < 270 for a in degrees]
    swap = [b and not subject_everywhere for b in back]
    part = lambda name: one_hot([1 + SHAPES.index(name)] * 1, ("none", *SHAPES))[0]
    tint = lambda name: one_hot([1 + COLOR_NAMES.index(name)] * 1, ("none", *COLOR_NAMES))[0]
    return {
        "shape": one_hot([SHAPES.index("cube" if s else "cone") for s in swap], SHAPES),
        "color": one_hot([COLOR_NAMES.index("yellow" if s else "green") for s in swap], COLOR_NAMES),
        "part_shape": torch.stack([part("cone" if s else "cube") for s in swap]),
        "second_color": torch.stack([tint("green" if s else "yellow") for s in swap]),
        # facing of the named object: the mirror is seen from the front half
        "facing": one_hot([0 if (a <= 45 or a >= 315 or 135 <= a <= 225) else 1 for a in degrees], FACINGS),
    }


def test_a_left_of_target_is_read_in_its_own_frame():
    target = WorldObject.from_id("cone-green.left_of.cube-yellow")
    right = view_consistency(_left_of_readings(subject_everywhere=False), AZ, target)
    assert right["shape_accuracy"] == right["color_accuracy"] == 1.0
    assert right["shape_agreement"] == right["color_agreement"] == 1.0
    assert right["facing_accuracy"] == right["facing_balanced"] == 1.0
    # the cone on the left from every side is wrong from behind: 59 of 120 views are behind
    # (93°..267° in 3° steps), and their subject is then read from the part heads: the cube
    wrong = view_consistency(_left_of_readings(subject_everywhere=True), AZ, target)
    assert wrong["color_accuracy"] == wrong["shape_accuracy"] == pytest.approx(61 / 120)
    assert wrong["color_agreement"] == pytest.approx(61 / 120)
    # a target with no view-relative name reads the subject heads only (no part heads needed)
    house = view_consistency(outputs(facing=true_facing()), AZ, HOUSE)
    assert house["view_consistency"] == 1.0


def test_a_marked_cube_is_a_plain_cube_from_behind():
    target = WorldObject.from_id("marked_cube-green")
    degrees = [3 * j for j in range(120)]
    back = [90 < a < 270 for a in degrees]  # 59 views (93°..267°)
    # right: the mark shows from the front half only; the back half reads a plain cube, and its
    # facing (a plain cube has none) is not scored, whatever the judge says there
    right = outputs(["cube" if b else "marked_cube" for b in back], "green", facing=[2 if b else f for b, f in zip(back, true_facing())])
    got = view_consistency(right, AZ, target)
    assert got["shape_accuracy"] == got["shape_agreement"] == got["color_accuracy"] == 1.0
    assert got["facing_accuracy"] == got["facing_balanced"] == 1.0 and got["view_consistency"] == 1.0
    # facing is scored on the 61 front-half views only: front and side sectors
    assert (expected_facing(AZ, target) == NO_FACING).sum() == 59
    assert set(expected_facing(AZ, target).tolist()) == {NO_FACING, 0, 1}
    # Janus: the mark shows from every side; its back-half views read the target's own name,
    # which from there is wrong
    janus = view_consistency(outputs("marked_cube", "green", facing=[0] * 120), AZ, target)
    assert janus["shape_accuracy"] == pytest.approx(61 / 120) and janus["shape_agreement"] == pytest.approx(61 / 120)
    assert janus["view_consistency"] < got["view_consistency"] - 0.5
