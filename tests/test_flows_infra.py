"""Prefect tasks over the step store: content-keyed caching, the stale-cache fix, bounded
concurrency, retries that resume from checkpoints; and the same semantics without Prefect.

One Prefect test server serves the whole module (``prefect_test_harness``, module-scoped, with
``PREFECT_HOME`` in a temporary directory): starting one costs 8-25 s on this machine, each flow
run against it about a second.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import torch

from anyto3d.errors import InputError
from flows.tasks import DevicePool, Node, Ref, run_pipeline
from steps import CheckpointManager, Store, step

CFG = {"seed": 0, "method": {"name": "dummy", "iterations": 4}, "unrelated": 1}
LOG: list[Path] = []  # the call log of the current test (a file, so it also counts task threads)


def _called(name: str) -> None:
    with open(LOG[0], "a") as f:
        f.write(name + "\n")


def _calls() -> list[str]:
    return LOG[0].read_text().split() if LOG[0].exists() else []


@pytest.fixture(autouse=True)
def _call_log(tmp_path):
    LOG[:] = [tmp_path / "calls.log"]


@step("numbers", version=1, config_keys=["seed", "method.iterations"])
def numbers(inputs, cfg, out_dir, device, work_dir):
    _called("numbers")
    values = torch.arange(cfg["method"]["iterations"], dtype=torch.float64) + cfg["seed"]
    (out_dir / "numbers.txt").write_text(" ".join(f"{v:.1f}" for v in values.tolist()))
    return {"count": len(values)}


@step("total", version=1, inputs=["numbers"])
def total(inputs, cfg, out_dir, device, work_dir):
    _called("total")
    value = sum(float(x) for x in inputs["numbers"].read_text().split())
    (out_dir / "total.txt").write_text(f"{value}")
    return {"total": value}


TWO_STEPS = [Node(numbers), Node(total, {"numbers": Ref("numbers", "numbers.txt")})]


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory):
    """A temporary PREFECT_HOME and one test server for the module; yields (home, startup seconds)."""
    from prefect.settings import PREFECT_HOME, PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    saved_url = os.environ.pop("PREFECT_API_URL", None)
    t0 = time.perf_counter()
    try:
        with temporary_settings(updates={PREFECT_HOME: str(home), PREFECT_RESULTS_LOCAL_STORAGE_PATH: str(home / "storage")}):
            with prefect_test_harness(server_startup_timeout=180):
                startup = time.perf_counter() - t0
                print(f"\nprefect test server started in {startup:.1f} s")
                yield home, startup
    finally:
        if saved_url is not None:
            os.environ["PREFECT_API_URL"] = saved_url


# --------------------------------------------------------------------------- Prefect


def test_second_run_is_cached_and_deleted_outputs_are_rebuilt(prefect_home, tmp_path):
    home, _ = prefect_home
    store = Store(tmp_path / "store")

    t0 = time.perf_counter()
    first = run_pipeline(TWO_STEPS, CFG, store=store)
    t_first = time.perf_counter() - t0
    assert first.executed == {"numbers": True, "total": True} and _calls() == ["numbers", "total"]
    assert first["total"].path("total.txt").read_text() == "6.0"
    assert first["total"].metrics == {"total": 6.0}

    t0 = time.perf_counter()
    second = run_pipeline(TWO_STEPS, {**CFG, "unrelated": 2}, store=store)
    t_cached = time.perf_counter() - t0
    print(f"\ntwo-step flow: first run {t_first:.2f} s, cached re-run {t_cached:.2f} s")
    assert second.executed == {"numbers": False, "total": False} and _calls() == ["numbers", "total"]
    assert second.manifests == first.manifests
    # Prefect itself holds a record under each content key (so its UI shows "Cached")
    records = {p.name.split("-")[0] for p in (home / "storage").iterdir()}
    assert {"numbers", "total"} <= records

    # The measured pitfall: an output deleted behind Prefect's back (as `dvc repro` does) must
    # not be answered from Prefect's cache. The rebuilt output has the same bytes, so the
    # downstream key is unchanged and `total` stays cached.
    store_dir = first["numbers"].path()
    import shutil

    shutil.rmtree(store_dir)
    third = run_pipeline(TWO_STEPS, CFG, store=store)
    assert third.executed == {"numbers": True, "total": False}
    assert _calls() == ["numbers", "total", "numbers"]
    assert third["numbers"].is_intact(verify_hashes=True) and third["numbers"].path() == store_dir

    shutil.rmtree(first["total"].path())
    fourth = run_pipeline(TWO_STEPS, CFG, store=store)
    assert fourth.executed == {"numbers": False, "total": True} and fourth["total"].is_intact()

    changed = run_pipeline(TWO_STEPS, {**CFG, "method": {"name": "dummy", "iterations": 5}}, store=store)
    assert changed.executed == {"numbers": True, "total": True}
    assert changed["total"].path("total.txt").read_text() == "10.0"

    # Without Prefect: the same store, the same keys, all hits.
    local = run_pipeline(TWO_STEPS, CFG, store=store, executor="local")
    assert local.executed == {"numbers": False, "total": False}
    assert local["total"].key == fourth["total"].key and local["total"].dir == fourth["total"].dir


ACTIVE = {"now": 0, "max": 0, "devices": set(), "clash": False}
ACTIVE_LOCK = threading.Lock()


@step("sleepy", version=1, config_keys=["seed"])
def sleepy(inputs, cfg, out_dir, device, work_dir):
    with ACTIVE_LOCK:
        ACTIVE["now"] += 1
        ACTIVE["max"] = max(ACTIVE["max"], ACTIVE["now"])
        ACTIVE["clash"] |= device in ACTIVE["devices"]
        ACTIVE["devices"].add(device)
    time.sleep(0.4)
    with ACTIVE_LOCK:
        ACTIVE["now"] -= 1
        ACTIVE["devices"].discard(device)
    (out_dir / "device.txt").write_text(device)


def test_concurrency_is_bounded_by_the_device_slots(prefect_home, tmp_path):
    nodes = [Node(sleepy, name=f"sleepy-{i}", cfg={"seed": i}) for i in range(5)]
    result = run_pipeline(nodes, CFG, store=tmp_path / "store", devices=["slot-a", "slot-b"])
    assert all(result.executed.values()) and len(result.manifests) == 5
    assert 1 <= ACTIVE["max"] <= 2 and not ACTIVE["clash"]  # never two bodies on one device
    assert {m.path("device.txt").read_text() for m in result.manifests.values()} <= {"slot-a", "slot-b"}
    assert {m.device for m in result.manifests.values()} <= {"slot-a", "slot-b"}


FAIL_AT: list[int] = []


@step("long_phase", version=1, config_keys=["seed"])
def long_phase(inputs, cfg, out_dir, device, work_dir):
    """Ten iterations, a checkpoint every 3; dies once at FAIL_AT."""
    _called("long_phase")
    ckpt = CheckpointManager(work_dir, every=3)
    start, acc = ckpt.latest() or (0, torch.zeros(()))
    for i in range(start + 1, 11):
        if FAIL_AT and i == FAIL_AT[0]:
            FAIL_AT.pop()
            raise RuntimeError(f"lost the GPU at iteration {i}")
        acc = acc + i
        if ckpt.due(i):
            ckpt.save(i, acc)
    (out_dir / "acc.txt").write_text(f"{acc.item()}")
    return {"resumed_from": start}


def test_a_retry_resumes_from_the_newest_checkpoint(prefect_home, tmp_path):
    FAIL_AT[:] = [8]
    result = run_pipeline([Node(long_phase)], CFG, store=tmp_path / "store", retries=1)
    assert _calls() == ["long_phase", "long_phase"]  # the first attempt and Prefect's retry
    assert result["long_phase"].metrics == {"resumed_from": 6}
    assert result["long_phase"].path("acc.txt").read_text() == f"{float(sum(range(1, 11)))}"


@step("rejects", version=1)
def rejects(inputs, cfg, out_dir, device, work_dir):
    _called("rejects")
    raise InputError("the audio clip is silent")


def test_input_errors_are_not_retried_and_stop_the_pipeline(prefect_home, tmp_path):
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("prefect.flow_runs")
    logger.addHandler(handler)
    nodes = [Node(rejects), Node(total, {"numbers": Ref("rejects", "x.txt")})]
    try:
        with pytest.raises(InputError, match="silent"):
            run_pipeline(nodes, CFG, store=tmp_path / "store", retries=3)
    finally:
        logger.removeHandler(handler)
    assert _calls() == ["rejects"]
    failed = [r for r in records if "silent" in r.getMessage()]
    assert failed and all(r.exc_info is None for r in failed)  # one line, no traceback
    assert not (tmp_path / "store" / "rejects").exists() and not (tmp_path / "store" / "total").exists()


def test_tasks_join_an_enclosing_flow_run(prefect_home, tmp_path):
    from prefect import flow
    from prefect.runtime import flow_run

    seen = {}

    @flow(name="outer")
    def outer():
        seen["outer"] = flow_run.id
        return run_pipeline(TWO_STEPS, CFG, store=tmp_path / "store")

    result = outer()
    assert result.executed == {"numbers": True, "total": True} and seen["outer"]


# --------------------------------------------------------------------------- without Prefect


def test_local_executor_retries_resume_too(tmp_path):
    FAIL_AT[:] = [5]
    result = run_pipeline([Node(long_phase)], CFG, store=tmp_path / "store", executor="local", retries=1)
    assert result["long_phase"].metrics == {"resumed_from": 3} and _calls() == ["long_phase", "long_phase"]
    FAIL_AT[:] = [5]
    with pytest.raises(RuntimeError, match="iteration 5"):
        run_pipeline([Node(long_phase, cfg={"seed": 1})], CFG, store=tmp_path / "store", executor="local", retries=0)


def test_pipeline_plans_are_validated_before_anything_runs(tmp_path):
    store = tmp_path / "store"
    with pytest.raises(InputError, match="unknown node"):
        run_pipeline([Node(total, {"numbers": Ref("nowhere")})], CFG, store=store, executor="local")
    with pytest.raises(InputError, match="named 'numbers'"):
        run_pipeline([Node(numbers), Node(numbers)], CFG, store=store, executor="local")
    a = Node(total, {"numbers": Ref("b")}, name="a")
    b = Node(total, {"numbers": Ref("a")}, name="b")
    with pytest.raises(InputError, match="cycle"):
        run_pipeline([a, b], CFG, store=store, executor="local")
    with pytest.raises(InputError, match="unknown executor 'dask'"):
        run_pipeline(TWO_STEPS, CFG, store=store, executor="dask")
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.raises(InputError, match="store directory"):
        run_pipeline(TWO_STEPS, CFG, store=blocker / "store", executor="local")
    assert _calls() == [] and not store.exists()


def test_store_defaults_to_the_configured_path_under_the_project(tmp_path, monkeypatch):
    monkeypatch.setenv("ANYTO3D_ROOT", str(tmp_path))
    result = run_pipeline(TWO_STEPS, {**CFG, "paths": {"store": "data/store"}}, executor="local")
    assert result["total"].path().parent.parent == tmp_path / "data" / "store"


def test_device_pool_hands_out_each_slot_once():
    pool = DevicePool(["cuda:0", "cuda:1"], per_device=2)
    assert pool.size == 4
    with pool.acquire() as a, pool.acquire() as b, pool.acquire() as c, pool.acquire() as d:
        assert sorted([a, b, c, d]) == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]
    with pytest.raises(InputError):
        DevicePool([])
