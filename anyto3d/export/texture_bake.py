"""Bake a colour field into a UV texture: xatlas atlas → UV-space rasterisation → seam padding.

1. **Atlas.** xatlas cuts the surface into charts and packs them into the unit square. It may
   split vertices along chart seams; its ``vmapping`` maps each UV vertex back to a mesh vertex.
   The baked mesh keeps the original (unsplit) vertices and faces and stores the atlas as
   ``Mesh.uv`` [V', 2] with ``Mesh.uv_faces`` [F, 3] (same face order), so the geometry stays
   closed; exporters split the seams only where a format needs one UV per vertex.
2. **Texel positions.** The UV triangles are rasterised with the project's rasteriser
   (:mod:`anyto3d.render.rasterize`) at clip position ``(2u − 1, 2v − 1, 0, 1)``: NDC y = +1 is
   image row 0, so row 0 is v = 1, the OBJ/trimesh convention (v up, origin bottom-left; see
   :mod:`anyto3d.export.mesh_export`). Interpolating 3D positions gives the surface point seen
   by each covered texel centre.
3. **Colours.** ``color_fn`` is queried at those points (in chunks, without autograd).
4. **Seam padding.** Every empty texel within ``padding`` texels (chessboard distance) of a
   covered one takes the colour of its nearest covered texel (``scipy.ndimage``), so bilinear
   lookups and mipmaps near chart borders read the chart's own colour, not the background.
   Texels farther from every chart stay at ``background``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from anyto3d.errors import EmptyGeometryError, InputError, NonFiniteError
from anyto3d.mesh import Mesh
from anyto3d.render.rasterize import interpolate, rasterize

ColorFn = Callable[[torch.Tensor], torch.Tensor]


def uv_atlas(mesh: Mesh, texture_size: int = 1024, padding: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """xatlas parametrisation: (uv [V', 2] in [0, 1], uv_faces [F, 3], vmapping [V'] → mesh vertex).

    xatlas packs for roughly ``texture_size`` texels and leaves ``padding`` texels (plus one for
    bilinear filtering) between charts; its atlas is then scaled into the unit square, so the
    gaps shrink by at most the ratio of its size to ``texture_size`` (typically 0.8–1).
    """
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(
        mesh.vertices.detach().cpu().numpy().astype(np.float32), mesh.faces.cpu().numpy().astype(np.uint32)
    )
    pack = xatlas.PackOptions()
    pack.resolution = int(texture_size)
    pack.padding = int(padding)
    pack.bilinear = True
    atlas.generate(xatlas.ChartOptions(), pack)
    if atlas.atlas_count != 1:
        raise InputError(f"xatlas produced {atlas.atlas_count} atlases; expected one (texture_size {texture_size})")
    vmapping, indices, uvs = atlas[0]
    return (
        torch.as_tensor(uvs.astype(np.float32)),
        torch.as_tensor(indices.astype(np.int64)),
        torch.as_tensor(vmapping.astype(np.int64)),
    )


def texel_surface_points(
    vertices: torch.Tensor, uv: torch.Tensor, uv_faces: torch.Tensor, vmapping: torch.Tensor, texture_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rasterise the UV layout: (3D point per texel [S, S, 3], covered mask [S, S] bool)."""
    clip = torch.cat([uv * 2.0 - 1.0, torch.zeros_like(uv[:, :1]), torch.ones_like(uv[:, :1])], dim=-1)
    rast = rasterize(clip.double(), uv_faces, (texture_size, texture_size), backend="torch")
    points = interpolate(vertices.detach().double()[vmapping], rast, uv_faces)[0]
    return points.to(vertices.dtype), rast.triangle_id[0] >= 0


def pad_seams(texture: torch.Tensor, covered: torch.Tensor, padding: int, background: float = 0.0) -> torch.Tensor:
    """Fill empty texels within ``padding`` texels of a covered one with the nearest covered colour.

    ``texture`` [S, S, C], ``covered`` [S, S] bool. "Within" is chessboard distance (diagonal
    neighbours count as 1); the colour is that of the Euclidean-nearest covered texel. Covered
    texels are unchanged; texels farther than ``padding`` from every covered one become
    ``background``.
    """
    from scipy import ndimage

    empty = ~covered.cpu().numpy()
    _, (rows, cols) = ndimage.distance_transform_edt(empty, return_indices=True)
    filled = texture[torch.as_tensor(rows), torch.as_tensor(cols)]
    # The reach is a square (chessboard distance), as ``padding`` 3x3 dilations would give, so
    # the diagonal texels a bilinear lookup at a chart corner reads are filled too.
    reach = ndimage.distance_transform_cdt(empty, metric="chessboard")
    keep = torch.as_tensor(reach <= padding)[..., None]
    return torch.where(keep, filled, torch.full_like(texture, background))


@torch.no_grad()
def bake_texture(
    mesh: Mesh,
    color_fn: ColorFn,
    texture_size: int = 1024,
    padding: int = 4,
    chunk_size: int = 65536,
    background: float = 0.0,
) -> tuple[Mesh, torch.Tensor]:
    """UV-unwrap ``mesh`` and bake ``color_fn`` (points [N, 3] → colours [N, 3] in [0, 1]) into a
    texture [S, S, 3] float in [0, 1] (row 0 = v = 1, the top).

    Returns the mesh with ``uv``/``uv_faces`` set (vertices and faces as validated, unsplit) and
    the texture, both on the mesh's device. Colours are clamped to [0, 1]; non-finite colours
    are an error. ``color_fn`` gets at most ``chunk_size`` points at a time.
    """
    if texture_size < 8:
        raise InputError(f"texture_size must be at least 8 texels, got {texture_size}")
    if padding < 0:
        raise InputError(f"padding must be >= 0, got {padding}")
    mesh = mesh.detach().validate("the mesh to bake")
    device = mesh.vertices.device  # color_fn is queried here; atlas and UV raster run on the CPU
    uv, uv_faces, vmapping = uv_atlas(mesh, texture_size, padding)
    points, covered = texel_surface_points(mesh.vertices.cpu(), uv, uv_faces, vmapping, texture_size)
    if not bool(covered.any()):
        raise EmptyGeometryError(f"no texel centre is covered by the UV atlas at texture_size {texture_size}")

    query = points[covered].to(device)
    colors = []
    for start in range(0, query.shape[0], chunk_size):
        out = color_fn(query[start : start + chunk_size])
        if out.shape != (min(chunk_size, query.shape[0] - start), 3):
            raise InputError(f"color_fn must map [N, 3] points to [N, 3] colours, got {tuple(out.shape)}")
        colors.append(out.detach().to(torch.float32))
    colors = torch.cat(colors)
    if not torch.isfinite(colors).all():
        raise NonFiniteError("color_fn returned non-finite colours (NaN or Inf)")

    texture = torch.full((texture_size, texture_size, 3), float(background))
    texture[covered] = colors.cpu().clamp(0.0, 1.0)
    texture = pad_seams(texture, covered, padding, background)
    baked = Mesh(
        mesh.vertices, mesh.faces, colors=mesh.colors, uv=uv.to(mesh.vertices), uv_faces=uv_faces.to(device)
    )
    return baked, texture.to(device)


__all__ = ["bake_texture", "pad_seams", "texel_surface_points", "uv_atlas"]
