"""View consistency of an asset across the evaluation orbit, as the tiny world's judge sees it.

Neither paper measures 3D consistency with a number; the tiny world can, because its judge
(:class:`anyto3d.zoo.judge.TinyJudge`) names each view's shape, colour and *facing* (front /
side / back of an object with a canonical front). Three figures:

* ``shape_agreement`` — the fraction of views whose predicted shape is the orbit's majority
  shape. An asset that reads as a cube from one side and a cylinder from another scores < 1.
  ``color_agreement`` is the same for colour.
* ``facing_accuracy`` — only for a target object with a front (``WorldObject.has_front``): the
  fraction of views whose predicted facing equals the facing implied by the camera azimuth
  (:func:`anyto3d.zoo.world.facing_index`; the front faces the camera at azimuth 0). A Janus
  asset, which shows its front from every side, reads "front" from behind and scores about the
  front sector's share of the orbit (90°/360° = 0.25 for a uniform orbit).
* ``facing_balanced`` — the same, but the mean over the three sectors of each sector's
  accuracy. An asset that shows one facing everywhere scores 1/3 whichever it shows: the
  featureless, rotationally symmetric result of a camera-unaware prior reads "side" from every
  azimuth, and its plain facing accuracy is the side sectors' share of the orbit (0.48 on 120
  views), higher than a Janus asset's 0.26 though it has no front at all (measured: plain SDS
  on the tiny world's asymmetric suite, session 5).
* ``view_consistency`` — the **product** of the figures that apply (shape and colour agreement,
  and the balanced facing accuracy when the object has a front). A product rather than a minimum so that two
  partial failures count for more than one; each factor is a fraction of views, so the product is
  in [0, 1] and is 1 only for an asset that is consistent on every count.

With a target object, ``shape_accuracy`` / ``color_accuracy`` (fraction of views judged as the
target's shape / colour) are reported too; they are semantic accuracy, not consistency, and do
not enter ``view_consistency``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from anyto3d.errors import InputError
from anyto3d.zoo.world import COLOR_NAMES, SHAPES, WorldObject, behind, facing_index


def _predictions(judge_outputs: Mapping[str, torch.Tensor], head: str, n_views: int | None) -> torch.Tensor:
    if head not in judge_outputs:
        raise InputError(f"judge outputs lack the {head!r} head (have {sorted(judge_outputs)})")
    scores = torch.as_tensor(judge_outputs[head])
    if scores.dim() != 2 or scores.shape[0] == 0:
        raise InputError(f"judge output {head!r} must be [V, classes] per view, got {tuple(scores.shape)}")
    if n_views is not None and scores.shape[0] != n_views:
        raise InputError(f"judge output {head!r} has {scores.shape[0]} views, expected {n_views}")
    return scores.argmax(dim=-1)


def majority_agreement(labels: torch.Tensor) -> float:
    """Fraction of entries equal to the most frequent label."""
    counts = torch.bincount(labels.reshape(-1).long())
    return float(counts.max()) / labels.numel()


def _azimuth_deg(azimuth_rad: torch.Tensor) -> np.ndarray:
    azimuth_deg = np.degrees(np.asarray(torch.as_tensor(azimuth_rad, dtype=torch.float64).reshape(-1)))
    return np.round(azimuth_deg, 4)  # float32 radians put 45° at 45.000001°: sector edges are inclusive


NO_FACING = -1  # expected facing of a view whose named object has no front (not scored)


def expected_facing(azimuth_rad: torch.Tensor, target: WorldObject | None = None) -> torch.Tensor:
    """Facing index [V] (0 front, 1 side, 2 back) that cameras at ``azimuth_rad`` see of an object
    whose front faces azimuth 0, or of ``target`` as each camera names it
    (:meth:`WorldObject.seen_from`: a "left of" composition is seen from the front half only; a
    marked cube from behind is a plain cube, :data:`NO_FACING`)."""
    azimuth_deg = _azimuth_deg(azimuth_rad)
    if target is None:
        return torch.as_tensor(np.atleast_1d(facing_index(azimuth_deg))).long()
    seen = [target.seen_from(a) for a in azimuth_deg]
    return torch.tensor([facing_index(a) if named.has_front else NO_FACING for named, a in seen]).long()


def _scored(predicted_facing: torch.Tensor, expected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted, expected) of the views whose facing is scored (those with a named front)."""
    predicted = predicted_facing.reshape(-1).long()
    if expected.numel() != predicted.numel():
        raise InputError(f"{predicted.numel()} facing predictions for {expected.numel()} azimuths")
    keep = expected != NO_FACING
    if not bool(keep.any()):
        raise InputError("no view of the orbit shows a front to score facing on")
    return predicted[keep], expected[keep]


def facing_accuracy(predicted_facing: torch.Tensor, azimuth_rad: torch.Tensor, target: WorldObject | None = None) -> float:
    """Fraction of the scored views whose predicted facing index equals :func:`expected_facing`."""
    predicted, expected = _scored(predicted_facing, expected_facing(azimuth_rad, target))
    return float((predicted == expected).double().mean())


def facing_balanced(predicted_facing: torch.Tensor, azimuth_rad: torch.Tensor, target: WorldObject | None = None) -> float:
    """Mean over the facing sectors the orbit covers of the fraction of that sector's views whose
    predicted facing is right (balanced accuracy; :func:`facing_accuracy` per sector)."""
    predicted, expected = _scored(predicted_facing, expected_facing(azimuth_rad, target))
    recalls = [float((predicted[expected == k] == k).double().mean()) for k in expected.unique().tolist()]
    return sum(recalls) / len(recalls)


def subject_readings(
    judge_outputs: Mapping[str, torch.Tensor], azimuth_rad: torch.Tensor, target: WorldObject | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(shape [V], colour [V]) the judge reads for the target's own subject in each view.

    The judge names views view-relatively (:meth:`WorldObject.seen_from`): from behind "A left
    of B" it reports B as the subject and A as the reference part. For such a target those views'
    subject is read from the reference-part heads (``part_shape``, ``second_color``), so a right
    asset reads the same subject all round. A reference-part reading of "none" becomes an index
    past the last class (never a match).

    A view whose name is another single object (a marked cube from behind is a plain cube): a
    reading of that name is the target's, and a reading of the target's own name is a Janus
    view (the mark shows from behind), an index past the last class. Any other target (or
    none): the subject heads as they read.
    """
    n = torch.as_tensor(azimuth_rad).numel()
    shape = _predictions(judge_outputs, "shape", n)
    color = _predictions(judge_outputs, "color", n)
    if target is None:
        return shape, color
    if target.mirrored == target:
        named = torch.tensor([SHAPES.index(target.seen_from(a)[0].shape) for a in _azimuth_deg(azimuth_rad)])
        own = SHAPES.index(target.shape)
        renamed = named != own
        shape = torch.where(renamed & (shape == named), own, torch.where(renamed & (shape == own), len(SHAPES), shape))
        return shape, color
    back = torch.as_tensor(behind(_azimuth_deg(azimuth_rad)))
    # the part heads' classes are ("none", *SHAPES) / ("none", *COLOR_NAMES)
    part = _predictions(judge_outputs, "part_shape", n) - 1
    second = _predictions(judge_outputs, "second_color", n) - 1
    part = torch.where(part < 0, len(SHAPES), part)
    second = torch.where(second < 0, len(COLOR_NAMES), second)
    return torch.where(back, part, shape), torch.where(back, second, color)


def view_consistency(
    judge_outputs: Mapping[str, torch.Tensor], azimuths: torch.Tensor, target: WorldObject | None = None
) -> dict[str, float]:
    """Consistency figures (module docstring) from per-view judge outputs.

    ``judge_outputs``: head name -> [V, classes] probabilities or logits (``TinyJudge.classify``
    or ``TinyJudge.forward``), needing ``shape`` and ``color`` (``facing`` for a target with a
    front, ``part_shape`` and ``second_color`` for a "left of" target: :func:`subject_readings`);
    ``azimuths``: [V] camera azimuths in radians; ``target``: the world object the asset should
    be, or ``None`` when the prompt is not a world object (then no facing accuracy).
    """
    azimuths = torch.as_tensor(azimuths).reshape(-1)
    n = azimuths.numel()
    if n == 0:
        raise InputError("view consistency needs at least one view")
    shape, color = subject_readings(judge_outputs, azimuths, target)
    out = {"shape_agreement": majority_agreement(shape), "color_agreement": majority_agreement(color)}
    factors = [out["shape_agreement"], out["color_agreement"]]
    if target is not None:
        out["shape_accuracy"] = float((shape == SHAPES.index(target.shape)).double().mean())
        out["color_accuracy"] = float((color == COLOR_NAMES.index(target.color)).double().mean())
        if target.has_front:
            facing = _predictions(judge_outputs, "facing", n)
            out["facing_accuracy"] = facing_accuracy(facing, azimuths, target)
            out["facing_balanced"] = facing_balanced(facing, azimuths, target)
            factors.append(out["facing_balanced"])
    out["view_consistency"] = math.prod(factors)
    return out


__all__ = [
    "NO_FACING",
    "expected_facing",
    "facing_accuracy",
    "facing_balanced",
    "majority_agreement",
    "subject_readings",
    "view_consistency",
]
