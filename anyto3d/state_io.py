"""Save and load an :class:`~anyto3d.optimize.OptimState` between pipeline steps.

A saved state is a directory::

    state.json          {"format", "modules": {name: {"class", "config", ...}}, "volume": {...}}
    weights.safetensors every module's state dict, keys prefixed "<module name>."

Each module's typed config (JSON) is enough to rebuild it before its weights load, so a NeRF,
a DMTet geometry (its tightened box and grid resolution, frozen or not), a texture field and
the background come back exactly: renders before and after are identical. The directory is
written beside its destination and renamed into place (a reader never sees half a state).
Weights load with safetensors only. Optimiser state is not saved here: resuming inside a phase
is the checkpoints' job (:func:`anyto3d.optimize.make_checkpoint`).
"""

from __future__ import annotations

import json
import os
import shutil
import typing
import uuid
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anyto3d.errors import InputError

FORMAT = "anyto3d-optim-state/1"
STATE_JSON = "state.json"
WEIGHTS = "weights.safetensors"


# ---------------------------------------------------------------------------------------------
# Configs <-> JSON
# ---------------------------------------------------------------------------------------------


def _config_to_json(cfg: Any) -> dict:
    """A (nested, frozen) dataclass config as plain JSON (tuples become lists)."""
    if not is_dataclass(cfg):
        raise TypeError(f"expected a dataclass config, got {type(cfg).__name__}")
    return json.loads(json.dumps(asdict(cfg)))


def _config_from_json(cls: type, data: dict) -> Any:
    """Rebuild a dataclass config; fields typed as dataclasses recurse, lists become tuples."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        value, kind = data[f.name], hints.get(f.name)
        if isinstance(kind, type) and is_dataclass(kind) and isinstance(value, dict):
            value = _config_from_json(kind, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


# ---------------------------------------------------------------------------------------------
# Module descriptions
# ---------------------------------------------------------------------------------------------


def _describe(module: nn.Module) -> dict:
    """{"class": name, "config": ..., extras} from which :func:`_rebuild` makes an equal module."""
    from anyto3d.fields.dmtet import DMTetGeometry
    from anyto3d.fields.dynamic import DynamicNeRFField
    from anyto3d.fields.nerf import NeRFField
    from anyto3d.fields.texture import TextureField
    from anyto3d.render.background import (
        MLPBackground,
        RandomSolidBackground,
        SolidBackground,
    )

    if isinstance(module, (NeRFField, DynamicNeRFField)):
        return {"class": type(module).__name__, "config": _config_to_json(module.cfg)}
    if isinstance(module, DMTetGeometry):
        return {"class": "DMTetGeometry", "config": _config_to_json(module.cfg), "frozen": module.is_frozen}
    if isinstance(module, TextureField):
        return {"class": "TextureField", "config": _config_to_json(module.cfg)}
    if isinstance(module, SolidBackground):  # its colour is a non-persistent buffer: keep it here
        return {"class": "SolidBackground", "config": {"color": [float(c) for c in module.color.tolist()]}}
    if isinstance(module, RandomSolidBackground):
        return {"class": "RandomSolidBackground", "config": {}}
    if isinstance(module, MLPBackground):
        linears = [m for m in module.mlp if isinstance(m, nn.Linear)]
        hidden = linears[0].out_features if len(linears) > 1 else 16
        return {"class": "MLPBackground", "config": {"hidden_dim": hidden, "n_hidden_layers": len(linears) - 1}}
    raise InputError(f"cannot save a {type(module).__name__}: state_io knows NeRF, DMTet, texture and background modules")


def _rebuild(desc: dict, weights: dict[str, torch.Tensor], device) -> nn.Module:
    from anyto3d.fields.dmtet import DMTetConfig, DMTetGeometry
    from anyto3d.fields.dynamic import DynamicNeRFField, DynamicNeRFFieldConfig
    from anyto3d.fields.nerf import NeRFField, NeRFFieldConfig
    from anyto3d.fields.texture import TextureField, TextureFieldConfig
    from anyto3d.render.background import (
        MLPBackground,
        RandomSolidBackground,
        SolidBackground,
    )

    kind, cfg = desc["class"], desc.get("config", {})
    if kind == "NeRFField":
        return NeRFField(_config_from_json(NeRFFieldConfig, cfg), device=device)
    if kind == "DynamicNeRFField":
        return DynamicNeRFField(_config_from_json(DynamicNeRFFieldConfig, cfg), device=device)
    if kind == "DMTetGeometry":
        # The box and sdf size come from the weights, so the tightened grid is rebuilt as saved.
        geometry = DMTetGeometry(_config_from_json(DMTetConfig, cfg), weights["bbox_min"], weights["bbox_max"],
                                 sdf=weights["sdf"], device=device)
        return geometry
    if kind == "TextureField":
        return TextureField(_config_from_json(TextureFieldConfig, cfg), device=device)
    if kind == "SolidBackground":
        return SolidBackground(tuple(cfg["color"])).to(device)
    if kind == "RandomSolidBackground":
        return RandomSolidBackground().to(device)
    if kind == "MLPBackground":
        return MLPBackground(int(cfg["hidden_dim"]), int(cfg["n_hidden_layers"])).to(device)
    raise InputError(f"saved state names an unknown module class {kind!r}")


# ---------------------------------------------------------------------------------------------
# Save / load
# ---------------------------------------------------------------------------------------------


def save_state(state, directory: str | os.PathLike) -> Path:
    """Write ``state`` (an ``OptimState``) to ``directory`` atomically; returns the directory."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"format": FORMAT, "modules": {}, "volume": _config_to_json(state.volume)}
    tensors: dict[str, torch.Tensor] = {}
    for name, module in state.modules().items():
        meta["modules"][name] = _describe(module)
        for key, value in module.state_dict().items():
            tensors[f"{name}.{key}"] = value.detach().to("cpu").contiguous().clone()
    tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        save_file(tensors, str(tmp / WEIGHTS))
        (tmp / STATE_JSON).write_text(json.dumps(meta, indent=1, sort_keys=True))
        if directory.exists():
            os.replace(directory, old)
        os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return directory


def load_state(directory: str | os.PathLike, device: str | torch.device = "cpu"):
    """Rebuild the ``OptimState`` saved by :func:`save_state` in ``directory`` on ``device``."""
    from safetensors.torch import load_file

    from anyto3d.optimize import OptimState
    from anyto3d.render.volume import VolumeRendererConfig

    directory = Path(directory)
    missing = [n for n in (STATE_JSON, WEIGHTS) if not (directory / n).is_file()]
    if missing:
        raise InputError(f"no saved optimisation state in {directory}: missing {', '.join(missing)}")
    meta = json.loads((directory / STATE_JSON).read_text())
    if meta.get("format") != FORMAT:
        raise InputError(f"{directory / STATE_JSON} has format {meta.get('format')!r}, expected {FORMAT!r}")
    tensors = load_file(str(directory / WEIGHTS))
    modules: dict[str, nn.Module] = {}
    for name, desc in meta["modules"].items():
        prefix = f"{name}."
        weights = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        module = _rebuild(desc, weights, device)
        result = module.load_state_dict(weights, strict=True)
        del result
        if desc.get("frozen"):
            module.freeze_geometry()
        modules[name] = module
    volume = _config_from_json(VolumeRendererConfig, meta["volume"])
    state = OptimState(volume=volume, **{k: modules[k] for k in ("field", "geometry", "texture") if k in modules})
    if "background" in modules:
        state.background = modules["background"]
    return state


__all__ = ["FORMAT", "load_state", "save_state"]
