"""Write a :class:`~anyto3d.mesh.Mesh` as GLB, OBJ (+ MTL + PNG) or PLY, via trimesh.

Conventions
-----------
* **Axes.** The project's world is z-up (``anyto3d/cameras.py``); glTF is y-up. GLB export
  rotates by −90° about x: ``(x, y, z) -> (x, z, −y)`` (a proper rotation, so handedness and
  face winding are kept). OBJ and PLY have no axis convention of their own and stay in the
  project's z-up frame, so they match the renders and metrics bit for bit (most tools offer a
  "z-up" switch on import). :func:`zup_to_yup` / :func:`yup_to_zup` are the one conversion.
* **UVs.** ``Mesh.uv`` follows the OBJ/trimesh convention: u to the right, v up, ``(0, 0)`` the
  bottom-left corner of the texture image; image row 0 is the top (v = 1). trimesh flips v for
  glTF itself. The texture is ``[H, W, 3]`` float in [0, 1] (or uint8).
* **Seams.** GLB and trimesh's OBJ writer need one UV per vertex, so vertices are split where a
  position carries several UVs (``Mesh.uv_faces`` differs from ``Mesh.faces``); positions are
  unchanged, so merging duplicates by position restores the closed surface.
* **Safety.** The mesh is validated first (``Mesh.validate``: empty or non-finite → a clear
  :class:`~anyto3d.errors.InputError`; degenerate faces dropped) and every file is written to a
  temporary name in the same directory and renamed into place, so a failure never leaves an
  empty or half-written asset behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from anyto3d.errors import InputError, NonFiniteError
from anyto3d.mesh import Mesh

# glTF's PBR defaults are metallic = 1, which renders a diffuse asset dark and mirror-like.
_GLB_METALLIC = 0.0
_GLB_ROUGHNESS = 1.0


# ---------------------------------------------------------------------------------------------
# Axis conversion
# ---------------------------------------------------------------------------------------------


def zup_to_yup(points: np.ndarray) -> np.ndarray:
    """Project frame (z-up) -> glTF frame (y-up): (x, y, z) -> (x, z, −y)."""
    points = np.asarray(points)
    return np.stack([points[..., 0], points[..., 2], -points[..., 1]], axis=-1)


def yup_to_zup(points: np.ndarray) -> np.ndarray:
    """glTF frame (y-up) -> project frame (z-up): (x, y, z) -> (x, −z, y); inverse of :func:`zup_to_yup`."""
    points = np.asarray(points)
    return np.stack([points[..., 0], -points[..., 2], points[..., 1]], axis=-1)


# ---------------------------------------------------------------------------------------------
# Input checks and layout
# ---------------------------------------------------------------------------------------------


def texture_to_uint8(texture: torch.Tensor | np.ndarray) -> np.ndarray:
    """Check a texture [H, W, 3] (float in [0, 1] or uint8) and return it as uint8 [H, W, 3]."""
    t = texture.detach().cpu().numpy() if isinstance(texture, torch.Tensor) else np.asarray(texture)
    if t.ndim != 3 or t.shape[-1] not in (3, 4) or t.shape[0] == 0 or t.shape[1] == 0:
        raise InputError(f"a texture must be [H, W, 3], got shape {t.shape}")
    t = t[..., :3]
    if t.dtype == np.uint8:
        return np.ascontiguousarray(t)
    if not np.issubdtype(t.dtype, np.floating):
        raise InputError(f"a texture must be float in [0, 1] or uint8, got {t.dtype}")
    if not np.isfinite(t).all():
        raise NonFiniteError("the texture has non-finite values (NaN or Inf)")
    return (np.clip(t, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _checked(mesh: Mesh, texture) -> Mesh:
    mesh = mesh.detach().to(device="cpu").validate("the mesh to export")
    if texture is not None:
        if mesh.uv is None:
            raise InputError("a texture was given but the mesh has no UVs (bake it with anyto3d.export.texture_bake)")
        if not torch.isfinite(mesh.uv).all():
            raise NonFiniteError("the mesh has non-finite UV coordinates (NaN or Inf)")
    if mesh.uv is not None:
        uv_faces = mesh.uv_faces if mesh.uv_faces is not None else mesh.faces
        if uv_faces.shape != mesh.faces.shape:
            raise InputError(f"uv_faces {tuple(uv_faces.shape)} must match faces {tuple(mesh.faces.shape)}")
        if int(uv_faces.max()) >= mesh.uv.shape[0] or int(uv_faces.min()) < 0:
            raise InputError(f"uv_faces index outside the {mesh.uv.shape[0]} UV coordinates")
    return mesh


def split_uv_seams(mesh: Mesh) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One UV per vertex: (positions [V', 3], faces [F, 3], uv [V', 2], source vertex [V']).

    A vertex is duplicated once per distinct UV it is used with; ``source`` maps each output
    vertex back to ``mesh.vertices``. Faces keep their order and winding.
    """
    uv_faces = mesh.uv_faces if mesh.uv_faces is not None else mesh.faces
    pair = mesh.faces.reshape(-1) * mesh.uv.shape[0] + uv_faces.reshape(-1)
    unique, inverse = torch.unique(pair, return_inverse=True)
    source = unique // mesh.uv.shape[0]
    uv_index = unique % mesh.uv.shape[0]
    positions = mesh.vertices[source].numpy()
    return positions, inverse.reshape(-1, 3).numpy(), mesh.uv[uv_index].numpy(), source.numpy()


def sample_texture(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup of a texture [H, W, C] at UVs [N, 2] (convention above); float [N, C].

    Texel (row r, column c) has its centre at u = (c + 0.5) / W, v = 1 − (r + 0.5) / H; lookups
    clamp to the border texels.
    """
    tex = np.asarray(texture, dtype=np.float64)
    height, width = tex.shape[:2]
    x = np.clip(np.asarray(uv[:, 0]) * width - 0.5, 0, width - 1)
    y = np.clip((1.0 - np.asarray(uv[:, 1])) * height - 0.5, 0, height - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = tex[y0, x0] * (1 - fx) + tex[y0, x1] * fx
    bottom = tex[y1, x0] * (1 - fx) + tex[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


# ---------------------------------------------------------------------------------------------
# Atomic writing
# ---------------------------------------------------------------------------------------------


def _temp_path(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def write_atomic(files: dict[Path, bytes]) -> None:
    """Write every (path, bytes) to a temporary sibling, then rename all into place.

    Nothing appears under a final name until every payload is fully on disk; the renames are
    done in the given order (put the file that points at the others last).
    """
    temps: dict[Path, Path] = {}
    try:
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = _temp_path(path)
            temps[path] = tmp
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        for path, tmp in temps.items():
            os.replace(tmp, path)
    finally:
        for tmp in temps.values():
            if tmp.exists():
                tmp.unlink()


# ---------------------------------------------------------------------------------------------
# Trimesh construction
# ---------------------------------------------------------------------------------------------


def _vertex_colors_uint8(colors: torch.Tensor) -> np.ndarray:
    return (colors.clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)


def _textured_trimesh(mesh: Mesh, material, yup: bool):
    import trimesh

    positions, faces, uv, _ = split_uv_seams(mesh)
    if yup:
        positions = zup_to_yup(positions)
    visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    return trimesh.Trimesh(vertices=positions, faces=faces, visual=visual, process=False)


def _plain_trimesh(mesh: Mesh, yup: bool):
    import trimesh

    positions = mesh.vertices.numpy()
    if yup:
        positions = zup_to_yup(positions)
    colors = _vertex_colors_uint8(mesh.colors) if mesh.colors is not None else None
    return trimesh.Trimesh(vertices=positions, faces=mesh.faces.numpy(), vertex_colors=colors, process=False)


def _image(texture: np.ndarray):
    from PIL import Image

    return Image.fromarray(texture, mode="RGB")


# ---------------------------------------------------------------------------------------------
# Public exporters
# ---------------------------------------------------------------------------------------------


def export_glb(path: str | os.PathLike, mesh: Mesh, texture: torch.Tensor | np.ndarray | None = None) -> Path:
    """Binary glTF, converted to glTF's y-up frame; PBR base-colour texture if ``texture`` is given,
    else vertex colours if the mesh has them (a texture takes precedence over vertex colours)."""
    import trimesh

    path = Path(path)
    mesh = _checked(mesh, texture)
    if texture is not None:
        image = texture_to_uint8(texture)
        material = trimesh.visual.material.PBRMaterial(
            name=path.stem,
            baseColorTexture=_image(image),
            metallicFactor=_GLB_METALLIC,
            roughnessFactor=_GLB_ROUGHNESS,
        )
        tm = _textured_trimesh(mesh, material, yup=True)
    else:
        tm = _plain_trimesh(mesh, yup=True)
    write_atomic({path: tm.export(file_type="glb")})
    return path


def export_obj(path: str | os.PathLike, mesh: Mesh, texture: torch.Tensor | np.ndarray | None = None) -> Path:
    """Wavefront OBJ in the project's z-up frame. With ``texture``: ``<stem>.mtl`` and
    ``<stem>.png`` beside it (``map_Kd``, Kd = 1 so viewers do not darken it); without, vertex
    colours (if any) as the common ``v x y z r g b`` extension."""
    import trimesh

    path = Path(path)
    mesh = _checked(mesh, texture)
    if texture is None:
        tm = _plain_trimesh(mesh, yup=False)
        text = trimesh.exchange.obj.export_obj(tm, include_texture=False, include_normals=False)
        write_atomic({path: text.encode()})
        return path

    image = texture_to_uint8(texture)
    material = trimesh.visual.material.SimpleMaterial(
        name=path.stem, image=_image(image), diffuse=[255, 255, 255, 255], specular=[0, 0, 0, 255]
    )
    tm = _textured_trimesh(mesh, material, yup=False)
    mtl_name = f"{path.stem}.mtl"
    text, extra = trimesh.exchange.obj.export_obj(
        tm, include_texture=True, return_texture=True, include_normals=False, mtl_name=mtl_name
    )
    # Texture and material first, the OBJ that refers to them last.
    files = {path.parent / name: data for name, data in extra.items()}
    files[path] = text.encode()
    write_atomic(files)
    return path


def export_ply(path: str | os.PathLike, mesh: Mesh, texture: torch.Tensor | np.ndarray | None = None) -> Path:
    """Binary PLY with vertex colours, in the project's z-up frame.

    PLY has no texture: with ``texture`` (and UVs), each vertex gets the bilinear texture colour
    at its UV (at its first UV where a seam gives it several); otherwise ``mesh.colors``.
    """
    path = Path(path)
    mesh = _checked(mesh, texture)
    if texture is not None:
        _, _, uv, source = split_uv_seams(mesh)
        colors = np.zeros((mesh.num_vertices, 3))
        used, first = np.unique(source, return_index=True)  # first split copy of each used vertex
        colors[used] = sample_texture(texture_to_uint8(texture), uv[first]) / 255.0
        mesh = Mesh(mesh.vertices, mesh.faces, colors=torch.as_tensor(colors, dtype=torch.float32))
    tm = _plain_trimesh(mesh, yup=False)
    write_atomic({path: tm.export(file_type="ply")})
    return path


EXPORTERS = {"glb": export_glb, "obj": export_obj, "ply": export_ply}


def load_mesh(path: str | os.PathLike) -> tuple[Mesh, torch.Tensor | None]:
    """Read a file written by the exporters back into the project's frame (z-up).

    Returns the mesh (with ``uv``/``uv_faces`` when textured, vertex colours otherwise) and the
    base-colour texture [H, W, 3] in [0, 1] or ``None``.
    """
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise InputError(f"no mesh file at {str(path)!r}")
    tm = trimesh.load(path, force="mesh", process=False)
    mesh = Mesh.from_trimesh(tm)
    if path.suffix.lower() == ".glb":
        mesh.vertices = torch.as_tensor(yup_to_zup(mesh.vertices.numpy()), dtype=torch.float32)
    texture = None
    material = getattr(tm.visual, "material", None) if getattr(tm.visual, "kind", None) == "texture" else None
    image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
    if image is not None:
        texture = torch.as_tensor(np.array(image.convert("RGB")), dtype=torch.float32) / 255.0
    return mesh, texture


def export_mesh(path: str | os.PathLike, mesh: Mesh, texture=None) -> Path:
    """Dispatch on the file extension (.glb, .obj, .ply)."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in EXPORTERS:
        raise InputError(f"cannot export {str(path)!r}: the extension must be one of {', '.join(EXPORTERS)}")
    return EXPORTERS[suffix](path, mesh, texture)


__all__ = [
    "EXPORTERS",
    "export_glb",
    "export_mesh",
    "export_obj",
    "export_ply",
    "load_mesh",
    "sample_texture",
    "split_uv_seams",
    "texture_to_uint8",
    "write_atomic",
    "yup_to_zup",
    "zup_to_yup",
]
