"""Geometry accuracy against a known surface (the tiny world's ground truth, DESIGN §6).

Generated assets have arbitrary scale, position and yaw (score distillation fixes none of them;
only the prompt's "front" is weakly tied to azimuth 0), so an asset is compared with its ground
truth after three normalisations, in this order:

1. **Scale and centre** (:func:`normalize_to_bounding_sphere`): both meshes are moved so their
   bounding-box centre is at the origin and scaled so their farthest vertex is at the same
   radius. The metrics below are invariant to that common radius: the pipeline uses the world's
   canonical :data:`~anyto3d.zoo.world.RADIUS` (0.75), so the evaluation orbit frames both
   exactly as it frames a world object — i.e. "unit bounding sphere" up to the orbit's units.
   (A floater far from the asset shrinks it; that is a real defect of the asset and is scored.)
2. **Yaw** (:func:`best_rotation_about_z`): the rotation about the vertical axis z that
   maximises the silhouette IoU over the orbit; a coarse search at 5° steps on a probe orbit,
   then a local refinement to ~0.3° on the evaluation cameras.
3. **Metrics**: :func:`silhouette_iou_orbit` (mean per-view IoU of the alpha masks) and
   :func:`normalized_chamfer` (symmetric mean nearest-point distance, divided by the ground
   truth's bounding-box diagonal) of the rotated asset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from anyto3d.cameras import CameraBatch, orbit_cameras
from anyto3d.errors import InputError
from anyto3d.mesh import Mesh

#: Radius both meshes are normalised to before rendering (the world's canonical RADIUS).
FRAME_RADIUS = 0.75


def chamfer_distance(mesh: Mesh, truth_points: torch.Tensor, n_points: int = 20000, seed: int = 1) -> float:
    """Symmetric mean nearest-point distance between points sampled on ``mesh`` and points on the
    true surface: ½(mean_a min_b ‖a − b‖ + mean_b min_a ‖a − b‖), in world units (not squared)."""
    points = mesh.sample_surface(n_points, seed=seed)
    nearest_ab = torch.full((points.shape[0],), float("inf"))
    nearest_ba = torch.full((truth_points.shape[0],), float("inf"))
    for chunk in torch.split(torch.arange(points.shape[0]), 4096):  # bounded memory
        d = torch.cdist(points[chunk], truth_points)
        nearest_ab[chunk] = d.min(dim=1).values
        nearest_ba = torch.minimum(nearest_ba, d.min(dim=0).values)
    return float(0.5 * (nearest_ab.mean() + nearest_ba.mean()))


# ---------------------------------------------------------------------------------------------
# Normalisation and rotation
# ---------------------------------------------------------------------------------------------


def normalize_to_bounding_sphere(mesh: Mesh, radius: float = 1.0) -> Mesh:
    """``mesh`` moved so its bounding-box centre is the origin and scaled so its farthest vertex
    is at ``radius`` (the default is the unit bounding sphere)."""
    mesh = mesh.validate("mesh to normalise")
    lo, hi = mesh.bounding_box()
    centred = mesh.vertices - (lo + hi) / 2
    far = float(centred.norm(dim=-1).max())
    if far <= 0:
        raise InputError("cannot normalise a mesh whose vertices all coincide")
    return replace(mesh, vertices=centred * (radius / far))


def rotation_z(yaw_deg: float, dtype=torch.float32) -> torch.Tensor:
    """[3, 3] rotation by ``yaw_deg`` about +z (counter-clockwise seen from above: +x toward +y)."""
    a = math.radians(yaw_deg)
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=dtype)


def rotate_about_z(mesh: Mesh, yaw_deg: float) -> Mesh:
    """``mesh`` rotated by ``yaw_deg`` about the world's vertical axis through the origin."""
    rot = rotation_z(yaw_deg, mesh.vertices.dtype)
    return replace(mesh, vertices=mesh.vertices @ rot.T)


def wrap_degrees(angle: float) -> float:
    """``angle`` wrapped to [-180, 180)."""
    return (angle + 180.0) % 360.0 - 180.0


# ---------------------------------------------------------------------------------------------
# Silhouettes
# ---------------------------------------------------------------------------------------------


def silhouette_iou_orbit(pred_alpha: torch.Tensor, gt_alpha: torch.Tensor, threshold: float = 0.5) -> float:
    """Mean over views of the silhouette IoU between ``pred_alpha`` and ``gt_alpha`` [V, H, W]
    (alphas in [0, 1], or uint8 in [0, 255]), each thresholded at ``threshold``. Every view counts
    equally; a view where both masks are empty counts as 1."""
    return float(per_view_iou(pred_alpha, gt_alpha, threshold).mean())


def per_view_iou(pred_alpha: torch.Tensor, gt_alpha: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """[V] silhouette IoU per view (see :func:`silhouette_iou_orbit`)."""
    pred, gt = _alpha(pred_alpha, "predicted alpha"), _alpha(gt_alpha, "ground-truth alpha")
    if pred.shape != gt.shape:
        raise InputError(f"alpha stacks differ in shape: {tuple(pred.shape)} vs {tuple(gt.shape)}")
    a, b = pred > threshold, gt > threshold
    inter = (a & b).flatten(1).sum(1).double()
    union = (a | b).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def _alpha(alpha: torch.Tensor, name: str) -> torch.Tensor:
    alpha = torch.as_tensor(alpha)
    if alpha.dim() == 4 and alpha.shape[-1] == 1:
        alpha = alpha[..., 0]
    if alpha.dim() != 3 or alpha.shape[0] == 0:
        raise InputError(f"{name} must be [V, H, W], got {tuple(alpha.shape)}")
    if alpha.dtype == torch.uint8:
        return alpha.float() / 255.0
    return alpha.float()


def render_silhouettes(mesh: Mesh, cameras: CameraBatch, resolution: int, chunk: int = 64) -> torch.Tensor:
    """Hard coverage masks [V, H, W] of ``mesh`` from ``cameras`` (no antialiasing: a silhouette
    metric wants the exact pixel coverage), rendered in chunks of views to bound memory."""
    from anyto3d.render.mesh_renderer import MeshRenderer, MeshRendererConfig

    renderer = MeshRenderer(MeshRendererConfig(antialias=False))
    masks = []
    with torch.no_grad():
        for start in range(0, len(cameras), chunk):
            views = cameras[start : start + chunk]
            masks.append(renderer.render(mesh, views, resolution, resolution).opacity[..., 0])
    return torch.cat(masks)


def best_circular_shift(pred_alpha: torch.Tensor, gt_alpha: torch.Tensor) -> tuple[int, float]:
    """(k, IoU) maximising :func:`silhouette_iou_orbit` of ``roll(pred_alpha, k)`` against
    ``gt_alpha``, for views on a uniform azimuth orbit (view j at azimuth a0 + j·360°/V).

    Turning an object by ψ about z shows camera j what the unturned object shows at azimuth
    a_j − ψ, so a turn by k·360°/V is exactly a roll of the view stack by k.
    """
    pred, gt = _alpha(pred_alpha, "predicted alpha"), _alpha(gt_alpha, "ground-truth alpha")
    ious = [silhouette_iou_orbit(torch.roll(pred, k, dims=0), gt) for k in range(pred.shape[0])]
    best = max(range(len(ious)), key=lambda k: (ious[k], -min(k, len(ious) - k)))
    return best, ious[best]


@dataclass
class RotationFit:
    """The best yaw (degrees, in [-180, 180)) to turn the prediction by, its orbit IoU, and the
    silhouettes [V, H, W] of the turned prediction and of the truth on the evaluation cameras."""

    yaw_deg: float
    iou: float
    pred_alpha: torch.Tensor
    truth_alpha: torch.Tensor


def probe_orbit(cameras: CameraBatch, n_views: int) -> CameraBatch:
    """A uniform orbit of ``n_views`` at the cameras' mean elevation, distance and fovy."""
    return orbit_cameras(
        n_views,
        elevation_deg=math.degrees(float(cameras.elevation.mean())),
        distance=float(cameras.distance.mean()),
        fovy_deg=math.degrees(float(cameras.fovy.mean())),
    )


def best_rotation_about_z(
    pred: Mesh,
    truth: Mesh,
    cameras: CameraBatch,
    resolution: int = 32,
    coarse_steps: int = 72,
    refine_steps: tuple[float, ...] = (2.5, 1.25, 0.625, 0.3125),
    truth_alpha: torch.Tensor | None = None,
) -> RotationFit:
    """The rotation about z that best aligns ``pred``'s silhouettes with ``truth``'s.

    Both meshes are used as given (normalise them first, module docstring). Coarse: both are
    rendered once on a uniform probe orbit of ``coarse_steps`` views at the cameras' mean
    elevation, so every yaw k·360°/``coarse_steps`` is a roll of the stack
    (:func:`best_circular_shift`). Refine: around the best coarse yaw, ±each of ``refine_steps``
    degrees in turn, each candidate rendered on the evaluation ``cameras``; the best found wins.
    ``truth_alpha`` (the truth's silhouettes on ``cameras``) may be passed to skip rendering it.
    """
    if coarse_steps < 4:
        raise InputError(f"coarse_steps must be at least 4, got {coarse_steps}")
    probes = probe_orbit(cameras, coarse_steps)
    shift, _ = best_circular_shift(render_silhouettes(pred, probes, resolution), render_silhouettes(truth, probes, resolution))
    if truth_alpha is None:
        truth_alpha = render_silhouettes(truth, cameras, resolution)

    def score(yaw: float) -> tuple[float, torch.Tensor]:
        alpha = render_silhouettes(rotate_about_z(pred, yaw), cameras, resolution)
        return silhouette_iou_orbit(alpha, truth_alpha), alpha

    best_yaw = wrap_degrees(shift * 360.0 / coarse_steps)
    best_iou, best_alpha = score(best_yaw)
    for step in refine_steps:
        centre = best_yaw
        for yaw in (centre - step, centre + step):
            iou, alpha = score(yaw)
            if iou > best_iou:
                best_yaw, best_iou, best_alpha = wrap_degrees(yaw), iou, alpha
    return RotationFit(best_yaw, best_iou, best_alpha, truth_alpha)


# ---------------------------------------------------------------------------------------------
# Chamfer after alignment, and the whole comparison
# ---------------------------------------------------------------------------------------------


def bounding_box_diagonal(mesh: Mesh) -> float:
    lo, hi = mesh.bounding_box()
    return float((hi - lo).norm())


def normalized_chamfer(pred: Mesh, truth: Mesh, n_points: int = 5000, seed: int = 1) -> float:
    """:func:`chamfer_distance` between ``pred`` and ``truth`` divided by the truth's bounding-box
    diagonal (both as given: normalise and align them first)."""
    truth_points = truth.sample_surface(n_points, seed=seed + 1)
    return chamfer_distance(pred, truth_points, n_points=n_points, seed=seed) / bounding_box_diagonal(truth)


@dataclass
class GeometryScore:
    """``iou``: mean silhouette IoU over the cameras after the best yaw; ``chamfer``: Chamfer
    distance / truth bounding-box diagonal after the same yaw; ``yaw_deg``: that yaw."""

    iou: float
    chamfer: float
    yaw_deg: float


def compare_to_ground_truth(
    pred: Mesh,
    truth: Mesh,
    cameras: CameraBatch,
    resolution: int = 32,
    radius: float = FRAME_RADIUS,
    coarse_steps: int = 72,
    n_points: int = 5000,
) -> GeometryScore:
    """Normalise both meshes to the same bounding sphere, find the best yaw, and score IoU and
    normalised Chamfer (module docstring)."""
    pred_n = normalize_to_bounding_sphere(pred, radius)
    truth_n = normalize_to_bounding_sphere(truth, radius)
    fit = best_rotation_about_z(pred_n, truth_n, cameras, resolution, coarse_steps)
    chamfer = normalized_chamfer(rotate_about_z(pred_n, fit.yaw_deg), truth_n, n_points)
    return GeometryScore(iou=fit.iou, chamfer=chamfer, yaw_deg=fit.yaw_deg)


__all__ = [
    "FRAME_RADIUS",
    "GeometryScore",
    "RotationFit",
    "best_circular_shift",
    "best_rotation_about_z",
    "bounding_box_diagonal",
    "chamfer_distance",
    "compare_to_ground_truth",
    "normalize_to_bounding_sphere",
    "normalized_chamfer",
    "per_view_iou",
    "probe_orbit",
    "render_silhouettes",
    "rotate_about_z",
    "rotation_z",
    "silhouette_iou_orbit",
    "wrap_degrees",
]
