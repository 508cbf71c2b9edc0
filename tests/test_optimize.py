"""The one phase loop: term registry, weights, gradients, SDS toward a known prior, resume, transitions."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from anyto3d import optimize
from anyto3d.cameras import CameraBatch, orbit_cameras
from anyto3d.errors import InputError
from anyto3d.fields.dmtet import DMTetConfig
from anyto3d.fields.encoding import CPU_DENSE_GRID
from anyto3d.fields.nerf import CPU_DENSE_NERF, NeRFField
from anyto3d.fields.texture import TextureFieldConfig
from anyto3d.methods import phase_from_dict
from anyto3d.optimize import (
    OptimState,
    Supervision,
    freeze_geometry,
    load_checkpoint,
    nerf_to_dmtet,
    render_views,
    run_phase,
)
from anyto3d.priors.pixel import GaussianPixelPrior
from anyto3d.reference_view import ReferenceView
from anyto3d.render.volume import VolumeRendererConfig

torch.set_num_threads(1)

RED = torch.tensor([0.9, 0.2, 0.2])  # the Gaussian prior's mean colour, renderer layout [0, 1]
TINY_GRID = replace(CPU_DENSE_GRID, dense_resolution=8, dense_features=4)
TINY_TEXTURE = TextureFieldConfig(encoding=TINY_GRID, hidden_dim=8, n_hidden_layers=1)


def tiny_nerf(seed: int = 0, blob: float = 10.0) -> OptimState:
    torch.manual_seed(seed)
    field = NeRFField(replace(CPU_DENSE_NERF, encoding=TINY_GRID, hidden_dim=16, density_blob_scale=blob))
    return OptimState(field=field, volume=VolumeRendererConfig(n_samples=16))


def supervision() -> Supervision:
    prior = GaussianPixelPrior(std=0.1, num_timesteps=100)
    mean = {"mean": (RED * 2 - 1).view(1, 3, 1, 1)}
    cam = CameraBatch.from_spherical(0.0, 0.0, 2.5, 0.7)
    rgb = torch.ones(8, 8, 3)
    mask = torch.zeros(8, 8, 1)
    rgb[2:6, 2:6] = RED
    mask[2:6, 2:6] = 1
    return Supervision(
        prior2d=prior,
        prior2d_condition=mean,
        novel_view=GaussianPixelPrior(std=0.1, num_timesteps=100),
        novel_view_inputs=mean,
        reference=ReferenceView(rgb=rgb, mask=mask, camera=cam),
        binder=lambda images: F.normalize(images.mean(dim=(1, 2)) - 0.5, dim=-1),
        embedding=F.normalize(RED - 0.5, dim=0),
    )


def phase(losses: dict, representation: str = "nerf", iterations: int = 1, **extra):
    spec = {"representation": representation, "iterations": iterations, "resolution": 8, "losses": losses,
            "optimizer": {"lr": 0.05}, **extra}
    return phase_from_dict("test", spec)


def params_of(state: OptimState) -> dict[str, torch.Tensor]:
    return {f"{k}.{n}": p.detach().clone() for k, m in state.modules().items() for n, p in m.named_parameters()}


VOLUME_TERMS = {
    "sds": {"guidance_scale": 1.0},
    "augmented_sds": {"guidance_scale": 1.0, "image_weight": 0.1},
    "cds": {"guidance_scale": 1.0},
    "modality_similarity": {"n_augmentations": 1},
    "sds_3d": {"guidance_scale": 1.0},
    "cds_3d": {"guidance_scale": 1.0},
    "reference": {},
    "orientation": {},
    "sparsity": {},
    "opacity_entropy": {},
    "z_variance": {},
    "normal_smoothness_2d": {},
}


@pytest.mark.parametrize("name", sorted(VOLUME_TERMS))
def test_each_term_runs_only_when_weighted_and_reaches_the_nerf(name, monkeypatch):
    calls = []
    original = optimize.TERMS[name]
    monkeypatch.setitem(optimize.TERMS, name, lambda ctx, term: calls.append(ctx.step) or original(ctx, term))
    other = "sparsity" if name != "sparsity" else "opacity_entropy"
    state = tiny_nerf()
    off = phase({name: {"weight": 0.0, **VOLUME_TERMS[name]}, other: {"weight": 1.0}}, iterations=2)
    run_phase(off, state, supervision(), generator=torch.Generator().manual_seed(0))
    assert calls == []
    on = phase({name: {"weight": 1.0, **VOLUME_TERMS[name]}}, iterations=1, batch=2)
    result = run_phase(on, state, supervision(), generator=torch.Generator().manual_seed(1))
    assert calls == [0] and set(result.last) == {"loss/total", f"loss/{name}"}
    grads = [p.grad for p in state.field.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0


def test_weight_schedule_switches_a_term_on_midway(monkeypatch):
    calls = []
    original = optimize.TERMS["sds"]
    monkeypatch.setitem(optimize.TERMS, "sds", lambda ctx, term: calls.append(ctx.step) or original(ctx, term))
    p = phase({"sds": {"weight": [[0, 0.0], [2, 0.0], [3, 1.0]], "guidance_scale": 1.0}, "sparsity": 1.0}, iterations=5)
    run_phase(p, tiny_nerf(), supervision(), generator=torch.Generator().manual_seed(0))
    assert calls == [3, 4]


def test_sds_toward_a_gaussian_prior_moves_the_render_to_its_mean():
    state = tiny_nerf()
    views = orbit_cameras(4, elevation_deg=10.0)

    def distance() -> float:
        out = render_views(state, views, 8, 8)
        fg = out.opacity > 0.5
        colour = out.rgb[fg.expand_as(out.rgb)].view(-1, 3).mean(0)
        return float((colour - RED).norm())

    before = distance()
    p = phase({"sds": {"weight": 1.0, "guidance_scale": 1.0}}, iterations=30, batch=2,
              optimizer={"lr": {"grid": 0.05, "mlp": 0.01}})
    losses = []
    run_phase(p, state, supervision(), generator=torch.Generator().manual_seed(0), on_step=lambda s, l: losses.append(l))
    after = distance()
    assert len(losses) == 30 and all("loss/sds" in l for l in losses)
    assert before > 0.5 and after < 0.5 * before, (before, after)


def test_checkpoint_and_resume_equal_an_uninterrupted_run():
    p = phase({"augmented_sds": {"weight": 1.0, "guidance_scale": 2.0}, "reference": {"weight": 0.1},
               "z_variance": {"weight": 1.0}}, iterations=10, batch=2, checkpoint_every=3)
    whole = tiny_nerf()
    run_phase(p, whole, supervision(), generator=torch.Generator().manual_seed(7))

    saved = []
    first = tiny_nerf()
    run_phase(replace(p, iterations=6), first, supervision(), generator=torch.Generator().manual_seed(7),
              checkpoint=saved.append)
    assert [c["step"] for c in saved] == [3, 6]
    # through bytes, as a step would write it, and into fresh objects, as after a crash
    import io
    buffer = io.BytesIO()
    torch.save(saved[-1], buffer)
    buffer.seek(0)
    ckpt = torch.load(buffer, weights_only=True)
    resumed = tiny_nerf(seed=123)
    generator = torch.Generator().manual_seed(999)
    start = load_checkpoint(resumed, ckpt, generator)
    result = run_phase(p, resumed, supervision(), generator=generator, start_step=start)
    assert start == 6 and result.steps == 4
    a, b = params_of(whole), params_of(resumed)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_nerf_to_dmtet_then_geometry_then_frozen_texture():
    state = tiny_nerf(blob=20.0)  # the blob's centre density 20 crosses the paper threshold 10
    dm = nerf_to_dmtet(state, DMTetConfig(resolution=12, isosurface_threshold=10.0), TINY_TEXTURE)
    mesh = dm.geometry.mesh()
    assert dm.field is None and dm.texture is not None
    assert mesh.faces.shape[0] > 50
    radius = mesh.vertices.detach().norm(dim=-1)
    assert 0.1 < float(radius.mean()) < 0.9  # a closed blob around the centre, inside the box

    geo = phase({"sds": {"weight": 1.0, "guidance_scale": 1.0}, "normal_consistency": {"weight": 1.0},
                 "laplacian": {"weight": 1.0}}, representation="dmtet_geometry", iterations=2, render="normal")
    sdf0 = dm.geometry.sdf.detach().clone()
    run_phase(geo, dm, supervision(), generator=torch.Generator().manual_seed(0))
    assert not torch.equal(sdf0, dm.geometry.sdf.detach())

    freeze_geometry(dm)
    before = params_of(dm)
    tex = phase({"sds": {"weight": 1.0, "guidance_scale": 1.0}, "reference": {"weight": 1.0}},
                representation="dmtet_texture", iterations=3)
    run_phase(tex, dm, supervision(), generator=torch.Generator().manual_seed(0))
    after = params_of(dm)
    assert torch.equal(before["geometry.sdf"], after["geometry.sdf"])
    assert torch.equal(before["geometry.deformation_offset"], after["geometry.deformation_offset"])
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("texture."))
    out = render_views(dm, orbit_cameras(3), 8, 8)
    assert out.rgb.shape == (3, 8, 8, 3) and float(out.opacity.sum()) > 0


def test_geometry_phase_refuses_a_frozen_or_missing_representation():
    with pytest.raises(InputError, match="OptimState.geometry is None"):
        run_phase(phase({"sparsity": 1.0}, representation="dmtet_geometry"), OptimState(),
                  Supervision(), generator=torch.Generator())
    with pytest.raises(InputError, match="needs Supervision.prior2d"):
        run_phase(phase({"sds": 1.0}), tiny_nerf(), Supervision(), generator=torch.Generator())


def test_alternation_runs_one_group_per_step(monkeypatch):
    seen = []
    for name in ("sds", "sparsity"):
        original = optimize.TERMS[name]
        monkeypatch.setitem(optimize.TERMS, name,
                            lambda ctx, term, f=original: seen.append((ctx.step, term.name)) or f(ctx, term))
    p = phase({"sds": {"weight": 1.0, "guidance_scale": 1.0}, "sparsity": 1.0, "opacity_entropy": 1.0}, iterations=20,
              alternate=[{"terms": ["sds"], "probability": 0.5}, {"terms": ["sparsity"], "probability": 0.5}])
    run_phase(p, tiny_nerf(), supervision(), generator=torch.Generator().manual_seed(0))
    per_step = {}
    for step, name in seen:
        per_step.setdefault(step, []).append(name)
    assert sorted(per_step) == list(range(20)) and all(len(v) == 1 for v in per_step.values())
    assert 3 <= sum(v == ["sds"] for v in per_step.values()) <= 17


def test_state_moves_as_one_and_renders_where_it_lives():
    """Fields are built on the device asked for; ``OptimState.to`` moves the background with them
    (a CPU background behind a GPU field broke the first CUDA run); cameras sampled on the CPU
    and a reference view can be sent after them. ``meta`` stands in for a GPU here."""
    from anyto3d.cameras import headlight
    from anyto3d.reference_view import reference_camera

    field = NeRFField(CPU_DENSE_NERF, device="meta")
    assert {p.device.type for p in field.parameters()} == {"meta"}
    state = OptimState(field=NeRFField(CPU_DENSE_NERF))
    assert state.device.type == "cpu"
    assert state.to("meta") is state and state.device.type == "meta"
    assert {t.device.type for m in state.modules().values() for t in (*m.parameters(), *m.buffers())} == {"meta"}
    lights = headlight(orbit_cameras(2)).to("meta")
    assert lights.position.device.type == lights.ambient.device.type == "meta"
    ref = ReferenceView(torch.ones(8, 8, 3), torch.ones(8, 8, 1), reference_camera()).to("meta")
    assert ref.rgb.device.type == ref.mask.device.type == "meta"
    assert ref.camera.c2w.device.type == "cpu"  # with the phases' sampled cameras; the renderers move them
