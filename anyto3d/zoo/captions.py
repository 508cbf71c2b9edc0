"""Captions for the tiny world: one canonical caption per object, and paraphrases around it.

A caption names the object's shape (with synonyms: cube/box/block, sphere/ball/orb, ...), its
colour (a few synonyms: purple/violet, cyan/turquoise, ...), its orientation when tilted, its
second colour for two-colour objects ("a red house with a blue roof"), and for a composition
the relation, in either order ("a red cone on a blue cube" = "a blue cube under a red cone";
"a green sphere left of a yellow cube" = "a yellow cube to the right of a green sphere").
Distractor wording wraps it: a prefix ("a photo of", "a 3D render of", ...) and a suffix
(", high quality", ", on a white background", ...), each absent 40 % of the time.

Sampling takes a ``numpy.random.Generator`` (or an int seed), so a seed fixes every caption.
"""

from __future__ import annotations

import numpy as np

from anyto3d.errors import InputError
from anyto3d.zoo.world import FACINGS, Item, WorldObject, stable_rank

SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "cube": ("cube", "box", "block"),
    "sphere": ("sphere", "ball", "orb"),
    "cone": ("cone", "cone shape"),
    "cylinder": ("cylinder", "column", "tube"),
    "torus": ("torus", "ring", "donut"),
    "capsule": ("capsule", "pill"),
    "pyramid": ("pyramid", "square pyramid"),
    "house": ("house", "hut", "cottage"),
    "mug": ("mug", "cup", "coffee mug"),
    "arrow": ("arrow", "arrow sign"),
    "lblock": ("L-shaped block", "L-block", "letter L"),
    "chair": ("chair", "small chair"),
    "marked_cube": ("cube", "box", "block"),
}

COLOR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "scarlet"),
    "green": ("green",),
    "blue": ("blue",),
    "yellow": ("yellow",),
    "orange": ("orange",),
    "cyan": ("cyan", "turquoise"),
    "purple": ("purple", "violet"),
    "pink": ("pink", "magenta"),
}

# Details of two-colour shapes; "{s}" is the second colour, "{a}" its article. The first is
# the canonical one.
DETAIL_PHRASES: dict[str, tuple[str, ...]] = {
    "house": ("with {a} {s} roof", "with {a} {s} rooftop"),
    "chair": ("with {a} {s} seat", "with {a} {s} cushion"),
    "marked_cube": ("with {a} {s} front face", "with one {s} face", "with {a} {s} face on the front"),
}

TILT_ADJECTIVES = ("tilted", "slanted", "leaning")
TILT_PHRASES = ("tilted to the left", "tilted sideways", "leaning to the left")

PREFIXES = ("a photo of ", "a 3D render of ", "a rendering of ", "an image of ", "a picture of ", "a 3D model of ")
SUFFIXES = (
    ", high quality",
    ", 3D render",
    ", on a white background",
    ", highly detailed",
    ", studio lighting",
    ", 4k",
)
WRAPPER_ABSENT = 0.4

# "{a}" / "{b}" are the subject and reference noun phrases with their articles.
RELATION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "on": (
        "{a} on {b}",
        "{a} on top of {b}",
        "{a} sitting on {b}",
        "{a} resting on top of {b}",
        "{b} under {a}",
        "{b} beneath {a}",
        "{b} with {a} on top",
    ),
    "left_of": (
        "{a} left of {b}",
        "{a} to the left of {b}",
        "{a} on the left of {b}",
        "{b} right of {a}",
        "{b} to the right of {a}",
        "{a} on the left and {b} on the right",
    ),
    "in_front_of": (
        "{a} in front of {b}",
        "{a} placed in front of {b}",
        "{b} behind {a}",
        "{b} standing behind {a}",
    ),
}


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _pick(options, rng: np.random.Generator | None):
    return options[0] if rng is None else options[int(rng.integers(len(options)))]


def with_article(phrase: str) -> str:
    """"a red cube", "an orange cube", "an L-shaped block" (by sound, for the world's words)."""
    first = phrase.split()[0]
    vowel_sound = first[0].lower() in "aeiou" or first.startswith("L")
    return f"{'an' if vowel_sound else 'a'} {phrase}"


def noun_phrase(item: Item, rng: np.random.Generator | None = None) -> str:
    """The item without an article: "red cube", "tilted blue torus", "red house with a blue roof".

    ``rng=None`` gives the canonical wording (first synonym of everything).
    """
    color = _pick(COLOR_WORDS[item.color], rng)
    noun = _pick(SHAPE_WORDS[item.shape], rng)
    phrase = f"{color} {noun}"
    if item.orientation == "tilted":
        if rng is None or rng.random() < 0.5:
            phrase = f"{_pick(TILT_ADJECTIVES, rng)} {phrase}"
        else:
            phrase = f"{phrase} {_pick(TILT_PHRASES, rng)}"
    if item.secondary is not None:
        second = _pick(COLOR_WORDS[item.secondary], rng)
        detail = _pick(DETAIL_PHRASES[item.shape], rng).format(s=second, a=with_article(second).split()[0])
        phrase = f"{phrase} {detail}"
    return phrase


def describe(obj: WorldObject, rng: np.random.Generator | None = None) -> str:
    """The object with its article and no distractor wording; ``rng=None``: canonical."""
    if obj.relation is None:
        return with_article(noun_phrase(obj.items[0], rng))
    a, b = (with_article(noun_phrase(it, rng)) for it in obj.items)
    return _pick(RELATION_TEMPLATES[obj.relation], rng).format(a=a, b=b)


def canonical_caption(obj: WorldObject) -> str:
    """"a red cube", "a tilted blue torus", "a red house with a blue roof",
    "a red cone on a blue cube", "a green sphere left of a yellow cube"."""
    return describe(obj, None)


def wrap(text: str, rng: np.random.Generator) -> str:
    """Add distractor wording: an optional prefix and an optional suffix."""
    if rng.random() >= WRAPPER_ABSENT:
        text = _pick(PREFIXES, rng) + text
    if rng.random() >= WRAPPER_ABSENT:
        text = text + _pick(SUFFIXES, rng)
    return text


def caption(obj: WorldObject, rng) -> str:
    """One random paraphrase of ``obj`` with distractor wording."""
    rng = _rng(rng)
    return wrap(describe(obj, rng), rng)


def captions(obj: WorldObject, n: int, rng) -> list[str]:
    """``n`` random captions of ``obj``, distinct while the paraphrase space allows (it is
    large for every object: ≥ 100 wordings)."""
    if n < 0:
        raise InputError(f"n must be >= 0, got {n}")
    rng = _rng(rng)
    out: list[str] = []
    seen: set[str] = set()
    for _ in range(20 * n):
        if len(out) == n:
            break
        text = caption(obj, rng)
        if text not in seen:
            seen.add(text)
            out.append(text)
    while len(out) < n:  # only if the space is exhausted
        out.append(caption(obj, rng))
    return out


def caption_bank(obj: WorldObject, k: int = 16, seed: int = 0) -> list[str]:
    """A fixed list of ``k`` captions per object: the canonical one first, then ``k - 1``
    paraphrases drawn with a seed derived from ``seed`` and the object id (order-free)."""
    rng = np.random.default_rng(stable_rank(obj.id, seed))
    first = canonical_caption(obj)
    rest = [c for c in captions(obj, k, rng) if c != first][: max(k - 1, 0)]
    return [first, *rest][:k]


def view_caption(text: str, facing: str) -> str:
    """DreamFusion's view-dependent prompt: "a red cube, front view"."""
    if facing not in FACINGS:
        raise InputError(f"facing must be one of {', '.join(FACINGS)}, got {facing!r}")
    return f"{text}, {facing} view"


def mentions(text: str, words: tuple[str, ...]) -> bool:
    """Whether ``text`` contains any of ``words`` (case-insensitive), e.g. a shape's synonyms."""
    low = text.lower()
    return any(w.lower() in low for w in words)


__all__ = [
    "COLOR_WORDS",
    "DETAIL_PHRASES",
    "PREFIXES",
    "RELATION_TEMPLATES",
    "SHAPE_WORDS",
    "SUFFIXES",
    "canonical_caption",
    "caption",
    "caption_bank",
    "captions",
    "describe",
    "mentions",
    "noun_phrase",
    "view_caption",
    "with_article",
    "wrap",
]
