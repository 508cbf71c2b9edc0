"""Step ``reference_view``: the reference view x_r and its mask (XBind Eq. 10–11, footnote 2).

An image prompt (alone or mixed with other parts) gives x_r = the user's image, framed
(:func:`anyto3d.reference_view.reference_view_from_image`); otherwise x_r is sampled from the 2D
prior conditioned on C_m with the config seed (:func:`~anyto3d.reference_view.reference_view_from_prior`).
Writes ``reference.png`` (RGBA: x_r composited on white, alpha = mask) and ``reference.json``
(camera in degrees, source ``image`` | ``prior``).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from anyto3d.modality import load_image
from anyto3d.models import load_models, prior2d_condition
from anyto3d.reference_view import reference_view_from_image, reference_view_from_prior
from steps.contract import step
from steps.phase_common import (
    REFERENCE_JSON,
    REFERENCE_PNG,
    preset,
    read_embedding,
    read_prompt,
)


ROLES = frozenset({"prior2d"})  # loaded for a prompt without an image (store key: declared always)


@step("reference_view", 1, config_keys=("model", "seed"), inputs=("encoded",),
      code_modules=("anyto3d.models", "steps.phase_common"), roles=lambda cfg: ROLES)
def run(inputs: dict[str, Path], cfg: dict, out_dir: Path, device: str, work_dir: Path) -> dict:
    from PIL import Image

    encoded = Path(inputs["encoded"])
    ref_cfg = replace(preset(cfg).reference, seed=int(cfg.get("seed", 0)))
    prompt = read_prompt(encoded)
    image_part = next((p for p in prompt["parts"] if p["modality"] == "image"), None)
    if image_part is not None:
        view = reference_view_from_image(load_image(encoded / image_part["file"]), ref_cfg)
    else:
        prior = load_models(cfg["model"], ROLES, device).prior2d
        embedding = read_embedding(encoded).reshape(1, -1).to(device)
        view = reference_view_from_prior(prior, prior2d_condition(prior, embedding), ref_cfg)
    rgba = torch.cat([view.rgb, view.mask], dim=-1)
    Image.fromarray((rgba.clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8), mode="RGBA").save(out_dir / REFERENCE_PNG)
    camera = {"elevation_deg": ref_cfg.elevation_deg, "azimuth_deg": ref_cfg.azimuth_deg,
              "distance": ref_cfg.distance, "fovy_deg": ref_cfg.fovy_deg}
    (out_dir / REFERENCE_JSON).write_text(json.dumps({"camera": camera, "source": view.source,
                                                      "size": int(view.rgb.shape[0])}, indent=1))
    return {"source": view.source, "mask_fraction": round(float(view.mask.mean()), 6)}


STEP = run
