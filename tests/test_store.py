"""The content-addressed step store: keys, atomic commits, crash recovery, checkpoints, bad paths."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

from anyto3d.errors import InputError
from steps import (
    CheckpointManager,
    Manifest,
    Step,
    Store,
    capture_rng_state,
    config_subset,
    deterministic_kernels,
    restore_rng_state,
    step,
)
from steps import store as store_mod

REPO = Path(__file__).resolve().parents[1]
CALLS: list[str] = []


@step("double", version=1, config_keys=["scale", "seed"], inputs=["src"])
def double(inputs, cfg, out_dir, device, work_dir):
    """Reads one number, writes it times ``scale`` plus a random draw (seeded by the store)."""
    CALLS.append("double")
    value = float(inputs["src"].read_text())
    (out_dir / "value.txt").write_text(f"{value * cfg['scale']}")
    (out_dir / "sub").mkdir()
    (out_dir / "sub" / "noise.txt").write_text(f"{torch.rand(1).item():.10f}")
    return {"value": value * cfg["scale"], "nan_metric": float("nan")}


CFG = {"scale": 2.0, "seed": 0, "unrelated": {"deep": 1}}


@pytest.fixture(autouse=True)
def _reset_calls():
    CALLS.clear()


@pytest.fixture()
def src(tmp_path):
    p = tmp_path / "in" / "x.txt"
    p.parent.mkdir()
    p.write_text("3")
    return p


# --------------------------------------------------------------------------- keys


def test_key_depends_on_the_tiny_models_a_step_loads(tmp_path, src):
    """Retrained weights with the same code and config must not hit results built with the old."""
    models = tmp_path / "zoo"
    (models / "binder").mkdir(parents=True)
    weights = models / "binder" / "model.safetensors"
    weights.write_bytes(b"old weights")
    uses_models = Step(name="double", version="1", run_fn=double.run_fn, config_keys=("model", "scale", "seed"),
                       inputs=("src",))
    cfg = {**CFG, "model": {"name": "tiny", "models_dir": str(models)}}
    store = Store(tmp_path / "store")
    base = store.key(uses_models, {"src": src}, cfg)
    assert store.key(uses_models, {"src": src}, cfg) == base
    weights.write_bytes(b"new weights")
    assert store.key(uses_models, {"src": src}, cfg) != base
    weights.write_bytes(b"old weights")
    assert store.key(uses_models, {"src": src}, cfg) == base
    # the evaluation-only judge enters the keys of scoring steps only
    (models / "judge").mkdir()
    (models / "judge" / "model.safetensors").write_bytes(b"judge v1")
    scorer = Step(name="score", version="1", run_fn=double.run_fn, config_keys=("model",), inputs=("src",),
                  roles=lambda cfg: {"judge", "encoder"})
    keys = store.key(uses_models, {"src": src}, cfg), store.key(scorer, {"src": src}, cfg)
    (models / "judge" / "model.safetensors").write_bytes(b"judge v2, retrained")
    assert store.key(uses_models, {"src": src}, cfg) == keys[0]
    assert store.key(scorer, {"src": src}, cfg) != keys[1]
    # a step that does not read the model config, and paper weights, are keyed as before
    assert store.key(double, {"src": src}, cfg) == store.key(double, {"src": src}, CFG)
    assert store_mod.models_digest({"name": "paper", "weights_dir": str(models)}) is None


def test_a_step_that_declares_its_roles_is_keyed_on_those_models_only(tmp_path, src):
    """A retrained prior re-runs the steps that load it, and no others."""
    models = tmp_path / "zoo"
    for name in ("binder", "prior2d", "novelview", "judge"):
        (models / name).mkdir(parents=True)
        (models / name / "model.safetensors").write_bytes(name.encode() + b" v1")
    cfg = {**CFG, "model": {"name": "tiny", "models_dir": str(models)}}
    store = Store(tmp_path / "store")

    def declared(*roles):
        return Step(name="s" + "-".join(roles), version="1", run_fn=double.run_fn, config_keys=("model",),
                    inputs=("src",), roles=lambda cfg: set(roles))

    sds, zero, none = declared("prior2d"), declared("novel_view", "ms_encoder"), declared()
    undeclared = Step(name="all", version="1", run_fn=double.run_fn, config_keys=("model",), inputs=("src",))
    steps = (sds, zero, none, undeclared)
    before = {s.name: store.key(s, {"src": src}, cfg) for s in steps}
    (models / "novelview" / "model.safetensors").write_bytes(b"novelview v2, retrained")
    after = {s.name: store.key(s, {"src": src}, cfg) for s in steps}
    assert after[sds.name] == before[sds.name] and after[none.name] == before[none.name]
    assert after[zero.name] != before[zero.name] and after[undeclared.name] != before[undeclared.name]
    (models / "prior2d" / "config.json").write_text("{}")  # any file of the directory counts
    assert store.key(sds, {"src": src}, cfg) != before[sds.name]
    # encoder and ms_encoder are the one binder directory
    (models / "binder" / "model.safetensors").write_bytes(b"binder v2")
    assert store.key(zero, {"src": src}, cfg) != after[zero.name]
    # a step that loads no model is keyed on none of them; an unknown role is an error
    assert store.key(none, {"src": src}, cfg) == before[none.name]
    with pytest.raises(InputError, match="unknown model role"):
        store.key(declared("unet"), {"src": src}, cfg)


def test_key_depends_on_config_subset_content_and_version_only(tmp_path, src):
    store = Store(tmp_path / "store")
    base = store.key(double, {"src": src}, CFG)
    assert len(base) == 64 and base == store.key(double, {"src": src}, CFG)
    # an unrelated config key does not change it
    assert store.key(double, {"src": src}, {**CFG, "unrelated": {"deep": 2}, "extra": 5}) == base
    # the config subset does
    assert store.key(double, {"src": src}, {**CFG, "scale": 3.0}) != base
    assert store.key(double, {"src": src}, {**CFG, "seed": 1}) != base
    # the same bytes at another path do not; other bytes do
    moved = tmp_path / "elsewhere.txt"
    moved.write_text("3")
    assert store.key(double, {"src": moved}, CFG) == base
    src.write_text("4")
    assert store.key(double, {"src": src}, CFG) != base
    src.write_text("3")
    # the step version does
    bumped = Step(name="double", version="2", run_fn=double.run_fn, config_keys=double.config_keys, inputs=("src",))
    assert store.key(bumped, {"src": src}, CFG) != base
    # the code hash does (a listed code module enters it)
    with_code = Step(**{**bumped.__dict__, "version": "1", "code_modules": ("anyto3d.errors",)})
    assert with_code.code_hash() != double.code_hash()
    assert store.key(with_code, {"src": src}, CFG) != base


def test_key_is_the_sha256_of_the_documented_canonical_json(tmp_path, src):
    store = Store(tmp_path / "store")
    blob = json.dumps(
        {
            "format": store_mod.STORE_FORMAT,
            "step": "double",
            "version": "1",
            "code": double.code_hash(),
            "config": {"scale": 2.0, "seed": 0},
            "inputs": {"src": "file:" + hashlib.sha256(b"3").hexdigest()},
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    assert store.key(double, {"src": src}, CFG) == hashlib.sha256(blob.encode()).hexdigest()


def test_directory_digest_covers_names_and_contents_but_not_the_manifest(tmp_path):
    d = tmp_path / "d"
    (d / "a").mkdir(parents=True)
    (d / "a" / "f.txt").write_text("1")
    (d / "g.txt").write_text("2")
    first = store_mod.path_digest(d)
    assert first.startswith("dir:")
    (d / store_mod.MANIFEST).write_text("{timings that differ between rebuilds}")
    assert store_mod.path_digest(d) == first
    (d / "g.txt").write_text("3")
    changed = store_mod.path_digest(d)
    assert changed != first
    (d / "g.txt").rename(d / "h.txt")
    assert store_mod.path_digest(d) not in (first, changed)


def test_config_subset_is_nested_and_names_missing_keys():
    cfg = {"a": {"b": 1, "c": [1, 2], "d": {"e": 3}}, "f": 4}
    assert config_subset(cfg, ["a.b", "f"]) == {"a": {"b": 1}, "f": 4}
    assert config_subset(cfg, ["a", "a.b"]) == {"a": {"b": 1, "c": [1, 2], "d": {"e": 3}}}
    assert config_subset(cfg, ["a.d.e"]) == {"a": {"d": {"e": 3}}}
    with pytest.raises(InputError, match="'a.x'"):
        config_subset(cfg, ["a.x"])
    with pytest.raises(InputError, match="not finite"):
        config_subset({"k": float("inf")}, ["k"])


# --------------------------------------------------------------------------- running and committing


def test_run_commits_manifest_with_matching_hashes_and_hits_without_running(tmp_path, src):
    store = Store(tmp_path / "store")
    manifest, executed = store.run_with_status(double, {"src": src}, CFG, device="cpu")
    assert executed and CALLS == ["double"]
    out = manifest.path()
    assert out == tmp_path / "store" / "double" / manifest.key
    assert sorted(manifest.files) == ["sub/noise.txt", "value.txt"]
    for rel, entry in manifest.files.items():
        data = (out / rel).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert (out / "value.txt").read_text() == "6.0"
    assert manifest.metrics == {"value": 6.0, "nan_metric": None}
    assert manifest.config == {"scale": 2.0, "seed": 0} and manifest.device == "cpu"
    assert manifest.timings["seconds"] >= 0 and manifest.timings["finished"] >= manifest.timings["started"]
    assert Manifest.load(out) == manifest
    assert Manifest.from_dict(json.loads(json.dumps(manifest.to_dict()))) == manifest
    assert not store.work_dir(double, manifest.key).exists()  # deleted once committed
    assert not any((tmp_path / "store" / ".tmp").rglob("*.txt"))

    again, executed = store.run_with_status(double, {"src": src}, CFG, device="cuda:0")
    assert not executed and CALLS == ["double"] and again == manifest  # the device is not in the key


def test_store_seeds_from_the_config(tmp_path, src):
    a = Store(tmp_path / "a").run(double, {"src": src}, CFG)
    torch.manual_seed(123)  # the ambient state must not matter
    b = Store(tmp_path / "b").run(double, {"src": src}, CFG)
    c = Store(tmp_path / "c").run(double, {"src": src}, {**CFG, "seed": 7})
    noise = lambda m: m.path("sub/noise.txt").read_text()  # noqa: E731
    assert noise(a) == noise(b) != noise(c)


@step("gather_grad", version=1, config_keys=["seed"], inputs=["src"])
def gather_grad(inputs, cfg, out_dir, device, work_dir):
    """The backward of a gather (``vertices[faces]``, as every mesh loss has) at two threads."""
    torch.set_num_threads(2)
    vertices = torch.randn(4000, 3, requires_grad=True)
    faces = torch.randint(0, 4000, (9000, 3))
    weights = torch.randn(9000, 3, 3)
    (vertices[faces] * weights).sum().backward()
    torch.save(vertices.grad, out_dir / "grad.pt")
    return {"deterministic": float(torch.are_deterministic_algorithms_enabled())}


def test_steps_run_with_deterministic_kernels_so_reruns_are_bit_identical(tmp_path, src, monkeypatch):
    """A multi-threaded gather backward adds with atomics unless deterministic kernels are on; the
    store turns them on around every step, records it, and restores the caller's mode after."""
    threads = torch.get_num_threads()
    try:
        runs = [Store(tmp_path / f"s{i}").run(gather_grad, {"src": src}, CFG) for i in range(4)]
    finally:
        torch.set_num_threads(threads)
    assert not torch.are_deterministic_algorithms_enabled()
    assert all(m.metrics["deterministic"] == 1.0 for m in runs)
    assert runs[0].kernels == {"deterministic": True, "torch_threads": 2}
    assert len({m.files["grad.pt"]["sha256"] for m in runs}) == 1
    grads = [torch.load(m.path("grad.pt")) for m in runs]
    assert all(torch.equal(grads[0], g) for g in grads[1:]) and grads[0].abs().sum() > 0

    monkeypatch.setenv("ANYTO3D_DETERMINISTIC", "0")  # the opt-out, for speed on a GPU
    off = Store(tmp_path / "off").run(gather_grad, {"src": src}, CFG)
    torch.set_num_threads(threads)
    assert off.metrics["deterministic"] == 0.0 and off.kernels["deterministic"] is False


def test_deterministic_kernels_are_on_while_any_concurrent_user_is_inside():
    """Steps run side by side in threads under Prefect: the first user switches the mode on, the last
    one out restores the caller's mode, whatever the order they leave in."""
    entered, release_first = threading.Event(), threading.Event()
    seen = {}

    def first():
        with deterministic_kernels():
            entered.set()
            release_first.wait(10)
        seen["after_first_left"] = torch.are_deterministic_algorithms_enabled()

    worker = threading.Thread(target=first)
    worker.start()
    assert entered.wait(10)
    with deterministic_kernels() as on:
        assert on and torch.are_deterministic_algorithms_enabled()
        release_first.set()
        worker.join(10)
        assert torch.are_deterministic_algorithms_enabled()  # the first left; this one is still inside
    assert not torch.are_deterministic_algorithms_enabled()
    assert seen["after_first_left"] is True


def test_manifest_is_the_last_file_written(tmp_path, src, monkeypatch):
    seen = {}
    real = store_mod._write_json_durably

    def spy(path, data):
        seen["present"] = sorted(p.relative_to(path.parent).as_posix() for p in path.parent.rglob("*") if p.is_file())
        seen["final_exists"] = Path(data["dir"]).exists()
        real(path, data)

    monkeypatch.setattr(store_mod, "_write_json_durably", spy)
    manifest = Store(tmp_path / "store").run(double, {"src": src}, CFG)
    assert seen["present"] == sorted(manifest.files)  # every output file, and no manifest yet
    assert seen["final_exists"] is False  # and the output was not yet visible


def test_crash_while_writing_the_manifest_commits_nothing(tmp_path, src, monkeypatch):
    store = Store(tmp_path / "store")

    def boom(path, data):
        path.write_text('{"half": ')
        raise OSError("disk full")

    monkeypatch.setattr(store_mod, "_write_json_durably", boom)
    with pytest.raises(OSError, match="disk full"):
        store.run(double, {"src": src}, CFG)
    key = store.key(double, {"src": src}, CFG)
    assert not store.entry_dir(double, key).exists()
    assert store.lookup(double, key) is None
    assert list((tmp_path / "store" / ".tmp" / "double").iterdir()) == []
    monkeypatch.undo()
    assert store.run_with_status(double, {"src": src}, CFG)[1] is True


def test_step_exception_leaves_no_output_and_keeps_the_work_dir(tmp_path, src):
    @step("partial", version=1, inputs=["src"])
    def partial(inputs, cfg, out_dir, device, work_dir):
        CALLS.append("partial")
        (out_dir / "half.bin").write_bytes(b"x" * 10)
        (work_dir / "progress").write_text("5")
        raise RuntimeError("died mid-step")

    store = Store(tmp_path / "store")
    with pytest.raises(RuntimeError, match="mid-step"):
        store.run(partial, {"src": src}, {})
    key = store.key(partial, {"src": src}, {})
    assert not store.entry_dir(partial, key).exists()
    assert (store.work_dir(partial, key) / "progress").read_text() == "5"
    with pytest.raises(RuntimeError):
        store.run(partial, {"src": src}, {})
    assert CALLS == ["partial", "partial"]  # nothing was cached


def test_directory_without_manifest_does_not_exist_and_is_replaced(tmp_path, src):
    store = Store(tmp_path / "store")
    key = store.key(double, {"src": src}, CFG)
    junk = store.entry_dir(double, key)
    junk.mkdir(parents=True)
    (junk / "value.txt").write_text("garbage")
    assert store.lookup(double, key) is None
    manifest, executed = store.run_with_status(double, {"src": src}, CFG)
    assert executed and manifest.path("value.txt").read_text() == "6.0"


def test_missing_or_corrupted_file_invalidates_the_entry(tmp_path, src):
    store = Store(tmp_path / "store")
    manifest = store.run(double, {"src": src}, CFG)
    assert manifest.is_intact(verify_hashes=True)
    manifest.path("value.txt").write_text("9.9")  # same size, other bytes
    assert manifest.is_intact() and not manifest.is_intact(verify_hashes=True)
    manifest.path("sub/noise.txt").unlink()
    assert not manifest.is_intact()
    again, executed = store.run_with_status(double, {"src": src}, CFG)
    assert executed and again.is_intact(verify_hashes=True)


def test_sigkill_mid_step_leaves_nothing_committed_and_the_next_run_rebuilds(tmp_path, monkeypatch):
    """A real crash: a child process kills itself with SIGKILL while its step is half done."""
    (tmp_path / "x.txt").write_text("1")
    script = tmp_path / "killed.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, signal, sys
            sys.path.insert(0, {str(REPO)!r})
            import steps.store
            from steps import Store, step

            @step("victim", version=1, inputs=["src"])
            def victim(inputs, cfg, out_dir, device, work_dir):
                (out_dir / "half.txt").write_text("half")
                if os.environ.get("KILL") == "1":
                    os.kill(os.getpid(), signal.SIGKILL)
                (out_dir / "full.txt").write_text("full")
                return {{"ok": 1}}

            def main():
                steps.store.seed_everything = lambda seed: None  # spare the child a torch import
                Store({str(tmp_path / 'store')!r}).run(victim, {{"src": {str(tmp_path / 'x.txt')!r}}}, {{}})

            if __name__ == "__main__":
                main()
            """
        )
    )
    killed = subprocess.run([sys.executable, str(script)], env={**os.environ, "KILL": "1"}, capture_output=True)
    assert killed.returncode == -9, killed.stderr
    root = tmp_path / "store"
    assert not (root / "victim").exists()
    leftovers = list((root / ".tmp" / "victim").iterdir())
    assert len(leftovers) == 1 and (leftovers[0] / "half.txt").exists()

    # The restart, in this process: the same module source, hence the same key.
    spec = importlib.util.spec_from_file_location("killed_step", script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "killed_step", module)
    spec.loader.exec_module(module)
    monkeypatch.setenv("KILL", "0")
    manifest, executed = Store(root).run_with_status(module.victim, {"src": tmp_path / "x.txt"}, {})
    assert executed and manifest.path() == root / "victim" / leftovers[0].name.rsplit("-", 1)[0]
    assert sorted(manifest.files) == ["full.txt", "half.txt"]
    assert list((root / ".tmp" / "victim").iterdir()) == []  # the dead builder's directory is gone


def test_concurrent_runs_of_one_key_build_once(tmp_path, src):
    store = Store(tmp_path / "store")
    barrier = threading.Barrier(3)
    results = []

    def go():
        barrier.wait()
        results.append(store.run(double, {"src": src}, CFG))

    threads = [threading.Thread(target=go) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert CALLS == ["double"] and len(results) == 3 and all(r == results[0] for r in results)


def test_manifest_inputs_are_directories(tmp_path, src):
    @step("sum_dir", version=1, inputs=["prev"])
    def sum_dir(inputs, cfg, out_dir, device, work_dir):
        (out_dir / "copy.txt").write_text((inputs["prev"] / "value.txt").read_text())

    store = Store(tmp_path / "store")
    first = store.run(double, {"src": src}, CFG)
    second = store.run(sum_dir, {"prev": first}, {})
    assert second.path("copy.txt").read_text() == "6.0"
    assert second.inputs["prev"] == store_mod.path_digest(first.path())
    assert second.metrics == {}


# --------------------------------------------------------------------------- bad input


def test_input_names_are_checked(tmp_path, src):
    store = Store(tmp_path / "store")
    with pytest.raises(InputError, match=r"missing \['src'\]"):
        store.run(double, {}, CFG)
    with pytest.raises(InputError, match=r"unexpected \['other'\]"):
        store.run(double, {"src": src, "other": src}, CFG)
    with pytest.raises(InputError, match="does not exist"):
        store.run(double, {"src": tmp_path / "nope.txt"}, CFG)
    with pytest.raises(InputError, match="'scale'"):
        store.run(double, {"src": src}, {"seed": 0})
    assert CALLS == []


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_unusable_store_root_is_one_input_error_and_writes_nothing(tmp_path, src, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("i am a file")
    root = blocker if where == "file" else blocker / "store"
    with pytest.raises(InputError, match="store directory .* (not a directory|not writable)"):
        Store(root).run(double, {"src": src}, CFG)
    assert CALLS == [] and sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "in"]


def test_materialize_links_files_atomically_and_rejects_bad_destinations(tmp_path, src):
    store = Store(tmp_path / "store")
    manifest = store.run(double, {"src": src}, CFG)
    dest = tmp_path / "runs" / "r1"
    store.materialize(manifest, dest, files=["value.txt"])
    assert (dest / "value.txt").read_text() == "6.0" and not (dest / "sub").exists()
    store.materialize(manifest, dest)  # replaces the previous export
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == sorted(manifest.files)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["r1"]  # no temporaries left
    with pytest.raises(InputError, match="no file"):
        store.materialize(manifest, dest, files=["mesh.glb"])
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.raises(InputError, match="output directory .* not writable"):
        store.materialize(manifest, blocker / "sub" / "r2")


def test_step_names_must_be_directory_names():
    with pytest.raises(InputError, match="step name"):
        Step(name="../evil", version="1", run_fn=double.run_fn)


# --------------------------------------------------------------------------- checkpoints

TOTAL, EVERY = 10, 3
FAIL_AT: list[int] = []  # iteration at which the next run of `counter` dies (consumed once)


@step("counter", version=1, config_keys=["seed"])
def counter(inputs, cfg, out_dir, device, work_dir):
    """Counts to TOTAL drawing a random number per iteration; checkpoints every EVERY; resumable."""
    ckpt = CheckpointManager(work_dir / "ckpt", every=EVERY, keep=2)
    start, acc = 0, torch.zeros(())
    if (latest := ckpt.latest()) is not None:
        start, state = latest
        acc = state["acc"]
        restore_rng_state(state["rng"])
    with open(work_dir.parent / "iterations.log", "a") as log:
        for i in range(start + 1, TOTAL + 1):
            if FAIL_AT and i == FAIL_AT[0]:
                FAIL_AT.pop()
                raise RuntimeError(f"killed at iteration {i}")
            acc = acc + torch.rand(())
            log.write(f"{i}\n")
            if ckpt.due(i):
                ckpt.save(i, {"acc": acc, "rng": capture_rng_state()})
    (out_dir / "acc.txt").write_text(f"{acc.item():.12f}")
    return {"resumed_from": start}


def test_checkpoint_resume_loses_at_most_one_interval_and_matches_an_uninterrupted_run(tmp_path):
    store = Store(tmp_path / "store")
    FAIL_AT[:] = [8]
    with pytest.raises(RuntimeError, match="iteration 8"):
        store.run(counter, {}, {"seed": 0})
    key = store.key(counter, {}, {"seed": 0})
    saved = sorted(p.name for p in (store.work_dir(counter, key) / "ckpt").iterdir())
    assert saved == ["ckpt-0000000003.pt", "ckpt-0000000006.pt"]
    log = tmp_path / "store" / ".work" / "counter" / "iterations.log"
    assert log.read_text().split() == [str(i) for i in range(1, 8)]

    manifest = store.run(counter, {}, {"seed": 0})
    assert manifest.metrics == {"resumed_from": 6}
    redone = log.read_text().split()[7:]
    assert redone == [str(i) for i in range(7, 11)]
    assert 8 - 6 <= EVERY  # lost work: iterations 7 (and the failing 8) only
    assert not store.work_dir(counter, key).exists()

    clean = Store(tmp_path / "clean").run(counter, {}, {"seed": 0})
    assert clean.path("acc.txt").read_text() == manifest.path("acc.txt").read_text()


def test_checkpoint_manager_keeps_the_newest_and_skips_unreadable_files(tmp_path):
    ckpt = CheckpointManager(tmp_path / "c", every=2, keep=2)
    assert ckpt.latest() is None
    assert [ckpt.due(i) for i in range(5)] == [False, False, True, False, True]
    for i in (2, 4, 6):
        ckpt.save(i, {"w": torch.full((2,), float(i)), "meta": {"lr": 0.1, "tags": ["a", 1]}})
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["ckpt-0000000004.pt", "ckpt-0000000006.pt"]
    step_i, state = ckpt.latest()
    assert step_i == 6 and torch.equal(state["w"], torch.tensor([6.0, 6.0])) and state["meta"]["tags"] == ["a", 1]
    (tmp_path / "c" / "ckpt-0000000006.pt").write_bytes(b"truncated")
    assert ckpt.latest()[0] == 4
    with pytest.raises(TypeError, match="weights_only"):
        ckpt.save(8, {"bad": object()})
    with pytest.raises(InputError):
        CheckpointManager(tmp_path, every=0)


def test_runs_sharing_a_directory_see_only_their_own_checkpoints(tmp_path):
    binder = CheckpointManager(tmp_path, every=1, keep=1, prefix="binder-")
    audio = CheckpointManager(tmp_path, every=1, keep=1, prefix="binder-audio-")
    binder.save(3, {"run": "binder"})
    audio.save(9, {"run": "audio"})  # sorts after binder's files, and its name starts with "binder-"
    assert binder.latest() == (3, {"run": "binder"})
    assert audio.latest() == (9, {"run": "audio"})
    binder.save(4, {"run": "binder"})  # pruning keep=1 leaves the other run's file alone
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["binder-0000000004.pt", "binder-audio-0000000009.pt"]
    with pytest.raises(InputError, match="prefix"):
        CheckpointManager(tmp_path, every=1, prefix="a/b-")


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    ckpt = CheckpointManager(tmp_path, every=1)
    ckpt.save(1, capture_rng_state())
    expected = (random.random(), np.random.rand(), torch.rand(()).item())
    restore_rng_state(ckpt.latest()[1])
    assert (random.random(), np.random.rand(), torch.rand(()).item()) == expected
