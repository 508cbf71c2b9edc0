"""The generation steps end to end on the test zoo through the store (no Prefect): outputs,
store hits, resumption from a checkpoint, prompt encoding and input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from anyto3d.errors import InputError
from anyto3d.methods import method_from_config
from anyto3d.modality import TextPrompt, load_image
from anyto3d.models import TINY_DIRS
from anyto3d.state_io import load_state
from steps import (
    encode_modality,
    nerf_coarse,
    phase_common,
    reference_view,
    render_views,
)
from steps.phase_common import read_embedding
from steps.pipeline import prompt_json, stages_for
from steps.store import Store

torch.set_num_threads(1)
CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(scope="module")
def zoo(test_zoo):
    return test_zoo


@pytest.fixture(autouse=True)
def _env(zoo, monkeypatch):
    monkeypatch.setenv("ANYTO3D_TINY_MODELS", str(zoo))
    monkeypatch.setenv("ANYTO3D_PROGRESS", "0")


def cut_config(iterations: int = 2, checkpoint_every: int | None = None) -> dict:
    """conf/method/xbind.yaml at the tiny scale cut to a few iterations and 16^2 renders."""
    method = yaml.safe_load((CONF / "method" / "xbind.yaml").read_text())
    for phase in method["tiny"].values():
        phase.update(iterations=iterations, resolution=16)
    for phase in method["phases"].values():
        if checkpoint_every is not None:
            phase["checkpoint_every"] = checkpoint_every
    method["tiny"]["coarse"]["losses"]["augmented_sds"]["t_range"]["max"]["total_steps"] = iterations
    geometry = method["tiny"]["geometry"]
    geometry["losses"]["cds"]["anneal_steps"] = iterations
    # A NeRF after 2 steps is the initial density blob (peak ~10): a threshold of 5 cuts a surface.
    geometry["dmtet"] = {"resolution": 16, "isosurface_threshold": 5.0}
    cfg = {"seed": 0, "model": {"name": "tiny", "models_dir": None, "weights_dir": None}, "method": method,
           "render": {"views": 120, "resolution": 16, "fps": 30}}
    method_from_config(cfg)  # validates the cut config
    return cfg


def write_prompt(path: Path, **parts) -> Path:
    path.write_text(json.dumps(prompt_json(**parts)))
    return path


def red_square(path: Path, size: int = 32) -> Path:
    from PIL import Image

    image = np.full((size, size, 3), 255, np.uint8)
    image[8:24, 10:22] = (220, 30, 30)
    Image.fromarray(image).save(path)
    return path


def run_chain(store: Store, cfg: dict, prompt: Path, loads: list[str] | None = None) -> dict:
    """Every step in order; ``loaded``: the model directories each step looked up (``loads``:
    the ``model_loads`` fixture's list)."""
    out, ran, loaded = {}, {}, {}

    def go(key, step, inputs):
        start = len(loads or ())
        out[key], ran[key] = store.run_with_status(step, inputs, cfg)
        loaded[key] = set((loads or [])[start:])

    go("encoded", encode_modality.STEP, {"prompt": prompt})
    go("reference", reference_view.STEP, {"encoded": out["encoded"]})
    previous = None
    for step in stages_for(cfg):
        go(step.name, step, {"encoded": out["encoded"], "reference": out["reference"], "previous": previous})
        previous = out[step.name]
    go("render_views", render_views.STEP, {"state": previous})
    return {"manifests": out, "ran": ran, "loaded": loaded}


def test_chain_writes_every_output_and_a_rerun_is_all_store_hits(tmp_path, model_loads):
    import imageio.v3 as iio
    from PIL import Image

    from anyto3d.export.mesh_export import load_mesh

    cfg = cut_config()
    assert [s.name for s in stages_for(cfg)] == ["nerf_coarse", "dmtet_geometry", "dmtet_texture"]
    store = Store(tmp_path / "store")
    prompt = write_prompt(tmp_path / "prompt.json", text="a red cube")
    first = run_chain(store, cfg, prompt, model_loads)
    assert all(first["ran"].values())
    # each step loads exactly the models it declares, the ones its store key holds
    steps = {"encoded": encode_modality.STEP, "reference": reference_view.STEP, "render_views": render_views.STEP,
             **{s.name: s for s in stages_for(cfg)}}
    for key, step in steps.items():
        assert first["loaded"][key] == {TINY_DIRS[r] for r in step.roles(cfg)}, key
    assert first["loaded"]["nerf_coarse"] == {"prior2d", "novelview", "binder"}  # XBind's Phase I
    m = first["manifests"]

    emb = read_embedding(m["encoded"].path())
    assert emb.shape == (64,) and emb.dtype == torch.float32 and abs(float(emb.norm()) - 1) < 1e-5
    assert json.loads(m["encoded"].path("prompt.json").read_text())["parts"] == [
        {"modality": "text", "weight": 1.0, "text": "a red cube"}]
    ref = Image.open(m["reference"].path("reference.png"))
    assert ref.mode == "RGBA" and ref.size == (64, 64)
    assert json.loads(m["reference"].path("reference.json").read_text())["source"] == "prior"
    for name in ("nerf_coarse", "dmtet_geometry", "dmtet_texture"):
        assert Image.open(m[name].path("preview.png")).size == (4 * 64, 64)
        assert m[name].metrics["iterations"] == 2 and np.isfinite(m[name].metrics["seconds"])
    assert load_state(m["nerf_coarse"].path("state")).field is not None
    final = load_state(m["dmtet_texture"].path("state"))
    assert final.geometry.is_frozen and final.texture is not None and final.field is None
    assert m["dmtet_texture"].metrics["texture.start_step"] == 0

    with np.load(m["render_views"].path("views.npz")) as views:
        assert views["rgb"].shape == (120, 16, 16, 3) and views["rgb"].dtype == np.uint8
        assert views["alpha"].shape == (120, 16, 16) and views["alpha"].dtype == np.uint8
        assert views["c2w"].shape == (120, 4, 4) and views["azimuth"].shape == (120,)
        assert np.allclose(np.diff(views["azimuth"]), 2 * np.pi / 120, atol=1e-5)
        assert views["alpha"].max() > 0  # the object is in view
    frames = iio.imread(m["render_views"].path("turntable.mp4"), plugin="pyav", index=None)
    assert frames.shape[0] == 120
    assert Image.open(m["render_views"].path("contact_sheet.png")).size == (6 * 16, 2 * 16)
    mesh, texture = load_mesh(m["render_views"].path("mesh.glb"))
    assert mesh.num_faces == m["render_views"].metrics["mesh_faces"] > 0 and texture is not None

    again = run_chain(store, cfg, prompt)
    assert not any(again["ran"].values())
    assert {k: v.key for k, v in again["manifests"].items()} == {k: v.key for k, v in m.items()}


def test_nerf_only_method_renders_the_nerf_and_extracts_its_mesh(tmp_path):
    """At tiny scale the NeRF's mesh is cut at density 5 (steps.phase_common.SCALES): the CPU
    NeRF peaks near 10, so XBind's paper threshold 10 found no surface in DreamFusion runs."""
    from anyto3d.export.mesh_export import load_mesh
    from steps.phase_common import SCALES

    assert SCALES["tiny"].extract_threshold == 5.0 and SCALES["paper"].extract_threshold == 10.0
    cfg = cut_config()
    for name in ("geometry", "texture"):
        cfg["method"]["phases"][name]["enabled"] = False  # the "w/o three-phase" ablation
    assert [s.name for s in stages_for(cfg)] == ["nerf_coarse"]
    store = Store(tmp_path / "store")
    encoded = store.run(encode_modality.STEP, {"prompt": write_prompt(tmp_path / "p.json", text="a red cube")}, cfg)
    reference = store.run(reference_view.STEP, {"encoded": encoded}, cfg)
    nerf = store.run(nerf_coarse.STEP, {"encoded": encoded, "reference": reference}, cfg)
    cfg["render"]["views"] = 12  # volume renders with normals cost ~6x a mesh view; 12 views show the path
    views = store.run(render_views.STEP, {"state": nerf}, cfg)
    assert views.metrics["source"] == "nerf"
    mesh, texture = load_mesh(views.path("mesh.glb"))
    assert mesh.num_faces > 0 and texture is not None


def _weights(state_dir: Path) -> dict[str, torch.Tensor]:
    state = load_state(state_dir)
    return {f"{k}.{n}": t for k, m in state.modules().items() for n, t in m.state_dict().items()}


def test_a_phase_step_resumes_from_its_checkpoint_and_ends_where_an_uninterrupted_run_does(tmp_path, monkeypatch):
    cfg = cut_config(iterations=4, checkpoint_every=2)
    prompt = write_prompt(tmp_path / "prompt.json", text="a red cube")
    shared = Store(tmp_path / "inputs")
    encoded = shared.run(encode_modality.STEP, {"prompt": prompt}, cfg)
    reference = shared.run(reference_view.STEP, {"encoded": encoded}, cfg)
    inputs = {"encoded": encoded, "reference": reference}

    straight = Store(tmp_path / "straight").run(nerf_coarse.STEP, inputs, cfg)
    assert straight.metrics["coarse.start_step"] == 0

    real_run_phase = phase_common.run_phase
    saved_steps = []

    def crash_after_first_checkpoint(*args, checkpoint, **kwargs):
        def save_then_crash(ckpt):
            checkpoint(ckpt)
            saved_steps.append(ckpt["step"])
            raise RuntimeError("simulated crash")

        return real_run_phase(*args, checkpoint=save_then_crash, **kwargs)

    store = Store(tmp_path / "resumed")
    monkeypatch.setattr(phase_common, "run_phase", crash_after_first_checkpoint)
    with pytest.raises(RuntimeError, match="simulated crash"):
        store.run(nerf_coarse.STEP, inputs, cfg)
    assert saved_steps == [2]
    key = store.key(nerf_coarse.STEP, inputs, cfg)
    assert store.lookup(nerf_coarse.STEP, key) is None  # nothing committed
    assert sorted(p.name for p in (store.work_dir(nerf_coarse.STEP, key) / "coarse").iterdir()) == ["ckpt-0000000002.pt"]

    monkeypatch.setattr(phase_common, "run_phase", real_run_phase)
    resumed = store.run(nerf_coarse.STEP, inputs, cfg)
    assert resumed.metrics["coarse.start_step"] == 2
    assert not store.work_dir(nerf_coarse.STEP, key).exists()  # checkpoints dropped on commit
    a, b = _weights(straight.path("state")), _weights(resumed.path("state"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics["coarse.loss/total"] == straight.metrics["coarse.loss/total"]


def test_image_and_weighted_mixed_prompts_encode_and_frame_the_image(tmp_path):
    from anyto3d.zoo.binder import TinyBinder
    from anyto3d.zoo.build import model_dir

    cfg = cut_config()
    store = Store(tmp_path / "store")
    image = red_square(tmp_path / "square.png")
    encoded = store.run(encode_modality.STEP, {"prompt": write_prompt(tmp_path / "p.json", image=image), "image": image}, cfg)
    assert encoded.path("image.png").is_file() and encoded.metrics["modalities"] == "image"
    binder = TinyBinder.from_pretrained(model_dir("binder"))
    expected = binder.embed("image", load_image(image))[0]
    assert torch.allclose(read_embedding(encoded.path()), expected, atol=1e-6)
    ref = store.run(reference_view.STEP, {"encoded": encoded}, cfg)
    assert json.loads(ref.path("reference.json").read_text())["source"] == "image"

    # Text + image, weighted 2 : 1 -> normalise(2 e_text + e_image), and the image still frames x_r.
    mixed_prompt = write_prompt(tmp_path / "m.json", text="a red cube", image=image, weights={"text": 2.0})
    mixed = store.run(encode_modality.STEP, {"prompt": mixed_prompt, "image": image}, cfg)
    e_text = binder.embed("text", TextPrompt("a red cube"))[0]
    want = torch.nn.functional.normalize(2.0 * e_text + expected, dim=0)
    assert torch.allclose(read_embedding(mixed.path()), want, atol=1e-6)
    assert json.loads(store.run(reference_view.STEP, {"encoded": mixed}, cfg).path("reference.json").read_text())[
        "source"] == "image"


def test_audio_prompt_encodes(tmp_path):
    import soundfile as sf

    from anyto3d.zoo.audio import AudioConfig, synthesize
    from anyto3d.zoo.world import catalogue

    wave = synthesize(catalogue()[0], np.random.default_rng(0))
    path = tmp_path / "clip.wav"
    sf.write(str(path), wave, AudioConfig().sample_rate)
    cfg = cut_config()
    store = Store(tmp_path / "store")
    encoded = store.run(encode_modality.STEP, {"prompt": write_prompt(tmp_path / "p.json", audio=path), "audio": path}, cfg)
    emb = read_embedding(encoded.path())
    assert abs(float(emb.norm()) - 1) < 1e-5 and encoded.path("audio.wav").is_file()
    assert json.loads(encoded.path("prompt.json").read_text())["label"] == "clip"


@pytest.mark.parametrize("case", ["empty_text", "corrupt_image", "image_part_without_file"])
def test_bad_prompts_are_input_errors_that_leave_nothing_in_the_store(tmp_path, case):
    cfg = cut_config()
    store = Store(tmp_path / "store")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not a png")
    if case == "empty_text":
        inputs = {"prompt": write_prompt(tmp_path / "p.json", text="   ")}
        match = "empty"
    elif case == "corrupt_image":
        inputs = {"prompt": write_prompt(tmp_path / "p.json", image=bad), "image": bad}
        match = "bad.png"
    else:
        inputs = {"prompt": write_prompt(tmp_path / "p.json", image=bad)}
        match = "no image file"
    with pytest.raises(InputError, match=match):
        store.run(encode_modality.STEP, inputs, cfg)
    entries = store.root / "encode_modality"
    assert not entries.exists() or not any(entries.iterdir())


def test_prompt_json_and_stages_for_reject_bad_requests():
    assert prompt_json(text="A Red  Cube!", audio="/x/rain.wav", weights=[1, 3]) == {
        "parts": [{"modality": "text", "weight": 1.0, "text": "A Red  Cube!"},
                  {"modality": "audio", "weight": 3.0, "file": "audio"}],
        "label": "a-red-cube+rain"}
    with pytest.raises(InputError, match="at least one"):
        prompt_json()
    with pytest.raises(InputError, match="not parts"):
        prompt_json(text="x", weights={"image": 1.0})
    cfg = cut_config()
    fantasia = yaml.safe_load((CONF / "method" / "fantasia3d.yaml").read_text())
    assert [s.name for s in stages_for({"method": fantasia, "model": cfg["model"]})] == ["dmtet_geometry", "dmtet_texture"]


def test_preview_of_a_shaded_phase_lights_it_as_training_did():
    """DreamFusion's phase shades (lambertian): its preview needs lights, as its training renders
    have (a headlight); the shaded strip is darker than the albedo one, never an error."""
    from dataclasses import replace as dc_replace

    from anyto3d.fields.nerf import CPU_DENSE_NERF, NeRFField
    from anyto3d.methods import phase_from_dict
    from anyto3d.optimize import OptimState
    from anyto3d.render.volume import VolumeRendererConfig
    from steps.phase_common import preview_images

    torch.manual_seed(0)
    state = OptimState(field=NeRFField(dc_replace(CPU_DENSE_NERF, hidden_dim=16)), volume=VolumeRendererConfig(n_samples=16))
    shaded = preview_images(state, phase_from_dict("coarse", {"shading": "lambertian", "lights": True}), 16)
    albedo = preview_images(state, phase_from_dict("coarse", {}), 16)
    assert shaded.shape == albedo.shape == (4, 16, 16, 3) and torch.isfinite(shaded).all()
    assert float(shaded.mean()) < float(albedo.mean())


@pytest.mark.gpu
def test_phase_steps_run_on_cuda_and_keep_their_state_there(tmp_path):
    """The CUDA path of every GPU step: encode → reference → NeRF → DMTet geometry → texture on
    ``cuda``, each with a finite total loss in every phase (non-finite values are left out of the
    metrics, so a missing one fails) and a state that reloads onto the GPU. The turntable needs
    only a loaded state; the CPU tests cover it."""
    cfg = cut_config(iterations=3)
    store = Store(tmp_path / "store")
    prompt = write_prompt(tmp_path / "prompt.json", text="a red cube")
    encoded = store.run(encode_modality.STEP, {"prompt": prompt}, cfg, device="cuda")
    reference = store.run(reference_view.STEP, {"encoded": encoded}, cfg, device="cuda")
    assert read_embedding(encoded.path()).shape == (64,)
    previous = None
    for step in stages_for(cfg):
        manifest = store.run(step, {"encoded": encoded, "reference": reference, "previous": previous}, cfg, device="cuda")
        for phase in manifest.metrics["phases"].split(","):
            assert np.isfinite(manifest.metrics[f"{phase}.loss/total"]), manifest.metrics
        previous = manifest
    state = load_state(previous.path("state"), "cuda")
    assert state.texture is not None and next(state.texture.parameters()).is_cuda
    mesh = state.geometry.mesh()
    assert mesh.vertices.is_cuda and len(mesh.faces) > 0


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_phase_steps_give_the_same_bytes_twice(tmp_path, device):
    """Seeds and deterministic kernels (``anyto3d.determinism``) make a rerun byte-identical: the
    chain encode → reference → NeRF → DMTet geometry → texture, run twice into two stores, writes
    the same states, previews and everything else (no clock or path may leak into a file)."""
    cfg = cut_config(iterations=3)
    prompt = write_prompt(tmp_path / "prompt.json", text="a red cube")
    runs = []
    for name in ("a", "b"):
        store = Store(tmp_path / name)
        encoded = store.run(encode_modality.STEP, {"prompt": prompt}, cfg, device=device)
        reference = store.run(reference_view.STEP, {"encoded": encoded}, cfg, device=device)
        previous, files = None, {}
        for step in stages_for(cfg):
            previous = store.run(step, {"encoded": encoded, "reference": reference, "previous": previous}, cfg, device=device)
            assert previous.kernels["deterministic"] is True
            files[step.name] = {rel: entry["sha256"] for rel, entry in previous.files.items()}
        runs.append(files)
    assert set(runs[0]) == {"nerf_coarse", "dmtet_geometry", "dmtet_texture"}
    assert runs[0] == runs[1]
