"""The tiny world's evaluation (anyto3d.zoo.evaluate): motion classifier, targets, metrics JSON."""

import json
import math

import numpy as np
import pytest
import torch

from anyto3d.errors import InputError
from anyto3d.zoo.evaluate import (
    STATIC,
    TARGETS,
    EvalConfig,
    classify_motion,
    evaluate_zoo,
    expected_motion,
    load_clip_rgb,
    lookup,
    motion_accuracy,
    motion_features,
    novel_view_requests,
    passed,
    train_seconds,
)
from anyto3d.zoo.motion import MOTIONS
from anyto3d.zoo.judge import IGNORE
from anyto3d.zoo.world import SHAPES, WorldObject

# ---------------------------------------------------------------------------------------------
# Motion classifier
# ---------------------------------------------------------------------------------------------


def _disc_clip(motion: str, n: int = 8, size: int = 32) -> torch.Tensor:
    """A red disc doing ``motion`` (the laws of anyto3d.zoo.motion, in image units) on white."""
    t = np.arange(n) / n
    x0, y0, r = np.zeros(n), np.zeros(n), np.full(n, 0.18)
    if motion == "bounce":
        y0 = 0.25 * 0.45 * np.abs(np.sin(2 * np.pi * t))
    elif motion == "slide":
        x0 = 0.25 * 0.45 * np.sin(2 * np.pi * t)
    elif motion == "pulse":
        r = r * (1 + 0.25 * np.sin(2 * np.pi * t))
    elif motion == "grow":
        r = r * (0.4 + 0.6 * t)
    ys, xs = np.mgrid[0:size, 0:size]
    xs, ys = (xs + 0.5) / size - 0.5, 0.5 - (ys + 0.5) / size
    frames = np.ones((n, size, size, 3))
    for k in range(n):
        # antialiased edge: coverage ramps over one pixel
        cover = np.clip((r[k] - np.hypot(xs - x0[k], ys - y0[k])) * size + 0.5, 0, 1)
        frames[k] = 1 - cover[..., None] * (1 - np.array([0.9, 0.1, 0.1]))
    return torch.from_numpy(frames).float()


@pytest.mark.parametrize("motion", ["bounce", "slide", "pulse", "grow"])
def test_motion_classifier_on_analytic_disc_clips(motion):
    assert classify_motion(_disc_clip(motion)) == motion


def test_a_still_disc_is_static_and_a_spinning_sphere_is_expected_static():
    assert classify_motion(_disc_clip("none")) == STATIC
    assert expected_motion(WorldObject.single("sphere", "red"), "spin") == STATIC
    assert expected_motion(WorldObject.single("house", "red"), "spin") == "spin"
    assert expected_motion(WorldObject.single("sphere", "red"), "bounce") == "bounce"
    with pytest.raises(InputError):
        expected_motion(WorldObject.single("sphere", "red"), "dance")


def test_motion_features_measure_the_disc_laws():
    f = motion_features(_disc_clip("slide"))
    # centroid amplitude 0.1125 image widths over an object of size √(π 0.18²) ≈ 0.319
    assert f["slide"] == pytest.approx(0.1125 / math.sqrt(math.pi * 0.18**2), rel=0.1)
    assert f["pulse"] < 0.05 and f["grow"] < 0.05 and f["shape"] < 0.02
    g = motion_features(_disc_clip("grow"))
    assert g["slide"] < 0.02 and g["bounce"] < 0.02
    with pytest.raises(InputError):
        motion_features(torch.ones(1, 8, 8, 3))


def test_facing_changes_count_as_spin_evidence():
    still = _disc_clip("none")
    turning = torch.tensor([0, 0, 1, 1, 2, 2, 1, 1])
    assert classify_motion(still, facing=torch.zeros(8, dtype=torch.long)) == STATIC
    assert classify_motion(still, facing=turning) == "spin"


def test_motion_classifier_on_rendered_ground_truth_clips(tmp_path):
    """≥ 90 % on real renders (render_clips, sampled cameras and lights) of objects with and
    without a front, every motion; the spin of the rotational torus must read as static."""
    from anyto3d.zoo.dataset import render_clips

    objects = [WorldObject.single(s, c) for s, c in (("house", "red"), ("chair", "blue"), ("cube", "green"), ("torus", "yellow"))]
    render_clips(objects, tmp_path, clips_per_pair=1, n_frames=8, seed=3)
    rgb, objs, motions = load_clip_rgb(tmp_path)
    assert rgb.shape == (20, 8, 32, 32, 3) and len(objs) == len(motions) == 20
    result = motion_accuracy(rgb, objs, motions)
    assert result["n"] == 20
    assert result["accuracy"] >= 0.9, result
    assert set(result["per_motion"]) == set(MOTIONS)
    with pytest.raises(InputError):
        motion_accuracy(rgb[:2], objs[:1], motions[:2])


# ---------------------------------------------------------------------------------------------
# Novel-view requests, targets, train seconds
# ---------------------------------------------------------------------------------------------


def test_novel_view_requests_by_hand():
    from anyto3d.zoo.evaluate import _seen_labels

    ref = np.array([-16.5, 30.0, 0.0])
    asked = novel_view_requests(ref)
    np.testing.assert_array_equal(asked, [[180, 90], [180, -90], [180, -90]])
    # -16.5+180 = 163.5 back, -16.5+90 = 73.5 side; 30+180 = 210 ≡ -150 back, 30-90 = -60 side
    house = WorldObject.single("house", "red")
    seen = _seen_labels([house] * 6, (ref[:, None] + asked).reshape(-1))
    np.testing.assert_array_equal(seen["facing"].view(3, 2), [[2, 1], [2, 1], [2, 1]])
    # a marked cube asked from behind is a plain cube, its facing not scored
    cube = _seen_labels([WorldObject.single("marked_cube", "red")] * 2, [163.5, 73.5])
    assert cube["shape"].tolist() == [SHAPES.index("cube"), SHAPES.index("marked_cube")]
    assert cube["facing"].tolist() == [IGNORE, 1]


def test_passed_compares_each_figure_with_its_target():
    targets = {"binder.text_to_image": 0.95, "judge.shape": 0.98, "priors.video.score": 0.9, "judge.color": 0.98}
    metrics = {
        "binder": {"text_to_image": 0.95},  # equal to the target: passes
        "judge": {"shape": 0.97, "color": float("nan")},  # below; non-finite
        "priors": {},  # missing
    }
    got = passed(metrics, targets)
    assert got == {
        "binder.text_to_image": True,
        "judge.shape": False,
        "priors.video.score": False,
        "judge.color": False,
        "all": False,
    }
    metrics = {"binder": {"text_to_image": 1.0}, "judge": {"shape": 0.99, "color": 0.98}, "priors": {"video": {"score": 0.91}}}
    assert passed(metrics, targets)["all"] is True
    assert lookup(metrics, "priors.video.score") == 0.91 and lookup(metrics, "priors.x.score") is None
    named = {"binder.audio_to_image", "judge.facing", "priors.prior2d.score", "priors.novelview.score", "priors.multiview.score"}
    assert set(TARGETS) >= named


def test_train_seconds_from_model_metrics(tmp_path):
    (tmp_path / "binder").mkdir()
    (tmp_path / "binder" / "metrics.json").write_text(json.dumps({"train_seconds": 120.04}))
    (tmp_path / "prior2d").mkdir()
    (tmp_path / "prior2d" / "metrics.json").write_text(json.dumps({"steps": 1000, "steps_per_s": 0.5}))
    got = train_seconds(tmp_path)
    assert got["binder"] == 120.0 and got["prior2d"] == 2000.0
    assert got["judge"] is None and set(got) == {"binder", "judge", "vae", "prior2d", "novelview", "multiview", "video"}


# ---------------------------------------------------------------------------------------------
# The whole run on a random-weight test zoo (structure and ranges, never accuracy)
# ---------------------------------------------------------------------------------------------


def _figures(node, prefix=""):
    """Every accuracy-like float under ``node`` (not counts, seconds or settings)."""
    skip = {"n", "n_views", "n_objects", "n_groups", "frames", "guidance_scale", "ddim_steps", "seed"}
    for k, v in node.items():
        if isinstance(v, dict):
            yield from _figures(v, f"{prefix}{k}.")
        elif isinstance(v, float) and k not in skip:
            yield f"{prefix}{k}", v


def test_evaluate_zoo_structure_on_the_test_zoo(tmp_path, monkeypatch):
    from dataclasses import replace

    from anyto3d.zoo.dataset import TINY, render_dataset
    from anyto3d.zoo.fixtures import build_test_zoo
    from anyto3d.zoo.splits import HELDOUT_COLOR

    torch.set_num_threads(1)
    models = build_test_zoo(tmp_path / "models")
    (models / "judge" / "metrics.json").write_text(json.dumps({"train_seconds": 3.0}))
    monkeypatch.setenv("ANYTO3D_TINY_MODELS", str(models))
    heldout = [WorldObject.single(s, HELDOUT_COLOR[(s, "upright")]) for s in ("house", "mug", "cube", "sphere")]
    render_dataset(heldout, 4, tmp_path / "data" / "heldout", seed=1, cfg=replace(TINY, views_per_group=4))
    cfg = EvalConfig(samples_2d=4, novel_references=2, multiview_groups=2, clips=2, steps=2,
                     motion_validation_objects=1, motion_validation_train_clips=False)  # fmt: skip
    out = tmp_path / "metrics" / "zoo.json"
    metrics = evaluate_zoo(tmp_path / "data", out, tmp_path / "sheets", cfg)

    assert json.loads(out.read_text()) == json.loads(json.dumps(metrics))
    assert not list(out.parent.glob(".*tmp"))  # written atomically
    for key in ("binder", "judge", "priors", "targets", "passed", "train_seconds", "motion_classifier"):
        assert key in metrics
    assert set(metrics["priors"]) == {"prior2d", "novelview", "multiview", "video"}
    assert metrics["binder"]["n_objects"] == 4 and metrics["judge"]["n_views"] == 16
    # the judge's figures by how much of the frame the object covers: the bins hold every view
    assert sum(row["n_views"] for row in metrics["judge"]["bins"]) == 16
    assert metrics["judge"]["without_closeups"]["n_views"] <= 16
    p = metrics["priors"]
    assert p["prior2d"]["n"] == 4 and p["novelview"]["n"] == 4 and p["multiview"]["n_groups"] == 2
    assert p["video"]["n"] == 2 and p["video"]["frames"] == 4  # the test preset's frames
    assert {"shape", "color", "facing", "all", "score"} <= set(p["novelview"])
    # each prior's ceiling: the judge on ground-truth renders of the same requests
    assert {"shape", "color", "facing", "all"} <= set(p["novelview"]["truth"])
    assert {"shape", "color", "all"} <= set(p["prior2d"]["truth"])
    for kind in ("prior2d", "novelview"):  # every held-out object here is single: the split is the whole
        singles = p[kind]["singles"]
        assert singles["n"] == p[kind]["n"] and singles["all"] == p[kind]["all"]
        assert singles["truth"]["all"] == p[kind]["truth"]["all"]
    assert {"groups", "views"} <= set(p["multiview"]["truth"])
    assert {"object", "motion", "score"} <= set(p["video"])
    assert metrics["motion_classifier"]["heldout_clips"]["n"] == 5
    scored = {k: metrics[k] for k in ("binder", "judge", "priors", "motion_classifier")}
    for name, value in _figures(scored):
        assert 0.0 <= value <= 1.0, name
    assert metrics["passed"] == passed(metrics)
    assert set(metrics["passed"]) == set(TARGETS) | {"all"}
    assert metrics["train_seconds"]["judge"] == 3.0 and metrics["train_seconds"]["binder"] is None

    from PIL import Image

    for kind, rows in (("prior2d", 1), ("novelview", 2), ("multiview", 2), ("video", 2)):
        png = tmp_path / "sheets" / f"{kind}.png"
        side = json.loads(png.with_suffix(".json").read_text())
        assert len(side["rows"]) == rows
        with Image.open(png) as img:
            assert img.height == 2 * (rows * 17 + 1)  # 16² test priors, 1 px gaps, ×2
    assert json.loads((tmp_path / "sheets" / "novelview.json").read_text())["rows"][0]["expected_facing"][0] == "back"

    # an untrained prior: an error, or with allow_missing a recorded gap whose target fails
    import shutil

    from anyto3d.errors import MissingWeightsError

    shutil.rmtree(models / "video")
    with pytest.raises(MissingWeightsError):
        evaluate_zoo(tmp_path / "data", tmp_path / "partial.json", None, cfg)
    partial = evaluate_zoo(tmp_path / "data", tmp_path / "partial.json", tmp_path / "sheets2", cfg, allow_missing=True)
    assert "missing" in partial["priors"]["video"] and "sheets" not in partial
    assert partial["passed"]["priors.video.score"] is False and partial["passed"]["all"] is False


def test_true_novel_views_turn_the_reference_camera(tmp_path):
    from dataclasses import replace

    from anyto3d.zoo.dataset import TINY, load_dataset, render_dataset
    from anyto3d.zoo.evaluate import true_novel_views

    house = WorldObject.single("house", "red")
    render_dataset([house], 4, tmp_path / "d", seed=2, cfg=replace(TINY, lighting="headlight", views_per_group=4))
    data = load_dataset(tmp_path / "d")
    views = true_novel_views([house] * 3, data, [0, 0, 1], [0.0, 180.0, 0.0])
    assert views.shape == (3, 32, 32, 3)
    # no turn: the dataset's own render of that view (same camera and headlight), to rounding
    for i, row in ((0, 0), (2, 1)):
        stored = torch.from_numpy(data.rgba[row][..., :3]).float() / 255.0
        assert (views[i] - stored).abs().max() < 2.5 / 255
    # the house turned half-way round: its back, not its front
    assert (views[1] - views[0]).abs().mean() > 0.02


def test_evaluate_zoo_needs_a_heldout_split(tmp_path):
    with pytest.raises(InputError, match="held-out"):
        evaluate_zoo(tmp_path, tmp_path / "zoo.json")


def test_requests_come_from_views_that_show_the_whole_object():
    from types import SimpleNamespace

    from anyto3d.zoo.evaluate import _frontal_view

    # object 0: its most frontal view (row 1, 5°) crosses the frame, so row 2 (40°) is asked;
    # object 1: no view shows it whole, so its most frontal view is asked all the same
    data = SimpleNamespace(object_index=np.array([0, 0, 0, 1, 1]), azimuth=np.radians([170.0, 5.0, 40.0, -20.0, 90.0]),
                           framed=np.array([True, False, True, False, False]))
    assert _frontal_view(data, 0) == 2 and _frontal_view(data, 1) == 3
