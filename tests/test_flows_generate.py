"""The generate flow on the test zoo (random weights, 16-px renders, 1-2 iterations per phase):
products in the output dir, a second run entirely from the store, the method's DAG shape,
re-evaluation from run.json; Prefect and the suite flow (marked slow)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from flows.generate import generate, plan_generation, reevaluate
from flows.tracking import NullTracker

FAST = [
    "method.tiny.coarse.iterations=2",
    "method.tiny.coarse.resolution=16",
    "method.tiny.geometry.iterations=1",
    "method.tiny.geometry.resolution=16",
    "method.tiny.texture.iterations=1",
    "method.tiny.texture.resolution=16",
    "render.views=4",
    "render.resolution=16",
    "evaluate.views=4",
    "evaluate.resolution=16",
]


@pytest.fixture(scope="module")
def zoo(test_zoo):
    torch.set_num_threads(1)
    return test_zoo


@pytest.fixture
def env(zoo, tmp_path, monkeypatch):
    monkeypatch.setenv("ANYTO3D_TINY_MODELS", str(zoo))
    monkeypatch.setenv("ANYTO3D_TRACKING", "0")
    return tmp_path


def test_generate_writes_the_products_and_a_rerun_is_all_store_hits(env):
    overrides = [*FAST, f"paths.store={env / 'store'}"]
    first = generate(text="a red cube", out=env / "out", overrides=overrides, executor="local", tracker=NullTracker())
    out = env / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["mesh.glb", "turntable.mp4", "contact_sheet.png", "metrics.json", "reference.png", "run.json"]
    )
    assert (out / "mesh.glb").read_bytes()[:4] == b"glTF"
    assert first["metrics"] == json.loads((out / "metrics.json").read_text())
    assert first["metrics"]["n_views"] == 4
    assert list(first["steps"]) == [
        "encode", "reference", "nerf_coarse", "dmtet_geometry", "dmtet_texture", "render", "evaluate"
    ]  # fmt: skip
    assert all(first["executed"].values())
    record = json.loads((out / "run.json").read_text())
    assert record["request"]["text"] == "a red cube" and record["config"]["render"]["views"] == 4
    assert not any(p.name.startswith(".out.") for p in env.iterdir())  # no staging left beside it

    second = generate(text="a red cube", out=env / "out", overrides=overrides, executor="local", tracker=NullTracker())
    assert not any(second["executed"].values())
    assert second["steps"] == first["steps"] and second["metrics"] == first["metrics"]

    # the evaluate step again from the outputs run.json names, under another evaluate config
    again = reevaluate(out, ["evaluate.views=2"], store=env / "store")
    assert again["n_views"] == 2 and json.loads((out / "metrics.json").read_text())["n_views"] == 2


def test_the_dag_follows_the_method(env):
    store = f"paths.store={env / 'store'}"
    full = plan_generation(text="a red cube", out=env / "a", overrides=[*FAST, store])
    ablation = plan_generation(text="a red cube", out=env / "b", overrides=[*FAST, store], experiment="wo_three_phase")
    try:
        assert [n.id for n in full.nodes] == [
            "encode_modality", "reference_view", "nerf_coarse", "dmtet_geometry", "dmtet_texture", "render_views", "evaluate"
        ]  # fmt: skip
        texture = next(n for n in full.nodes if n.id == "dmtet_texture")
        assert texture.inputs["previous"].node == "dmtet_geometry"
        assert [n.id for n in ablation.nodes] == ["encode_modality", "reference_view", "nerf_coarse", "render_views", "evaluate"]
        assert next(n for n in ablation.nodes if n.id == "render_views").inputs["state"].node == "nerf_coarse"
        prompt = json.loads((full.staging / "prompt.json").read_text())
        assert prompt["parts"] == [{"modality": "text", "weight": 1.0, "text": "a red cube"}]
        assert full.label == "a-red-cube" and not str(full.staging).startswith(str(env / "store"))
    finally:
        full.discard()
        ablation.discard()
    assert not (env / "a").exists() and not (env / "store").exists()  # planning runs nothing


def test_default_output_dir_is_label_method_seed(env):
    plan = plan_generation(text="A Red, Cube!", method="stable_sds_3d", seed=3, overrides=[*FAST, f"run.outputs={env / 'outputs'}"])
    try:
        assert plan.out == (env / "outputs" / "a-red-cube-stable_sds_3d-s3").resolve()
    finally:
        plan.discard()
    assert not plan.out.exists()


@pytest.mark.slow
def test_generate_under_prefect_ephemeral(env, monkeypatch):
    """The same DAG as Prefect tasks (ephemeral server, PREFECT_HOME in tmp); then a store-hit rerun."""
    from prefect.settings import (
        PREFECT_HOME,
        PREFECT_RESULTS_LOCAL_STORAGE_PATH,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    home = env / "prefect-home"
    overrides = [*FAST, f"paths.store={env / 'store'}"]
    with temporary_settings(updates={PREFECT_HOME: str(home), PREFECT_RESULTS_LOCAL_STORAGE_PATH: str(home / "storage")}):
        with prefect_test_harness(server_startup_timeout=180):
            first = generate(text="a blue sphere", out=env / "out", overrides=overrides, executor="prefect", tracker=NullTracker())
            second = generate(text="a blue sphere", out=env / "out", overrides=overrides, executor="prefect", tracker=NullTracker())
    assert all(first["executed"].values()) and not any(second["executed"].values())
    assert (env / "out" / "turntable.mp4").stat().st_size > 0


@pytest.mark.slow
def test_suite_of_one_object_writes_results_and_table(env):
    from flows.suite import suite

    overrides = [*FAST, f"paths.store={env / 'store'}"]
    result = suite(
        "symmetric",
        methods=["xbind"],
        modalities=["text"],
        overrides=overrides,
        inputs=env / "suites" / "symmetric",
        outputs=env / "outputs",
        results=env / "metrics" / "table1" / "xbind.json",
        tables_out=env / "metrics",
        executor="local",
        objects=["cube-green"],
        tracker=NullTracker(),
    )
    assert result["n_items"] == 1
    (row,) = result["results"]
    assert row["object"] == "cube-green" and row["modality"] == "text" and row["method"] == "xbind"
    assert 0.0 <= row["metrics"]["clip_r"] <= 1.0 and "geometry_iou" in row["metrics"]
    saved = json.loads((env / "metrics" / "table1" / "xbind.json").read_text())
    assert saved["results"][0]["metrics"] == row["metrics"] and "out" not in saved["results"][0]
    table = (env / "metrics" / "table1.md").read_text()
    assert "XBind" in table
    assert os.path.isfile(env / "outputs" / "text" / "cube-green-xbind-s0" / "mesh.glb")


def test_local_generation_needs_neither_prefect_nor_mlflow_nor_dvc(env):
    """A GPU machine may hold only the library's own dependencies: ``anyto3d generate --local``
    with tracking off runs to the end in a process where Prefect, MLflow and DVC cannot be
    imported (checked in a subprocess, so this session's imports do not hide one)."""
    import subprocess
    import sys
    from pathlib import Path

    script = ("import sys\nfor m in ('prefect', 'mlflow', 'dvc'):\n    sys.modules[m] = None\n"
              "from flows.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    out = env / "out"
    cmd = [sys.executable, "-c", script, "generate", "--text", "a red cube", "--local", "--out", str(out),
           f"paths.store={env / 'store'}", *FAST]
    envvars = {**os.environ, "ANYTO3D_PROGRESS": "0", "OMP_NUM_THREADS": "1"}  # env: the test zoo, tracking off
    proc = subprocess.run(cmd, capture_output=True, text=True, env=envvars, cwd=Path(__file__).resolve().parents[1],
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "mesh.glb").stat().st_size > 0 and json.loads((out / "metrics.json").read_text())
