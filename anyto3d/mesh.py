"""Triangle meshes as plain tensors, shared by DMTet, the rasteriser, regularisers and export."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from anyto3d.errors import EmptyGeometryError, NonFiniteError


@dataclass
class Mesh:
    """``vertices`` [V, 3] float, ``faces`` [F, 3] long (counter-clockwise seen from outside).

    Optional per-vertex ``colors`` [V, 3] in [0, 1]; optional ``uv`` [V', 2] with ``uv_faces``
    [F, 3] indexing it (an atlas may split vertices along seams).
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    colors: torch.Tensor | None = None
    uv: torch.Tensor | None = None
    uv_faces: torch.Tensor | None = None

    @property
    def num_vertices(self) -> int:
        return self.vertices.shape[0]

    @property
    def num_faces(self) -> int:
        return self.faces.shape[0]

    def to(self, device=None, dtype=None) -> "Mesh":
        def mv(t, float_=True):
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if float_ else None)

        return Mesh(mv(self.vertices), mv(self.faces, False), mv(self.colors), mv(self.uv), mv(self.uv_faces, False))

    def face_vertices(self) -> torch.Tensor:
        """[F, 3, 3] vertex positions of each face."""
        return self.vertices[self.faces]

    def face_normals(self, normalize: bool = True) -> torch.Tensor:
        v = self.face_vertices()
        n = torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1)
        return F.normalize(n, dim=-1) if normalize else n

    def face_areas(self) -> torch.Tensor:
        return 0.5 * self.face_normals(normalize=False).norm(dim=-1)

    def vertex_normals(self) -> torch.Tensor:
        """Area-weighted vertex normals [V, 3] (differentiable in the vertices)."""
        fn = self.face_normals(normalize=False)  # length = 2 * area: area weighting for free
        vn = torch.zeros_like(self.vertices)
        for k in range(3):
            vn = vn.index_add(0, self.faces[:, k], fn)
        return F.normalize(vn, dim=-1, eps=1e-12)

    def edges(self) -> torch.Tensor:
        """Unique undirected edges [E, 2] (sorted vertex pairs)."""
        e = torch.cat([self.faces[:, [0, 1]], self.faces[:, [1, 2]], self.faces[:, [2, 0]]], dim=0)
        return torch.unique(torch.sort(e, dim=1).values, dim=0)

    def bounding_box(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vertices.min(dim=0).values, self.vertices.max(dim=0).values

    def remove_degenerate_faces(self) -> "Mesh":
        """Drop faces that repeat a vertex index (documented handling, not an error).

        Zero-area faces with three distinct vertices are kept: marching tetrahedra makes them
        where the surface passes through a grid vertex, and dropping them would open holes in a
        closed surface. They cover no pixel, so renderers skip them anyway.
        """
        f = self.faces
        keep = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 2] != f[:, 0])
        if bool(keep.all()):
            return self
        uv_faces = self.uv_faces[keep] if self.uv_faces is not None else None
        return replace(self, faces=f[keep], uv_faces=uv_faces)

    def validate(self, what: str = "mesh") -> "Mesh":
        """Raise a clear error for an empty or non-finite mesh; drop degenerate faces."""
        if self.num_vertices == 0 or self.num_faces == 0:
            raise EmptyGeometryError(f"{what} is empty ({self.num_vertices} vertices, {self.num_faces} faces)")
        if not torch.isfinite(self.vertices).all():
            raise NonFiniteError(f"{what} has non-finite vertex positions (NaN or Inf)")
        if self.colors is not None and not torch.isfinite(self.colors).all():
            raise NonFiniteError(f"{what} has non-finite vertex colours (NaN or Inf)")
        mesh = self.remove_degenerate_faces()
        if mesh.num_faces == 0 or float(mesh.face_areas().detach().sum()) == 0.0:
            raise EmptyGeometryError(f"{what} has only degenerate (zero-area) faces")
        return mesh

    def detach(self) -> "Mesh":
        d = lambda t: None if t is None else t.detach()  # noqa: E731
        return Mesh(d(self.vertices), self.faces, d(self.colors), d(self.uv), self.uv_faces)

    def sample_surface(self, count: int, seed: int = 0) -> torch.Tensor:
        """Points [count, 3] uniformly on the surface (area-weighted), e.g. for Chamfer distances."""
        import trimesh

        points, _ = trimesh.sample.sample_surface(self.to_trimesh(), count, seed=seed)
        return torch.as_tensor(points, dtype=torch.float32)

    def to_trimesh(self):
        import trimesh

        colors = None
        if self.colors is not None:
            colors = (self.colors.detach().clamp(0, 1).cpu().numpy() * 255).round().astype("uint8")
        return trimesh.Trimesh(
            vertices=self.vertices.detach().cpu().numpy(),
            faces=self.faces.cpu().numpy(),
            vertex_colors=colors,
            process=False,
        )

    @classmethod
    def from_trimesh(cls, tm, dtype=torch.float32) -> "Mesh":
        colors = uv = uv_faces = None
        visual = getattr(tm, "visual", None)
        kind = getattr(visual, "kind", None)
        faces = torch.as_tensor(tm.faces, dtype=torch.long)
        vc = getattr(visual, "vertex_colors", None)
        if kind == "vertex" and vc is not None and len(vc) == len(tm.vertices):
            colors = torch.as_tensor(vc[:, :3] / 255.0, dtype=dtype)
        if kind == "texture" and getattr(visual, "uv", None) is not None and len(visual.uv) == len(tm.vertices):
            # trimesh keeps one UV per vertex (seams split), so the UV faces are the faces.
            uv, uv_faces = torch.as_tensor(visual.uv, dtype=dtype), faces
        return cls(torch.as_tensor(tm.vertices, dtype=dtype), faces, colors, uv, uv_faces)
