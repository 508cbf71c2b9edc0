"""Mesh renderer: rasterise a :class:`Mesh` from a :class:`CameraBatch` into a :class:`RenderOutput`.

Used by the DMTet phases: Phase II renders normal maps (``shading="normal"``, then
``RenderOutput.normal_image()``), Phase III renders albedo or Lambertian RGB from a texture
field passed as ``color_fn``. Everything is differentiable: colours and normals w.r.t. the
vertices through the barycentrics, the silhouette (``opacity``) through :func:`antialias`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from anyto3d.cameras import CameraBatch, LightBatch, headlight
from anyto3d.errors import InputError
from anyto3d.mesh import Mesh
from anyto3d.render.output import RenderOutput
from anyto3d.render.rasterize import antialias, interpolate, rasterize
from anyto3d.render.shading import lambertian

SHADINGS = ("albedo", "lambertian", "normal")

ColorFn = Callable[[torch.Tensor], torch.Tensor]
Background = torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None


@dataclass
class MeshRendererConfig:
    """``shading``: "albedo" (colour as is), "lambertian" (diffuse, lit by ``lights`` or a
    headlight) or "normal" (world normals mapped to [0, 1]); ``antialias``: analytic
    antialiasing of rgb and opacity, which is what gives the silhouette its gradient (turn it
    off only for hard masks); ``near``/``far``: clipping planes; ``backend``: "auto", "torch"
    or "nvdiffrast"."""

    shading: str = "albedo"
    antialias: bool = True
    near: float = 0.1
    far: float = 100.0
    backend: str = "auto"


def sample_texture_bilinear(texture: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Differentiable bilinear lookup of ``texture`` [S_h, S_w, C] at ``uv`` [..., 2] -> [..., C].

    Same convention as the exporters (``anyto3d.export.mesh_export.sample_texture``): texel
    (row r, column c) is centred at u = (c + 0.5)/W, v = 1 − (r + 0.5)/H; borders clamp.
    """
    grid = torch.stack([uv[..., 0] * 2 - 1, 1 - uv[..., 1] * 2], dim=-1).reshape(1, -1, 1, 2)
    image = texture.permute(2, 0, 1).unsqueeze(0)
    out = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, :, 0].t().reshape(*uv.shape[:-1], texture.shape[-1])


class MeshRenderer:
    """Rasterises triangle meshes in the project's camera convention (``anyto3d/cameras.py``)."""

    def __init__(self, cfg: MeshRendererConfig | None = None):
        self.cfg = cfg if cfg is not None else MeshRendererConfig()
        if self.cfg.shading not in SHADINGS:
            raise InputError(f"unknown shading {self.cfg.shading!r}; choose from {', '.join(SHADINGS)}")
        if not 0 < self.cfg.near < self.cfg.far:
            raise InputError(f"need 0 < near < far, got near={self.cfg.near}, far={self.cfg.far}")

    def render(
        self,
        mesh: Mesh,
        cameras: CameraBatch,
        height: int,
        width: int,
        color_fn: ColorFn | None = None,
        background: Background = None,
        lights: LightBatch | None = None,
        texture: torch.Tensor | None = None,
    ) -> RenderOutput:
        """Render ``mesh`` from every camera of ``cameras`` at ``height`` x ``width``.

        * Albedo: ``color_fn(points [N, 3]) -> [N, 3]`` at the surface points of covered pixels
          only; else ``texture`` [S, S, 3] looked up bilinearly at the interpolated ``mesh.uv``
          (OBJ convention: v up, row 0 is v = 1; needs ``mesh.uv``); else the interpolated
          ``mesh.colors``; else white.
        * ``background``: a colour [3], a function of the unit view directions [B, H, W, 3]
          returning [B, H, W, 3], or ``None`` for white (as ``normal_image``'s default).
        * ``rgb`` is the shaded foreground composited over the background; ``opacity`` the
          (antialiased, differentiable) coverage; ``depth`` the distance from the camera centre
          to the surface point (0 where empty); ``normal`` the interpolated world-space vertex
          normals (unit, 0 where empty); ``mesh`` the mesh that was drawn.

        Degenerate (zero-area) faces are skipped (``Mesh.validate`` drops them); non-finite
        vertices raise :class:`NonFiniteError`, an empty mesh :class:`EmptyGeometryError`.
        """
        mesh = mesh.validate("mesh to render")
        vertices, faces = mesh.vertices, mesh.faces
        cameras = cameras.to(device=vertices.device, dtype=vertices.dtype)
        mvp = cameras.mvp(height, width, self.cfg.near, self.cfg.far)
        clip = torch.einsum("bij,vj->bvi", mvp, F.pad(vertices, (0, 1), value=1.0))
        rast = rasterize(clip, faces, (height, width), backend=self.cfg.backend)
        covered = rast.triangle_id >= 0  # [B, H, W]
        mask = covered.unsqueeze(-1).to(vertices.dtype)

        points = interpolate(vertices, rast, faces)  # world positions, [B, H, W, 3]
        normal = F.normalize(interpolate(mesh.vertex_normals(), rast, faces), dim=-1) * mask
        depth = (points - cameras.position.view(-1, 1, 1, 3)).norm(dim=-1, keepdim=True) * mask

        albedo = self._albedo(mesh, rast, faces, points, covered, color_fn, texture)
        if self.cfg.shading == "normal":
            shaded = (normal + 1) / 2
        elif self.cfg.shading == "lambertian":
            lights = lights if lights is not None else headlight(cameras)
            light_position = lights.position.to(vertices).view(-1, 1, 1, 3)
            ambient = lights.ambient.to(vertices).view(-1, 1, 1, 1)
            shaded = lambertian(albedo, normal, points, light_position, ambient)
        else:
            shaded = albedo

        bg = self._background(background, cameras, height, width, vertices)
        rgb = shaded * mask + bg * (1 - mask)
        opacity = mask
        if self.cfg.antialias:  # one pass for colour and coverage: the silhouette search is shared
            blended = antialias(torch.cat([rgb, mask], dim=-1), rast, clip, faces)
            rgb, opacity = blended[..., :3], blended[..., 3:]
        return RenderOutput(rgb=rgb, opacity=opacity, depth=depth, normal=normal, mesh=mesh)

    @staticmethod
    def _albedo(mesh, rast, faces, points, covered, color_fn, texture=None) -> torch.Tensor:
        if color_fn is not None:
            index = torch.nonzero(covered.reshape(-1)).squeeze(-1)
            colors = color_fn(points.reshape(-1, 3)[index])
            if colors.shape != (index.numel(), 3):
                raise InputError(f"color_fn must map [N, 3] points to [N, 3] colours, got {tuple(colors.shape)}")
            flat = colors.new_zeros(points.numel() // 3, 3).index_copy(0, index, colors)
            return flat.view_as(points)
        if texture is not None:
            if mesh.uv is None:
                raise InputError("a texture needs a mesh with UV coordinates (mesh.uv)")
            uv_faces = mesh.uv_faces if mesh.uv_faces is not None else faces
            uv = interpolate(mesh.uv.to(points), rast, uv_faces)
            return sample_texture_bilinear(texture.to(points), uv)
        if mesh.colors is not None:
            return interpolate(mesh.colors.to(points), rast, faces)
        return torch.ones_like(points)

    @staticmethod
    def _background(background: Background, cameras: CameraBatch, height: int, width: int, like: torch.Tensor):
        if background is None:
            return like.new_ones(3)
        if callable(background):
            _, dirs = cameras.rays(height, width)
            colors = background(dirs)
            if colors.shape != dirs.shape:
                raise InputError(f"background must map directions {tuple(dirs.shape)} to colours of the same shape")
            return colors.to(like)
        background = torch.as_tensor(background).to(like)
        if background.shape != (3,):
            raise InputError(f"background colour must have shape [3], got {tuple(background.shape)}")
        return background


__all__ = ["MeshRenderer", "MeshRendererConfig", "SHADINGS", "sample_texture_bilinear"]
