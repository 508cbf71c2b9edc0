"""The ``evaluate`` step: score an asset's 120-view orbit against its prompt (and ground truth).

Inputs (contract): ``views`` — a ``render_views`` directory (``views.npz``: ``rgb`` uint8
[V, H, W, 3], ``alpha`` uint8 [V, H, W], ``elevation``/``azimuth`` radians, ``c2w`` [V, 4, 4],
optionally ``fovy`` radians — 40°, the evaluation orbit's, when absent; ``mesh.glb`` when
present); ``encoded`` — an ``encode_modality`` directory (``prompt.json``, and ``image.png`` /
``audio.wav`` for image / audio parts); optional ``suite`` — ``suite.json``
(``{"prompts": [{"label", "text", ...}], "index": i}``); optional ``ground_truth`` — the true mesh.
Config: ``model`` (``name``: tiny | paper, ``models_dir``, ``weights_dir``) and ``evaluate``
(``views``: how many views to score, evenly subsampled from the orbit; ``resolution``: the
silhouette resolution of the geometry metrics).

Which encoder scores what (``metrics["encoder"]`` says it too)
-------------------------------------------------------------
* **tiny**: the *judge* (:class:`~anyto3d.zoo.judge.TinyJudge`, never used in training losses)
  scores CLIP-R — per view, the true prompt's world object must get the highest
  :meth:`~anyto3d.zoo.judge.TinyJudge.clip_like` score among the candidates, each named as
  that view's camera names it (a "left of" composition seen from behind is its mirror) — and
  view consistency. The judge has no text or audio tower, so CLIP-I and ARCC are cosines in the
  *binder's* aligned space (the binder plays ImageBind, which is XBind's encoder C in Eq. 14).
  Candidates are the suite's prompts; without a suite, the world's 136 single objects (XBind
  retrieves among 136 DreamFusion prompts), plus the target when it is a composition.
* **paper**: OpenCLIP ViT-B/32 (prior work's CLIP-R encoder) for CLIP-R over the suite's texts
  and for CLIP-I; ImageBind huge for ARCC. There is no judge, so no view consistency.

Metrics (``metrics.json``): ``clip_r``, ``clip_i`` (image prompts), ``arcc`` (audio prompts),
``view_consistency`` (+ its factors), ``geometry_iou`` and ``chamfer`` (with ground truth),
``n_views``, ``encoder``. A key that does not apply is absent, never 0.

Geometry (:mod:`anyto3d.metrics.geometry`): with ``mesh.glb``, both meshes are normalised to the
same bounding sphere, the best yaw is searched, and IoU + Chamfer/diagonal are measured on the
evaluation cameras. Without a mesh, the rendered alphas are compared with the ground truth
rendered from the same cameras in the canonical frame (no scale normalisation is possible), the
yaw searched over circular shifts of a uniform orbit; Chamfer needs the mesh and is then absent.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from anyto3d.cameras import CameraBatch
from anyto3d.errors import InputError
from steps.contract import step

DEFAULT_FOVY_DEG = 40.0  # orbit_cameras' default, used when views.npz carries no fovy
# The tiny models scoring loads (the judge; the binder for CLIP-I and ARCC): its store key holds
# their weights, so a retrained judge re-scores without re-running any optimisation.
TINY_SCORING_ROLES = frozenset({"judge", "encoder"})


@dataclass
class Views:
    rgb: torch.Tensor  # [V, H, W, 3] in [0, 1]
    alpha: torch.Tensor  # [V, H, W] in [0, 1]
    cameras: CameraBatch


# ---------------------------------------------------------------------------------------------
# Reading the inputs
# ---------------------------------------------------------------------------------------------


def load_views(path: Path, n_views: int | None = None) -> Views:
    """``views.npz`` -> :class:`Views`, evenly subsampled to ``n_views`` when it has more."""
    path = Path(path)
    if path.is_dir():
        path = path / "views.npz"
    if not path.is_file():
        raise InputError(f"no views.npz at {str(path)!r} (the render_views step writes it)")
    with np.load(path) as data:
        missing = [k for k in ("rgb", "alpha", "elevation", "azimuth", "c2w") if k not in data]
        if missing:
            raise InputError(f"{path} lacks {missing}")
        arrays = {k: data[k] for k in data.files}
    rgb, alpha = arrays["rgb"], arrays["alpha"]
    v = rgb.shape[0]
    if rgb.ndim != 4 or rgb.shape[-1] != 3 or alpha.shape != rgb.shape[:3] or v == 0:
        raise InputError(f"{path}: rgb must be [V, H, W, 3] and alpha [V, H, W], got {rgb.shape} and {alpha.shape}")
    index = np.arange(v)
    if n_views is not None and 0 < n_views < v:
        index = np.floor(np.arange(n_views) * v / n_views).astype(np.int64)

    def scale(x: np.ndarray) -> torch.Tensor:
        t = torch.as_tensor(x[index])
        return t.float() / 255.0 if t.dtype == torch.uint8 else t.float()

    c2w = torch.as_tensor(arrays["c2w"][index], dtype=torch.float32)
    fovy = arrays.get("fovy")
    fovy = torch.full((len(index),), math.radians(DEFAULT_FOVY_DEG)) if fovy is None else torch.as_tensor(
        np.broadcast_to(fovy, (v,))[index], dtype=torch.float32
    )
    cameras = CameraBatch(
        c2w=c2w,
        fovy=fovy,
        elevation=torch.as_tensor(arrays["elevation"][index], dtype=torch.float32),
        azimuth=torch.as_tensor(arrays["azimuth"][index], dtype=torch.float32),
        distance=c2w[:, :3, 3].norm(dim=-1),
    )
    rgb_t, alpha_t = scale(rgb), scale(alpha)
    if not (torch.isfinite(rgb_t).all() and torch.isfinite(alpha_t).all()):
        raise InputError(f"{path} holds non-finite pixels")
    return Views(rgb_t.clamp(0, 1), alpha_t.clamp(0, 1), cameras)


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"no {what} at {str(path)!r}") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{what} {str(path)!r} is not valid JSON: {err}") from None


def load_suite(path: Path) -> tuple[list[dict], int]:
    suite = _read_json(path, "suite.json")
    prompts, index = suite.get("prompts"), suite.get("index")
    if not isinstance(prompts, list) or len(prompts) < 2:
        raise InputError(f"{path}: 'prompts' must list at least two candidate prompts")
    if not isinstance(index, int) or not 0 <= index < len(prompts):
        raise InputError(f"{path}: 'index' must be the position of the true prompt in 'prompts', got {index!r}")
    return prompts, index


def _world_object(*names: str | None):
    """The first of ``names`` (captions or ids) that names a tiny-world object, else None."""
    from anyto3d.zoo.judge import object_for_caption

    for name in names:
        if not name:
            continue
        try:
            return object_for_caption(str(name))
        except InputError:
            continue
    return None


def prompt_texts(prompt: dict) -> list[str]:
    return [p["text"] for p in prompt.get("parts", []) if p.get("modality") == "text" and p.get("text")]


def prompt_has(prompt: dict, modality: str) -> bool:
    return any(p.get("modality") == modality for p in prompt.get("parts", []))


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


def score_tiny(views: Views, prompt: dict, encoded: Path, suite: tuple[list[dict], int] | None, models_dir, device) -> dict:
    """CLIP-R and view consistency with the judge; CLIP-I and ARCC with the binder (module docstring)."""
    from anyto3d.metrics.consistency import view_consistency
    from anyto3d.metrics.semantic import arcc, clip_i, r_precision_from_scores
    from anyto3d.zoo.binder import TinyBinder
    from anyto3d.zoo.build import model_dir
    from anyto3d.zoo.judge import TinyJudge, look_alike
    from anyto3d.zoo.world import single_objects

    judge = TinyJudge.from_pretrained(model_dir("judge", models_dir)).to(device)
    images = views.rgb.to(device)
    out: dict = {}

    if suite is not None:
        prompts, index = suite
        candidates = []
        for p in prompts:
            obj = _world_object(p.get("text"), p.get("label"))
            if obj is None:
                raise InputError(f"suite prompt {p.get('label') or p.get('text')!r} is not a tiny-world object; the judge scores only those")
            candidates.append(obj)
        target = candidates[index]
    else:
        target = _world_object(*prompt_texts(prompt), prompt.get("label"))
        candidates, index = None, None
        if target is not None:
            candidates = single_objects()
            if target not in candidates:
                candidates = candidates + [target]
            index = candidates.index(target)
    if candidates is not None:
        azimuth = torch.rad2deg(views.cameras.azimuth).cpu().numpy()
        scores = judge.clip_like(images, candidates, azimuth)
        names = look_alike(candidates, azimuth)  # a candidate that makes the target's picture is no rival
        out["clip_r"] = r_precision_from_scores(scores, index, alike=names == names[:, index : index + 1])
        out["clip_r_candidates"] = len(candidates)
        out["target"] = target.id

    out.update(view_consistency(judge.classify(images), views.cameras.azimuth, target))

    wants_image, wants_audio = prompt_has(prompt, "image"), prompt_has(prompt, "audio")
    if wants_image or wants_audio:
        binder = TinyBinder.from_pretrained(model_dir("binder", models_dir)).to(device)
        with torch.no_grad():
            rendered = binder.embed_image(images)
        if wants_image:
            out["clip_i"] = clip_i(rendered, binder.embed("image", _image_prompt(encoded)))
        if wants_audio:
            out["arcc"] = arcc(rendered, binder.embed("audio", _audio_prompt(encoded)))
    encoders = ["judge (clip_r, view_consistency)"] + (["binder (clip_i, arcc)"] if wants_image or wants_audio else [])
    out["encoder"] = "tiny " + " + ".join(encoders)
    return out


def score_paper(views: Views, prompt: dict, encoded: Path, suite: tuple[list[dict], int] | None, model_cfg: dict, device) -> dict:
    """CLIP-R / CLIP-I with OpenCLIP ViT-B/32, ARCC with ImageBind (module docstring)."""
    from anyto3d.metrics.semantic import arcc, clip_i, clip_r_precision
    from anyto3d.modality import TextPrompt

    out: dict = {}
    used = []
    images = views.rgb.to(device)
    if suite is not None or prompt_has(prompt, "image"):
        clip = load_paper_clip(model_cfg).to(device)
        with torch.no_grad():
            rendered = clip.embed_image(images)
        if suite is not None:
            prompts, index = suite
            texts = [p.get("text") or p.get("label") for p in prompts]
            out["clip_r"] = clip_r_precision(rendered, clip.embed("text", [TextPrompt(t) for t in texts]), index)
            out["clip_r_candidates"] = len(texts)
        if prompt_has(prompt, "image"):
            out["clip_i"] = clip_i(rendered, clip.embed("image", _image_prompt(encoded)))
        used.append("OpenCLIP ViT-B/32 (clip_r, clip_i)")
    if prompt_has(prompt, "audio"):
        from anyto3d.models import load_models

        binder = load_models(model_cfg, {"encoder"}, device).encoder
        with torch.no_grad():
            rendered = binder.embed_image(images)
        out["arcc"] = arcc(rendered, binder.embed("audio", _audio_prompt(encoded)))
        used.append("ImageBind huge (arcc)")
    out["encoder"] = "paper " + (" + ".join(used) or "(none needed)")
    return out


def load_paper_clip(model_cfg: dict):
    """OpenCLIP ViT-B/32 from ``model.weights_dir`` / ``$ANYTO3D_WEIGHTS`` / the HF cache."""
    from anyto3d.encoders.openclip import OpenClipConfig, OpenClipEncoder

    local = None
    root = (model_cfg or {}).get("weights_dir")
    if root and (Path(root).expanduser() / "open_clip-ViT-B-32").is_dir():
        local = str(Path(root).expanduser() / "open_clip-ViT-B-32")
    return OpenClipEncoder.from_pretrained(OpenClipConfig(local_dir=local))


def _image_prompt(encoded: Path):
    from anyto3d.modality import load_image

    return load_image(Path(encoded) / "image.png")


def _audio_prompt(encoded: Path):
    from anyto3d.modality import load_audio

    return load_audio(Path(encoded) / "audio.wav")


def score_geometry(views: Views, ground_truth: Path, views_dir: Path, resolution: int) -> dict:
    """``geometry_iou`` (and ``chamfer`` when the asset's mesh exists) against the true mesh."""
    from anyto3d.errors import EmptyGeometryError
    from anyto3d.export.mesh_export import load_mesh
    from anyto3d.metrics.geometry import (
        best_circular_shift,
        compare_to_ground_truth,
        render_silhouettes,
    )

    truth, _ = load_mesh(ground_truth)
    mesh_path = Path(views_dir) / "mesh.glb"
    if mesh_path.is_file():
        try:
            pred, _ = load_mesh(mesh_path)
            score = compare_to_ground_truth(pred, truth, views.cameras, resolution)
            return {"geometry_iou": score.iou, "chamfer": score.chamfer, "geometry_yaw_deg": score.yaw_deg,
                    "geometry_source": "mesh"}
        except EmptyGeometryError:
            pass  # an empty asset mesh: its silhouettes (empty too, or not) still say how bad it is
    alpha = F.interpolate(views.alpha.unsqueeze(1), size=(resolution, resolution), mode="area")[:, 0]
    truth_alpha = render_silhouettes(truth, views.cameras, resolution)
    if is_uniform_orbit(views.cameras):
        shift, iou = best_circular_shift(alpha, truth_alpha)
        yaw = (shift * 360.0 / len(views.cameras) + 180.0) % 360.0 - 180.0
    else:
        from anyto3d.metrics.geometry import silhouette_iou_orbit

        iou, yaw = silhouette_iou_orbit(alpha, truth_alpha), 0.0
    return {"geometry_iou": iou, "geometry_yaw_deg": yaw, "geometry_source": "alpha"}


def is_uniform_orbit(cameras: CameraBatch, tol_deg: float = 0.5) -> bool:
    """Same elevation, distance and fovy for every view and azimuths a0 + j·360°/V (in order)."""
    n = len(cameras)
    if n < 2:
        return False
    same = all(float(t.max() - t.min()) < 1e-3 for t in (cameras.elevation, cameras.distance, cameras.fovy))
    steps = torch.remainder(torch.diff(torch.rad2deg(cameras.azimuth.double())), 360.0)
    return same and bool(((steps - 360.0 / n).abs() < tol_deg).all())


# ---------------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------------


def evaluate_views(inputs: dict[str, Path], cfg: dict, device: str = "cpu") -> dict:
    """All metrics for one asset (the step body without the file writing)."""
    model_cfg = dict(cfg.get("model") or {})
    eval_cfg = dict(cfg.get("evaluate") or {})
    n_views = int(eval_cfg.get("views", 120))
    resolution = int(eval_cfg.get("resolution", 32))
    if n_views < 1 or resolution < 4:
        raise InputError(f"evaluate.views must be ≥ 1 and evaluate.resolution ≥ 4, got {n_views} and {resolution}")
    views_dir, encoded = Path(inputs["views"]), Path(inputs["encoded"])
    views = load_views(views_dir, n_views)
    prompt = _read_json(encoded / "prompt.json", "prompt.json")
    suite = load_suite(inputs["suite"]) if inputs.get("suite") else None

    scale = model_cfg.get("name", "tiny")
    if scale == "tiny":
        metrics = score_tiny(views, prompt, encoded, suite, model_cfg.get("models_dir"), device)
    elif scale == "paper":
        metrics = score_paper(views, prompt, encoded, suite, model_cfg, device)
    else:
        raise InputError(f"unknown model scale {scale!r}; choose tiny or paper")
    if inputs.get("ground_truth"):
        metrics.update(score_geometry(views, Path(inputs["ground_truth"]), views_dir, resolution))
    metrics["n_views"] = len(views.cameras)
    return metrics


@step(
    "evaluate",
    1,
    config_keys=("model", "evaluate"),
    inputs=("views", "encoded"),
    optional_inputs=("suite", "ground_truth"),
    code_modules=("anyto3d.metrics", "anyto3d.zoo.judge"),
    roles=lambda cfg: TINY_SCORING_ROLES,
)
def evaluate(inputs: dict[str, Path], cfg: dict, out_dir: Path, device: str, work_dir: Path) -> dict:
    """Score the asset and write ``metrics.json`` (module docstring)."""
    torch.manual_seed(0)  # nothing here is random, but the judge/binder must not see stray state
    metrics = evaluate_views(inputs, cfg, device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return metrics


STEP = evaluate

__all__ = ["STEP", "Views", "evaluate", "evaluate_views", "is_uniform_orbit", "load_suite", "load_views"]
