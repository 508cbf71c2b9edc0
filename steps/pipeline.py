"""Which steps a method needs, and the prompt description the flow hands to ``encode_modality``.

:func:`stages_for` lists the **phase steps** of a method in run order (the flow puts
``encode_modality`` and ``reference_view`` before them and ``render_views``/``evaluate`` after):
one step per representation its enabled phases use — ``nerf_coarse`` for NeRF phases,
``dmtet_geometry`` and ``dmtet_texture`` for DMTet ones. A NeRF-only method (DreamFusion, the
"w/o three-phase" ablation) gets ``[nerf_coarse]``; Fantasia3D, which starts from a DMTet sphere,
``[dmtet_geometry, dmtet_texture]``. Each step's ``previous`` input is the one before it.

:func:`prompt_json` is the ``prompt.json`` the flow writes: the text itself, and for an image or
audio part the name of the step input that carries the file (``"image"`` / ``"audio"``), never a
path — paths must not enter store keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from anyto3d.errors import InputError
from anyto3d.methods import MethodConfig, method_from_config
from steps.contract import Step

#: Step module of each representation, in pipeline order.
_PHASE_STEPS = (("nerf", "steps.nerf_coarse"), ("dmtet_geometry", "steps.dmtet_geometry"),
                ("dmtet_texture", "steps.dmtet_texture"))
MODALITIES = ("text", "image", "audio")


def _step_of(module_name: str) -> Step:
    import importlib

    return importlib.import_module(module_name).STEP


def stages_for(method_cfg: MethodConfig | Mapping) -> list[Step]:
    """The phase steps ``method_cfg`` needs, in order (module docstring).

    ``method_cfg`` is a :class:`MethodConfig` or a composed config (``{"method": ..., "model": ...}``).
    """
    method = method_cfg if isinstance(method_cfg, MethodConfig) else method_from_config(method_cfg)
    used = {p.representation for p in method.active_phases}
    if "dynamic_nerf" in used:
        raise InputError(f"method {method.name!r} has a dynamic_nerf (4D) phase; the motion_4d step is not built yet")
    order = [p.representation for p in method.active_phases]
    known = [rep for rep, _ in _PHASE_STEPS]
    if order != sorted(order, key=known.index):
        raise InputError(f"method {method.name!r} runs its phases in the order {order}; the pipeline runs "
                         f"NeRF, then DMTet geometry, then DMTet texture")
    return [_step_of(module) for rep, module in _PHASE_STEPS if rep in used]


def _slug(text: str, limit: int = 40) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:limit].strip("-") or "prompt"


def prompt_json(text: str | None = None, image: str | Path | None = None, audio: str | Path | None = None,
                weights: Mapping[str, float] | Sequence[float] | None = None) -> dict:
    """``{"parts": [{"modality", "weight", "text" | "file"}], "label"}`` for the given prompt parts.

    ``weights``: per modality (``{"text": 2, "audio": 1}``), or a sequence in the order text,
    image, audio of the parts given; default 1 each. ``file`` is the step-input name of the file.
    The label is a slug of the text, else of the file name(s); it names the output directory.
    """
    given = [(m, v) for m, v in (("text", text), ("image", image), ("audio", audio)) if v is not None]
    if not given:
        raise InputError("a prompt needs at least one of text, image or audio")
    if weights is None:
        w = {m: 1.0 for m, _ in given}
    elif isinstance(weights, Mapping):
        extra = sorted(set(weights) - {m for m, _ in given})
        if extra:
            raise InputError(f"weights given for {extra}, which are not parts of this prompt ({[m for m, _ in given]})")
        w = {m: float(weights.get(m, 1.0)) for m, _ in given}
    else:
        weights = list(weights)
        if len(weights) != len(given):
            raise InputError(f"{len(weights)} weights for {len(given)} prompt parts ({[m for m, _ in given]})")
        w = {m: float(x) for (m, _), x in zip(given, weights)}
    parts, labels = [], []
    for modality, value in given:
        if modality == "text":
            parts.append({"modality": "text", "weight": w["text"], "text": str(value)})
            labels.append(_slug(str(value)))
        else:
            parts.append({"modality": modality, "weight": w[modality], "file": modality})
            labels.append(_slug(Path(value).stem))
    return {"parts": parts, "label": "+".join(labels)}


__all__ = ["MODALITIES", "prompt_json", "stages_for"]
