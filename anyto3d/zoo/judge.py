"""The tiny world's judge: an independent image classifier used only by evaluation metrics.

It never enters a loss that optimises a 3D asset (the MS loss uses the binder), so a method
cannot win the judge's metrics by fooling it directly. Independent of the binder by design:
a different architecture (residual CNN with BatchNorm and SiLU vs the binder's plain
GroupNorm/GELU CNN), a different seed, its own training run and labels rather than captions.

Heads (class lists in :data:`HEADS`; "none" where an object lacks the attribute)
-------------------------------------------------------------------------------
* ``shape`` (13) and ``color`` (8): of the object, or of a composition's subject ``items[0]``;
* ``orientation`` (upright / tilted);
* ``facing`` (front / side / back, from the camera azimuth; trained and scored only on objects
  that have a front) — it lets evaluation see a Janus result;
* ``relation`` (none / on / left_of / in_front_of);
* ``second_color`` (none + 8): the second colour of a two-colour object, or a composition's
  reference part's colour; ``part_shape`` (none + 13): the reference part's shape.

Labels are the object **as each view's camera names it** (:func:`view_labels`,
:meth:`WorldObject.seen_from`). That differs from the object's own name in two cases, both
pictures that are pixel for pixel another object's: "A left of B" seen from behind is "B left
of A" seen from the front half, so those views are labelled "B left of A", facing from the front
half; a marked cube seen from behind is a plain cube (no facing). With the object's own name the
pictures carried contradictory labels: the judge learnt neither "left of" subject (colour 0.38
on held-out views, session 5), and marked cube ↔ cube and a marked cube's back ↔ side were its
largest confusions on its own whole-object training views (session 8). Every scoring path names
its targets the same way.

CLIP-R-style retrieval (``clip_like``)
--------------------------------------
The judge has no text tower. A suite's prompts are world objects (each prompt is an object's
caption), so a prompt is scored by the judge's log-likelihood of that object's attributes:
``score(image, object) = Σ_heads log p(head = object's label)`` over the heads a caption
states (every head but ``facing``), the object named as the image's camera names it when the
camera azimuths are given. :meth:`TinyJudge.clip_like` returns these scores
``[B, K]`` for K candidate objects; the CLIP-R hit is ``argmax == true index``. Free-text
prompts are mapped to objects with :func:`object_for_caption` (a canonical caption or an id).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anyto3d.encoders.base import clip_preprocess
from anyto3d.errors import InputError
from anyto3d.module_io import CONFIG_NAME, load_module, save_module
from anyto3d.zoo.world import (
    COLOR_NAMES,
    FACINGS,
    ORIENTATIONS,
    RELATIONS,
    SHAPES,
    WorldObject,
    behind,
    facing_index,
)

FORMAT = "anyto3d.zoo.judge/1"
NONE = "none"

HEADS: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "color": COLOR_NAMES,
    "orientation": ORIENTATIONS,
    "facing": FACINGS,
    "relation": (NONE, *RELATIONS),
    "second_color": (NONE, *COLOR_NAMES),
    "part_shape": (NONE, *SHAPES),
}
#: Heads a caption states (scored by clip_like); facing depends on the camera, not the prompt.
PROMPT_HEADS = ("shape", "color", "orientation", "relation", "second_color", "part_shape")
IGNORE = -100  # label of a head that does not apply (cross_entropy's ignore_index)


def object_labels(obj: WorldObject) -> dict[str, int]:
    """Class index per prompt head for one object (facing needs a view: :func:`view_labels`)."""
    part = obj.items[1].shape if obj.relation is not None else NONE
    return {
        "shape": SHAPES.index(obj.shape),
        "color": COLOR_NAMES.index(obj.color),
        "orientation": ORIENTATIONS.index(obj.orientation),
        "relation": HEADS["relation"].index(obj.relation or NONE),
        "second_color": HEADS["second_color"].index(obj.secondary or NONE),
        "part_shape": HEADS["part_shape"].index(part),
    }


def view_labels(objects: list[WorldObject], azimuth_deg) -> dict[str, torch.Tensor]:
    """Labels [N] per head for N views of ``objects`` from cameras at ``azimuth_deg`` [N]:
    each view's object as the camera names it (:meth:`WorldObject.seen_from`), and its facing
    relative to that object's front (ignored for an object without a front)."""
    azimuth_deg = np.asarray(azimuth_deg, dtype=np.float64).reshape(-1)
    if azimuth_deg.shape[0] != len(objects):
        raise InputError(f"{azimuth_deg.shape[0]} azimuths for {len(objects)} views")
    seen = [o.seen_from(a) for o, a in zip(objects, azimuth_deg)]
    rows = [object_labels(o) for o, _ in seen]
    out = {h: torch.tensor([r[h] for r in rows], dtype=torch.long) for h in PROMPT_HEADS}
    facing = [facing_index(a) if o.has_front else IGNORE for o, a in seen]
    out["facing"] = torch.tensor(facing, dtype=torch.long)
    return out


def view_label_table(candidates: list[WorldObject], azimuth_deg) -> dict[str, torch.Tensor]:
    """Labels [B, K] per prompt head: each of K ``candidates`` as B cameras at ``azimuth_deg``
    name it (:meth:`WorldObject.seen_from`); ``azimuth_deg=None`` gives the canonical names [1, K]."""
    plain = [object_labels(o) for o in candidates]
    if azimuth_deg is None:
        return {h: torch.tensor([[lab[h] for lab in plain]]) for h in PROMPT_HEADS}
    from_behind = [object_labels(o.seen_from_behind) for o in candidates]
    back = torch.as_tensor(np.asarray(behind(np.asarray(azimuth_deg, dtype=np.float64).reshape(-1))))
    table = {}
    for h in PROMPT_HEADS:
        both = torch.tensor([[lab[h] for lab in plain], [lab[h] for lab in from_behind]])  # [2, K]
        table[h] = both[back.long()]
    return table


def look_alike(objects: list[WorldObject], azimuth_deg) -> torch.Tensor:
    """``[B, K]`` one id per (view, candidate): the name the view's camera gives the candidate
    (:meth:`WorldObject.seen_from`, by :func:`view_label_table`'s rule). Candidates with one id
    make the same picture from that camera (a marked cube and the plain cube of its colour, from
    behind)."""
    ids: dict[str, int] = {}
    both = torch.tensor([[ids.setdefault(o.id, len(ids)) for o in objects],
                         [ids.setdefault(o.seen_from_behind.id, len(ids)) for o in objects]])  # [2, K]
    back = np.atleast_1d(behind(np.asarray(azimuth_deg, dtype=np.float64).reshape(-1)))
    return both[torch.as_tensor(back).long()]


def object_for_caption(text: str, objects: list[WorldObject] | None = None) -> WorldObject:
    """The world object whose canonical caption (or id) is ``text``, among ``objects`` (default:
    every single object and every possible composition)."""
    from anyto3d.zoo.captions import canonical_caption
    from anyto3d.zoo.world import all_compositions, single_objects

    key = " ".join(text.split()).lower()
    pool = objects if objects is not None else single_objects() + [c for r in RELATIONS for c in all_compositions(r)]
    for obj in pool:
        if key in (canonical_caption(obj).lower(), obj.id.lower()):
            return obj
    try:
        return WorldObject.from_id(text.strip())
    except InputError:
        raise InputError(f"{text!r} is not a canonical caption or id of a tiny-world object") from None


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgeConfig:
    image_size: int = 32
    # Width 48-96-192 with two blocks per stage: the 32-64-128 single-block judge under-fitted
    # its own training views (shape 0.92; capsule↔cylinder and marked cube↔cube, measured).
    channels: tuple[int, ...] = (48, 96, 192)
    blocks_per_stage: int = 2
    hidden: int = 256


TEST_JUDGE = JudgeConfig(channels=(16, 32, 64), blocks_per_stage=1, hidden=64)


class ResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = nn.Conv2d(c_in, c_out, 1, stride, bias=False) if (stride != 1 or c_in != c_out) else nn.Identity()

    def forward(self, x):
        h = F.silu(self.bn1(self.conv1(x)))
        return F.silu(self.bn2(self.conv2(h)) + self.skip(x))


class TinyJudge(nn.Module):
    """Residual CNN on 32² RGB with one classification head per attribute (module docstring)."""

    def __init__(self, cfg: JudgeConfig = JudgeConfig()):
        super().__init__()
        self.cfg = cfg
        c0 = cfg.channels[0]
        self.stem = nn.Sequential(nn.Conv2d(3, c0, 3, 1, 1, bias=False), nn.BatchNorm2d(c0), nn.SiLU())
        blocks, c_in = [], c0
        for c in cfg.channels:
            blocks.append(ResidualBlock(c_in, c, 2))  # 32² -> 16² -> 8² -> 4²
            blocks += [ResidualBlock(c, c, 1) for _ in range(cfg.blocks_per_stage - 1)]
            c_in = c
        self.blocks = nn.Sequential(*blocks)
        side = cfg.image_size // 2 ** len(cfg.channels)
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(c_in * side * side, cfg.hidden), nn.SiLU())
        self.heads = nn.ModuleDict({name: nn.Linear(cfg.hidden, len(classes)) for name, classes in HEADS.items()})

    def forward(self, rgb: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per head for images [B, H, W, 3] in [0, 1] (any size; resized to 32²)."""
        if rgb.dim() != 4 or rgb.shape[-1] != 3:
            raise InputError(f"images must be [B, H, W, 3] in [0, 1], got {tuple(rgb.shape)}")
        dtype = next(self.parameters()).dtype
        x = clip_preprocess(rgb.to(dtype), self.cfg.image_size, mean=(0.5,) * 3, std=(0.25,) * 3)
        h = self.trunk(self.blocks(self.stem(x)))
        return {name: head(h) for name, head in self.heads.items()}

    @torch.no_grad()
    def classify(self, images: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """Class probabilities [B, classes] per head (eval mode, no gradients)."""
        was_training = self.training
        self.eval()
        chunks = [self(images[i : i + batch_size]) for i in range(0, images.shape[0], batch_size)]
        self.train(was_training)
        return {h: torch.cat([c[h] for c in chunks]).softmax(-1) for h in HEADS}

    @torch.no_grad()
    def clip_like(self, images: torch.Tensor, candidates: list[WorldObject], azimuth_deg=None) -> torch.Tensor:
        """[B, K] log-likelihood of each candidate object's attributes (module docstring), named
        as each image's camera names them when ``azimuth_deg`` [B] is given (view-relative "left
        of"; :meth:`WorldObject.seen_from`)."""
        if not candidates:
            raise InputError("clip_like needs at least one candidate object")
        if azimuth_deg is not None and np.asarray(azimuth_deg).size != images.shape[0]:
            raise InputError(f"{np.asarray(azimuth_deg).size} azimuths for {images.shape[0]} images")
        probs = self.classify(images)
        table = view_label_table(candidates, azimuth_deg)
        score = torch.zeros(images.shape[0], len(candidates))
        for h in PROMPT_HEADS:
            logp = probs[h].clamp_min(1e-8).log().cpu()
            score += logp.gather(1, table[h].expand(images.shape[0], -1))
        return score

    # --- weights -------------------------------------------------------------------------------

    def save_pretrained(self, directory) -> Path:
        cfg = asdict(self.cfg)
        cfg["channels"] = list(self.cfg.channels)
        heads = {k: list(v) for k, v in HEADS.items()}
        return save_module(directory, {"format": FORMAT, "config": cfg, "heads": heads}, self.state_dict(), indent=1)

    @classmethod
    def from_pretrained(cls, directory) -> TinyJudge:
        meta, state = load_module(
            directory, "tiny judge weights", "train them with `python -m anyto3d.zoo.train_encoders judge --data D --out O`"
        )
        where = f"{directory}/{CONFIG_NAME}"
        if meta.get("format") != FORMAT:
            raise InputError(f"{where} has format {meta.get('format')!r}, expected {FORMAT!r}")
        if meta.get("heads") != {k: list(v) for k, v in HEADS.items()}:
            raise InputError(f"{where} was trained with other classes than this world's")
        cfg = dict(meta["config"])
        cfg["channels"] = tuple(cfg["channels"])
        cfg.setdefault("blocks_per_stage", 1)  # weights saved before the field existed
        model = cls(JudgeConfig(**cfg))
        model.load_state_dict(state)
        model.eval().requires_grad_(False)
        return model


def accuracy(probs: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> dict[str, float]:
    """Top-1 accuracy per head over the views whose label applies (``IGNORE`` skipped); heads
    with no applicable view are left out."""
    out = {}
    for h, lab in labels.items():
        keep = lab != IGNORE
        if h in probs and bool(keep.any()):
            out[h] = float((probs[h][keep].argmax(-1) == lab[keep]).float().mean())
    return out


def judge_loss(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over heads of the mean cross-entropy over the views where the head applies."""
    total = logits["shape"].new_zeros(())
    for h, lab in labels.items():
        if bool((lab != IGNORE).any()):
            total = total + F.cross_entropy(logits[h], lab, ignore_index=IGNORE)
    return total


__all__ = [
    "HEADS",
    "IGNORE",
    "PROMPT_HEADS",
    "TEST_JUDGE",
    "JudgeConfig",
    "TinyJudge",
    "accuracy",
    "judge_loss",
    "look_alike",
    "object_for_caption",
    "object_labels",
    "view_label_table",
    "view_labels",
]
