"""4D export: one mesh file per frame plus ``sequence.json`` saying which file shows which time.

``sequence.json``::

    {"format": "glb", "axes": "y-up (glTF)", "num_frames": 2,
     "frames": [{"index": 0, "time": 0.0, "file": "frame_0000.glb"}, ...]}

Every mesh is validated before anything is written, each frame file is written atomically, and
``sequence.json`` is written last (atomically too): a directory without it is an unfinished
export.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from anyto3d.errors import InputError
from anyto3d.export.mesh_export import EXPORTERS, write_atomic
from anyto3d.mesh import Mesh

SEQUENCE_FILE = "sequence.json"
_AXES = {"glb": "y-up (glTF; converted from the project's z-up)", "obj": "z-up (project)", "ply": "z-up (project)"}


def export_mesh_sequence(
    directory: str | os.PathLike,
    meshes: list[Mesh],
    times: list[float],
    fmt: str = "glb",
    textures: list | None = None,
) -> Path:
    """Write ``frame_{k:04d}.{fmt}`` for each mesh and ``sequence.json``; returns the json path.

    ``times`` are the scene times of the frames (4D-fy's t in [0, 1)), one per mesh, finite and
    non-decreasing. ``textures`` (optional) gives one texture (or ``None``) per frame.
    """
    fmt = fmt.lower()
    if fmt not in EXPORTERS:
        raise InputError(f"sequence format must be one of {', '.join(EXPORTERS)}, got {fmt!r}")
    if len(meshes) == 0:
        raise InputError("a mesh sequence needs at least one frame")
    if len(times) != len(meshes):
        raise InputError(f"got {len(meshes)} meshes but {len(times)} times")
    if textures is not None and len(textures) != len(meshes):
        raise InputError(f"got {len(meshes)} meshes but {len(textures)} textures")
    times = [float(t) for t in times]
    if not all(math.isfinite(t) for t in times):
        raise InputError("frame times must be finite")
    if any(b < a for a, b in zip(times, times[1:])):
        raise InputError("frame times must be non-decreasing")
    for k, mesh in enumerate(meshes):
        mesh.validate(f"frame {k} of the mesh sequence")  # fail before any file is written

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    frames = []
    for k, (mesh, t) in enumerate(zip(meshes, times)):
        name = f"frame_{k:04d}.{fmt}"
        texture = textures[k] if textures is not None else None
        EXPORTERS[fmt](directory / name, mesh, texture)
        frames.append({"index": k, "time": t, "file": name})
    manifest = {"format": fmt, "axes": _AXES[fmt], "num_frames": len(frames), "frames": frames}
    path = directory / SEQUENCE_FILE
    write_atomic({path: (json.dumps(manifest, indent=2) + "\n").encode()})
    return path


def load_sequence_index(directory: str | os.PathLike) -> dict:
    """Read ``sequence.json`` (raises :class:`InputError` if the export is missing or unfinished)."""
    path = Path(directory) / SEQUENCE_FILE
    if not path.is_file():
        raise InputError(f"{str(directory)!r} has no {SEQUENCE_FILE}: not a finished mesh-sequence export")
    return json.loads(path.read_text())


__all__ = ["SEQUENCE_FILE", "export_mesh_sequence", "load_sequence_index"]
