"""Train / held-out splits of the tiny world and the small evaluation suites (deterministic).

Held out — never in any training list:

* **Shape × colour combinations.** Each shape variant (shape and orientation, in the order of
  :func:`~anyto3d.zoo.world.single_objects`; the k-th of 17) loses one colour,
  ``COLOR_NAMES[(3k + 1) % 8]``, so every colour is held out for two or three variants and
  every variant keeps seven training colours: the held-out objects are new *combinations* of a
  known shape and a known colour (e.g. ``cube-green``, ``house-blue``, ``torus-tilted-purple``).
* **Compositions.** A composition is held out when one of its two parts is a held-out
  combination (so no held-out combination is ever seen as a part either), and otherwise when
  ``stable_rank(id, 1) % 10 == 0`` (about 1 in 10, by a sha256 rank, independent of Python's
  hash seed and of which catalogue it sits in).

Suites (lists of held-out objects for evaluation; the same objects serve the text, image and
audio prompt suites — the caption, a rendered reference view, a synthesised clip):

* ``asymmetric``: the 8 held-out objects with a front that the symmetrisation failure of a
  camera-unaware prior shows up on: house, mug, arrow, L-block, chair, marked cube, tilted
  torus, tilted cone.
* ``symmetric``: 4 held-out symmetric primitives (cube, sphere, pyramid, torus).
* ``compositions``: 4 held-out compositions from a catalogue, one per relation first, new
  pairings of training parts preferred.
* ``eval`` (alias ``text``, ``image``, ``audio``): the 16 above together.

The judge's extra training objects (:func:`judge_objects`) — the instrument only, never a
prior or the binder: every composition that is not held out (not just the catalogue's 32 per
relation) and the two-colour shapes with every second colour. With the catalogue's 69 training
compositions and fixed colour pairings, the judge memorised which part names an object: 0.97
colour on training compositions against 0.25–0.46 on held-out ones, and 0.43 on held-out
two-colour objects, mostly reading the other part's colour (measured, session 5).
"""

from __future__ import annotations

from anyto3d.errors import InputError
from anyto3d.zoo.world import (
    COLOR_NAMES,
    SECONDARY,
    TWO_COLOR_SHAPES,
    ORIENTATIONS,
    RELATIONS,
    SHAPES,
    TILTABLE,
    Item,
    WorldObject,
    all_compositions,
    catalogue,
    stable_rank,
)

COMPOSITION_HOLDOUT_EVERY = 10
COMPOSITION_HOLDOUT_SEED = 1


def shape_variants() -> list[tuple[str, str]]:
    """(shape, orientation) in catalogue order: 13 shapes + 4 tilted variants = 17."""
    return [(s, o) for s in SHAPES for o in ORIENTATIONS if o == "upright" or s in TILTABLE]


HELDOUT_COLOR: dict[tuple[str, str], str] = {
    variant: COLOR_NAMES[(3 * k + 1) % len(COLOR_NAMES)] for k, variant in enumerate(shape_variants())
}


def is_heldout_item(item: Item) -> bool:
    """Whether this shape × colour (× orientation) combination is held out."""
    return HELDOUT_COLOR[(item.shape, item.orientation)] == item.color


def is_heldout(obj: WorldObject) -> bool:
    if obj.relation is None:
        return is_heldout_item(obj.items[0])
    if any(is_heldout_item(it) for it in obj.items):
        return True
    return stable_rank(obj.id, COMPOSITION_HOLDOUT_SEED) % COMPOSITION_HOLDOUT_EVERY == 0


def split_of(obj: WorldObject) -> str:
    return "heldout" if is_heldout(obj) else "train"


def train_objects(objects: list[WorldObject] | None = None) -> list[WorldObject]:
    return [o for o in (catalogue() if objects is None else objects) if not is_heldout(o)]


def heldout_objects(objects: list[WorldObject] | None = None) -> list[WorldObject]:
    return [o for o in (catalogue() if objects is None else objects) if is_heldout(o)]


def judge_objects() -> list[WorldObject]:
    """Training objects for the judge beyond the catalogue (module docstring): the compositions
    of every relation and the two-colour objects with a non-default second colour, none of them
    held out (:func:`is_heldout`) nor already in the catalogue."""
    known = {o.id for o in catalogue()}
    compositions = [o for r in RELATIONS for o in all_compositions(r) if o.id not in known and not is_heldout(o)]
    two_colour = [
        WorldObject((Item(shape, color, second=second),))
        for shape in TWO_COLOR_SHAPES
        for color in COLOR_NAMES
        for second in COLOR_NAMES
        if second not in (color, SECONDARY[color]) and not is_heldout_item(Item(shape, color))
    ]
    return compositions + two_colour


def _heldout_single(shape: str, orientation: str = "upright") -> WorldObject:
    return WorldObject.single(shape, HELDOUT_COLOR[(shape, orientation)], orientation)


ASYMMETRIC_SUITE = (
    ("house", "upright"),
    ("mug", "upright"),
    ("arrow", "upright"),
    ("lblock", "upright"),
    ("chair", "upright"),
    ("marked_cube", "upright"),
    ("torus", "tilted"),
    ("cone", "tilted"),
)
SYMMETRIC_SUITE = (("cube", "upright"), ("sphere", "upright"), ("pyramid", "upright"), ("torus", "upright"))
SUITE_NAMES = ("asymmetric", "symmetric", "compositions", "eval", "text", "image", "audio")


def _composition_suite(objects: list[WorldObject] | None, n: int = 4) -> list[WorldObject]:
    # New pairings of parts seen in training first (the compositional test), then the rest;
    # within each group in stable-rank order, so the picks are spread over shapes and colours.
    pool = [o for o in heldout_objects(objects) if o.relation is not None]
    pool.sort(key=lambda o: (any(is_heldout_item(it) for it in o.items), stable_rank(o.id, COMPOSITION_HOLDOUT_SEED)))
    picked: list[WorldObject] = []
    for relation in RELATIONS:  # one per relation, then fill in order
        first = next((o for o in pool if o.relation == relation), None)
        if first is not None:
            picked.append(first)
    picked += [o for o in pool if o not in picked]
    return picked[:n]


def suite(name: str, objects: list[WorldObject] | None = None) -> list[WorldObject]:
    """A named evaluation suite of held-out objects (module docstring). ``objects`` is the
    catalogue compositions are drawn from (default :func:`~anyto3d.zoo.world.catalogue`)."""
    if name not in SUITE_NAMES:
        raise InputError(f"unknown suite {name!r}; choose from {', '.join(SUITE_NAMES)}")
    if name == "asymmetric":
        return [_heldout_single(s, o) for s, o in ASYMMETRIC_SUITE]
    if name == "symmetric":
        return [_heldout_single(s, o) for s, o in SYMMETRIC_SUITE]
    if name == "compositions":
        return _composition_suite(objects)
    return suite("asymmetric") + suite("symmetric") + suite("compositions", objects)


__all__ = [
    "ASYMMETRIC_SUITE",
    "COMPOSITION_HOLDOUT_EVERY",
    "HELDOUT_COLOR",
    "SUITE_NAMES",
    "SYMMETRIC_SUITE",
    "heldout_objects",
    "is_heldout",
    "is_heldout_item",
    "judge_objects",
    "shape_variants",
    "split_of",
    "suite",
    "train_objects",
]
