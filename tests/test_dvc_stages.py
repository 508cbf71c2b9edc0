"""dvc.yaml and params.yaml: every stage resolves, every dependency exists or is produced by a
stage, the commands carry the params, and a second `dvc repro` of a stage does nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TABLE_I = ["zero_stable_cds_3d", "stable_sds_3d", "zero_sds_3d", "xbind"]
ZOO_KINDS = ["binder", "judge", "vae", "prior2d", "novelview", "multiview", "video"]


def _dvc(args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """Stages of the real dvc.yaml/params.yaml as DVC resolves them (a `dvc init --no-scm` copy)."""
    from dvc.repo import Repo

    tmp = tmp_path_factory.mktemp("dvc-parse")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp / name)
    assert _dvc(["init", "--no-scm", "-q"], tmp).returncode == 0
    repo = Repo(str(tmp))
    try:
        return {s.name: s for s in repo.index.stages}
    finally:
        repo.close()


def test_every_stage_resolves_with_the_params(stages):
    expected = {f"zoo_{k}" for k in ["data", "judge_data", "embed", *ZOO_KINDS]} | {"zoo", "suite_inputs", "table1"}
    expected |= {f"table1_method@{m}" for m in TABLE_I}
    assert set(stages) == expected
    assert stages["zoo_data"].cmd == (
        "python -m anyto3d.zoo.build data --out data/zoo --views 96 --heldout-views 32 --clips-per-pair 2 --frames 8"
    )
    zoo = yaml.safe_load((ROOT / "params.yaml").read_text())["zoo"]  # the values DVC must interpolate
    b, v, p = zoo["binder"], zoo["video"], zoo["prior2d"]
    assert stages["zoo_binder"].cmd.endswith(f"binder --data data/zoo --steps {b['steps']} --audio-steps {b['audio_steps']}")
    assert stages["zoo_video"].cmd.endswith(f"video --data data/zoo --steps {v['steps']} --batch {v['batch']}")
    assert stages["zoo_prior2d"].cmd.endswith(
        f"prior2d --data data/zoo --steps {p['steps']} --batch {p['batch']} --train-views {p['train_views']}"
    )
    assert stages["zoo_judge_data"].cmd.endswith(f"judge_data --data data/zoo --views {zoo['judge']['views']}")
    assert "data/zoo/judge_train" in {d.def_path for d in stages["zoo_judge"].deps}
    xbind = stages["table1_method@xbind"].cmd
    assert "--local" in xbind and "--methods xbind " in xbind and "--seeds 0 " in xbind
    assert "--results metrics/table1/xbind.json" in xbind


def test_model_outputs_are_not_cached_and_metrics_are_git_tracked(stages):
    for kind in ZOO_KINDS:
        (out,) = stages[f"zoo_{kind}"].outs
        assert out.def_path == f"anyto3d/zoo/models/{kind}" and out.use_cache is False
    zoo_metrics = {o.def_path: o for o in stages["zoo"].outs}
    assert zoo_metrics["metrics/zoo.json"].metric and not zoo_metrics["metrics/zoo.json"].use_cache
    for method in TABLE_I:
        (out,) = stages[f"table1_method@{method}"].outs
        assert out.def_path == f"metrics/table1/{method}.json" and out.metric and not out.use_cache
    assert sorted(o.def_path for o in stages["table1"].outs) == [f"metrics/table1.{s}" for s in ("json", "md", "tex")]


def test_every_dependency_exists_or_is_another_stages_output(stages):
    produced = [o.def_path for s in stages.values() for o in s.outs]
    missing = []
    for name, stage in stages.items():
        for dep in stage.deps:
            path = dep.def_path
            if path == "params.yaml" or (ROOT / path).exists():
                continue
            if not any(path == p or path.startswith(p + "/") or p.startswith(path + "/") for p in produced):
                missing.append(f"{name}: {path}")
    assert not missing, missing


def test_table1_depends_on_every_method_result(stages):
    deps = {d.def_path for d in stages["table1"].deps}
    assert {f"metrics/table1/{m}.json" for m in TABLE_I} <= deps


def _toy_project(tmp: Path) -> None:
    """The suite_inputs stage of the real dvc.yaml, in a copy of the package, on the 4-object suite."""
    shutil.copytree(ROOT / "anyto3d", tmp / "anyto3d", ignore=shutil.ignore_patterns("__pycache__", "models"))
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["suite_inputs"]
    (tmp / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"suite_inputs": stage}}))
    (tmp / "params.yaml").write_text(yaml.safe_dump({"table1": {"suite": "symmetric", "seeds": "0"}}))
    (tmp / ".dvcignore").write_text("__pycache__/\n*.pyc\n")


def test_second_repro_of_a_stage_is_a_no_op(tmp_path):
    _toy_project(tmp_path)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tmp_path)}
    assert _dvc(["init", "--no-scm", "-q"], tmp_path, env).returncode == 0
    first = _dvc(["repro", "suite_inputs"], tmp_path, env)
    assert first.returncode == 0, first.stderr + first.stdout
    assert "Running stage 'suite_inputs'" in first.stdout
    out = tmp_path / "data" / "suites" / "symmetric"
    assert sorted(p.name for p in (out / "ground_truth").glob("*.ply")) == [
        "cube-green.ply", "pyramid-pink.ply", "sphere-orange.ply", "torus-yellow.ply"
    ]  # fmt: skip
    digests = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    second = _dvc(["repro", "suite_inputs"], tmp_path, env)
    assert second.returncode == 0, second.stderr
    assert "Running stage" not in second.stdout
    assert "didn't change, skipping" in second.stdout or "up to date" in second.stdout
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == digests
    forced = _dvc(["repro", "-f", "suite_inputs"], tmp_path, env)  # rebuilt from scratch: the same bytes
    assert forced.returncode == 0 and "Running stage" in forced.stdout
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == digests
