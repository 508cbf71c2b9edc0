"""The tiny world's catalogue: objects with ground-truth meshes in one canonical pose.

Canonical pose (every object, DESIGN §6)
----------------------------------------
* **z is up**; the object's bounding box is centred at the origin and its farthest vertex is
  exactly :data:`RADIUS` (0.75) from the origin, so it fits the evaluation orbit's frame.
* **The front faces +x**: the camera at azimuth 0 (``orbit_cameras(azimuth_start_deg=0)``,
  camera on the +x axis looking toward −x) sees the object's front. A house's door, the
  side a chair is sat on from, a cube's marked face are on +x.
* **Left and right are the front camera's**: that camera's image-right is world +y, so
  "left" means smaller y and "right" larger y. "In front of" means larger x (closer to the
  front camera), "on" means higher z.

What exists
-----------
* 13 shape types (:data:`SHAPES`) × 8 colours (:data:`~anyto3d.zoo.shapes.COLORS`):
  symmetric primitives (cube, sphere, cone, cylinder, torus, capsule, pyramid) and
  **asymmetric objects with a front** (house with a door and two windows on the front and a
  chimney at the back right; mug with its handle on the right; arrow pointing right; L-block with its foot to
  the right; chair with its backrest at the back; a cube whose front face has a second colour).
* **Tilted** variants of torus, cylinder, cone and capsule: rotated 60° about the x (front)
  axis, so the axis's top end leans to the object's left (−y) (a tilted torus's ring then
  rises from the front camera's lower left to its upper right). A tilted object looks different from the
  front and the back (mirror images), as does every asymmetric one.
* **Two-colour** objects: house (roof), chair (seat), marked cube (front face) carry a second
  colour, :data:`SECONDARY` of the main colour (a fixed pairing, so one colour name still
  names the object; the caption says both).
* **Two-part compositions** ``A <relation> B`` of plain cubes, spheres, cones and cylinders in
  two different colours: ``on`` (A rests on B's top, B a cube or cylinder), ``left_of``
  (A at smaller y, both on one ground plane) and ``in_front_of`` (A at larger x, at 70 % of
  B's size so that B shows over it from the front).

Symmetry and facing
-------------------
``symmetry`` is "rotational" (every azimuth looks the same), "fourfold" (cube, pyramid: every
90°) or "none" (the object has a front; ``has_front``). :func:`facing` names what a camera
sees from its azimuth relative to the front: |Δaz| ≤ 45° front, ≥ 135° back, else side
(DreamFusion's view-dependent prompt sectors). A Janus result shows its "front" from the back.

A camera behind "A left of B" sees B on its left: the same picture as "B left of A" from the
front half; a camera behind a marked cube sees a plain cube. :meth:`WorldObject.seen_from` names
each view that way (view-relative names), and the judge is trained and scored on those names.

Object ids are deterministic strings: ``cube-red``, ``torus-tilted-blue``,
``cone-red.on.cube-blue``, and ``house-blue+red`` for a two-colour object with a second colour
other than its fixed pairing (the judge's extra training views only);
:meth:`WorldObject.from_id` inverts :attr:`WorldObject.id`.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, replace

import numpy as np
import torch
import trimesh

from anyto3d.errors import InputError
from anyto3d.mesh import Mesh
from anyto3d.zoo import shapes as S
from anyto3d.zoo.shapes import ACCENT, COLORS, ColoredPart

RADIUS = 0.75  # farthest vertex from the origin after normalisation
TILT_DEG = 60.0  # tilted variants: rotation about +x (the axis's top leans to −y, the object's left)

COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
SYMMETRIC_SHAPES = ("cube", "sphere", "cone", "cylinder", "torus", "capsule", "pyramid")
ASYMMETRIC_SHAPES = ("house", "mug", "arrow", "lblock", "chair", "marked_cube")
SHAPES: tuple[str, ...] = SYMMETRIC_SHAPES + ASYMMETRIC_SHAPES
TILTABLE = ("torus", "cylinder", "cone", "capsule")
ORIENTATIONS = ("upright", "tilted")
TWO_COLOR_SHAPES = ("house", "chair", "marked_cube")
COMPOSITION_PARTS = ("cube", "sphere", "cone", "cylinder")
RELATIONS = ("on", "left_of", "in_front_of")
ON_BASES = ("cube", "cylinder")  # "on" needs a flat top to rest on

# Second colour of two-colour objects: a fixed permutation with strong contrast.
SECONDARY: dict[str, str] = {
    "red": "blue",
    "green": "pink",
    "blue": "orange",
    "yellow": "purple",
    "orange": "green",
    "cyan": "red",
    "purple": "yellow",
    "pink": "cyan",
}

_ROTATIONAL = ("sphere", "cone", "cylinder", "torus", "capsule")  # upright; cube and pyramid: fourfold

FACINGS = ("front", "side", "back")
FRONT_AZIMUTH_DEG = 0.0  # every object's front faces the camera at azimuth 0 (+x)


# ---------------------------------------------------------------------------------------------
# Facing
# ---------------------------------------------------------------------------------------------


def relative_azimuth_deg(azimuth_deg, front_azimuth_deg: float = 0.0):
    """Camera azimuth relative to the object's front, wrapped to [-180, 180). Arrays work too."""
    return np.mod(np.asarray(azimuth_deg, dtype=float) - front_azimuth_deg + 180.0, 360.0) - 180.0


def facing_index(relative_deg, front_half_width: float = 45.0, back_half_width: float = 45.0):
    """0 front (|Δaz| ≤ 45°), 1 side, 2 back (|Δaz| ≥ 135°); scalar or array."""
    a = np.abs(relative_azimuth_deg(relative_deg))
    out = np.where(a <= front_half_width, 0, np.where(a >= 180.0 - back_half_width, 2, 1))
    return int(out) if out.ndim == 0 else out.astype(np.int64)


def behind(azimuth_deg):
    """Whether a camera at ``azimuth_deg`` is in the back half (|Δaz| > 90° from the front);
    scalar or array. Exactly side-on is the front half's, so each view has one name."""
    out = np.abs(relative_azimuth_deg(azimuth_deg)) > 90.0
    return bool(out) if out.ndim == 0 else out


def facing(relative_deg: float, front_half_width: float = 45.0, back_half_width: float = 45.0) -> str:
    """"front", "side" or "back" for a camera at ``relative_deg`` from the object's front."""
    return FACINGS[facing_index(float(relative_deg), front_half_width, back_half_width)]


# ---------------------------------------------------------------------------------------------
# Objects
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One shape in one colour and orientation (a single object, or one part of a composition)."""

    shape: str
    color: str
    orientation: str = "upright"
    # A two-colour shape's second colour when it is not the world's fixed pairing (SECONDARY).
    # Only the judge's extra training views use it (splits.judge_objects): captions, priors and
    # suites keep one colour name per object.
    second: str | None = None

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise InputError(f"unknown shape {self.shape!r}; the world has {', '.join(SHAPES)}")
        if self.color not in COLORS:
            raise InputError(f"unknown colour {self.color!r}; the world has {', '.join(COLOR_NAMES)}")
        if self.orientation not in ORIENTATIONS:
            raise InputError(f"unknown orientation {self.orientation!r}; choose from {', '.join(ORIENTATIONS)}")
        if self.orientation == "tilted" and self.shape not in TILTABLE:
            raise InputError(f"{self.shape} has no tilted variant (only {', '.join(TILTABLE)})")
        if self.second is not None:
            if self.shape not in TWO_COLOR_SHAPES:
                raise InputError(f"{self.shape} has one colour; only {', '.join(TWO_COLOR_SHAPES)} have a second")
            if self.second not in COLORS or self.second == self.color:
                raise InputError(f"second colour {self.second!r} must be a world colour other than {self.color}")
            if self.second == SECONDARY[self.color]:
                object.__setattr__(self, "second", None)  # the default pairing has one name

    @property
    def id(self) -> str:
        middle = "-tilted" if self.orientation == "tilted" else ""
        second = f"+{self.second}" if self.second is not None else ""
        return f"{self.shape}{middle}-{self.color}{second}"

    @property
    def secondary(self) -> str | None:
        if self.shape not in TWO_COLOR_SHAPES:
            return None
        return self.second or SECONDARY[self.color]

    @property
    def symmetry(self) -> str:
        if self.orientation == "tilted" or self.shape in ASYMMETRIC_SHAPES:
            return "none"
        return "rotational" if self.shape in _ROTATIONAL else "fourfold"

    @classmethod
    def from_id(cls, text: str) -> "Item":
        text, _, second = text.partition("+")
        if second:
            return replace(cls.from_id(text), second=second)
        pieces = text.split("-")
        if len(pieces) == 3 and pieces[1] == "tilted":
            return cls(pieces[0], pieces[2], "tilted")
        if len(pieces) == 2:
            return cls(pieces[0], pieces[1])
        raise InputError(f"not a world item id: {text!r} (expected e.g. 'cube-red' or 'torus-tilted-blue')")


@dataclass(frozen=True)
class WorldObject:
    """A single item, or a composition ``items[0] <relation> items[1]``.

    For a single object ``shape``/``color``/``orientation`` are its own; for a composition they
    are the subject's (``items[0]``) and ``kind == "composition"`` says so.
    """

    items: tuple[Item, ...]
    relation: str | None = None

    def __post_init__(self):
        if len(self.items) == 1 and self.relation is None:
            return
        if len(self.items) != 2 or self.relation not in RELATIONS:
            raise InputError(f"a composition needs two items and a relation in {RELATIONS}, got {self.relation!r}")
        a, b = self.items
        for it in self.items:
            if it.shape not in COMPOSITION_PARTS or it.orientation != "upright":
                raise InputError(f"composition parts are upright {', '.join(COMPOSITION_PARTS)}; got {it.id}")
        if a.color == b.color:
            raise InputError(f"the two parts of a composition need different colours, got {a.color} twice")
        if self.relation == "on" and b.shape not in ON_BASES:
            raise InputError(f"'on' needs a flat-topped base ({', '.join(ON_BASES)}), got {b.shape}")

    # --- constructors and names -------------------------------------------------------------

    @classmethod
    def single(cls, shape: str, color: str, orientation: str = "upright") -> "WorldObject":
        return cls((Item(shape, color, orientation),))

    @classmethod
    def composition(cls, subject: Item, relation: str, reference: Item) -> "WorldObject":
        return cls((subject, reference), relation)

    @classmethod
    def from_id(cls, text: str) -> "WorldObject":
        pieces = text.split(".")
        if len(pieces) == 1:
            return cls((Item.from_id(text),))
        if len(pieces) == 3:
            return cls((Item.from_id(pieces[0]), Item.from_id(pieces[2])), pieces[1])
        raise InputError(f"not a world object id: {text!r}")

    @property
    def id(self) -> str:
        if self.relation is None:
            return self.items[0].id
        return f"{self.items[0].id}.{self.relation}.{self.items[1].id}"

    @property
    def kind(self) -> str:
        return "single" if self.relation is None else "composition"

    @property
    def shape(self) -> str:
        return self.items[0].shape

    @property
    def color(self) -> str:
        return self.items[0].color

    @property
    def orientation(self) -> str:
        return self.items[0].orientation

    @property
    def secondary(self) -> str | None:
        return self.items[0].secondary if self.relation is None else self.items[1].color

    @property
    def symmetry(self) -> str:
        if self.relation is None:
            return self.items[0].symmetry
        if self.relation != "on":
            return "none"
        kinds = {it.symmetry for it in self.items}
        return "rotational" if kinds == {"rotational"} else "fourfold"

    @property
    def has_front(self) -> bool:
        return self.symmetry == "none"

    def facing(self, azimuth_deg: float) -> str:
        """What a camera at world azimuth ``azimuth_deg`` sees (the front is at azimuth 0)."""
        return facing(relative_azimuth_deg(azimuth_deg))

    @property
    def mirrored(self) -> WorldObject:
        """The object a half turn about z makes of this one, named in this world's terms:
        "B left of A" for "A left of B" (its parts are symmetric under a half turn), itself
        for every other object (they either look the same or have no name for the result)."""
        if self.relation != "left_of":
            return self
        return WorldObject((self.items[1], self.items[0]), self.relation)

    @property
    def seen_from_behind(self) -> WorldObject:
        """The object every camera in the back half (:func:`behind`) sees, in this world's names:
        :attr:`mirrored` for "A left of B"; a plain cube of the main colour for a marked cube,
        whose mark is its front face and is hidden from every camera behind that face's plane
        (pixel for pixel a plain cube, tested); itself for every other object."""
        if self.relation is None and self.shape == "marked_cube":
            return WorldObject.single("cube", self.color)
        return self.mirrored

    def seen_from(self, azimuth_deg: float) -> tuple[WorldObject, float]:
        """(the object as a camera at world azimuth ``azimuth_deg`` names it, that camera's
        azimuth relative to the named object's front).

        Names are view-relative where the picture from behind (:func:`behind`) is another
        object's (:attr:`seen_from_behind`). "A left of B" from behind is the same picture as
        "B left of A" from the front half, so the name returned is the one whose subject is on
        the image's left (azimuth turned by 180°). A marked cube from behind is a plain cube, which
        has no front. "On" and "in front of" look different from behind (the front part is
        smaller), so they keep their names, as do the other single objects. A marked cube's mark
        also hides from a close camera just in front of side-on (|Δaz| ≳ 73° at distance 1.5);
        those views keep its name: the rule is by azimuth alone.
        """
        named = self.seen_from_behind
        if behind(azimuth_deg) and named != self:
            return named, float(azimuth_deg) + (180.0 if named == self.mirrored else 0.0)
        return self, float(azimuth_deg)

    # --- geometry -----------------------------------------------------------------------------

    def colored_parts(self) -> list[ColoredPart]:
        """The closed coloured parts in the canonical pose (copies; safe to modify)."""
        return [ColoredPart(p.mesh.copy(), p.color, p.face_colors) for p in _assembled(self)[0]]

    def solid_parts(self) -> list[trimesh.Trimesh]:
        """Each closed part (watertight) in the canonical pose, without colour."""
        return [p.mesh for p in self.colored_parts()]

    def mesh(self) -> Mesh:
        """The ground-truth mesh in the canonical pose, ready to render (flat faces split at
        creases, per-vertex colours constant per part/face)."""
        vertices, faces, colors = _mesh_arrays(self)
        return Mesh(torch.from_numpy(vertices.copy()), torch.from_numpy(faces.copy()), torch.from_numpy(colors.copy()))

    def item_meshes(self) -> list[Mesh]:
        """One mesh per item in its place in the canonical pose (a composition's two parts)."""
        parts, owner = _assembled(self)
        return [
            S.parts_to_mesh([p for p, o in zip(parts, owner) if o == k]) for k in range(len(self.items))
        ]


# ---------------------------------------------------------------------------------------------
# Shape builders (raw size ~1; normalised afterwards). Front = +x, right = +y, up = +z.
# ---------------------------------------------------------------------------------------------


def _rgb(name: str) -> tuple[float, float, float]:
    return COLORS[name]


def _build_item(item: Item) -> list[ColoredPart]:
    main = _rgb(item.color)
    second = _rgb(item.secondary) if item.secondary else None
    parts = _BUILDERS[item.shape](main, second)
    if item.orientation == "tilted":
        turn = S.rotation("x", TILT_DEG)
        for p in parts:
            p.mesh.apply_transform(turn)
    return parts


def _cube(main, _):
    return [ColoredPart(S.box((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5)), main)]


def _sphere(main, _):
    return [ColoredPart(S.sphere(0.5, subdivisions=2), main)]


def _cone(main, _):
    return [ColoredPart(S.cone(0.5, 1.0), main)]


def _cylinder(main, _):
    return [ColoredPart(S.cylinder(0.42, 1.0), main)]


def _torus(main, _):
    return [ColoredPart(S.torus(0.5, 0.2, major_sections=32, minor_sections=10), main)]


def _capsule(main, _):
    return [ColoredPart(S.capsule(0.3, 1.2), main)]


def _pyramid(main, _):
    base = [(x, y, -0.4) for x in (-0.5, 0.5) for y in (-0.5, 0.5)]
    return [ColoredPart(S.convex(base + [(0.0, 0.0, 0.5)]), main)]


def _house(main, second):
    walls = S.box((-0.45, -0.55, -0.5), (0.45, 0.55, 0.15))
    eaves = [(x, y, 0.15) for x in (-0.55, 0.55) for y in (-0.62, 0.62)]
    roof = S.convex(eaves + [(0.0, y, 0.62) for y in (-0.62, 0.62)])  # ridge along y
    # The front wall has a door and two windows (dark); the back wall is bare.
    door = S.box((0.45, -0.14, -0.5), (0.5, 0.14, 0.0))
    windows = [S.box((0.45, lo, -0.3), (0.49, hi, -0.06)) for lo, hi in ((-0.46, -0.26), (0.26, 0.46))]
    chimney = S.box((-0.32, 0.2, 0.2), (-0.12, 0.4, 0.66))  # back right
    details = [ColoredPart(m, ACCENT) for m in [door, *windows]]
    return [ColoredPart(walls, main), ColoredPart(roof, second), *details, ColoredPart(chimney, main)]


def _mug(main, _):
    body = S.cylinder(0.36, 0.8)
    handle = S.torus(0.21, 0.065, major_sections=24, minor_sections=8)
    handle.apply_transform(S.rotation("x", 90))  # ring in the yz-plane
    handle.apply_translation((0.0, 0.36, 0.0))  # on the right (+y)
    coffee = S.cylinder(0.3, 0.04, center=(0.0, 0.0, 0.4))
    return [ColoredPart(body, main), ColoredPart(handle, main), ColoredPart(coffee, ACCENT)]


def _arrow(main, _):
    shaft = S.box((-0.12, -0.65, -0.13), (0.12, 0.1, 0.13))
    head = S.convex([(x, 0.1, z) for x in (-0.12, 0.12) for z in (-0.4, 0.4)] + [(x, 0.7, 0.0) for x in (-0.12, 0.12)])
    return [ColoredPart(shaft, main), ColoredPart(head, main)]  # points right (+y) seen from the front


def _lblock(main, _):
    column = S.box((-0.2, -0.5, -0.5), (0.2, -0.1, 0.5))  # on the left
    foot = S.box((-0.2, -0.1, -0.5), (0.2, 0.5, -0.1))  # extends to the right
    return [ColoredPart(column, main), ColoredPart(foot, main)]


def _chair(main, second):
    corners = [(x, y) for x in (-0.32, 0.32) for y in (-0.32, 0.32)]
    legs = [S.box((x - 0.04, y - 0.04, -0.55), (x + 0.04, y + 0.04, -0.05)) for x, y in corners]
    seat = S.box((-0.38, -0.4, -0.05), (0.4, 0.4, 0.05))
    back = S.box((-0.46, -0.4, -0.05), (-0.38, 0.4, 0.62))  # behind the seat, covering its back edge
    return [ColoredPart(m, main) for m in legs] + [ColoredPart(seat, second), ColoredPart(back, main)]


def _marked_cube(main, second):
    cube = S.box((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5))
    front = cube.face_normals[:, 0] > 0.9
    colors = np.where(front[:, None], np.asarray(second), np.asarray(main))
    return [ColoredPart(cube, face_colors=colors)]


_BUILDERS = {
    "cube": _cube,
    "sphere": _sphere,
    "cone": _cone,
    "cylinder": _cylinder,
    "torus": _torus,
    "capsule": _capsule,
    "pyramid": _pyramid,
    "house": _house,
    "mug": _mug,
    "arrow": _arrow,
    "lblock": _lblock,
    "chair": _chair,
    "marked_cube": _marked_cube,
}


# ---------------------------------------------------------------------------------------------
# Assembly and normalisation
# ---------------------------------------------------------------------------------------------

_PART_SCALE = 0.5  # a composition's parts at half the size of a single object, before placing
_FRONT_PART_SCALE = 0.7  # "A in front of B": A at 70 % of B's size
_GAP = 0.08  # between side-by-side parts (before the final normalisation)


def _bounds(parts: list[ColoredPart]) -> np.ndarray:
    points = np.concatenate([p.mesh.vertices for p in parts])
    return np.stack([points.min(0), points.max(0)])


def _normalise(parts: list[ColoredPart], radius: float) -> None:
    """Centre the bounding box at the origin and scale the farthest vertex to ``radius``."""
    lo, hi = _bounds(parts)
    centre = (lo + hi) / 2
    for p in parts:
        p.mesh.apply_translation(-centre)
    far = max(np.linalg.norm(p.mesh.vertices, axis=1).max() for p in parts)
    for p in parts:
        p.mesh.apply_scale(radius / far)


def _translate(parts: list[ColoredPart], offset) -> None:
    for p in parts:
        p.mesh.apply_translation(offset)


def _place(relation: str, subject: list[ColoredPart], reference: list[ColoredPart]) -> None:
    """Move ``subject`` so that "subject <relation> reference" holds (reference stays put)."""
    (slo, shi), (rlo, rhi) = _bounds(subject), _bounds(reference)
    if relation == "on":
        _translate(subject, (0.0, 0.0, rhi[2] - slo[2]))
    elif relation == "left_of":  # smaller y, same ground
        _translate(subject, (0.0, rlo[1] - _GAP - shi[1], rlo[2] - slo[2]))
    elif relation == "in_front_of":  # larger x, same ground
        _translate(subject, (rhi[0] + _GAP - slo[0], 0.0, rlo[2] - slo[2]))
    else:  # guarded by WorldObject
        raise InputError(f"unknown relation {relation!r}")


@functools.lru_cache(maxsize=None)
def _assembled(obj: WorldObject) -> tuple[list[ColoredPart], list[int]]:
    """(parts, owner item index per part) in the canonical pose; cached, never mutated."""
    if obj.relation is None:
        parts = _build_item(obj.items[0])
        _normalise(parts, RADIUS)
        return parts, [0] * len(parts)
    groups = []
    for k, item in enumerate(obj.items):
        group = _build_item(item)
        # The part in front is smaller, so the one behind it still shows over it.
        shrink = _FRONT_PART_SCALE if obj.relation == "in_front_of" and k == 0 else 1.0
        _normalise(group, RADIUS * _PART_SCALE * shrink)
        groups.append(group)
    _place(obj.relation, groups[0], groups[1])
    parts = groups[0] + groups[1]
    _normalise(parts, RADIUS)
    return parts, [0] * len(groups[0]) + [1] * len(groups[1])


@functools.lru_cache(maxsize=None)
def _mesh_arrays(obj: WorldObject) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mesh = S.parts_to_mesh(_assembled(obj)[0])
    return mesh.vertices.numpy(), mesh.faces.numpy(), mesh.colors.numpy()


# ---------------------------------------------------------------------------------------------
# The catalogue
# ---------------------------------------------------------------------------------------------


def stable_rank(text: str, seed: int = 0) -> int:
    """A deterministic pseudo-random rank of a string (sha256; independent of Python's hash seed)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{text}".encode()).digest()[:8], "big")


def single_objects(colors: tuple[str, ...] = COLOR_NAMES) -> list[WorldObject]:
    """Every shape × orientation × colour, shape-major, in a fixed order."""
    out = []
    for shape in SHAPES:
        for orientation in ORIENTATIONS if shape in TILTABLE else ("upright",):
            out.extend(WorldObject.single(shape, c, orientation) for c in colors)
    return out


def all_compositions(relation: str) -> list[WorldObject]:
    """Every composition for one relation (parts in different colours), in a fixed order."""
    if relation not in RELATIONS:
        raise InputError(f"unknown relation {relation!r}; choose from {', '.join(RELATIONS)}")
    bases = ON_BASES if relation == "on" else COMPOSITION_PARTS
    out = []
    for sa in COMPOSITION_PARTS:
        for ca in COLOR_NAMES:
            for sb in bases:
                for cb in COLOR_NAMES:
                    if ca != cb:
                        out.append(WorldObject.composition(Item(sa, ca), relation, Item(sb, cb)))
    return out


def composition_objects(per_relation: int = 32, seed: int = 0) -> list[WorldObject]:
    """A deterministic subset: the ``per_relation`` compositions of each relation with the lowest
    :func:`stable_rank`, listed relation by relation in catalogue order."""
    out = []
    for relation in RELATIONS:
        pool = all_compositions(relation)
        chosen = set(sorted(range(len(pool)), key=lambda i: stable_rank(pool[i].id, seed))[:per_relation])
        out.extend(pool[i] for i in sorted(chosen))
    return out


def catalogue(compositions_per_relation: int = 32, seed: int = 0) -> list[WorldObject]:
    """The world: all 136 single objects, then ``3 × compositions_per_relation`` compositions."""
    return single_objects() + composition_objects(compositions_per_relation, seed)


def bounding_radius(mesh: Mesh) -> float:
    return float(mesh.vertices.norm(dim=-1).max())


__all__ = [
    "ASYMMETRIC_SHAPES",
    "COLOR_NAMES",
    "COMPOSITION_PARTS",
    "FACINGS",
    "Item",
    "ORIENTATIONS",
    "RADIUS",
    "RELATIONS",
    "SECONDARY",
    "SHAPES",
    "SYMMETRIC_SHAPES",
    "TILTABLE",
    "TILT_DEG",
    "TWO_COLOR_SHAPES",
    "WorldObject",
    "all_compositions",
    "behind",
    "bounding_radius",
    "catalogue",
    "composition_objects",
    "facing",
    "facing_index",
    "FRONT_AZIMUTH_DEG",
    "relative_azimuth_deg",
    "single_objects",
    "stable_rank",
]
