"""Evaluation of the tiny world's trained zoo on held-out objects: ``metrics/zoo.json`` and sample sheets.

``python -m anyto3d.zoo.evaluate --data data/zoo --out metrics/zoo.json --sheets metrics/zoo``
(DVC's final ``zoo`` stage) scores every model of :func:`anyto3d.zoo.build.model_dir` on the
**held-out** objects only (``data/zoo/heldout``, :mod:`anyto3d.zoo.splits`):

* **binder**: :func:`~anyto3d.zoo.train_encoders.evaluate_binder` (text→image, audio→image top-1
  among the held-out objects); **judge**: :func:`~anyto3d.zoo.train_encoders.evaluate_judge`
  (shape, colour; facing over views of objects with a front), and the same figures by how much
  of the frame the object covers (:func:`judge_by_coverage`: ``bins``, ``without_closeups``).
* **priors**: samples (DDIM through ``prior.sample`` = :func:`anyto3d.priors.sampling.ddim_sample`,
  η = 0, :attr:`EvalConfig.steps` steps, classifier-free guidance :attr:`EvalConfig.guidance_scale`
  = 3.0, the scale the sample sheets of :mod:`anyto3d.zoo.train_priors` use, one fixed seed) judged
  against their conditioning by the judge through :func:`judge_samples`:

  - ``prior2d``: conditioned on the binder's embedding of a held-out object's canonical caption
    (text → image); right when the judge reads the object's shape and colour. Score: ``all``.
  - ``novelview``: a held-out render of an object with a front (the object's most frontal view)
    and relative cameras Δaz = 180° and Δaz = ±90° (same elevation and radius); right when the
    sample shows the object's shape and colour with the facing the camera asks for. Score: ``all``.
  - ``multiview``: 4-view groups with the held-out dataset's own MVDream-style cameras, on the
    caption's embedding; a group is right when all four views show the object and, for objects
    with a front, each view's facing matches its camera. Score: ``groups``.
  - ``video``: the canonical motion caption of a held-out single object ("a green cube
    bouncing"); right when every frame shows the object (``groups`` of :func:`judge_samples`)
    *and* :func:`classify_motion` names the motion asked for (the judge's per-frame facing is a
    spin cue for objects with a front). Score: the fraction of clips right on both; ``object``
    and ``motion`` separately. Every prior's headline figure is its ``score``.
  - ``truth`` (2D, novel view, multi-view): the same scoring of ground-truth renders answering the
    same requests — the held-out render, the true view from the asked camera
    (:func:`true_novel_views`), the held-out group. It is the ceiling a prior's figure is read
    against: the judge errs, and some asked views cannot show what is scored. ``singles`` (novel
    view): the single objects apart from the two-part compositions.
  - Novel and multi-view targets are named as each view's camera names them
    (:meth:`~anyto3d.zoo.world.WorldObject.seen_from`): "A left of B" asked from behind is right
    when the sample shows B on the left, A on the right — read as "B left of A" from the front;
    a marked cube asked from behind is right as a plain cube (its facing is not scored).
  - Requests are made from views that show the whole object (``framed``,
    :func:`~anyto3d.zoo.dataset.whole_in_frame`) wherever an object has one: the reference and
    truth views, and multi-view groups whose four views all do. The papers' cameras zoom in, and
    a close-up that crosses the frame names no shape (session 8; until then the requests came
    from any view, and a third of the truth views were such close-ups).

* **motion classifier** (:func:`classify_motion`, hand-written, no training): validated on
  ground-truth clips rendered by :func:`anyto3d.zoo.dataset.render_clips` (held-out objects,
  a seed no dataset uses) and on the training clips; its accuracy is in ``motion_classifier``.

Cost (defaults: 64 2D samples, 32 references × 2 novel views, 32 multi-view groups, 24 clips,
25 DDIM steps): 230 s for planned-size latent priors on 1 thread of the shared 2-core machine
(load ≈ 4) — video 116 s, multi-view 36 s, motion validation 32 s, 2D 16 s, novel view 14 s.

The JSON (written atomically) is ``{binder, judge, priors, motion_classifier, targets, passed,
train_seconds, config, eval_seconds}``; ``passed`` compares each figure named in :data:`TARGETS`
with its target, plus ``all``. Sample sheets go to ``--sheets``: ``prior2d.png``,
``novelview.png`` (reference | asked views), ``multiview.png`` (one group per row) and
``video.png`` (one clip per row), each with a ``.json`` sidecar naming what each row/cell asked for.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from anyto3d.errors import InputError, MissingWeightsError
from anyto3d.images import prior_to_renderer, renderer_to_prior, to_uint8
from anyto3d.zoo.judge import IGNORE
from anyto3d.zoo.motion import MOTIONS
from anyto3d.zoo.world import FACINGS, WorldObject

#: Figures with a target; keys are paths into the metrics JSON.
TARGETS: dict[str, float] = {
    "binder.text_to_image": 0.95,
    "binder.audio_to_image": 0.90,
    "judge.shape": 0.98,
    "judge.color": 0.98,
    "judge.facing": 0.98,
    "priors.prior2d.score": 0.90,
    "priors.novelview.score": 0.90,
    "priors.multiview.score": 0.90,
    "priors.video.score": 0.90,
}
STATIC = "static"  # the motion classifier's answer when nothing moves visibly
MOTION_LABELS = (*MOTIONS, STATIC)


@dataclass
class EvalConfig:
    """Sample counts and sampler settings (sized so the whole run stays ≤ 10 min on 2 cores)."""

    samples_2d: int = 64
    novel_references: int = 32  # × 2 asked views (Δaz = 180°, ±90°) = 64 novel views
    multiview_groups: int = 32
    clips: int = 24
    steps: int = 25
    guidance_scale: float = 3.0
    seed: int = 0
    motion_validation_seed: int = 7  # render_clips seed of the classifier's held-out GT clips
    motion_validation_objects: int | None = None  # held-out singles to render clips of (None: all 17)
    motion_validation_train_clips: bool = True  # also score the classifier on data/clips


# ---------------------------------------------------------------------------------------------
# Motion classifier
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MotionClassifierConfig:
    """The magnitude at which each motion's evidence scores 1 (measured on ground-truth clips of
    :func:`~anyto3d.zoo.dataset.render_clips`, 8 frames at 32²), and the score below which a clip is
    ``static``. Translations are in units of the object's apparent size (√ mean silhouette area)."""

    spin_shape: float = 0.3  # std of the normalised second moments of the silhouette
    spin_appearance: float = 0.03  # median |Δ| of consecutive centred, size-normalised crops
    spin_per_facing: float = 0.25  # per facing seen beyond the first (judge's facing per frame; a weak cue: the judge flickers)
    bounce: float = 0.13  # 2nd-harmonic amplitude of the vertical centroid (|sin 2πt| hops)
    slide: float = 0.15  # 1st-harmonic amplitude of the centroid's path
    pulse: float = 0.5  # 1st-harmonic amplitude of log(area) (scale 1 ± 0.25 → ±0.5)
    grow: float = 1.85  # slope of log(area) over the clip (scale 0.4 → 1)
    static_below: float = 0.2
    foreground: float = 0.05  # 1 − min(RGB) above this starts to count as object (white background)
    foreground_ramp: float = 0.15


def silhouette(frames: torch.Tensor, cfg: MotionClassifierConfig = MotionClassifierConfig()) -> torch.Tensor:
    """Soft object mask ``[F, H, W]`` of frames ``[F, H, W, 3]`` in [0, 1] on a white background:
    how far the least-saturated channel is below white (every world colour has one channel near 0)."""
    darkness = 1.0 - frames.min(dim=-1).values
    return ((darkness - cfg.foreground) / cfg.foreground_ramp).clamp(0.0, 1.0)


def _harmonics(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Least squares ``v ≈ c + b·(t − t̄) + s1 sin 2πt + c1 cos 2πt + s2 sin 4πt + c2 cos 4πt``
    → ``[slope, amp1, amp2]`` (joint fit: a ramp and a sine are not orthogonal on one period)."""
    w = 2 * math.pi * t
    X = torch.stack([torch.ones_like(t), t - t.mean(), w.sin(), w.cos(), (2 * w).sin(), (2 * w).cos()], dim=1)
    coef = torch.linalg.lstsq(X, values[:, None]).solution[:, 0]
    return torch.stack([coef[1], torch.hypot(coef[2], coef[3]), torch.hypot(coef[4], coef[5])])


def _centred_crops(frames: torch.Tensor, cx, cy, size, k: float = 1.2, n: int = 16):
    """Each frame resampled to ``n × n`` around its centroid, half-width ``k`` × its apparent size,
    white outside: what stays equal under translation and scaling (bounce, slide, pulse, grow)."""
    lin = torch.linspace(-1.0, 1.0, n)
    gy, gx = torch.meshgrid(lin, lin, indexing="ij")
    half = (2 * k * size)[:, None, None]
    grid = torch.stack([2 * cx[:, None, None] + gx * half, -2 * cy[:, None, None] + gy * half], dim=-1)
    x = frames.permute(0, 3, 1, 2) - 1.0  # zero = white, so padding is background
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros") + 1.0


def motion_features(
    frames: torch.Tensor, facing: torch.Tensor | None = None, cfg: MotionClassifierConfig = MotionClassifierConfig()
) -> dict[str, float]:
    """Per-clip evidence from frames ``[F, H, W, 3]`` in [0, 1] at times ``k / F``.

    From the soft silhouette per frame: area ``a``, centroid (x right, y up, in image widths) and
    the normalised second moments. Returned (translations in object sizes √ā):
    ``slide`` (1st harmonic of the centroid path), ``bounce`` (2nd harmonic of y),
    ``pulse`` (1st harmonic of log a), ``grow`` (slope of log a over the clip),
    ``shape`` (std of the moment anisotropy), ``appearance`` (change of centred crops),
    ``facings`` (distinct judge facings, 0 when not given), ``area`` (mean, image fraction).
    """
    frames = torch.as_tensor(frames, dtype=torch.float32)
    if frames.dim() != 4 or frames.shape[-1] != 3 or frames.shape[0] < 2:
        raise InputError(f"a clip must be [F >= 2, H, W, 3] in [0, 1], got {tuple(frames.shape)}")
    n, H, W, _ = frames.shape
    mask = silhouette(frames, cfg)
    ys, xs = torch.meshgrid((torch.arange(H) + 0.5) / H, (torch.arange(W) + 0.5) / W, indexing="ij")
    xs, ys = xs - 0.5, 0.5 - ys  # y up
    mass = mask.sum((1, 2)).clamp_min(1e-6)
    cx, cy = (mask * xs).sum((1, 2)) / mass, (mask * ys).sum((1, 2)) / mass
    dx, dy = xs - cx[:, None, None], ys - cy[:, None, None]
    sxx, syy, sxy = ((mask * v).sum((1, 2)) / mass for v in (dx * dx, dy * dy, dx * dy))
    trace = (sxx + syy).clamp_min(1e-9)
    area = mass / (H * W)
    size = area.mean().sqrt().clamp_min(1.0 / H)
    t = torch.arange(n, dtype=torch.float32) / n
    hx, hy = _harmonics(cx / size, t), _harmonics(cy / size, t)
    ha = _harmonics(area.clamp_min(1e-4).log(), t)
    shape = torch.sqrt(((sxx - syy) / trace).var(unbiased=False) + (2 * sxy / trace).var(unbiased=False))
    crops = _centred_crops(frames, cx, cy, area.sqrt().clamp_min(1.0 / H))
    appearance = (crops[1:] - crops[:-1]).abs().mean((1, 2, 3)).median()
    return {
        "slide": float(torch.hypot(hx[1], hy[1])),
        "bounce": float(hy[2]),
        "pulse": float(ha[1]),
        "grow": float(ha[0]),
        "shape": float(shape),
        "appearance": float(appearance),
        "facings": 0 if facing is None else len(set(torch.as_tensor(facing).reshape(-1).tolist())),
        "area": float(area.mean()),
    }


def motion_scores(features: dict[str, float], cfg: MotionClassifierConfig = MotionClassifierConfig()) -> dict[str, float]:
    """Each motion's evidence relative to the magnitude the real motion produces (≈ 1 when present).

    spin: the silhouette's shape or the centred appearance changes (or the judge's facing turns);
    bounce: the vertical centroid oscillates twice per clip; slide: the centroid oscillates once
    (sideways, or in depth — seen as a centroid shift — for cameras near the motion's axis);
    pulse: the area oscillates once; grow: the area rises across the clip.
    """
    spin = max(
        features["shape"] / cfg.spin_shape,
        features["appearance"] / cfg.spin_appearance,
        cfg.spin_per_facing * max(0, features["facings"] - 1),
    )
    return {
        "spin": spin,
        "bounce": features["bounce"] / cfg.bounce,
        "slide": features["slide"] / cfg.slide,
        "pulse": features["pulse"] / cfg.pulse,
        "grow": features["grow"] / cfg.grow,
    }


def classify_motion(
    frames: torch.Tensor, facing: torch.Tensor | None = None, cfg: MotionClassifierConfig = MotionClassifierConfig()
) -> str:
    """The motion of a clip (frames ``[F, H, W, 3]`` in [0, 1], times ``k / F``; ``facing``: the
    judge's facing index per frame, for objects with a front): the motion with the strongest
    relative evidence (:func:`motion_scores`), or ``"static"`` when none reaches
    ``cfg.static_below`` — a spinning rotationally symmetric object is static to any viewer."""
    scores = motion_scores(motion_features(frames, facing, cfg), cfg)
    best = max(scores, key=scores.get)
    return best if scores[best] >= cfg.static_below else STATIC


def expected_motion(obj: WorldObject, motion: str) -> str:
    """What a viewer can see: ``"static"`` for a spin of a rotationally symmetric object."""
    if motion not in MOTIONS:
        raise InputError(f"unknown motion {motion!r}; choose from {', '.join(MOTIONS)}")
    return STATIC if motion == "spin" and obj.symmetry == "rotational" else motion


def judge_facing(judge, frames: torch.Tensor) -> torch.Tensor:
    """The judge's facing index per frame of ``frames [..., H, W, 3]`` in [0, 1] (shape ``[...]``)."""
    flat = frames.reshape(-1, *frames.shape[-3:])
    return judge.classify(flat)["facing"].argmax(-1).view(frames.shape[:-3])


def motion_accuracy(clips_rgb: torch.Tensor, objects: list[WorldObject], motions: list[str], judge=None) -> dict:
    """Accuracy of :func:`classify_motion` on clips ``[N, F, H, W, 3]`` in [0, 1] of known motion
    (against :func:`expected_motion`), with the per-motion accuracy and the confusions. With a
    ``judge``, objects with a front also give the classifier the judge's facing per frame, as the
    video prior's evaluation does."""
    if not (len(clips_rgb) == len(objects) == len(motions)) or len(objects) == 0:
        raise InputError(f"need one object and motion per clip: {len(clips_rgb)}, {len(objects)}, {len(motions)}")
    facing = judge_facing(judge, clips_rgb) if judge is not None else None
    right: dict[str, list[bool]] = {}
    confusions: dict[str, int] = {}
    for i, (rgb, obj, motion) in enumerate(zip(clips_rgb, objects, motions)):
        seen = facing[i] if facing is not None and obj.has_front else None
        want, got = expected_motion(obj, motion), classify_motion(rgb, seen)
        right.setdefault(motion, []).append(want == got)
        if want != got:
            key = f"{want}->{got}"
            confusions[key] = confusions.get(key, 0) + 1
    flat = [r for v in right.values() for r in v]
    return {
        "accuracy": float(np.mean(flat)),
        "per_motion": {m: float(np.mean(v)) for m, v in right.items()},
        "confusions": dict(sorted(confusions.items(), key=lambda kv: -kv[1])),
        "n": len(flat),
    }


def load_clip_rgb(clips_dir) -> tuple[torch.Tensor, list[WorldObject], list[str]]:
    """``(rgb [N, F, H, W, 3] in [0, 1], objects, motions)`` of a :func:`render_clips` directory."""
    path = Path(clips_dir)
    if not (path / "index.json").is_file() or not (path / "clips.npz").is_file():
        raise InputError(f"{path} is not a complete clip dataset (render_clips writes clips.npz and index.json)")
    index = json.loads((path / "index.json").read_text())
    with np.load(path / "clips.npz") as npz:
        rgb = torch.from_numpy(npz["rgba"][..., :3]).float() / 255.0
        objects = [WorldObject.from_id(index["objects"][int(i)]["id"]) for i in npz["object_index"]]
        motions = [index["motions"][int(m)] for m in npz["motion_index"]]
    return rgb, objects, motions


def validate_motion_classifier(
    data: Path, seed: int, n_objects: int | None = None, train_clips: bool = True, judge=None, work: Path | None = None
) -> dict:
    """The classifier on ground-truth clips: fresh renders of every held-out single object × motion
    (``render_clips`` with ``seed``; the classifier's constants were set on training-object clips)
    and the dataset's own training clips (``data/clips``) when present; with the judge's facing
    when a ``judge`` is given (:func:`motion_accuracy`)."""
    import tempfile

    from anyto3d.zoo.dataset import render_clips
    from anyto3d.zoo.splits import heldout_objects

    singles = [o for o in heldout_objects() if o.relation is None][:n_objects]
    out: dict = {}
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        render_clips(singles, tmp, clips_per_pair=1, n_frames=8, seed=seed)
        out["heldout_clips"] = motion_accuracy(*load_clip_rgb(tmp), judge=judge)
    if train_clips and (data / "clips" / "index.json").is_file():
        out["train_clips"] = motion_accuracy(*load_clip_rgb(data / "clips"), judge=judge)
    out["accuracy"] = out["heldout_clips"]["accuracy"]
    return out


# ---------------------------------------------------------------------------------------------
# Prior evaluations
# ---------------------------------------------------------------------------------------------


def _judge_classifier(judge):
    return lambda images: judge.classify(images)


def _cycle(items: list, n: int) -> list:
    if not items:
        raise InputError("no held-out objects to evaluate on")
    return [items[i % len(items)] for i in range(n)]


def _labels(objects: list[WorldObject]) -> dict[str, torch.Tensor]:
    from anyto3d.zoo.judge import object_labels

    rows = [object_labels(o) for o in objects]
    return {h: torch.tensor([r[h] for r in rows]) for h in ("shape", "color")}


def _facing_name(index) -> str:
    """A facing label's name; "none" for a view whose named object has no front."""
    return FACINGS[int(index)] if int(index) >= 0 else "none"


def _seen_labels(objects: list[WorldObject], azimuth_deg) -> dict[str, torch.Tensor]:
    """Shape, colour and facing [M] of M views, each object named as its camera names it
    (:func:`~anyto3d.zoo.judge.view_labels`: a "left of" composition seen from behind is its
    mirror, seen from the front half)."""
    from anyto3d.zoo.judge import view_labels

    labels = view_labels(objects, azimuth_deg)
    return {h: labels[h] for h in ("shape", "color", "facing")}


def judge_samples(
    samples: torch.Tensor,
    targets: dict[str, torch.Tensor],
    classifier: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    group_size: int | None = None,
) -> dict[str, float]:
    """Score samples against their conditioning with any classifier.

    ``samples``: images ``[M, 3, H, W]`` or clips ``[B, 3, F, H, W]`` in [-1, 1] (clips are judged
    frame by frame, a clip being a group). ``classifier(images [M, H, W, 3] in [0, 1])`` returns
    ``{attribute: logits [M, K] or labels [M]}`` (e.g. shape, colour, facing). ``targets`` has the
    same keys, one label per image (``[M]``) or one per group (``[M / group_size]``); a label of
    ``IGNORE`` is not scored (its image counts as right on that attribute).
    ``group_size``: views per multi-view object (frames per clip are implied). Returns the accuracy
    per attribute, ``"all"`` (images right on every attribute) and ``"groups"`` (groups whose every
    image is right on every attribute: the consistency a multi-view or video sample needs).
    """
    if samples.dim() == 5:
        from anyto3d.priors.zeroscope import video_to_frames

        group_size = samples.shape[2]
        samples = video_to_frames(samples)
    group_size = group_size or 1
    M = samples.shape[0]
    if M % group_size:
        raise InputError(f"{M} images do not split into groups of {group_size}")
    with torch.no_grad():
        out = classifier(prior_to_renderer(samples.float()))
    missing = set(targets) - set(out)
    if missing:
        raise InputError(f"the classifier gave no {sorted(missing)}")
    right = torch.ones(M, dtype=torch.bool)
    scores = {}
    for key, target in targets.items():
        pred = out[key]
        pred = pred.argmax(-1) if pred.dim() == 2 else pred
        target = torch.as_tensor(target).reshape(-1).long()
        if target.numel() == M // group_size and group_size > 1:
            target = target.repeat_interleave(group_size)
        if target.numel() != M:
            raise InputError(f"{target.numel()} {key} targets for {M} images")
        scored = target != IGNORE  # e.g. the facing of a view whose named object has no front
        ok = (pred.cpu().long() == target) | ~scored
        scores[key] = float(ok[scored].float().mean()) if bool(scored.any()) else 1.0
        right &= ok
    scores["all"] = float(right.float().mean())
    scores["groups"] = float(right.view(-1, group_size).all(dim=1).float().mean())
    return scores


def _scores_with_singles(samples, truth, targets: dict, objects: list[WorldObject], classifier) -> dict:
    """:func:`judge_samples` of the samples and of the true views (``"truth"``), and the same for
    the single objects apart (``"singles"``): the judge reads a composition's subject far less
    surely, and the binder's text embedding of an unseen composition carries its colours poorly."""
    scores = judge_samples(samples, targets, classifier)
    scores["truth"] = judge_samples(truth, targets, classifier)
    single = torch.tensor([o.kind != "composition" for o in objects])
    if bool(single.any()):
        sub = {k: v[single] for k, v in targets.items()}
        scores["singles"] = {
            **judge_samples(samples[single], sub, classifier),
            "truth": judge_samples(truth[single], sub, classifier),
            "n": int(single.sum()),
        }
    return scores


#: Edges of the bins of ``judge.bins``: the fraction of the frame the object covers.
COVERAGE_BINS = (0.0, 0.3, 0.5, 0.8, 1.0)
#: Views at or above this coverage are close-ups (``judge.without_closeups`` leaves them out).
CLOSEUP = 0.8


def frame_coverage(alpha: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """float [N]: the fraction of each alpha matte's pixels (``alpha`` [N, H, W], uint8 or [0, 1])
    that the object covers."""
    a = np.asarray(alpha)
    level = threshold * 255.0 if a.dtype == np.uint8 else threshold
    return (a > level).mean(axis=(1, 2))


@torch.no_grad()
def judge_by_coverage(judge, dataset_dir, bins=COVERAGE_BINS, closeup: float = CLOSEUP) -> dict:
    """The judge's figures (:func:`~anyto3d.zoo.train_encoders.evaluate_judge`'s shape, colour,
    orientation and facing over single objects) on the views of ``dataset_dir`` binned by how much
    of the frame the object covers, and on all views but the close-ups (coverage >= ``closeup``).

    Why: the papers' cameras come close (XBind's Phase II from 1.5 units), and a view that a
    cylinder's side or a capsule's middle fills from edge to edge shows no shape at all. The
    published judge reads shape right on 0.33 of such held-out views and they hold 45 % of its
    shape errors (session 14) — a limit of the views, not of the judge, which this makes visible.
    """
    from anyto3d.zoo.dataset import load_dataset
    from anyto3d.zoo.judge import view_labels
    from anyto3d.zoo.train_encoders import _judge_figures, load_views

    views = load_views(dataset_dir, "all")  # every view, in the dataset's order (as its alpha)
    coverage = torch.from_numpy(frame_coverage(load_dataset(dataset_dir).rgba[..., 3]))
    objects = views.view_objects()
    labels = view_labels(objects, views.azimuth_deg)
    probs = judge.classify(views.rgb)
    single = torch.tensor([o.relation is None for o in objects])
    rows = []
    for lo, hi in itertools.pairwise(bins):
        keep = (coverage >= lo) & ((coverage < hi) | (hi >= bins[-1]))
        rows.append({"coverage": [lo, hi], "n_views": int((keep & single).sum()),
                     **_judge_figures(probs, labels, single, keep)})  # fmt: skip
    rest = coverage < closeup
    return {
        "bins": rows,
        "closeup": closeup,
        "closeup_fraction": round(float((~rest & single).sum() / max(1, int(single.sum()))), 4),
        "without_closeups": {**_judge_figures(probs, labels, single, rest), "n_views": int((rest & single).sum())},
    }


def _sample(prior, cond, cfg: EvalConfig, offset: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + offset)
    return prior.sample(cond, guidance_scale=cfg.guidance_scale, steps=cfg.steps, generator=gen)


def _view_rgb(data, rows) -> torch.Tensor:
    return torch.from_numpy(data.rgba[rows][..., :3]).float() / 255.0


def _heldout_objects_in(data) -> list[WorldObject]:
    """The dataset's objects in a stable, spread-out order (sha256 rank, not catalogue order)."""
    from anyto3d.zoo.world import stable_rank

    return sorted(data.objects, key=lambda o: stable_rank(o.id, 11))


#: What a 2D prior is conditioned on when it is scored: the binder's embedding of the object's
#: canonical caption (the published figure), or the object's world code
#: (:class:`~anyto3d.zoo.priors.WorldCodeEmbedding`, what a prior trained without binder
#: embeddings learnt from) — a perfect, factorised condition, to tell the condition's limits from
#: the prior's.
CONDITIONS = ("text", "code")


def prior2d_condition(prior, binder, objects: list[WorldObject], captions: list[str], condition: str = "text",
                      code_seed: int = 0) -> torch.Tensor:
    """Embeddings ``[N, D]`` a 2D prior is scored on (:data:`CONDITIONS`)."""
    if condition == "text":
        return binder.embed_texts(captions)
    if condition == "code":
        from anyto3d.zoo.priors import WorldCodeEmbedding

        return WorldCodeEmbedding(prior.config.embedding_dim, code_seed)(objects)
    raise InputError(f"condition must be one of {', '.join(CONDITIONS)}, got {condition!r}")


def evaluate_prior2d(prior, binder, judge, data, cfg: EvalConfig, condition: str = "text",
                     code_seed: int = 0) -> tuple[dict, torch.Tensor, list[dict]]:
    """Samples for ``cfg.samples_2d`` of ``data``'s objects (the held-out split for the published
    figure; a training split measures fit), conditioned by :func:`prior2d_condition`."""
    from anyto3d.zoo.captions import canonical_caption

    objects = _cycle(_heldout_objects_in(data), cfg.samples_2d)
    captions = [canonical_caption(o) for o in objects]
    cond = prior.build_condition(prior2d_condition(prior, binder, objects, captions, condition, code_seed))
    samples = _sample(prior, cond, cfg, 1)
    index_of = {o.id: i for i, o in enumerate(data.objects)}
    truth_rows = [_frontal_view(data, index_of[o.id]) for o in objects]
    truth = renderer_to_prior(_view_rgb(data, truth_rows))
    scores = _scores_with_singles(samples, truth, _labels(objects), objects, _judge_classifier(judge))
    scores.update(score=scores["all"], n=len(objects))
    return scores, samples, [{"object": o.id, "caption": c} for o, c in zip(objects, captions)]


def _framed_first(items: np.ndarray, framed: np.ndarray) -> np.ndarray:
    """The ``items`` (views, or groups of views) whose ``framed`` flag is set — they show the
    whole object (:func:`~anyto3d.zoo.dataset.whole_in_frame`) — or all of them when none is:
    a request is made from views that can be judged."""
    keep = items[framed]
    return keep if len(keep) else items


def _frontal_view(data, obj_index: int) -> int:
    """The object's held-out view nearest its front among those that show it whole."""
    rows = np.nonzero(data.object_index == obj_index)[0]
    rows = _framed_first(rows, data.framed[rows])
    rel = np.abs(np.mod(np.degrees(data.azimuth[rows]) + 180.0, 360.0) - 180.0)
    return int(rows[np.argmin(rel)])


def novel_view_requests(reference_azimuth_deg) -> np.ndarray:
    """Asked relative azimuths ``[R, 2]`` (degrees): 180° and ±90°, the sign turning the side
    view away from the nearer front/side boundary. What each asked view should show is named
    per view by :func:`_seen_labels`."""
    ref = np.asarray(reference_azimuth_deg, dtype=np.float64).reshape(-1)
    return np.stack([np.full(ref.shape, 180.0), np.where(ref < 0, 90.0, -90.0)], axis=1)


def true_novel_views(objects: list[WorldObject], data, rows, delta_azimuth_deg) -> torch.Tensor:
    """Ground-truth renders ``[M, H, W, 3]`` of each object from its reference view's camera
    turned by ``delta_azimuth_deg`` (headlight; same elevation, radius and lens)."""
    from anyto3d.cameras import CameraBatch
    from anyto3d.zoo.dataset import render_views

    out = []
    for obj, r, d in zip(objects, rows, delta_azimuth_deg):
        cam = CameraBatch.from_spherical(data.elevation[r], data.azimuth[r] + math.radians(float(d)),
                                         data.distance[r], data.fovy[r])
        out.append(render_views(obj, cam, resolution=data.rgba.shape[1])[..., :3])
    return torch.cat(out)


def evaluate_novelview(prior, binder, judge, data, cfg: EvalConfig) -> tuple[dict, torch.Tensor, list[dict]]:
    """Two asked views per reference: Δaz = 180° (back) and Δaz = ±90° (side, away from the
    nearer facing boundary); expected shape, colour and facing from the target azimuth (the
    front is at 0), the object named as that camera names it (:func:`_seen_labels`)."""
    fronted = [o for o in _heldout_objects_in(data) if o.has_front]
    refs = _cycle(fronted, cfg.novel_references)
    index_of = {o.id: i for i, o in enumerate(data.objects)}
    rows = [_frontal_view(data, index_of[o.id]) for o in refs]
    rgb = _view_rgb(data, rows)
    ref_az = np.degrees(data.azimuth[rows]).astype(np.float64)
    asked = novel_view_requests(ref_az)
    d_az = torch.from_numpy(np.radians(asked.reshape(-1))).float()
    rel = torch.stack([torch.zeros_like(d_az), d_az.sin(), d_az.cos(), torch.zeros_like(d_az)], dim=1)
    embedding = binder.embed_image(rgb).repeat_interleave(2, 0) if prior.config.embedding_dim else None
    cond = prior.build_condition(
        reference_image=renderer_to_prior(rgb).repeat_interleave(2, 0), relative_camera=rel, embedding=embedding
    )
    samples = _sample(prior, cond, cfg, 2)
    objects = [o for o in refs for _ in range(2)]
    targets = _seen_labels(objects, (ref_az[:, None] + asked).reshape(-1))
    expected = targets["facing"].view(-1, 2)
    truth_views = renderer_to_prior(true_novel_views(objects, data, np.repeat(rows, 2), asked.reshape(-1)))
    scores = _scores_with_singles(samples, truth_views, targets, objects, _judge_classifier(judge))
    scores.update(score=scores["all"], n=len(objects))
    meta = [
        {"object": o.id, "reference_azimuth_deg": round(float(a), 1), "asked_delta_azimuth_deg": [float(x) for x in d],
         "expected_facing": [_facing_name(f) for f in expected[i]]}
        for i, (o, a, d) in enumerate(zip(refs, ref_az, asked))
    ]  # fmt: skip
    return scores, (renderer_to_prior(rgb), samples), meta


def evaluate_multiview(prior, binder, judge, data, cfg: EvalConfig) -> tuple[dict, torch.Tensor, list[dict]]:
    """Held-out 4-view groups (the dataset's cameras when it has groups of ``num_views``, else
    ``num_views`` views of the object), objects with a front first-class: their facing is judged."""
    from anyto3d.zoo.captions import canonical_caption

    N = prior.num_views
    objects = _heldout_objects_in(data)
    index_of = {o.id: i for i, o in enumerate(data.objects)}
    # alternate objects with and without a front, so both kinds are judged
    fronted, plain = [o for o in objects if o.has_front], [o for o in objects if not o.has_front]
    order = [o for pair in zip(fronted, plain) for o in pair] + fronted[len(plain) :] + plain[len(fronted) :]
    picked = _cycle(order, cfg.multiview_groups)
    rows, framed = [], data.framed
    for k, obj in enumerate(picked):  # a repeated object takes its next group of N views
        views = np.nonzero(data.object_index == index_of[obj.id])[0]
        if len(views) < N:
            raise InputError(f"{obj.id} has {len(views)} held-out views, fewer than num_views={N}")
        groups = views[: len(views) // N * N].reshape(-1, N)
        groups = _framed_first(groups, framed[groups].all(axis=1))  # every view of the group framed
        rows.extend(groups[(k // len(order)) % len(groups)].tolist())
    rows = np.asarray(rows)
    captions = [canonical_caption(o) for o in picked]
    cond = prior.build_condition(binder.embed_texts(captions), torch.from_numpy(data.c2w[rows]))
    samples = _sample(prior, cond, cfg, 3)
    has_front = torch.tensor([o.has_front for o in picked])
    seen = _seen_labels([o for o in picked for _ in range(N)], np.degrees(data.azimuth[rows]))
    facing = seen["facing"].view(-1, N)
    classifier = _judge_classifier(judge)

    def grouped_scores(images: torch.Tensor) -> dict:
        """Objects with a front (facing judged too) and without, then weighted together."""
        parts, weights = {}, {}
        for name, keep in (("with_front", has_front), ("without_front", ~has_front)):
            if not bool(keep.any()):
                continue
            views = keep.repeat_interleave(N)
            targets = {h: seen[h][views] for h in (("shape", "color", "facing") if name == "with_front" else ("shape", "color"))}
            parts[name] = judge_samples(images[views], targets, classifier, group_size=N)
            weights[name] = int(keep.sum())
        total = sum(weights.values())
        return {
            "groups": sum(parts[k]["groups"] * w for k, w in weights.items()) / total,
            "views": sum(parts[k]["all"] * w for k, w in weights.items()) / total,
            **parts,
            "n_groups": total,
        }

    scores = grouped_scores(samples)
    scores["truth"] = grouped_scores(renderer_to_prior(_view_rgb(data, rows)))
    scores["score"] = scores["groups"]
    az = np.degrees(data.azimuth[rows]).reshape(-1, N)
    meta = [
        {"object": o.id, "caption": c, "azimuth_deg": [round(float(a), 1) for a in az[i]],
         "expected_facing": [_facing_name(f) for f in facing[i]] if o.has_front else None}
        for i, (o, c) in enumerate(zip(picked, captions))
    ]  # fmt: skip
    return scores, samples, meta


def evaluate_video(prior, binder, judge, cfg: EvalConfig) -> tuple[dict, torch.Tensor, list[dict]]:
    """Held-out single objects × motions in turn (no spin for a rotationally symmetric object:
    nothing would show it); the motion caption's embedding conditions the prior."""
    from anyto3d.priors.zeroscope import video_to_frames
    from anyto3d.zoo.motion import motion_caption
    from anyto3d.zoo.splits import heldout_objects
    from anyto3d.zoo.world import stable_rank

    singles = sorted((o for o in heldout_objects() if o.relation is None), key=lambda o: stable_rank(o.id, 11))
    pairs = []
    k = 0
    while len(pairs) < cfg.clips:
        obj = singles[k % len(singles)]
        motion = MOTIONS[(k + k // len(singles)) % len(MOTIONS)]
        if expected_motion(obj, motion) != STATIC:
            pairs.append((obj, motion))
        k += 1
    captions = [motion_caption(o, m) for o, m in pairs]
    cond = prior.build_condition(binder.embed_texts(captions))
    samples = _sample(prior, cond, cfg, 4)  # [B, 3, F, H, W]
    objects = [o for o, _ in pairs]
    scores = judge_samples(samples, _labels(objects), _judge_classifier(judge))
    B, F_ = samples.shape[0], samples.shape[2]
    frames = prior_to_renderer(video_to_frames(samples).float())  # [B·F, H, W, 3], clip-major
    probs = judge.classify(frames)
    object_ok = torch.ones(B, F_, dtype=torch.bool)
    for h, lab in _labels(objects).items():
        object_ok &= probs[h].argmax(-1).view(B, F_) == lab[:, None]
    object_ok = object_ok.all(dim=1)
    facing = probs["facing"].argmax(-1).view(B, F_)
    clips = frames.view(B, F_, *frames.shape[1:])
    got = [classify_motion(c, facing[i] if o.has_front else None) for i, (c, o) in enumerate(zip(clips, objects))]
    motion_ok = torch.tensor([g == m for g, (_, m) in zip(got, pairs)])
    scores.update(
        motion=float(motion_ok.float().mean()),
        object=scores["groups"],
        score=float((motion_ok & object_ok).float().mean()),
        n=len(pairs),
        frames=F_,
    )
    meta = [{"object": o.id, "motion": m, "caption": c, "classified_motion": g}
            for (o, m), c, g in zip(pairs, captions, got)]  # fmt: skip
    return scores, samples, meta


# ---------------------------------------------------------------------------------------------
# Sheets
# ---------------------------------------------------------------------------------------------


def save_sheet(rows: list[torch.Tensor], path: Path, meta: list[dict], scale: int = 2, pad: int = 1) -> Path:
    """Rows of images (each ``[k, 3, H, W]`` in [-1, 1]; smaller ones upscaled, nearest) as a PNG on
    white, plus ``<path>.json`` with ``meta`` (one entry per row), written beside it."""
    from PIL import Image

    if not rows:
        raise InputError("a sample sheet needs at least one row")
    h = max(r.shape[-2] for r in rows)
    w = max(r.shape[-1] for r in rows)
    rows = [r if r.shape[-2:] == (h, w) else F.interpolate(r.float(), size=(h, w), mode="nearest") for r in rows]
    ncol = max(r.shape[0] for r in rows)
    canvas = torch.ones(len(rows) * (h + pad) + pad, ncol * (w + pad) + pad, 3)
    for i, row in enumerate(rows):
        hwc = prior_to_renderer(row.float())
        for j in range(row.shape[0]):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y : y + h, x : x + w] = hwc[j]
    img = Image.fromarray(to_uint8(canvas))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    _write_json_atomic(path.with_suffix(".json"), {"rows": meta})
    return path


def _sheets(results: dict, sheets: Path, max_rows: int = 8) -> dict:
    written = {}
    samples, meta = results["prior2d"]
    per_row = 8
    rows = [samples[i : i + per_row] for i in range(0, min(len(samples), per_row * max_rows), per_row)]
    row_meta = [meta[i : i + per_row] for i in range(0, per_row * len(rows), per_row)]
    written["prior2d"] = save_sheet(rows, sheets / "prior2d.png", row_meta)
    (refs, samples), meta = results["novelview"]
    n = min(len(refs), 2 * max_rows)
    if refs.shape[-2:] != samples.shape[-2:]:  # a reference render at the prior's sample size
        refs = F.interpolate(refs.float(), size=samples.shape[-2:], mode="area")
    rows = [torch.cat([refs[i : i + 1], samples[2 * i : 2 * i + 2]]) for i in range(n)]
    row_meta = [{"columns": "reference | asked views", **m} for m in meta[:n]]
    written["novelview"] = save_sheet(rows, sheets / "novelview.png", row_meta)
    samples, meta = results["multiview"]
    N = len(samples) // max(1, len(meta))
    n = min(len(meta), max_rows)
    written["multiview"] = save_sheet([samples[i * N : (i + 1) * N] for i in range(n)], sheets / "multiview.png", meta[:n])
    samples, meta = results["video"]
    n = min(len(meta), max_rows)
    rows = [samples[i].transpose(0, 1) for i in range(n)]  # [3, F, H, W] → [F, 3, H, W]
    written["video"] = save_sheet(rows, sheets / "video.png", meta[:n])
    return {k: str(v) for k, v in written.items()}


# ---------------------------------------------------------------------------------------------
# Targets, train seconds, the whole run
# ---------------------------------------------------------------------------------------------


def lookup(metrics: dict, key: str):
    """The value at a dotted path (``"binder.text_to_image"``), or None where absent."""
    node = metrics
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def passed(metrics: dict, targets: dict[str, float] = TARGETS) -> dict[str, bool]:
    """Each target's figure ≥ its target (a missing or non-finite figure fails), and ``all``."""
    out = {}
    for key, target in targets.items():
        value = lookup(metrics, key)
        out[key] = isinstance(value, (int, float)) and math.isfinite(value) and value >= target
    out["all"] = all(out.values())
    return out


def train_seconds(models_root: Path | None = None) -> dict:
    """Training time of each model from its ``metrics.json``: ``train_seconds`` (encoders) or, for
    the priors and VAE whose metrics carry only a rate, ``steps / steps_per_s`` (an estimate that
    leaves out start-up and the first steps). ``None`` where a model has no metrics."""
    from anyto3d.zoo.build import MODEL_NAMES, model_dir

    out: dict = {}
    for name in MODEL_NAMES:
        path = model_dir(name, models_root) / "metrics.json"
        value = None
        if path.is_file():
            m = json.loads(path.read_text())
            for key in ("train_seconds", "seconds", "elapsed_s", "wall_seconds"):
                if isinstance(m.get(key), (int, float)):
                    value = float(m[key])
                    break
            else:
                rate, steps = m.get("steps_per_s"), m.get("steps")
                if isinstance(rate, (int, float)) and rate > 0 and isinstance(steps, (int, float)):
                    value = float(steps) / float(rate)
        out[name] = None if value is None else round(value, 1)
    return out


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_jsonable))
    os.replace(tmp, path)


def _jsonable(x):
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


def evaluate_zoo(
    data: str | os.PathLike,
    out: str | os.PathLike,
    sheets: str | os.PathLike | None = None,
    cfg: EvalConfig | None = None,
    models_root: str | os.PathLike | None = None,
    allow_missing: bool = False,
) -> dict:
    """The whole evaluation (module docstring); writes ``out`` atomically and returns its content.
    ``allow_missing``: a prior not trained yet is recorded as ``{"missing": why}`` (its target then
    fails, and no sheets are written) instead of raising :class:`MissingWeightsError`."""
    from anyto3d.zoo.binder import TinyBinder
    from anyto3d.zoo.build import model_dir
    from anyto3d.zoo.dataset import load_dataset
    from anyto3d.zoo.judge import TinyJudge
    from anyto3d.zoo.priors import load_tiny_prior
    from anyto3d.zoo.train_encoders import evaluate_binder, evaluate_judge

    cfg = cfg or EvalConfig()
    data = Path(data)
    heldout_dir = data / "heldout"
    if not (heldout_dir / "index.json").is_file():
        raise InputError(f"{heldout_dir} is not a rendered held-out split (python -m anyto3d.zoo.build data --out {data})")
    root = Path(models_root) if models_root is not None else None
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def timed(name, fn, *args):
        t0 = time.perf_counter()
        result = fn(*args)
        timings[name] = round(time.perf_counter() - t0, 1)
        return result

    binder = TinyBinder.from_pretrained(model_dir("binder", root))
    judge = TinyJudge.from_pretrained(model_dir("judge", root))
    heldout = load_dataset(heldout_dir)
    metrics: dict = {
        "binder": timed("binder", evaluate_binder, binder, heldout_dir, "heldout"),
        "judge": {**timed("judge", evaluate_judge, judge, heldout_dir, "heldout"),
                  **timed("judge_coverage", judge_by_coverage, judge, heldout_dir)},
        "motion_classifier": timed("motion_classifier", validate_motion_classifier, data, cfg.motion_validation_seed,
                                   cfg.motion_validation_objects, cfg.motion_validation_train_clips, judge),
        "priors": {},
    }
    results = {}
    with torch.no_grad():
        for kind in ("prior2d", "novelview", "multiview", "video"):
            try:
                prior = load_tiny_prior(model_dir(kind, root))
            except MissingWeightsError as err:
                if not allow_missing:
                    raise
                metrics["priors"][kind] = {"missing": str(err)}
                continue
            if kind == "video":
                scores, samples, meta = timed(kind, evaluate_video, prior, binder, judge, cfg)
            else:
                fn = {"prior2d": evaluate_prior2d, "novelview": evaluate_novelview, "multiview": evaluate_multiview}[kind]
                scores, samples, meta = timed(kind, fn, prior, binder, judge, heldout, cfg)
            scores.update(guidance_scale=cfg.guidance_scale, ddim_steps=cfg.steps, seed=cfg.seed, latent=prior.vae is not None)
            metrics["priors"][kind] = scores
            results[kind] = (samples, meta)
    if sheets is not None and len(results) == 4:
        metrics["sheets"] = _sheets(results, Path(sheets))
    metrics["targets"] = dict(TARGETS)
    metrics["passed"] = passed(metrics)
    metrics["train_seconds"] = train_seconds(root)
    metrics["config"] = asdict(cfg)
    metrics["eval_seconds"] = {**timings, "total": round(time.perf_counter() - started, 1)}
    _write_json_atomic(Path(out), metrics)
    return metrics


def scaled_config(samples: int | None = None, **settings) -> EvalConfig:
    """An :class:`EvalConfig` with ``settings``; ``samples`` (N 2D samples) also scales the
    novel-view references, multi-view groups and clips by N / 64 (None: the defaults)."""
    cfg = EvalConfig(**settings)
    if samples is not None:
        if samples < 4:
            raise InputError(f"--samples must be >= 4, got {samples}")
        scale = samples / EvalConfig.samples_2d
        cfg.samples_2d = samples
        for name in ("novel_references", "multiview_groups", "clips"):
            setattr(cfg, name, max(1, round(getattr(EvalConfig, name) * scale)))
    return cfg


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m anyto3d.zoo.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="data/zoo", help="the zoo dataset (build data): heldout/ and clips/")
    parser.add_argument("--out", default="metrics/zoo.json")
    parser.add_argument("--sheets", default="metrics/zoo", help="directory for the sample sheets")
    parser.add_argument("--models", default=None, help="models root (default $ANYTO3D_TINY_MODELS or the packaged zoo)")
    parser.add_argument("--samples", type=int, default=None,
                        help="N 2D samples; the other counts scale with N / 64 "
                        "(defaults: 64 2D samples, 32 references × 2 novel views, 32 groups, 24 clips)")
    parser.add_argument("--steps", type=int, default=EvalConfig.steps)
    parser.add_argument("--guidance", type=float, default=EvalConfig.guidance_scale)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--allow-missing", action="store_true", help="record untrained priors as missing instead of failing")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = scaled_config(args.samples, steps=args.steps, guidance_scale=args.guidance, seed=args.seed)
    metrics = evaluate_zoo(args.data, args.out, args.sheets, cfg, args.models, args.allow_missing)
    print(json.dumps({"passed": metrics["passed"], "eval_seconds": metrics["eval_seconds"]}, indent=1))
    return metrics


__all__ = [
    "CONDITIONS",
    "MOTION_LABELS",
    "STATIC",
    "TARGETS",
    "EvalConfig",
    "MotionClassifierConfig",
    "classify_motion",
    "evaluate_multiview",
    "evaluate_novelview",
    "evaluate_prior2d",
    "evaluate_video",
    "evaluate_zoo",
    "expected_motion",
    "frame_coverage",
    "judge_by_coverage",
    "judge_facing",
    "judge_samples",
    "load_clip_rgb",
    "lookup",
    "main",
    "motion_accuracy",
    "motion_features",
    "motion_scores",
    "novel_view_requests",
    "passed",
    "prior2d_condition",
    "save_sheet",
    "scaled_config",
    "silhouette",
    "train_seconds",
    "validate_motion_classifier",
]


if __name__ == "__main__":
    main()
