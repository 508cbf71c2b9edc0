"""The evaluate step on renders of a ground-truth world object, with the random-weight test zoo
(so semantic figures are checked for structure and range only; geometry is checked for value)."""

import json

import numpy as np
import pytest
import soundfile
import torch

from anyto3d.cameras import orbit_cameras
from anyto3d.errors import InputError
from anyto3d.export.mesh_export import export_mesh
from anyto3d.images import to_uint8
from anyto3d.models import TINY_DIRS
from anyto3d.render.mesh_renderer import MeshRenderer
from anyto3d.zoo.audio import SAMPLE_RATE, synthesize
from anyto3d.zoo.build import model_dir
from anyto3d.zoo.captions import canonical_caption
from anyto3d.zoo.fixtures import build_test_zoo
from anyto3d.zoo.judge import TinyJudge
from anyto3d.zoo.world import WorldObject, behind
from steps.evaluate import STEP, is_uniform_orbit, load_views

torch.set_num_threads(1)

HOUSE = WorldObject.single("house", "red")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    zoo = build_test_zoo(root / "zoo")
    mesh = HOUSE.mesh()
    cams = orbit_cameras(120)
    out = MeshRenderer().render(mesh, cams, 32, 32)
    views = root / "views"
    views.mkdir()
    np.savez(
        views / "views.npz",
        rgb=to_uint8(out.rgb),
        alpha=to_uint8(out.opacity)[..., 0],
        elevation=cams.elevation.numpy(),
        azimuth=cams.azimuth.numpy(),
        c2w=cams.c2w.numpy(),
    )
    truth = export_mesh(root / "house-red.ply", mesh)
    encoded = root / "encoded"
    encoded.mkdir()
    text = canonical_caption(HOUSE)
    parts = [{"modality": "text", "weight": 1.0, "text": text},
             {"modality": "image", "weight": 1.0, "file": "image"},
             {"modality": "audio", "weight": 1.0, "file": "audio"}]
    (encoded / "prompt.json").write_text(json.dumps({"parts": parts, "label": "house"}))
    import imageio.v3 as iio

    rgba = np.concatenate([to_uint8(out.rgb[0]), to_uint8(out.opacity[0])], axis=-1)
    iio.imwrite(encoded / "image.png", rgba)
    soundfile.write(encoded / "audio.wav", synthesize(HOUSE, np.random.default_rng(0)), SAMPLE_RATE)
    text_only = root / "encoded_text"
    text_only.mkdir()
    (text_only / "prompt.json").write_text(json.dumps({"parts": parts[:1], "label": "house"}))
    suite = root / "suite.json"
    others = [WorldObject.single("cube", "blue"), HOUSE, WorldObject.single("mug", "green")]
    suite.write_text(json.dumps({"prompts": [{"label": o.id, "text": canonical_caption(o), "image": None, "audio": None}
                                             for o in others], "index": 1}))
    cfg = {"model": {"name": "tiny", "models_dir": str(zoo), "weights_dir": None}, "evaluate": {"views": 120, "resolution": 32}}
    return {"root": root, "views": views, "truth": truth, "encoded": encoded, "text_only": text_only, "suite": suite,
            "cfg": cfg, "mesh": mesh}


def run(world, tmp_path, **inputs):
    out = tmp_path / "out"
    metrics = STEP.run(inputs, world["cfg"], out, "cpu", tmp_path / "work")
    assert json.loads((out / "metrics.json").read_text()) == metrics
    return metrics


def test_full_prompt_with_suite_and_ground_truth(world, tmp_path, model_loads):
    m = run(world, tmp_path, views=world["views"], encoded=world["encoded"], suite=world["suite"],
            ground_truth=world["truth"])
    assert set(model_loads) == {TINY_DIRS[r] for r in STEP.roles(world["cfg"])} == {"judge", "binder"}
    assert m["n_views"] == 120 and m["clip_r_candidates"] == 3 and m["target"] == "house-red"
    assert 0.0 <= m["clip_r"] <= 1.0 and m["clip_r"] * 120 == pytest.approx(round(m["clip_r"] * 120))
    assert -1.0 <= m["clip_i"] <= 1.0 and -1.0 <= m["arcc"] <= 1.0
    assert 0.0 <= m["view_consistency"] <= 1.0 and 0.0 <= m["facing_accuracy"] <= 1.0  # a house has a front
    assert m["geometry_source"] == "alpha" and "chamfer" not in m  # no mesh.glb: alphas only
    assert m["geometry_iou"] >= 0.95  # its own renders against its own ground truth
    assert abs(m["geometry_yaw_deg"]) < 1e-6
    assert "judge" in m["encoder"] and "binder" in m["encoder"]


def test_text_prompt_without_suite_retrieves_among_the_world(world, tmp_path):
    cfg_views = dict(world["cfg"], evaluate={"views": 60, "resolution": 32})
    out = tmp_path / "out"
    m = STEP.run({"views": world["views"], "encoded": world["text_only"]}, cfg_views, out, "cpu", tmp_path)
    assert m["n_views"] == 60
    assert m["clip_r_candidates"] == 136  # the world's single objects, as XBind's 136 prompts
    for absent in ("clip_i", "arcc", "geometry_iou", "chamfer"):
        assert absent not in m
    assert "binder" not in m["encoder"]


def test_clip_r_does_not_count_a_look_alike_from_behind_as_a_rival(world, tmp_path):
    """From behind, a cube with one marked face is the plain cube of its colour: the judge gives
    both the same score (any weights), which the strict tie rule used to count as a miss."""
    marked, plain = WorldObject.from_id("marked_cube-green"), WorldObject.from_id("cube-green")
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps({"prompts": [{"label": o.id, "text": canonical_caption(o), "image": None, "audio": None}
                                             for o in (marked, plain)], "index": 0}))
    encoded = tmp_path / "encoded"
    encoded.mkdir()
    (encoded / "prompt.json").write_text(json.dumps({"parts": [{"modality": "text", "weight": 1.0,
                                                                 "text": canonical_caption(marked)}]}))
    m = STEP.run({"views": world["views"], "encoded": encoded, "suite": suite}, world["cfg"], tmp_path / "out", "cpu",
                 tmp_path / "work")
    az = np.degrees(np.load(world["views"] / "views.npz")["azimuth"])
    from_behind = behind(az)
    assert 0.2 < from_behind.mean() < 0.8
    # every view from behind is a hit (its only rival looks the same); from the front the mark decides
    assert m["clip_r"] >= from_behind.mean() - 1e-9
    judge = TinyJudge.from_pretrained(model_dir("judge", world["cfg"]["model"]["models_dir"]))
    views = load_views(world["views"], 120)
    scores = judge.clip_like(views.rgb, [marked, plain], az)
    assert torch.equal(scores[from_behind, 0], scores[from_behind, 1])  # tied, whatever the weights
    front_hits = float((scores[~from_behind, 0] > scores[~from_behind, 1]).double().sum())
    assert m["clip_r"] == pytest.approx((from_behind.sum() + front_hits) / len(az))


def test_mesh_path_scores_chamfer(world, tmp_path):
    views = tmp_path / "views_with_mesh"
    views.mkdir()
    (views / "views.npz").write_bytes((world["views"] / "views.npz").read_bytes())
    export_mesh(views / "mesh.glb", world["mesh"])  # the generated asset is the truth itself
    m = run(world, tmp_path, views=views, encoded=world["text_only"], ground_truth=world["truth"])
    assert m["geometry_source"] == "mesh"
    assert m["geometry_iou"] >= 0.95 and m["chamfer"] < 0.02


def test_views_reader_subsamples_evenly(world):
    v = load_views(world["views"], 30)
    assert v.rgb.shape == (30, 32, 32, 3) and v.alpha.shape == (30, 32, 32)
    assert torch.allclose(torch.rad2deg(v.cameras.azimuth[:2]), torch.tensor([0.0, 12.0]), atol=1e-4)
    assert is_uniform_orbit(v.cameras) and not is_uniform_orbit(v.cameras[torch.tensor([0, 2, 3])])


def test_bad_suite_and_missing_views(world, tmp_path):
    bad = tmp_path / "suite.json"
    bad.write_text(json.dumps({"prompts": [{"label": "a", "text": "a red cube"}, {"label": "b", "text": "a blue cube"}], "index": 5}))
    with pytest.raises(InputError, match="index"):
        STEP.run({"views": world["views"], "encoded": world["text_only"], "suite": bad}, world["cfg"], tmp_path / "o", "cpu", tmp_path)
    with pytest.raises(InputError, match="views.npz"):
        STEP.run({"views": tmp_path, "encoded": world["text_only"]}, world["cfg"], tmp_path / "o", "cpu", tmp_path)
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_paper_scale_with_dummy_encoders(world, tmp_path, monkeypatch):
    """The paper path's wiring (OpenCLIP for CLIP-R/CLIP-I, ImageBind for ARCC) with random-weight
    small models standing in for the checkpoints; no judge, so no view consistency."""
    import types

    import anyto3d.models
    from anyto3d.encoders.imagebind import ImageBindEncoder
    from anyto3d.encoders.openclip import OpenClipEncoder
    from steps import evaluate

    monkeypatch.setattr(evaluate, "load_paper_clip", lambda cfg: OpenClipEncoder.build_dummy())
    monkeypatch.setattr(anyto3d.models, "load_models",
                        lambda cfg, needs, device="cpu": types.SimpleNamespace(encoder=ImageBindEncoder.build_dummy()))
    cfg = dict(world["cfg"], model={"name": "paper", "models_dir": None, "weights_dir": None})
    m = STEP.run({"views": world["views"], "encoded": world["encoded"], "suite": world["suite"]}, cfg,
                 tmp_path / "out", "cpu", tmp_path)
    assert 0.0 <= m["clip_r"] <= 1.0 and m["clip_r_candidates"] == 3
    assert -1.0 <= m["clip_i"] <= 1.0 and -1.0 <= m["arcc"] <= 1.0
    assert "view_consistency" not in m and "OpenCLIP" in m["encoder"] and "ImageBind" in m["encoder"]


def test_paper_scale_without_weights_names_them(world, tmp_path, monkeypatch):
    from anyto3d.errors import MissingWeightsError

    monkeypatch.setenv("ANYTO3D_WEIGHTS", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    cfg = dict(world["cfg"], model={"name": "paper", "models_dir": None, "weights_dir": None})
    with pytest.raises(MissingWeightsError, match="ViT-B-32|open_clip"):
        STEP.run({"views": world["views"], "encoded": world["text_only"], "suite": world["suite"]}, cfg,
                 tmp_path / "out", "cpu", tmp_path)
