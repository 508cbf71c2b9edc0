"""Render the tiny world into a compact dataset, and export its ground-truth meshes.

Images
------
Every view is rendered by the project's mesh rasteriser
(:class:`~anyto3d.render.mesh_renderer.MeshRenderer`) from the papers' training camera
distributions (:mod:`anyto3d.cameras`: XBind Phase I, XBind Phase II, 4D-fy), mixed by
``DatasetConfig.camera_mix``, on a **white background** with **Lambertian shading from a
sampled point light** (Magic3D-style: near the camera direction, perturbed; the diffuse/ambient
split drawn per view). The ambient ratio is drawn from U(0.4, 0.6) rather than the optimiser's
U(0.1, 0.3), so that a shadowed side keeps its colour (the world's colour names must stay
readable from every side); ``lighting="headlight"`` (deterministic) and ``"albedo"`` (unlit)
are the alternatives. Anti-aliasing is the renderer's analytic edge antialiasing
(``supersample=1``, the default: measured faster here than rendering 2× and averaging 2×2,
which ``supersample=2`` does and which also smooths colour edges inside the object).

Stored per view (``shard-#####.npz``, ``numpy.load`` them; ``index.json`` describes them):

* ``rgba`` uint8 [N, H, W, 4]: RGB composited over white; A = the renderer's coverage.
* ``elevation``, ``azimuth``, ``fovy`` float32 [N] in **radians**, ``distance`` float32 [N];
  ``c2w`` float32 [N, 4, 4] (OpenGL, z-up: ``anyto3d/cameras.py``).
* ``object_index`` int32 [N] into ``index.json["objects"]``; ``facing`` int8 [N]
  (0 front, 1 side, 2 back, from the azimuth: every object's front is at azimuth 0; meaningful
  where the object ``has_front``); ``preset`` int8 [N] into ``index.json["presets"]``;
  ``caption_id`` int32 [N] into ``index.json["captions"]`` (a random paraphrase of that object);
  ``light_position`` float32 [N, 3] and ``ambient`` float32 [N].

With ``views_per_group = 4`` consecutive views form MVDream-style groups (one elevation,
distance and fovy; azimuths 90° apart), for a multi-view prior. A seed and an object id fix
that object's views whatever else is rendered with it, and the files are byte-reproducible
(fixed zip timestamps; run timings go to ``timing.json``, not ``index.json``), so a DVC stage
that re-renders the same world gets the same digests.

Also here: :func:`render_clips` (motion clips for a text-to-video prior, one camera per clip)
and :func:`export_ground_truth` (each object's mesh + ``index.json``, for geometry metrics).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
import zipfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from anyto3d.cameras import (
    PRESETS,
    CameraBatch,
    LightBatch,
    LightSamplerConfig,
    headlight,
    sample_cameras,
    sample_lights,
    sample_multiview_cameras,
)
from anyto3d.errors import InputError
from anyto3d.export.mesh_export import export_mesh
from anyto3d.mesh import Mesh
from anyto3d.render.mesh_renderer import MeshRenderer, MeshRendererConfig
from anyto3d.zoo.captions import canonical_caption, caption_bank
from anyto3d.zoo.motion import MOTIONS, clip, motion_caption
from anyto3d.zoo.splits import split_of
from anyto3d.zoo.world import WorldObject, bounding_radius, facing_index, stable_rank

FORMAT = "anyto3d.zoo.dataset/1"
GT_FORMAT = "anyto3d.zoo.ground_truth/1"
LIGHTINGS = ("sampled", "headlight", "albedo")
DATASET_LIGHTS = LightSamplerConfig(distance_scale=(0.8, 1.5), perturb_std=0.5, ambient=(0.4, 0.6))


@dataclass(frozen=True)
class DatasetConfig:
    """How views are drawn and rendered (module docstring)."""

    resolution: int = 32
    camera_mix: tuple[tuple[str, float], ...] = (("xbind_phase_i", 0.4), ("xbind_phase_ii", 0.3), ("fourdfy", 0.3))
    lighting: str = "sampled"
    lights: LightSamplerConfig = DATASET_LIGHTS
    headlight_ambient: float = 0.5
    supersample: int = 1
    views_per_group: int = 1  # 4: MVDream-style groups of consecutive views
    captions_per_object: int = 16
    shard_size: int = 4096
    render_batch: int = 128  # views per renderer call (bounds memory)


# A small preset for tests and smoke runs.
TINY = DatasetConfig(resolution=32, captions_per_object=4, shard_size=256)


def _check(cfg: DatasetConfig) -> None:
    if cfg.resolution < 4:
        raise InputError(f"resolution must be >= 4, got {cfg.resolution}")
    if cfg.lighting not in LIGHTINGS:
        raise InputError(f"lighting must be one of {', '.join(LIGHTINGS)}, got {cfg.lighting!r}")
    if cfg.supersample < 1:
        raise InputError(f"supersample must be >= 1, got {cfg.supersample}")
    if not cfg.camera_mix:
        raise InputError("camera_mix is empty")
    for name, weight in cfg.camera_mix:
        if name not in PRESETS:
            raise InputError(f"unknown camera preset {name!r}; choose from {', '.join(PRESETS)}")
        if weight < 0:
            raise InputError(f"camera_mix weight of {name} must be >= 0, got {weight}")
    if sum(w for _, w in cfg.camera_mix) <= 0:
        raise InputError("camera_mix weights sum to zero")
    if cfg.views_per_group < 1 or cfg.shard_size < 1 or cfg.captions_per_object < 1 or cfg.render_batch < 1:
        raise InputError("views_per_group, shard_size, captions_per_object and render_batch must be >= 1")


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def object_generator(obj: WorldObject, seed: int) -> torch.Generator:
    """The generator for one object's views: a function of (seed, object id) only."""
    return torch.Generator().manual_seed(stable_rank(obj.id, seed) % (2**63 - 1))


def _cat_cameras(batches: list[CameraBatch]) -> CameraBatch:
    fields = ("c2w", "fovy", "elevation", "azimuth", "distance")
    return CameraBatch(*(torch.cat([getattr(b, f) for b in batches]) for f in fields))


def sample_view_cameras(
    cfg: DatasetConfig, n_views: int, generator: torch.Generator
) -> tuple[CameraBatch, torch.Tensor]:
    """``n_views`` cameras from the preset mix and the preset index of each view."""
    group = cfg.views_per_group
    if n_views % group:
        raise InputError(f"n_views ({n_views}) must be a multiple of views_per_group ({group})")
    names = [n for n, _ in cfg.camera_mix]
    weights = torch.tensor([w for _, w in cfg.camera_mix], dtype=torch.float64)
    choice = torch.multinomial(weights, n_views // group, replacement=True, generator=generator)
    if group == 1:  # one call per preset, then back into the drawn order
        batches = []
        for c, name in enumerate(names):
            count = int((choice == c).sum())
            if count:
                batches.append(sample_cameras(PRESETS[name], count, generator))
        order = torch.argsort(torch.argsort(choice, stable=True))
        merged = _cat_cameras(batches)
        return merged[order], choice
    batches = [sample_multiview_cameras(PRESETS[names[c]], group, generator) for c in choice.tolist()]
    return _cat_cameras(batches), choice.repeat_interleave(group)


def _lights(cfg: DatasetConfig, cameras: CameraBatch, generator: torch.Generator) -> LightBatch:
    if cfg.lighting == "sampled":
        return sample_lights(cameras, cfg.lights, generator)
    return headlight(cameras, cfg.headlight_ambient)


def render_views(
    mesh: Mesh | WorldObject,
    cameras: CameraBatch,
    resolution: int = 32,
    lighting: str = "headlight",
    lights: LightBatch | None = None,
    supersample: int = 1,
    ambient: float = 0.5,
) -> torch.Tensor:
    """RGBA float [B, H, W, 4] in [0, 1]: RGB over white, A the coverage.

    ``lighting``: "headlight" (a light at each camera, ``ambient`` ratio), "sampled" (``lights``
    given), or "albedo". ``supersample`` k renders k× larger without edge antialiasing and
    averages k×k blocks; 1 uses the renderer's analytic antialiasing.
    """
    if isinstance(mesh, WorldObject):
        mesh = mesh.mesh()
    if lighting not in LIGHTINGS:
        raise InputError(f"lighting must be one of {', '.join(LIGHTINGS)}, got {lighting!r}")
    shading = "albedo" if lighting == "albedo" else "lambertian"
    if lighting == "headlight":
        lights = headlight(cameras, ambient)
    elif lighting == "sampled" and lights is None:
        raise InputError("lighting='sampled' needs lights (anyto3d.cameras.sample_lights)")
    renderer = MeshRenderer(MeshRendererConfig(shading=shading, antialias=supersample == 1))
    size = resolution * supersample
    with torch.no_grad():
        out = renderer.render(mesh, cameras, size, size, lights=lights if shading == "lambertian" else None)
    rgba = torch.cat([out.rgb, out.opacity], dim=-1).clamp(0, 1)
    if supersample > 1:
        rgba = F.avg_pool2d(rgba.permute(0, 3, 1, 2), supersample).permute(0, 2, 3, 1)
    return rgba


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    return (images.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()


def render_object_views(obj: WorldObject, n_views: int, cfg: DatasetConfig, seed: int) -> dict[str, np.ndarray]:
    """All per-view arrays of one object (everything of the shard format but object_index and
    caption_id)."""
    gen = object_generator(obj, seed)
    cams, presets = sample_view_cameras(cfg, n_views, gen)
    lights = _lights(cfg, cams, gen)
    mesh = obj.mesh()
    chunks = []
    for start in range(0, n_views, cfg.render_batch):
        idx = slice(start, start + cfg.render_batch)
        sub = cams[idx]
        sub_lights = LightBatch(lights.position[idx], lights.ambient[idx])
        chunks.append(render_views(mesh, sub, cfg.resolution, cfg.lighting, sub_lights, cfg.supersample))
    rgba = torch.cat(chunks)
    az_deg = torch.rad2deg(cams.azimuth).numpy()
    return {
        "rgba": _to_uint8(rgba),
        "elevation": cams.elevation.numpy().astype(np.float32),
        "azimuth": cams.azimuth.numpy().astype(np.float32),
        "distance": cams.distance.numpy().astype(np.float32),
        "fovy": cams.fovy.numpy().astype(np.float32),
        "c2w": cams.c2w.numpy().astype(np.float32),
        "facing": facing_index(az_deg).astype(np.int8),
        "preset": presets.numpy().astype(np.int8),
        "light_position": lights.position.numpy().astype(np.float32),
        "ambient": lights.ambient.numpy().astype(np.float32),
    }


# ---------------------------------------------------------------------------------------------
# Writing and loading
# ---------------------------------------------------------------------------------------------

_KEYS = (
    "rgba", "elevation", "azimuth", "distance", "fovy", "c2w",
    "object_index", "facing", "preset", "caption_id", "light_position", "ambient",
)  # fmt: skip


def object_record(obj: WorldObject, index: int) -> dict:
    """What ``index.json`` says about one object (attributes, canonical caption, split)."""
    return {
        "index": index,
        "id": obj.id,
        "caption": canonical_caption(obj),
        "kind": obj.kind,
        "shape": obj.shape,
        "color": obj.color,
        "orientation": obj.orientation,
        "secondary": obj.secondary,
        "relation": obj.relation,
        "items": [it.id for it in obj.items],
        "symmetry": obj.symmetry,
        "has_front": obj.has_front,
        "split": split_of(obj),
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``numpy.savez_compressed`` with fixed zip timestamps, so equal arrays give equal bytes
    (and equal digests) on every run; written to a temporary name and renamed into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(value), allow_pickle=False)
    os.replace(tmp, path)


def _write_shard(out_dir: Path, number: int, arrays: dict[str, np.ndarray]) -> dict:
    name = f"shard-{number:05d}.npz"
    save_npz(out_dir / name, arrays)
    return {"file": name, "count": int(arrays["rgba"].shape[0]), "sha256": _sha256(out_dir / name)}


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def render_dataset(
    objects: list[WorldObject],
    n_views_per_object: int,
    out_dir: str | os.PathLike,
    resolution: int | None = None,
    camera_mix: dict[str, float] | tuple | None = None,
    seed: int = 0,
    cfg: DatasetConfig = DatasetConfig(),
    progress=None,
) -> dict:
    """Render ``n_views_per_object`` views of each object into ``out_dir`` (shards + index.json).

    ``resolution``/``camera_mix`` override ``cfg``. ``index.json`` is written last, so a
    directory without it is incomplete. Returns the index (with ``images_per_s``).
    ``progress(done_objects, total)`` is called after each object if given.
    """
    if resolution is not None:
        cfg = replace(cfg, resolution=resolution)
    if camera_mix is not None:
        mix = tuple(camera_mix.items()) if isinstance(camera_mix, dict) else tuple(tuple(m) for m in camera_mix)
        cfg = replace(cfg, camera_mix=mix)
    _check(cfg)
    if not objects:
        raise InputError("render_dataset needs at least one object")
    if n_views_per_object < 1:
        raise InputError(f"n_views_per_object must be >= 1, got {n_views_per_object}")
    ids = [o.id for o in objects]
    if len(set(ids)) != len(ids):
        raise InputError("render_dataset got the same object twice")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in [out / "index.json", out / "timing.json", *out.glob("shard-*.npz")]:
        stale.unlink(missing_ok=True)  # the directory is incomplete until index.json is back

    k = cfg.captions_per_object
    captions = [c for o in objects for c in caption_bank(o, k, seed)]
    shards, pending, number, total = [], {key: [] for key in _KEYS}, 0, 0
    started = time.perf_counter()
    for i, obj in enumerate(objects):
        views = render_object_views(obj, n_views_per_object, cfg, seed)
        pick = np.random.default_rng(stable_rank(obj.id, seed + 1)).integers(0, k, n_views_per_object)
        views["object_index"] = np.full(n_views_per_object, i, dtype=np.int32)
        views["caption_id"] = (i * k + pick).astype(np.int32)
        for key in _KEYS:
            pending[key].append(views[key])
        total += n_views_per_object
        while sum(len(a) for a in pending["rgba"]) >= cfg.shard_size:
            merged = {key: np.concatenate(v) for key, v in pending.items()}
            head = {key: v[: cfg.shard_size] for key, v in merged.items()}
            pending = {key: [v[cfg.shard_size :]] for key, v in merged.items()}
            shards.append(_write_shard(out, number, head))
            number += 1
        if progress is not None:
            progress(i + 1, len(objects))
    if sum(len(a) for a in pending["rgba"]):
        shards.append(_write_shard(out, number, {key: np.concatenate(v) for key, v in pending.items()}))
    elapsed = time.perf_counter() - started

    index = {
        "format": FORMAT,
        "config": _config_dict(cfg),
        "seed": seed,
        "n_images": total,
        "n_views_per_object": n_views_per_object,
        "resolution": cfg.resolution,
        "presets": [n for n, _ in cfg.camera_mix],
        "facings": ["front", "side", "back"],
        "objects": [object_record(o, i) for i, o in enumerate(objects)],
        "captions_per_object": k,
        "captions": captions,
        "shards": shards,
    }
    # Timings vary from run to run: kept out of index.json so equal data give an equal index.
    timing = {"elapsed_s": round(elapsed, 3), "images_per_s": round(total / max(elapsed, 1e-9), 2)}
    _write_json(out / "timing.json", timing)
    _write_json(out / "index.json", index)
    return {**index, **timing}


def _config_dict(cfg: DatasetConfig) -> dict:
    d = asdict(cfg)
    d["camera_mix"] = [list(m) for m in cfg.camera_mix]
    return d


def whole_in_frame(alpha: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """bool [N]: no border pixel of the alpha mattes ``alpha`` [N, H, W] (uint8 or [0, 1] float)
    is covered (alpha above ``threshold``), so the view shows the whole object.

    The papers' camera distributions zoom in by design (XBind's Phase II: distance 1.5–2.0,
    fovy 30–45°; 4D-fy's fovy down to 15°). In a third of the tiny world's held-out views the
    object crosses the frame; a close-up of a flat red wall names no shape, so the judge's and
    the priors' figures are also reported on the views this keeps (session 8)."""
    a = np.asarray(alpha)
    level = threshold * 255.0 if a.dtype == np.uint8 else threshold
    border = np.concatenate([a[:, 0, :], a[:, -1, :], a[:, :, 0], a[:, :, -1]], axis=1)
    return ~(border > level).any(axis=1)


@dataclass
class RenderedDataset:
    """A loaded dataset: the per-view arrays (module docstring) concatenated over shards."""

    rgba: np.ndarray
    arrays: dict[str, np.ndarray]
    objects: list[WorldObject]
    captions: list[str]
    index: dict = field(repr=False)

    def __len__(self) -> int:
        return int(self.rgba.shape[0])

    def __getattr__(self, name):
        arrays = self.__dict__.get("arrays", {})
        if name in arrays:
            return arrays[name]
        raise AttributeError(name)

    def images(self) -> torch.Tensor:
        """float RGBA [N, H, W, 4] in [0, 1]."""
        return torch.from_numpy(self.rgba).float() / 255.0

    @functools.cached_property
    def framed(self) -> np.ndarray:
        """bool [N]: the view shows the whole object (:func:`whole_in_frame`; computed once)."""
        return whole_in_frame(self.rgba[..., 3])

    def cameras(self) -> CameraBatch:
        a = self.arrays
        t = lambda k: torch.from_numpy(a[k])  # noqa: E731
        return CameraBatch(t("c2w"), t("fovy"), t("elevation"), t("azimuth"), t("distance"))

    def caption(self, i: int) -> str:
        return self.captions[int(self.arrays["caption_id"][i])]

    def object(self, i: int) -> WorldObject:
        return self.objects[int(self.arrays["object_index"][i])]


def load_dataset(out_dir: str | os.PathLike, verify: bool = False) -> RenderedDataset:
    """Read a directory written by :func:`render_dataset` (``verify``: check shard digests)."""
    out = Path(out_dir)
    path = out / "index.json"
    if not path.exists():
        raise InputError(f"{out} is not a complete zoo dataset (no index.json)")
    index = json.loads(path.read_text())
    if index.get("format") != FORMAT:
        raise InputError(f"{path} has format {index.get('format')!r}, expected {FORMAT!r}")
    parts: dict[str, list[np.ndarray]] = {key: [] for key in _KEYS}
    for shard in index["shards"]:
        file = out / shard["file"]
        if verify and _sha256(file) != shard["sha256"]:
            raise InputError(f"{file} does not match its digest in index.json")
        with np.load(file) as data:
            for key in _KEYS:
                parts[key].append(data[key])
    arrays = {key: np.concatenate(v) for key, v in parts.items()}
    rgba = arrays.pop("rgba")
    objects = [WorldObject.from_id(o["id"]) for o in index["objects"]]
    return RenderedDataset(rgba, arrays, objects, index["captions"], index)


# ---------------------------------------------------------------------------------------------
# Motion clips (for a text-to-video prior)
# ---------------------------------------------------------------------------------------------

CLIP_FORMAT = "anyto3d.zoo.clips/1"


def render_clip(
    obj: WorldObject,
    motion_name: str,
    camera: CameraBatch,
    n_frames: int = 16,
    resolution: int = 32,
    lighting: str = "headlight",
    lights: LightBatch | None = None,
) -> torch.Tensor:
    """RGBA float [n_frames, H, W, 4] of ``obj`` doing ``motion_name`` (:mod:`anyto3d.zoo.motion`),
    seen from one camera (4D-fy renders a clip from one camera) under one light."""
    if len(camera) != 1:
        raise InputError(f"a clip is rendered from one camera, got {len(camera)}")
    meshes = clip(obj, motion_name, n_frames)
    return torch.cat([render_views(mesh, camera, resolution, lighting, lights) for mesh in meshes])


def render_clips(
    objects: list[WorldObject],
    out_dir: str | os.PathLike,
    motions: tuple[str, ...] | None = None,
    clips_per_pair: int = 1,
    n_frames: int = 8,
    resolution: int = 32,
    preset: str = "fourdfy",
    lighting: str = "sampled",
    seed: int = 0,
) -> dict:
    """Render every (object, motion) pair ``clips_per_pair`` times into ``clips.npz`` (``rgba``
    uint8 [N, F, H, W, 4]; per clip ``object_index``, ``motion_index``, ``caption_id``, camera
    ``elevation``/``azimuth``/``distance``/``fovy`` (radians)/``c2w``) and ``index.json``
    (objects, motions, captions; written last). One camera per clip from ``preset``; frame
    times ``k / n_frames``; a clip's camera and light depend only on (seed, object, motion, k)."""
    motions = MOTIONS if motions is None else tuple(motions)
    if preset not in PRESETS:
        raise InputError(f"unknown camera preset {preset!r}; choose from {', '.join(PRESETS)}")
    if not objects or not motions or clips_per_pair < 1 or n_frames < 1:
        raise InputError("render_clips needs objects, motions, clips_per_pair >= 1 and n_frames >= 1")
    for name in motions:
        if name not in MOTIONS:
            raise InputError(f"unknown motion {name!r}; choose from {', '.join(MOTIONS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "index.json").unlink(missing_ok=True)
    keys = ("rgba", "object_index", "motion_index", "caption_id", "elevation", "azimuth", "distance", "fovy", "c2w")
    arrays: dict[str, list] = {k: [] for k in keys}
    captions: list[str] = []
    started = time.perf_counter()
    for i, obj in enumerate(objects):
        for m, name in enumerate(motions):
            for k in range(clips_per_pair):
                key = f"{obj.id}/{name}/{k}"
                gen = torch.Generator().manual_seed(stable_rank(key, seed) % (2**63 - 1))
                cam = sample_cameras(PRESETS[preset], 1, gen)
                lights = sample_lights(cam, DATASET_LIGHTS, gen) if lighting == "sampled" else None
                rgba = render_clip(obj, name, cam, n_frames, resolution, lighting, lights)
                captions.append(motion_caption(obj, name, np.random.default_rng(stable_rank(key, seed + 1))))
                for field_name, value in (
                    ("rgba", _to_uint8(rgba)),
                    ("object_index", i),
                    ("motion_index", m),
                    ("caption_id", len(captions) - 1),
                    ("elevation", float(cam.elevation[0])),
                    ("azimuth", float(cam.azimuth[0])),
                    ("distance", float(cam.distance[0])),
                    ("fovy", float(cam.fovy[0])),
                    ("c2w", cam.c2w[0].numpy()),
                ):
                    arrays[field_name].append(value)
    elapsed = time.perf_counter() - started
    dtypes = {"object_index": np.int32, "motion_index": np.int8, "caption_id": np.int32}
    packed = {k: np.asarray(np.stack(v) if k in ("rgba", "c2w") else v) for k, v in arrays.items()}
    for k in ("elevation", "azimuth", "distance", "fovy", "c2w"):
        packed[k] = packed[k].astype(np.float32)
    for k, dtype in dtypes.items():
        packed[k] = packed[k].astype(dtype)
    save_npz(out / "clips.npz", packed)
    index = {
        "format": CLIP_FORMAT,
        "seed": seed,
        "n_clips": len(captions),
        "n_frames": n_frames,
        "resolution": resolution,
        "preset": preset,
        "lighting": lighting,
        "motions": list(motions),
        "objects": [object_record(o, i) for i, o in enumerate(objects)],
        "captions": captions,
        "sha256": _sha256(out / "clips.npz"),
    }
    _write_json(out / "timing.json", {"elapsed_s": round(elapsed, 3)})
    _write_json(out / "index.json", index)
    return {**index, "elapsed_s": round(elapsed, 3)}


# ---------------------------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------------------------


def export_ground_truth(
    objects: list[WorldObject], out_dir: str | os.PathLike, formats: tuple[str, ...] = ("ply",)
) -> dict:
    """Write each object's ground-truth mesh (``<id>.ply`` in the project's z-up frame; ``.glb``
    too if asked, y-up as glTF wants) and ``index.json`` describing them.

    The meshes are the render meshes: vertices are split along creases and colour boundaries
    (merge by position to weld them); each part is closed. Evaluation reads them for
    silhouette IoU over an orbit and Chamfer distance after the best rotation about z.
    """
    for fmt in formats:
        if fmt not in ("ply", "glb", "obj"):
            raise InputError(f"ground-truth format must be ply, glb or obj, got {fmt!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for i, obj in enumerate(objects):
        mesh = obj.mesh()
        files = {fmt: export_mesh(out / f"{obj.id}.{fmt}", mesh).name for fmt in formats}
        lo, hi = mesh.bounding_box()
        record = object_record(obj, i)
        record.update(
            files=files,
            caption=canonical_caption(obj),
            radius=bounding_radius(mesh),
            bbox=[lo.tolist(), hi.tolist()],
            n_vertices=mesh.num_vertices,
            n_faces=mesh.num_faces,
            n_parts=len(obj.solid_parts()),
        )
        records.append(record)
    index = {"format": GT_FORMAT, "frame": "z-up, front +x, left -y (anyto3d/zoo/world.py)", "objects": records}
    _write_json(out / "index.json", index)
    return index


__all__ = [
    "CLIP_FORMAT",
    "DATASET_LIGHTS",
    "DatasetConfig",
    "FORMAT",
    "LIGHTINGS",
    "RenderedDataset",
    "TINY",
    "export_ground_truth",
    "load_dataset",
    "object_generator",
    "render_clip",
    "render_clips",
    "render_dataset",
    "render_object_views",
    "render_views",
    "sample_view_cameras",
    "save_npz",
    "whole_in_frame",
]
