"""Method configs: every YAML loads strictly, composes through Hydra, and bad names are named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from anyto3d.errors import InputError
from anyto3d.methods import (
    LOSS_TERMS,
    method_from_config,
    method_from_dict,
    phase_from_dict,
)
from anyto3d.optimize import TERMS
from flows.config import compose, group_options

REPO = Path(__file__).resolve().parents[1]
METHODS = [m for m in group_options(REPO / "conf", "method") if m != "dummy"]
EXPERIMENTS = group_options(REPO / "conf", "experiment")


def load(name: str) -> dict:
    return yaml.safe_load((REPO / "conf" / "method" / f"{name}.yaml").read_text())


def test_the_methods_and_ablations_the_papers_name_exist():
    assert {"xbind", "zero_stable_cds_3d", "stable_sds_3d", "zero_sds_3d", "dreamfusion", "magic3d", "fantasia3d",
            "prolificdreamer"} <= set(METHODS)
    assert {"wo_stereo", "wo_planar", "wo_three_phase", "wo_ms_loss"} <= set(EXPERIMENTS)
    assert set(TERMS) == set(LOSS_TERMS)


@pytest.mark.parametrize("name", METHODS)
def test_every_method_yaml_loads_at_both_scales_and_composes(name):
    for scale in (None, "tiny", "paper"):
        method = method_from_dict(load(name), scale)
        assert method.name == name and method.active_phases
    tiny = method_from_config(compose([f"method={name}", "model=tiny"]))
    for phase in tiny.active_phases:  # the tiny world renders 32^2 and runs a few hundred steps
        assert phase.resolution(0) == 32 and 0 < phase.iterations <= 400
    paper = method_from_dict(load(name), "paper")
    assert all(p.resolution(0) >= 64 and p.iterations >= 1000 for p in paper.active_phases)


def test_xbind_is_the_papers_three_phases():
    m = method_from_dict(load("xbind"), "paper")
    coarse, geometry, texture = m.phases
    assert [p.representation for p in m.phases] == ["nerf", "dmtet_geometry", "dmtet_texture"]
    assert [p.resolution(0) for p in m.phases] == [128, 512, 512]
    assert [(p.optimizer.type, p.optimizer.lr["grid" if p is coarse else "sdf" if p is geometry else "texture"](0))
            for p in m.phases] == [("adam", 0.01), ("adan", 0.01), ("adam", 0.001)]
    assert coarse.cameras.elevation_deg == (-45, 45) and coarse.cameras.fovy_deg == (40, 40)
    assert geometry.cameras.azimuth_deg == (-135, 225) and geometry.cameras.distance == (1.5, 2.0)
    assert geometry.render == "normal" and geometry.dmtet.isosurface_threshold == 10.0
    assert set(coarse.enabled_terms()) == {"modality_similarity", "augmented_sds", "z_variance", "sds_3d", "reference",
                                           "normal_smoothness_2d"}
    assert set(geometry.enabled_terms()) == {"modality_similarity", "cds", "sds_3d", "reference", "normal_consistency",
                                             "laplacian"}
    assert set(texture.enabled_terms()) == {"modality_similarity", "augmented_sds", "sds_3d", "reference"}
    assert m.needs == ["prior2d", "novel_view", "binder", "reference"]


def test_baselines_use_the_priors_table_i_says():
    needs = {n: method_from_dict(load(n), "tiny").needs for n in ("zero_stable_cds_3d", "stable_sds_3d", "zero_sds_3d")}
    assert needs["stable_sds_3d"] == ["prior2d"]
    assert needs["zero_sds_3d"] == ["novel_view", "reference"]
    assert needs["zero_stable_cds_3d"] == ["prior2d", "novel_view", "reference"]
    cds = method_from_dict(load("zero_stable_cds_3d"), "tiny")
    assert all({"cds", "cds_3d"} <= set(p.enabled_terms()) for p in cds.phases)


@pytest.mark.parametrize(
    ("experiment", "gone", "phases"),
    [
        ("wo_stereo", {"sds_3d", "reference"}, 3),
        ("wo_planar", {"modality_similarity", "augmented_sds", "cds"}, 3),
        ("wo_ms_loss", {"modality_similarity"}, 3),
        ("wo_three_phase", set(), 1),
    ],
)
def test_ablations_compose_as_overrides_of_xbind(experiment, gone, phases):
    full = method_from_config(compose(["method=xbind"]))
    ablated = method_from_config(compose(["method=xbind", f"experiment={experiment}"]))
    assert len(ablated.active_phases) == phases
    for phase in ablated.active_phases:
        kept = set(full.phase(phase.name).enabled_terms()) - gone
        assert set(phase.enabled_terms()) == kept
    if experiment == "wo_stereo":
        assert "novel_view" not in ablated.needs
    if experiment == "wo_three_phase":
        assert [p.name for p in ablated.active_phases] == ["coarse"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(colour=1), r"unknown key\(s\) \['colour'\]; valid keys: \['description', 'name', 'paper', 'phases', 'tiny'\]"),
        (lambda d: d["phases"]["coarse"]["losses"].update(sdss={"weight": 1}), r"unknown key\(s\) \['sdss'\].*'augmented_sds'.*'z_variance'"),
        (lambda d: d["phases"]["coarse"].update(representation="mesh"), r"coarse'.representation: 'mesh' is not one of \['nerf', 'dmtet_geometry'"),
        (lambda d: d["phases"]["coarse"].update(cameras="orbit"), r"unknown camera preset 'orbit'; valid presets: \['fourdfy', 'xbind_phase_i'"),
        (lambda d: d["phases"]["coarse"]["losses"]["sds_3d"].update(guidance=3), r"sds_3d: unknown key\(s\) \['guidance'\]; valid keys: .*'guidance_scale'"),
        (lambda d: d["phases"]["coarse"]["losses"]["sds_3d"].update(weighting="snr"), r"weighting: 'snr' is not one of \['sds', 'uniform', 'fantasia3d'\]"),
        (lambda d: d["phases"]["coarse"]["losses"]["sds_3d"].update(t_range=[0.9, 0.1]), r"sds_3d.t_range: .*need 0 <= min <= max <= 1"),
        (lambda d: d["phases"]["coarse"]["losses"]["sds_3d"].update(weight="big"), r"sds_3d.weight: cannot read schedule 'big'"),
        (lambda d: d["tiny"]["coarse"].update(iterations=-5), r"coarse'.iterations: must be an integer >= 0, got -5"),
        (lambda d: d["phases"]["coarse"]["optimizer"].update(type="sgd"), r"optimizer.type: 'sgd' is not one of \['adam', 'adan'\]"),
        (lambda d: d["phases"]["coarse"]["optimizer"].update(lr={"grd": 0.1}), r"unknown key\(s\) \['grd'\]; valid keys: \['background', 'grid', 'mlp'\]"),
        (lambda d: d["phases"]["texture"]["losses"].update(z_variance={"weight": 1}), r"z_variance: needs a volume-rendered phase"),
        (lambda d: d["tiny"].update(coarse2={"iterations": 1}), r"tiny \(phase names\): unknown key\(s\) \['coarse2'\]"),
        (lambda d: d["phases"]["coarse"]["losses"]["reference"].pop("weight"), r"reference: needs a 'weight'"),
    ],
)
def test_bad_configs_are_input_errors_naming_the_culprit(mutate, message):
    d = load("xbind")
    mutate(d)
    with pytest.raises(InputError, match=message):
        method_from_dict(d, "tiny")


def test_bad_scale_and_empty_method():
    with pytest.raises(InputError, match=r"model scale: 'huge' is not one of \['tiny', 'paper'\]"):
        method_from_dict(load("xbind"), "huge")
    with pytest.raises(InputError, match="phases: must be a non-empty mapping"):
        method_from_dict({"name": "x", "phases": {}})
    with pytest.raises(InputError, match="every phase is disabled"):
        method_from_dict({"name": "x", "phases": {"a": {"enabled": False}}})


def test_schedules_and_shorthands():
    phase = phase_from_dict("p", {
        "iterations": 100,
        "resolution": [[0, 32], [50, 64]],
        "losses": {"sds": {"weight": [1.0, 0.0, 100], "t_range": {"min": 0.02, "max": [0.98, 0.5, 100]}}, "sparsity": 0.5},
        "cameras": {"elevation_deg": [0, 10]},
        "optimizer": {"lr": 0.02},
    })
    assert phase.resolution(25) == 48 and phase.resolution(99) == 64
    assert phase.losses["sds"].weight(50) == 0.5 and phase.losses["sparsity"].weight(7) == 0.5
    assert phase.losses["sds"].t_range.max(100) == 0.5
    assert phase.cameras.elevation_deg == (0.0, 10.0) and phase.cameras.azimuth_deg == (-180.0, 180.0)
    assert {g: s(0) for g, s in phase.optimizer.lr.items()} == {"grid": 0.02, "mlp": 0.02, "background": 0.02}
    zero = phase_from_dict("q", {"losses": {"sds": {"weight": 0.0}, "sparsity": 1.0}})
    assert zero.enabled_terms() == ["sparsity"]
