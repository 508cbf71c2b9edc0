"""MLflow tracking on a temporary sqlite DB: parent/child runs, params, metrics, artifacts; no-op mode."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from flows.tasks import Node, Ref, run_pipeline
from flows.tracking import MAX_PARAM_VALUE, NullTracker, Tracker, default_tracking_uri, make_tracker, param_items
from steps import Store, step

CFG = {"seed": 0, "model": {"name": "tiny", "res": 16}, "method": {"name": "dummy", "iterations": 3}}


@step("make_mesh", version=1, config_keys=["model.res"])
def make_mesh(inputs, cfg, out_dir, device, work_dir):
    (out_dir / "mesh.obj").write_text(f"# res {cfg['model']['res']}\nv 0 0 0\n")
    (out_dir / "views").mkdir()
    (out_dir / "views" / "000.txt").write_text("view")
    return {"loss": 0.25, "label": "not-a-number", "bad": None}


@step("evaluate", version=1, config_keys=["method.iterations"], inputs=["mesh"])
def evaluate(inputs, cfg, out_dir, device, work_dir):
    (out_dir / "metrics.json").write_text('{"iou": 0.9}')
    return {"iou": 0.9, "ok": True}


@pytest.fixture(scope="module")
def tracker(tmp_path_factory) -> Tracker:
    """One migrated sqlite DB for the module (a fresh MLflow DB costs seconds to create)."""
    root = tmp_path_factory.mktemp("mlflow")
    return Tracker(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", artifact_root=root / "artifacts", experiment="test")


def _artifact_paths(client, run_id, path=None) -> set[str]:
    found = set()
    for info in client.list_artifacts(run_id, path):
        found |= _artifact_paths(client, run_id, info.path) if info.is_dir else {info.path}
    return found


def test_parent_and_child_runs_with_params_metrics_and_artifacts(tracker, tmp_path):
    store = Store(tmp_path / "store")
    mesh = store.run(make_mesh, {}, CFG)
    final = tmp_path / "turntable.mp4"
    final.write_bytes(b"\x00video")
    with tracker.flow_run("generate-demo", CFG, tags={"prompt": "a red cube"}) as run:
        child_in_thread = {}
        # a task thread has no active MLflow run: the explicit parent id must still work there
        thread = threading.Thread(target=lambda: child_in_thread.update(id=run.log_step("mesh", mesh, artifacts=["mesh.obj", "views"])))
        thread.start()
        thread.join()
        run.log_metrics({"clip_r": 0.5, "note": "text"})
        run.log_artifacts([final])
    client = tracker.client
    parent = client.get_run(run.run_id)
    child = client.get_run(child_in_thread["id"])

    assert parent.info.status == "FINISHED" and child.info.status == "FINISHED"
    assert child.data.tags["mlflow.parentRunId"] == run.run_id
    assert child.data.tags["anyto3d.key"] == mesh.key and child.data.tags["anyto3d.store_dir"] == mesh.dir
    assert child.data.tags["anyto3d.kernels.deterministic"] == "true"
    assert child.data.tags["anyto3d.kernels.torch_threads"] == str(torch.get_num_threads())
    assert parent.data.tags["prompt"] == "a red cube" and len(parent.data.tags["cfg_hash"]) == 12
    assert parent.data.params == {
        "seed": "0",
        "model.name": "tiny",
        "model.res": "16",
        "method.name": "dummy",
        "method.iterations": "3",
    }
    assert child.data.params == {"model.res": "16"}
    assert child.data.metrics["loss"] == 0.25 and "label" not in child.data.metrics and "bad" not in child.data.metrics
    assert "step_seconds" in child.data.metrics
    assert parent.data.metrics == {"clip_r": 0.5}
    assert _artifact_paths(client, run.run_id) == {"config/resolved.yaml", "turntable.mp4"}
    assert _artifact_paths(client, child.info.run_id) == {"mesh.obj", "views/000.txt"}
    resolved = Path(client.download_artifacts(run.run_id, "config/resolved.yaml", str(tmp_path)))
    import yaml

    assert yaml.safe_load(resolved.read_text()) == CFG
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.artifact_location == (tracker.artifact_root / "test").as_uri()


def test_pipeline_logs_one_child_per_step_under_the_flow_run(tracker, tmp_path):
    nodes = [Node(make_mesh), Node(evaluate, {"mesh": Ref("make_mesh", "mesh.obj")}, artifacts=("metrics.json",))]
    with tracker.flow_run("pipeline", CFG) as run:
        first = run_pipeline(nodes, CFG, store=tmp_path / "store", executor="local", tracking=run)
    with tracker.flow_run("pipeline-again", CFG) as again:
        run_pipeline(nodes, CFG, store=tmp_path / "store", executor="local", tracking=again)
    client = tracker.client
    children = {name: client.get_run(rid) for name, rid in run.step_runs.items()}
    assert set(children) == {"make_mesh", "evaluate"}
    assert all(c.data.tags["mlflow.parentRunId"] == run.run_id for c in children.values())
    assert children["evaluate"].data.metrics["iou"] == 0.9 and children["evaluate"].data.metrics["ok"] == 1.0
    assert _artifact_paths(client, children["evaluate"].info.run_id) == {"metrics.json"}
    assert first.executed == {"make_mesh": True, "evaluate": True}
    cached = client.get_run(again.step_runs["evaluate"])
    assert cached.data.tags["anyto3d.executed"] == "false"


def test_failed_flow_run_is_marked_failed(tracker):
    with pytest.raises(RuntimeError, match="boom"):
        with tracker.flow_run("fails", CFG) as run:
            raise RuntimeError("boom")
    finished = tracker.client.get_run(run.run_id)
    assert finished.info.status == "FAILED" and "boom" in finished.data.tags["error"]


def test_params_are_flattened_truncated_and_batched(tracker):
    big = {"long": "x" * (MAX_PARAM_VALUE + 500), "many": {f"k{i:03d}": i for i in range(150)}, "list": [1, 2]}
    items = param_items(big)
    assert len(items["long"]) == MAX_PARAM_VALUE and items["long"].endswith("...")
    assert items["list"] == "[1, 2]" and len(items) == 152
    with tracker.flow_run("big", big) as run:
        pass
    logged = tracker.client.get_run(run.run_id).data.params
    assert len(logged) == 152 and logged["many.k149"] == "149" and logged["long"] == items["long"]


def test_disabled_tracking_touches_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("ANYTO3D_TRACKING", "0")
    tracker = make_tracker(tracking_uri=f"sqlite:///{tmp_path / 'never.db'}")
    assert isinstance(tracker, NullTracker)
    store = Store(tmp_path / "store")
    with tracker.flow_run("off", CFG) as run:
        assert run.log_step("mesh", store.run(make_mesh, {}, CFG)) is None
        run.log_metrics({"a": 1.0})
    assert not (tmp_path / "never.db").exists() and run.run_id is None
    monkeypatch.delenv("ANYTO3D_TRACKING")
    assert isinstance(make_tracker(enabled=False), NullTracker)
    assert isinstance(make_tracker(tracking_uri="sqlite:///unused.db"), Tracker)


def test_default_uri_is_an_absolute_sqlite_path_in_the_project():
    uri = default_tracking_uri()
    assert uri.startswith("sqlite:////") and uri.endswith("/mlflow.db")
    assert Path(uri.removeprefix("sqlite:///")).parent == Path(__file__).resolve().parents[1]
