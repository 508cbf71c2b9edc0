"""The tiny judge: labels, metrics against hand-computed values, a real tiny training, weights."""

import itertools
import math

import numpy as np
import pytest
import torch

from anyto3d.errors import InputError, MissingWeightsError
from anyto3d.zoo.dataset import TINY, render_dataset
from anyto3d.zoo.judge import (
    HEADS,
    IGNORE,
    JudgeConfig,
    TinyJudge,
    accuracy,
    object_for_caption,
    object_labels,
    view_label_table,
    view_labels,
)
from anyto3d.zoo.splits import is_heldout
from anyto3d.zoo.train_encoders import (
    JudgeTrainConfig,
    concat_views,
    evaluate_judge,
    load_views,
    train_judge,
)
from anyto3d.zoo.world import WorldObject

SMALL = JudgeConfig(channels=(8, 16, 32), hidden=64)
TRAIN_IDS = ("house-orange", "arrow-blue", "cube-red")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    objs = [WorldObject.from_id(i) for i in TRAIN_IDS]
    assert not any(is_heldout(o) for o in objs)
    root = tmp_path_factory.mktemp("judge_data")
    render_dataset(objs, 32, root / "train", cfg=TINY, seed=0)
    render_dataset(objs, 16, root / "eval", cfg=TINY, seed=7)
    return root


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("judge_model")
    train_judge(data / "train", out, steps=250, seed=1, cfg=SMALL,
                train=JudgeTrainConfig(batch_size=32, checkpoint_every=100), progress=False)
    return TinyJudge.from_pretrained(out), out


def test_labels_of_objects_and_views():
    comp = WorldObject.from_id("cone-red.on.cube-blue")
    lab = object_labels(comp)
    assert HEADS["shape"][lab["shape"]] == "cone" and HEADS["color"][lab["color"]] == "red"
    assert HEADS["relation"][lab["relation"]] == "on"
    assert HEADS["part_shape"][lab["part_shape"]] == "cube" and HEADS["second_color"][lab["second_color"]] == "blue"
    house = object_labels(WorldObject.from_id("house-red"))
    assert HEADS["second_color"][house["second_color"]] == "blue"  # the roof (SECONDARY["red"])
    assert HEADS["relation"][house["relation"]] == "none"
    views = view_labels([WorldObject.from_id("house-red"), WorldObject.from_id("sphere-red")], np.array([170.0, 0.0]))
    assert views["facing"].tolist() == [2, IGNORE]  # a sphere has no front
    with pytest.raises(InputError, match="azimuths for"):
        view_labels([WorldObject.from_id("house-red")], np.array([0.0, 1.0]))


def test_left_of_views_are_labelled_as_the_camera_names_them():
    obj = WorldObject.from_id("cone-green.left_of.cube-yellow")
    lab = view_labels([obj] * 4, np.array([0.0, 60.0, 120.0, 180.0]))
    names = lambda h: [HEADS[h][i] for i in lab[h].tolist()]
    assert names("shape") == ["cone", "cone", "cube", "cube"]
    assert names("color") == ["green", "green", "yellow", "yellow"]
    assert names("part_shape") == ["cube", "cube", "cone", "cone"]
    assert names("second_color") == ["yellow", "yellow", "green", "green"]
    assert names("relation") == ["left_of"] * 4
    # facing relative to the named object's front: from behind, the mirror is seen from the front
    assert [HEADS["facing"][i] for i in lab["facing"].tolist()] == ["front", "side", "side", "front"]
    # the [B, K] table clip_like uses agrees with view_labels for every candidate
    other = WorldObject.from_id("cone-red.on.cube-blue")
    table = view_label_table([obj, other], np.array([0.0, 60.0, 120.0, 180.0]))
    for h in ("shape", "color", "part_shape", "second_color", "relation"):
        assert table[h][:, 0].tolist() == lab[h].tolist()
        assert table[h][:, 1].tolist() == [object_labels(other)[h]] * 4
    assert view_label_table([obj], None)["color"].tolist() == [[HEADS["color"].index("green")]]


def test_a_marked_cube_is_labelled_a_plain_cube_from_behind():
    obj = WorldObject.from_id("marked_cube-green")
    az = np.array([0.0, 60.0, 120.0, 180.0])
    lab = view_labels([obj] * 4, az)
    assert [HEADS["shape"][i] for i in lab["shape"].tolist()] == ["marked_cube", "marked_cube", "cube", "cube"]
    assert [HEADS["second_color"][i] for i in lab["second_color"].tolist()][2:] == ["none", "none"]
    assert lab["facing"].tolist() == [0, 1, IGNORE, IGNORE]  # a plain cube has no front
    table = view_label_table([obj], az)
    for h in ("shape", "color", "second_color"):
        assert table[h][:, 0].tolist() == lab[h].tolist()


def test_clip_like_names_candidates_per_view():
    torch.manual_seed(0)
    judge = TinyJudge(SMALL).eval()
    images = torch.rand(2, 32, 32, 3)
    obj = WorldObject.from_id("cone-green.left_of.cube-yellow")
    cands = [obj, obj.mirrored, WorldObject.from_id("house-red")]
    seen = judge.clip_like(images, cands, np.array([180.0, 180.0]))
    plain = judge.clip_like(images, cands)
    # from behind, a "left of" candidate scores as its mirror does from the front; others keep theirs
    assert torch.allclose(seen[:, 0], plain[:, 1]) and torch.allclose(seen[:, 1], plain[:, 0])
    assert torch.allclose(seen[:, 2], plain[:, 2])
    assert torch.allclose(judge.clip_like(images, cands, np.array([10.0, -60.0])), plain)
    with pytest.raises(InputError, match="azimuths for 2 images"):
        judge.clip_like(images, cands, np.array([0.0]))


def test_forward_gives_probabilities_per_head():
    judge = TinyJudge(SMALL).eval()
    probs = judge.classify(torch.rand(3, 48, 48, 3))
    assert set(probs) == set(HEADS)
    for h, p in probs.items():
        assert p.shape == (3, len(HEADS[h]))
        assert torch.allclose(p.sum(-1), torch.ones(3), atol=1e-5)
    with pytest.raises(InputError):
        judge(torch.rand(3, 32, 32))


def test_accuracy_skips_views_where_a_head_does_not_apply():
    probs = {"facing": torch.tensor([[0.9, 0.05, 0.05], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])}
    labels = {"facing": torch.tensor([0, 2, 2, IGNORE])}
    assert accuracy(probs, labels) == {"facing": pytest.approx(2 / 3)}
    assert accuracy(probs, {"facing": torch.full((4,), IGNORE)}) == {}


def test_clip_like_is_the_log_likelihood_of_the_candidates_attributes(monkeypatch):
    judge = TinyJudge(SMALL)
    candidates = [WorldObject.from_id("cube-red"), WorldObject.from_id("cone-blue")]
    probs = {h: torch.full((1, len(c)), 1.0 / len(c)) for h, c in HEADS.items()}
    probs["shape"] = torch.zeros(1, len(HEADS["shape"]))
    probs["shape"][0, HEADS["shape"].index("cube")] = 0.8
    probs["shape"][0, HEADS["shape"].index("cone")] = 0.2
    monkeypatch.setattr(judge, "classify", lambda images: probs)
    scores = judge.clip_like(torch.rand(1, 32, 32, 3), candidates)
    rest = sum(math.log(1.0 / len(HEADS[h])) for h in ("color", "orientation", "relation", "second_color", "part_shape"))
    assert scores[0].tolist() == pytest.approx([math.log(0.8) + rest, math.log(0.2) + rest], rel=1e-5)
    assert object_for_caption("a red cone on a blue cube").id == "cone-red.on.cube-blue"
    with pytest.raises(InputError):
        object_for_caption("a zebra")


def test_tiny_training_learns_shape_colour_and_front_versus_back(trained, data):
    judge, _ = trained
    metrics = evaluate_judge(judge, data / "eval", split="all")
    assert metrics["shape"] >= 0.8 and metrics["color"] >= 0.8, metrics  # chance 1/13 and 1/8
    # the house is the one two-colour object (16 eval views); there is no composition
    assert metrics["two_colour"]["n_views"] == 16 and "compositions" not in metrics
    assert 0.0 <= metrics["two_colour"]["second_color"] <= 1.0
    # the same figures over the views that show the whole object, by hand
    views = load_views(data / "eval", "all")
    framed = views.framed
    assert metrics["framed"]["n_views"] == int(framed.sum()) > 0
    assert metrics["framed"]["fraction"] == pytest.approx(framed.mean(), abs=1e-4)
    shape = judge.classify(views.rgb[framed])["shape"].argmax(-1)
    truth = view_labels(views.view_objects(), views.azimuth_deg)["shape"][framed]
    assert metrics["framed"]["shape"] == pytest.approx(float((shape == truth).float().mean()))
    # Front versus back of the asymmetric objects (house, arrow), on views never trained on.
    views = load_views(data / "eval", "all")
    asym = np.array([views.objects[i].has_front for i in views.object_index])
    keep = asym & (views.facing != 1)
    p = judge.classify(views.rgb[keep])["facing"]
    predicted_back = p[:, 2] > p[:, 0]
    truth_back = torch.as_tensor(views.facing[keep] == 2)
    assert keep.sum() >= 8
    assert (predicted_back == truth_back).float().mean() >= 0.75


def test_extra_datasets_join_the_judges_training_views(data, tmp_path):
    train, extra = load_views(data / "train", "train"), load_views(data / "eval", "all")
    joined = concat_views([train, extra])
    assert len(joined) == len(train) + len(extra) and len(joined.objects) == len(train.objects) + len(extra.objects)
    assert [o.id for o in joined.view_objects()] == [o.id for o in train.view_objects() + extra.view_objects()]
    assert torch.equal(joined.rgb[len(train):], extra.rgb)
    log = train_judge(data / "train", tmp_path / "j", steps=2, seed=1, cfg=SMALL,
                      train=JudgeTrainConfig(batch_size=8), progress=False, extra_data=(data / "eval",))
    assert log["n_views"] == len(joined) and log["n_objects"] == 6


def test_an_interrupted_judge_resumes_to_the_same_weights(data, tmp_path):
    kw = dict(seed=1, cfg=SMALL, train=JudgeTrainConfig(batch_size=8, checkpoint_every=2), progress=False)
    train_judge(data / "train", tmp_path / "straight", steps=4, **kw)
    train_judge(data / "train", tmp_path / "resumed", steps=2, **kw)  # the run that was cut off
    files = sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir())
    assert files == ["judge-0000000002.pt"]
    log = train_judge(data / "train", tmp_path / "resumed", steps=4, **kw)
    assert len(log["loss"]) == 2  # only the two missing steps ran
    a = TinyJudge.from_pretrained(tmp_path / "straight").state_dict()
    b = TinyJudge.from_pretrained(tmp_path / "resumed").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_save_and_load_round_trip_gives_identical_outputs(trained, tmp_path):
    judge, _ = trained
    judge.save_pretrained(tmp_path / "copy")
    again = TinyJudge.from_pretrained(tmp_path / "copy")
    img = torch.rand(4, 32, 32, 3)
    a, b = judge.classify(img), again.classify(img)
    assert all(torch.equal(a[h], b[h]) for h in HEADS)
    with pytest.raises(MissingWeightsError, match="config.json"):
        TinyJudge.from_pretrained(tmp_path / "nothing")


def test_frame_coverage_by_hand():
    from anyto3d.zoo.evaluate import frame_coverage

    alpha = np.zeros((3, 4, 4), np.uint8)
    alpha[1, :2] = 255  # half the frame
    alpha[2] = 200  # all of it (above half opacity)
    alpha[0, 0, 0] = 100  # below half opacity: not covered
    assert frame_coverage(alpha).tolist() == [0.0, 0.5, 1.0]
    assert frame_coverage(alpha.astype(np.float32) / 255).tolist() == [0.0, 0.5, 1.0]


def test_judge_by_coverage_partitions_the_views_and_matches_evaluate_judge(trained, data):
    from anyto3d.zoo.dataset import load_dataset
    from anyto3d.zoo.evaluate import frame_coverage, judge_by_coverage

    judge, _ = trained
    overall = evaluate_judge(judge, data / "eval", split="all")
    bins = (0.0, 0.1, 0.2, 1.0)
    out = judge_by_coverage(judge, data / "eval", bins=bins, closeup=0.2)
    coverage = frame_coverage(load_dataset(data / "eval").rgba[..., 3])
    counts = [int(((coverage >= lo) & ((coverage < hi) | (hi == 1.0))).sum()) for lo, hi in itertools.pairwise(bins)]
    assert [row["n_views"] for row in out["bins"]] == counts and sum(counts) == overall["n_views"]
    assert max(counts) < overall["n_views"]  # the views really spread over the bins
    # the bins partition the views: their counts weight their figures back to evaluate_judge's
    with_shape = [row for row in out["bins"] if row["n_views"]]
    pooled = sum(row["shape"] * row["n_views"] for row in with_shape) / overall["n_views"]
    assert pooled == pytest.approx(overall["shape"], abs=1e-6)
    # and the close-ups left out, by hand
    rest = coverage < 0.2
    views = load_views(data / "eval", "all")
    shape = judge.classify(views.rgb[rest])["shape"].argmax(-1)
    truth = view_labels(views.view_objects(), views.azimuth_deg)["shape"][torch.from_numpy(rest)]
    assert out["without_closeups"]["n_views"] == int(rest.sum())
    assert out["without_closeups"]["shape"] == pytest.approx(float((shape == truth).float().mean()))
    assert out["closeup_fraction"] == pytest.approx(1 - rest.mean(), abs=1e-4)
