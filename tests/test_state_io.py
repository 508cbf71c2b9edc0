"""Saved optimisation state: every module rebuilt from its config, renders identical to the pixel."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from anyto3d.cameras import orbit_cameras
from anyto3d.errors import InputError
from anyto3d.fields.dmtet import DMTetConfig, DMTetGeometry
from anyto3d.fields.encoding import CPU_DENSE_GRID, CPU_HASH_GRID
from anyto3d.fields.nerf import CPU_DENSE_NERF, NeRFField
from anyto3d.fields.texture import TextureField, TextureFieldConfig
from anyto3d.optimize import OptimState, render_views
from anyto3d.render.background import MLPBackground, SolidBackground
from anyto3d.render.volume import VolumeRendererConfig
from anyto3d.state_io import STATE_JSON, WEIGHTS, load_state, save_state

torch.set_num_threads(1)

SMALL_GRID = replace(CPU_DENSE_GRID, dense_resolution=8, dense_features=4)
CAMS = orbit_cameras(3, elevation_deg=20.0)


def _perturb(module: torch.nn.Module, scale: float = 0.3) -> None:
    """Move every parameter off its initial value, so a round trip cannot pass by re-initialising."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))


def nerf_state() -> OptimState:
    field = NeRFField(replace(CPU_DENSE_NERF, encoding=SMALL_GRID, hidden_dim=16, density_blob_scale=6.0))
    background = MLPBackground(hidden_dim=8, n_hidden_layers=1)
    _perturb(field)
    _perturb(background)
    return OptimState(field=field, background=background, volume=VolumeRendererConfig(n_samples=24, radius=1.0))


def dmtet_state(frozen: bool) -> OptimState:
    geometry = DMTetGeometry.from_sdf(lambda p: p.norm(dim=-1) - 0.55, DMTetConfig(resolution=10))
    with torch.no_grad():
        geometry.sdf.add_(0.05 * torch.randn(geometry.sdf.shape))
        geometry.deformation_offset.normal_(0.0, 0.5)
    texture = TextureField(TextureFieldConfig(encoding=replace(CPU_HASH_GRID, n_levels=2, log2_hashmap_size=8),
                                              hidden_dim=8, n_hidden_layers=1))
    _perturb(texture, 1.0)
    if frozen:
        geometry.freeze_geometry()
    return OptimState(geometry=geometry, texture=texture, background=SolidBackground((0.2, 0.3, 0.4)))


def _renders(state: OptimState) -> torch.Tensor:
    out = render_views(state, CAMS, 16, 16)
    return torch.cat([out.rgb, out.opacity], dim=-1)


def test_nerf_round_trip_renders_identical_pixels(tmp_path):
    state = nerf_state()
    before = _renders(state)
    saved = save_state(state, tmp_path / "state")
    assert sorted(p.name for p in saved.iterdir()) == sorted([STATE_JSON, WEIGHTS])
    loaded = load_state(saved)
    assert isinstance(loaded.field, NeRFField) and loaded.geometry is None
    assert loaded.volume == state.volume and loaded.field.cfg == state.field.cfg
    assert torch.equal(_renders(loaded), before)
    # The renders really depend on the weights: a fresh field of the same config differs.
    fresh = OptimState(field=NeRFField(state.field.cfg), background=state.background, volume=state.volume)
    assert not torch.equal(_renders(fresh), before)


@pytest.mark.parametrize("frozen", [False, True])
def test_dmtet_texture_round_trip_renders_identical_pixels(tmp_path, frozen):
    state = dmtet_state(frozen)
    before = _renders(state)
    loaded = load_state(save_state(state, tmp_path / "state"))
    assert loaded.field is None and loaded.geometry.is_frozen == frozen
    # The tightened two-pass box and the solid background colour come back as saved.
    assert torch.equal(loaded.geometry.bbox_min, state.geometry.bbox_min)
    assert torch.equal(loaded.background.color, torch.tensor([0.2, 0.3, 0.4]))
    assert torch.equal(_renders(loaded), before)
    mesh_a, mesh_b = state.geometry.mesh(), loaded.geometry.mesh()
    assert torch.equal(mesh_a.vertices, mesh_b.vertices) and torch.equal(mesh_a.faces, mesh_b.faces)


def test_overwrite_is_atomic_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "state"
    save_state(nerf_state(), target)
    second = dmtet_state(False)
    save_state(second, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]
    assert load_state(target).geometry is not None and load_state(target).field is None


def test_missing_or_foreign_state_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no saved optimisation state"):
        load_state(tmp_path / "nothing")
    save_state(nerf_state(), tmp_path / "state")
    (tmp_path / "state" / STATE_JSON).write_text('{"format": "other/9"}')
    with pytest.raises(InputError, match="format"):
        load_state(tmp_path / "state")
