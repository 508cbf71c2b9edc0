"""Scoring trial priors (anyto3d.zoo.compare): the zoo evaluation's figures, any directory, any split."""

import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from anyto3d.errors import InputError
from anyto3d.zoo.compare import compare, main
from anyto3d.zoo.evaluate import EvalConfig, evaluate_prior2d, prior2d_condition
from anyto3d.zoo.priors import WorldCodeEmbedding
from anyto3d.zoo.world import WorldObject

CFG = EvalConfig(samples_2d=4, novel_references=2, multiview_groups=2, clips=2, steps=2)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    from anyto3d.zoo.dataset import TINY, render_dataset
    from anyto3d.zoo.fixtures import build_test_zoo
    from anyto3d.zoo.splits import HELDOUT_COLOR

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("compare")
    models = build_test_zoo(root / "models")
    heldout = [WorldObject.single(s, HELDOUT_COLOR[(s, "upright")]) for s in ("house", "cube")]
    train = [WorldObject.single("cone", "red"), WorldObject.single("arrow", "blue")]
    cfg = replace(TINY, views_per_group=4)
    render_dataset(heldout, 4, root / "data" / "heldout", seed=1, cfg=cfg)
    render_dataset(train, 4, root / "data" / "train", seed=2, cfg=cfg)
    return root, models


def test_rows_are_the_zoo_evaluations_figures_per_split(zoo):
    from anyto3d.zoo.binder import TinyBinder
    from anyto3d.zoo.dataset import load_dataset
    from anyto3d.zoo.judge import TinyJudge
    from anyto3d.zoo.priors import load_tiny_prior

    root, models = zoo
    rows = compare("prior2d", [models / "prior2d"], root / "data", CFG, ("heldout", "train"), models_root=models)
    assert [r["split"] for r in rows] == ["heldout", "train"]
    binder, judge = TinyBinder.from_pretrained(models / "binder"), TinyJudge.from_pretrained(models / "judge")
    prior = load_tiny_prior(models / "prior2d")
    for row in rows:
        with torch.no_grad():
            direct = evaluate_prior2d(prior, binder, judge, load_dataset(root / "data" / row["split"]), CFG)[0]
        assert row["all"] == round(direct["all"], 4) and row["shape"] == round(direct["shape"], 4)
        assert row["truth"] == round(direct["truth"]["all"], 4)
    # the two splits ask for different objects: their true views are other pictures
    assert load_dataset(root / "data" / "train").objects[0].id != load_dataset(root / "data" / "heldout").objects[0].id


def test_code_condition_is_the_world_code(zoo):
    root, models = zoo
    from anyto3d.zoo.priors import load_tiny_prior

    prior = load_tiny_prior(models / "prior2d")
    objects = [WorldObject.single("cone", "red"), WorldObject.single("cube", "green")]
    codes = prior2d_condition(prior, None, objects, ["x", "y"], "code", code_seed=3)
    assert torch.equal(codes, WorldCodeEmbedding(prior.config.embedding_dim, 3)(objects))
    rows = compare("prior2d", [models / "prior2d"], root / "data", CFG, condition="code", models_root=models)
    assert rows[0]["condition"] == "code" and 0.0 <= rows[0]["all"] <= 1.0


def test_bad_requests_are_input_errors(zoo):
    root, models = zoo
    with pytest.raises(InputError, match="2D prior only"):
        compare("novelview", [models / "novelview"], root / "data", CFG, condition="code", models_root=models)
    with pytest.raises(InputError, match="held-out motion captions"):
        compare("video", [models / "video"], root / "data", CFG, ("train",), models_root=models)
    with pytest.raises(InputError, match="condition must be"):
        prior2d_condition(None, None, [], [], "image")


def test_command_line_prints_one_json_line_per_row_and_exits_2_on_bad_input(zoo, tmp_path, capsys):
    root, models = zoo
    rows = main(["novelview", str(models / "novelview"), "--data", str(root / "data"), "--samples", "4",
                 "--steps", "2", "--models-root", str(models)])  # fmt: skip
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed == rows and rows[0]["kind"] == "novelview" and "facing" in rows[0]
    missing = subprocess.run([sys.executable, "-m", "anyto3d.zoo.compare", "prior2d", str(tmp_path / "nothing"),
                              "--data", str(root / "data"), "--models-root", str(models)],
                             capture_output=True, text=True, check=False)  # fmt: skip
    assert missing.returncode == 2 and "Traceback" not in missing.stderr and missing.stderr.strip()
