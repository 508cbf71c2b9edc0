"""The one on-disk format of the project's own small models: ``config.json`` + ``model.safetensors``.

Used by the pixel prior, the tiny world's priors, binder and judge, so saving, the missing-file
message and safe loading (safetensors only, never pickle) are written once.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from anyto3d.errors import MissingWeightsError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def save_module(directory: str | Path, config: dict, state: dict[str, torch.Tensor], indent: int = 2) -> Path:
    """Write ``config`` as JSON and ``state`` (detached, contiguous, on the CPU) as safetensors."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=indent))
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(out / WEIGHTS_NAME))
    return out


def load_module(directory: str | Path, what: str, hint: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read (config, state) back; a missing file is one :class:`MissingWeightsError` naming
    ``what``, the directory, the files expected and ``hint`` (how to make them)."""
    from safetensors.torch import load_file

    root = Path(directory)
    missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if not (root / name).is_file()]
    if missing:
        raise MissingWeightsError(
            f"{what} not found in {root}: expected {CONFIG_NAME} and {WEIGHTS_NAME}, missing {', '.join(missing)} ({hint})"
        )
    return json.loads((root / CONFIG_NAME).read_text()), load_file(str(root / WEIGHTS_NAME))
