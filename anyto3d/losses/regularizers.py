"""Geometry regularisers, each written once and shared by every method (DESIGN §2, §5).

threestudio writes these again inside each system (research/threestudio.md, "Regularizers");
here every method's config picks them by name and weight from this one module.

Volume-rendering terms take the per-sample tensors of :class:`anyto3d.render.output.RenderOutput`
(``weights`` [R, S], ``sample_normals`` [R, S, 3], ``ray_dirs`` [R, 3], ``opacity``,
``z_variance``); leading ray dimensions may be any shape ([B, H, W] as well as [R]). Mesh terms
take a :class:`anyto3d.mesh.Mesh` and use its ``face_normals`` and ``edges``.

Every function returns a scalar tensor that stays in the autograd graph, also when there is
nothing to penalise (then it is an exact zero that still depends on the input).
"""

from __future__ import annotations

import torch

from anyto3d.errors import InputError
from anyto3d.mesh import Mesh


def _zero_like_graph(t: torch.Tensor) -> torch.Tensor:
    """A scalar 0 that keeps ``t`` in the graph (so ``.backward()`` works with nothing to penalise)."""
    return t.sum() * 0.0


# ---------------------------------------------------------------------------------------------
# Volume-rendering regularisers (NeRF, Phase I / 4D-fy)
# ---------------------------------------------------------------------------------------------


def orientation_loss(
    weights: torch.Tensor, normals: torch.Tensor, ray_dirs: torch.Tensor, detach_weights: bool = True
) -> torch.Tensor:
    """DreamFusion's orientation regulariser R_orient = Σ_i sg(w_i) · max(0, n_i · d)².

    ``d`` is the unit ray direction from the camera *into* the scene, so a normal with
    n·d > 0 faces away from the camera: only those are penalised (DreamFusion §3.1; threestudio's
    ``loss_orient``). The weights are treated as constants (``detach_weights``, as DreamFusion's
    stop-gradient) so the term moves the normals, not the density that places them.

    Normalisation: the per-ray sums are averaged over the rays that hit something (Σ_i w_i > 0),
    as threestudio divides by the count of rays with non-zero opacity, so the value does not
    shrink when the object covers less of the image. Zero when no ray hits anything.

    Shapes: ``weights`` [..., S], ``normals`` [..., S, 3], ``ray_dirs`` [..., 3].
    """
    if normals.shape[:-1] != weights.shape or ray_dirs.shape[:-1] != weights.shape[:-1]:
        raise InputError(
            f"orientation_loss needs weights [..., S], normals [..., S, 3], ray_dirs [..., 3]; got "
            f"{tuple(weights.shape)}, {tuple(normals.shape)}, {tuple(ray_dirs.shape)}"
        )
    w = weights.detach() if detach_weights else weights
    facing_away = (normals * ray_dirs.unsqueeze(-2)).sum(-1).clamp_min(0.0)
    per_ray = (w * facing_away**2).sum(-1)
    hit = (weights.detach().sum(-1) > 0).sum()
    if hit == 0:
        return _zero_like_graph(per_ray)
    return per_ray.sum() / hit


def sparsity_loss(opacity: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """Opacity sparsity: mean over pixels of √(o² + eps²), a smoothed |o|.

    threestudio's ``loss_sparsity`` (weight 1 in its DreamFusion config; eps² = 0.01 there).
    It pushes accumulated opacity toward 0 so empty space stays empty; eps keeps the gradient
    finite at o = 0. With eps = 0 it is the plain L1 mean of the opacity.
    """
    return torch.sqrt(opacity**2 + eps**2).mean()


def opacity_entropy_loss(opacity: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Binary entropy of the opacity, −[o log o + (1 − o) log(1 − o)], averaged over pixels.

    threestudio's ``loss_opaque`` (binary cross-entropy of o with itself). Its minima are
    o ∈ {0, 1}, so it pushes each pixel to be either empty or opaque. ``o`` is clamped to
    [eps, 1 − eps] so the logarithms stay finite; the gradient is zero outside that range.
    """
    o = opacity.clamp(eps, 1.0 - eps)
    return -(o * torch.log(o) + (1.0 - o) * torch.log1p(-o)).mean()


def z_variance_loss(z_variance: torch.Tensor, opacity: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """HiFA's L_nz = E[δ σ_z²], δ = [Σ_i w_i > 0.5] (XBind Eq. 7; σ_z² from Eq. 6).

    ``z_variance`` is :attr:`RenderOutput.z_variance`, the weight-normalised variance of the
    sample distances along each ray (Eq. 6). The renderer already multiplies it by δ; δ is
    applied again here (it is idempotent) so an unmasked input is also handled correctly.

    The expectation is taken over the rays with δ = 1 (sum of δσ_z² divided by the number of
    such rays), as threestudio does, so the weight does not depend on how much of the image is
    background. Zero when no ray is opaque enough.
    """
    if z_variance.shape != opacity.shape:
        # Accept [..., 1] against [...] (and vice versa) from image-shaped outputs.
        if z_variance.numel() != opacity.numel():
            raise InputError(
                f"z_variance_loss needs matching shapes, got {tuple(z_variance.shape)} and {tuple(opacity.shape)}"
            )
        z_variance = z_variance.reshape(opacity.shape)
    delta = (opacity.detach() > threshold).to(z_variance.dtype)
    count = delta.sum()
    if count == 0:
        return _zero_like_graph(z_variance)
    return (delta * z_variance).sum() / count


def normal_smoothness_2d(normal_image: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """XBind's normal-vector regularisation L_nv (Phase I; the paper cites RealFusion [19]).

    Squared finite differences of the rendered normal map between horizontally and vertically
    adjacent pixels, averaged over the pairs counted:

        L_nv = Σ_pairs m_a m_b ‖n_a − n_b‖² / Σ_pairs m_a m_b.

    XBind gives no formula; RealFusion penalises the difference between the normal map and a
    stop-gradient blur of it. Both suppress high-frequency normal noise; the finite-difference
    form needs no kernel size and is exactly zero for a constant normal map.

    ``normal_image`` is [B, H, W, 3] (unit normals or their [0, 1] colour encoding; the value
    scales by 4 between the two). ``mask`` ([B, H, W] or [B, H, W, 1], binary or soft, e.g. the
    opacity) restricts the pairs to the object so the silhouette edge against the background is
    not penalised; its values are used as given (detach it to keep gradients off the mask).
    """
    if normal_image.dim() != 4 or normal_image.shape[-1] != 3:
        raise InputError(f"normal_smoothness_2d needs a [B, H, W, 3] normal image, got {tuple(normal_image.shape)}")
    if mask is None:
        mask = normal_image.new_ones(normal_image.shape[:-1])
    elif mask.dim() == 4:
        mask = mask[..., 0]
    if mask.shape != normal_image.shape[:-1]:
        raise InputError(f"mask {tuple(mask.shape)} does not match normal image {tuple(normal_image.shape[:-1])}")
    mask = mask.to(normal_image.dtype)

    dy = ((normal_image[:, 1:] - normal_image[:, :-1]) ** 2).sum(-1)
    dx = ((normal_image[:, :, 1:] - normal_image[:, :, :-1]) ** 2).sum(-1)
    my = mask[:, 1:] * mask[:, :-1]
    mx = mask[:, :, 1:] * mask[:, :, :-1]
    total = (dy * my).sum() + (dx * mx).sum()
    count = my.sum() + mx.sum()
    if count.detach() <= 0:
        return _zero_like_graph(normal_image)
    return total / count


# ---------------------------------------------------------------------------------------------
# Mesh regularisers (DMTet, Phase II)
# ---------------------------------------------------------------------------------------------


def _adjacent_face_pairs(faces: torch.Tensor) -> torch.Tensor:
    """[P, 2] indices of faces that share an edge.

    Each face contributes its three undirected edges; faces listing the same edge are paired
    consecutively (a manifold interior edge gives exactly one pair, a boundary edge none, a
    non-manifold edge with k faces gives k − 1 pairs along a chain).
    """
    n_faces = faces.shape[0]
    corner_edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], dim=0)
    _, edge_id = torch.unique(torch.sort(corner_edges, dim=1).values, dim=0, return_inverse=True)
    face_id = torch.arange(n_faces, device=faces.device).repeat(3)
    order = torch.argsort(edge_id, stable=True)
    edge_id, face_id = edge_id[order], face_id[order]
    same_edge = edge_id[1:] == edge_id[:-1]
    return torch.stack([face_id[:-1][same_edge], face_id[1:][same_edge]], dim=-1)


def mesh_normal_consistency(mesh: Mesh) -> torch.Tensor:
    """XBind's normal consistency loss L_nc (Phase II, following Consistent3D [11]).

    Mean over edges shared by two faces of 1 − cos θ, θ the angle between the two face normals
    (0 for a flat or smoothly tessellated surface, 2 for a fully folded-back pair). threestudio
    compares *vertex* normals across each edge instead; face normals measure the dihedral bend
    of the surface itself and need no vertex-normal averaging. Degenerate (zero-area) faces have
    no normal: remove them first (``Mesh.remove_degenerate_faces``).
    """
    pairs = _adjacent_face_pairs(mesh.faces)
    normals = mesh.face_normals()
    if pairs.shape[0] == 0:
        return _zero_like_graph(mesh.vertices)
    cos = (normals[pairs[:, 0]] * normals[pairs[:, 1]]).sum(-1)
    return (1.0 - cos).mean()


def laplacian_smoothness(mesh: Mesh) -> torch.Tensor:
    """XBind's Laplacian smoothness loss L_ls (Phase II, following Consistent3D [11]).

    Uniform (umbrella) Laplacian: for each vertex v with neighbours N(v) along mesh edges,
    ‖v − mean_{u ∈ N(v)} u‖², averaged over vertices that have at least one neighbour.
    Squared, so it is smooth at 0 (threestudio takes the norm without squaring).
    """
    edges = mesh.edges()
    v = mesh.vertices
    if edges.shape[0] == 0:
        return _zero_like_graph(v)
    a, b = edges[:, 0], edges[:, 1]
    neighbour_sum = torch.zeros_like(v).index_add(0, a, v[b]).index_add(0, b, v[a])
    degree = torch.zeros(v.shape[0], dtype=v.dtype, device=v.device)
    ones = torch.ones_like(a, dtype=v.dtype)
    degree = degree.index_add(0, a, ones).index_add(0, b, ones)
    connected = degree > 0
    delta = v[connected] - neighbour_sum[connected] / degree[connected, None]
    return (delta**2).sum(-1).mean()


__all__ = [
    "laplacian_smoothness",
    "mesh_normal_consistency",
    "normal_smoothness_2d",
    "opacity_entropy_loss",
    "orientation_loss",
    "sparsity_loss",
    "z_variance_loss",
]
