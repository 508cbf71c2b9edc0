"""Hydra composition to plain dicts; bad overrides as one InputError line naming the key/value."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from anyto3d.errors import InputError
from flows.config import compose, config_hash, config_subset, default_config_dir, flatten, group_options

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def conf(tmp_path_factory) -> Path:
    """A small config tree of our own, so these tests do not follow the project's presets."""
    root = tmp_path_factory.mktemp("conf")
    files = {
        "config.yaml": "defaults:\n  - _self_\n  - model: tiny\n  - method: a\n  - experiment: null\n"
        "seed: 0\nrun:\n  name: r-${seed}\n",
        "model/tiny.yaml": "name: tiny\nres: 32\n",
        "model/paper.yaml": "name: paper\nres: 512\n",
        "method/a.yaml": "name: a\nweights:\n  sds: 1.0\n  ms: 0.5\n",
        "method/b.yaml": "name: b\nweights:\n  sds: 2.0\n  ms: 0.0\n",
        "experiment/no_ms.yaml": "# @package _global_\nmethod:\n  weights:\n    ms: 0.0\nseed: 5\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_default_composition_is_a_resolved_plain_dict(conf):
    cfg = compose(config_dir=conf)
    assert cfg == {
        "seed": 0,
        "run": {"name": "r-0"},
        "model": {"name": "tiny", "res": 32},
        "method": {"name": "a", "weights": {"sds": 1.0, "ms": 0.5}},
    }
    assert type(cfg) is dict and type(cfg["method"]["weights"]) is dict


def test_group_key_and_experiment_overrides(conf):
    cfg = compose(["model=paper", "method=b", "seed=3", "method.weights.ms=0.25"], config_dir=conf)
    assert cfg["model"] == {"name": "paper", "res": 512}
    assert cfg["method"]["weights"] == {"sds": 2.0, "ms": 0.25}
    assert cfg["run"]["name"] == "r-3"  # interpolation resolved after the override
    ablation = compose(["experiment=no_ms"], config_dir=conf)
    assert ablation["method"]["weights"] == {"sds": 1.0, "ms": 0.0} and ablation["seed"] == 5
    assert compose(["+extra.k=1"], config_dir=conf)["extra"] == {"k": 1}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method=nope"], "unknown method 'nope' in override 'method=nope'; valid method options: a, b"),
        (["model=[tiny,huge]"], "unknown model 'huge'.*valid model options: paper, tiny"),
        (["experiment=w_o_stereo"], "unknown experiment 'w_o_stereo'.*valid experiment options: no_ms"),
        (["colour=red"], "unknown config key 'colour'; valid keys at the top level: method, model, run, seed"),
        (["method.weights.stereo=1"], "unknown config key 'method.weights.stereo'; valid keys under 'method.weights': ms, sds"),
        (["seed=1,2"], "override 'seed=1,2' is a sweep"),
        (["method=="], "cannot parse override"),
        (["run.name=${nowhere}"], "Interpolation key 'nowhere' not found"),
    ],
)
def test_bad_overrides_are_one_line_input_errors(conf, overrides, message):
    with pytest.raises(InputError, match=message) as info:
        compose(overrides, config_dir=conf)
    assert "\n" not in str(info.value)


def test_missing_config_dir_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="config.yaml not found"):
        compose(config_dir=tmp_path)


def test_compose_is_safe_from_several_threads(conf):
    results, errors = {}, []
    barrier = threading.Barrier(4)

    def go(i):
        barrier.wait()
        try:
            results[i] = compose([f"seed={i}"], config_dir=conf)["run"]["name"]
        except Exception as err:  # Hydra's singleton fails like this without the lock
            errors.append(err)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and results == {i: f"r-{i}" for i in range(4)}


def test_project_config_composes_and_rejects_unknown_methods():
    assert default_config_dir() == REPO / "conf"
    cfg = compose()
    assert {"seed", "model", "method"} <= set(cfg) and cfg["model"]["name"] == "tiny"
    assert "tiny" in group_options(REPO / "conf", "model")
    with pytest.raises(InputError, match="unknown method 'nope'.*valid method options: .*dummy"):
        compose(["method=nope"])


def test_flatten_subset_and_hash():
    cfg = {"a": {"b": 1, "c": {"d": [1, 2]}}, "e": "x", "empty": {}}
    assert flatten(cfg) == {"a.b": 1, "a.c.d": [1, 2], "e": "x", "empty": {}}
    assert config_subset(cfg, ["a.c"]) == {"a": {"c": {"d": [1, 2]}}}
    assert config_hash(cfg) == config_hash({"e": "x", "empty": {}, "a": {"c": {"d": [1, 2]}, "b": 1}})
    assert config_hash(cfg) != config_hash({**cfg, "e": "y"})
    assert config_hash(cfg, ["a.b"]) == config_hash({**cfg, "e": "y"}, ["a.b"])
