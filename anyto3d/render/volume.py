"""The volume renderer: ray sampling, alpha compositing and the per-ray outputs of DESIGN §5.

Each ray is clipped to the field's bounding box (or sphere) and cut into intervals that tile
``[near, far]``; the field is evaluated at one point per interval and composited with the
quadrature of :func:`volume_rendering_weights`. Optional hierarchical resampling draws more
points where the coarse weights are large (inverse-CDF with ``torch.searchsorted``).

Outputs (:class:`anyto3d.render.output.RenderOutput`): colour over the background, opacity,
expected depth, composited unit normal, HiFA's masked depth variance, and the per-sample terms
regularisers need. Compositing can run on nerfacc (CUDA) behind the same function.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from anyto3d import backends
from anyto3d.cameras import CameraBatch, LightBatch
from anyto3d.errors import InputError, NonFiniteError
from anyto3d.fields.nerf import FieldOutput
from anyto3d.render.output import RenderOutput
from anyto3d.render.shading import lambertian

# ---------------------------------------------------------------------------------------------
# Compositing (pure functions)
# ---------------------------------------------------------------------------------------------


def volume_rendering_weights(density: torch.Tensor, deltas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Volume rendering weights, 4D-fy Eq. 1 (``w_i = α_i Π_{j<i} (1 − α_j)``, NeRF's quadrature).

    For samples i along a ray with density σ_i and interval length δ_i:
    ``α_i = 1 − exp(−σ_i δ_i)``, ``T_i = exp(−Σ_{j<i} σ_j δ_j)``, ``w_i = T_i α_i``; the colour
    ``C = Σ_i w_i c_i`` is composited by the renderer.
    Returns ``(weights, transmittance)``, both ``[..., S]``. The exclusive sum in log space
    (not a product of ``1 − α``) keeps the gradient exact where α approaches 1.
    """
    optical = density * deltas
    before = torch.cumsum(optical, dim=-1) - optical  # Σ_{j<i} σ_j δ_j
    transmittance = torch.exp(-before)
    weights = transmittance * -torch.expm1(-optical)
    return weights, transmittance


def _nerfacc_weights(density: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    nerfacc = backends.optional_import("nerfacc")
    t_ends = torch.cumsum(deltas, dim=-1)
    weights, _, _ = nerfacc.render_weight_from_density(t_starts=t_ends - deltas, t_ends=t_ends, sigmas=density)
    return weights


def depth_variance(weights: torch.Tensor, t: torch.Tensor, eps: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight-normalised mean and variance of the sample distance per ray, XBind Eq. 6 (from HiFA).

    ``d_z = Σ w z / Σ w`` and ``σ_z² = Σ (z − d_z)² w / Σ w``; both 0 for rays with no weight.
    The renderer multiplies σ_z² by Eq. 7's δ = [Σ w > 0.5]; L_nz = E[δ σ_z²] is a loss.
    """
    total = weights.sum(dim=-1)
    safe = total.clamp_min(eps)
    mean = (weights * t).sum(dim=-1) / safe
    variance = (weights * (t - mean[..., None]) ** 2).sum(dim=-1) / safe
    return mean, variance


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


def ray_box_bounds(rays_o: torch.Tensor, rays_d: torch.Tensor, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit distances [R] of rays through the box ``[-radius, radius]^3`` (slab method).

    Rays that miss get ``near == far`` (no interval); the entry is clamped at 0 (origin inside).
    """
    safe_d = torch.where(rays_d.abs() < 1e-12, torch.full_like(rays_d, 1e-12), rays_d)
    t0 = (-radius - rays_o) / safe_d
    t1 = (radius - rays_o) / safe_d
    near = torch.minimum(t0, t1).amax(dim=-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(dim=-1)
    far = torch.maximum(far, near)
    return near, far


def ray_sphere_bounds(rays_o: torch.Tensor, rays_d: torch.Tensor, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit distances [R] of unit-direction rays through the sphere of ``radius``."""
    b = (rays_o * rays_d).sum(-1)
    c = (rays_o * rays_o).sum(-1) - radius**2
    disc = (b * b - c).clamp_min(0.0).sqrt()
    near = (-b - disc).clamp_min(0.0)
    far = torch.maximum(-b + disc, near)
    return near, far


def stratified_intervals(
    near: torch.Tensor, far: torch.Tensor, n_samples: int, stratified: bool, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_samples`` equal intervals tiling ``[near, far]`` and one point in each: uniformly
    jittered inside its interval when ``stratified``, else at its midpoint. Returns ``(t, deltas)``, [R, S]."""
    u = torch.linspace(0.0, 1.0, n_samples + 1, dtype=near.dtype, device=near.device)
    edges = near[:, None] + (far - near)[:, None] * u  # [R, S+1]
    if stratified:
        jitter = torch.rand(edges.shape[0], n_samples, generator=generator).to(near)
    else:
        jitter = torch.full((edges.shape[0], n_samples), 0.5, dtype=near.dtype, device=near.device)
    t = edges[:, :-1] + (edges[:, 1:] - edges[:, :-1]) * jitter
    return t, edges[:, 1:] - edges[:, :-1]


def sample_pdf(
    edges: torch.Tensor, weights: torch.Tensor, n_samples: int, stratified: bool, generator: torch.Generator | None
) -> torch.Tensor:
    """Hierarchical sampling (NeRF §5.2): ``n_samples`` distances [R, n] drawn by inverse CDF from
    the piecewise-constant density whose mass on interval ``[edges_i, edges_{i+1}]`` is ``weights_i``."""
    weights = weights.detach() + 1e-5  # every interval keeps some mass, so empty rays stay uniform
    pdf = weights / weights.sum(dim=-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, dim=-1)], dim=-1).clamp(max=1.0)  # [R, S+1]
    if stratified:
        u = (torch.arange(n_samples, dtype=cdf.dtype) + torch.rand(cdf.shape[0], n_samples, generator=generator).to(cdf.dtype)) / n_samples
        u = u.to(cdf.device)
    else:
        u = ((torch.arange(n_samples, dtype=cdf.dtype, device=cdf.device) + 0.5) / n_samples).expand(cdf.shape[0], -1)
    u = u.contiguous()
    above = torch.searchsorted(cdf, u, right=True).clamp(1, cdf.shape[-1] - 1)
    below = above - 1
    cdf_lo, cdf_hi = cdf.gather(-1, below), cdf.gather(-1, above)
    edge_lo, edge_hi = edges.gather(-1, below), edges.gather(-1, above)
    span = (cdf_hi - cdf_lo).clamp_min(1e-12)
    return edge_lo + (u - cdf_lo) / span * (edge_hi - edge_lo)


def intervals_around(t: torch.Tensor, near: torch.Tensor, far: torch.Tensor) -> torch.Tensor:
    """Interval lengths [R, S] for sorted points t: edges at the midpoints between neighbours and
    at near/far, so the intervals tile ``[near, far]`` exactly."""
    mids = 0.5 * (t[:, 1:] + t[:, :-1])
    edges = torch.cat([near[:, None], mids, far[:, None]], dim=-1)
    return edges[:, 1:] - edges[:, :-1]


# ---------------------------------------------------------------------------------------------
# Empty-space skipping
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OccupancyGridConfig:
    """Instant-NGP-style occupancy grid over the field's box.

    A cell is occupied when its running density estimate times the renderer's mean interval
    length exceeds ``opacity_threshold``; occupied cells are dilated by ``dilation`` cells so the
    surface can still grow into its neighbourhood. ``decay`` is the per-update EMA factor.
    """

    resolution: int = 32
    opacity_threshold: float = 0.01
    decay: float = 0.95
    dilation: int = 1


class OccupancyGrid(nn.Module):
    """Which cells of ``[-radius, radius]^3`` may hold density; the renderer evaluates the field
    only at samples in occupied cells (the others get density 0). Starts fully occupied; call
    :meth:`update` every few optimisation steps (a 4D field: with the times it is rendered at)."""

    def __init__(self, cfg: OccupancyGridConfig, radius: float, step: float):
        super().__init__()
        self.cfg, self.radius, self.step = cfg, radius, step
        r = cfg.resolution
        self.register_buffer("density", torch.full((r, r, r), -1.0))  # -1: never updated
        self.register_buffer("occupied", torch.ones(r, r, r, dtype=torch.bool))

    def cell_of(self, points: torch.Tensor) -> torch.Tensor:
        """Flat cell index [N] of world points [N, 3] (x fastest), clamped into the grid."""
        r = self.cfg.resolution
        ijk = ((points + self.radius) / (2 * self.radius) * r).floor().long().clamp(0, r - 1)
        return ijk[:, 0] + r * (ijk[:, 1] + r * ijk[:, 2])

    def query(self, points: torch.Tensor) -> torch.Tensor:
        """Boolean [N]: is each point in an occupied cell?"""
        return self.occupied.reshape(-1)[self.cell_of(points)]

    @torch.no_grad()
    def update(self, field: nn.Module, times: torch.Tensor | None = None, generator: torch.Generator | None = None) -> None:
        """Re-estimate each cell's density at a random point inside it (the max over ``times``)."""
        r = self.cfg.resolution
        k = torch.arange(r, dtype=torch.float32)
        z, y, x = torch.meshgrid(k, k, k, indexing="ij")
        cells = torch.stack([x, y, z], dim=-1).reshape(-1, 3)  # flat order: x fastest
        jitter = torch.rand(cells.shape, generator=generator)
        points = ((cells + jitter) / r * 2 - 1) * self.radius
        points = points.to(self.density.device)
        estimate = torch.zeros(points.shape[0], device=points.device)
        for time in [None] if times is None else torch.as_tensor(times).reshape(-1).tolist():
            t = None if time is None else torch.full((points.shape[0],), time, device=points.device)
            estimate = torch.maximum(estimate, field.density(points, t).float())
        estimate = estimate.view(r, r, r)
        fresh = self.density < 0
        self.density.copy_(torch.where(fresh, estimate, torch.maximum(self.density * self.cfg.decay, estimate)))
        occupied = (self.density * self.step > self.cfg.opacity_threshold).float()[None, None]
        d = self.cfg.dilation
        if d > 0:
            occupied = F.max_pool3d(occupied, kernel_size=2 * d + 1, stride=1, padding=d)
        self.occupied.copy_(occupied[0, 0] > 0)

    def occupied_fraction(self) -> float:
        return float(self.occupied.float().mean())


# ---------------------------------------------------------------------------------------------
# Renderer
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VolumeRendererConfig:
    """Volume rendering settings.

    ``n_samples`` intervals per ray (stratified when ``stratified``), plus ``n_importance``
    hierarchically resampled points from the coarse weights. Rays are clipped to ``bound``
    ("box" ``[-radius, radius]^3``, matching the field, or "sphere" of ``radius``).
    ``shading``: "albedo" (colour = albedo) or "lambertian" (needs lights and normals).
    ``chunk_size`` rays are evaluated per field call (bounds peak memory, not the autograd graph).
    ``backend``: compositing on "torch", "nerfacc" (CUDA) or "auto".
    ``check_finite``: raise :class:`NonFiniteError` when the field returns NaN/Inf density
    (one reduction per chunk; turn off to avoid the device sync on a GPU).
    """

    n_samples: int = 64
    n_importance: int = 0
    stratified: bool = True
    radius: float = 1.0
    bound: str = "box"
    shading: str = "albedo"
    chunk_size: int = 8192
    backend: str = "auto"
    check_finite: bool = True

    def __post_init__(self) -> None:
        if self.n_samples < 1 or self.n_importance < 0 or self.chunk_size < 1 or self.radius <= 0:
            raise InputError("VolumeRendererConfig needs n_samples >= 1, n_importance >= 0, chunk_size >= 1, radius > 0")
        if self.bound not in ("box", "sphere"):
            raise InputError(f"VolumeRendererConfig.bound must be 'box' or 'sphere', got {self.bound!r}")
        if self.shading not in ("albedo", "lambertian"):
            raise InputError(f"VolumeRendererConfig.shading must be 'albedo' or 'lambertian', got {self.shading!r}")


# CPU preset: fewer samples, no resampling.
CPU_VOLUME_RENDERER = VolumeRendererConfig(n_samples=48, n_importance=0)


@dataclass
class RayBundleOutput:
    """Per-ray results of :meth:`VolumeRenderer.render_rays` (R rays, S samples)."""

    rgb: torch.Tensor  # [R, 3]
    opacity: torch.Tensor  # [R]
    depth: torch.Tensor  # [R]
    z_variance: torch.Tensor  # [R], already masked by opacity > 0.5
    weights: torch.Tensor  # [R, S]
    t: torch.Tensor  # [R, S]
    normal: torch.Tensor | None = None  # [R, 3]
    sample_normals: torch.Tensor | None = None  # [R, S, 3]


class VolumeRenderer(nn.Module):
    """Renders a field (``NeRFField``/``DynamicNeRFField`` or anything with ``density`` and
    ``forward(points, times, with_normal) -> FieldOutput``) from cameras or from rays.

    An ``nn.Module`` only so the optional occupancy grid moves with ``.to(device)`` and is saved
    in ``state_dict()``; it has no trainable parameters.
    """

    def __init__(self, cfg: VolumeRendererConfig | None = None, occupancy: OccupancyGridConfig | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else VolumeRendererConfig()
        # Optional empty-space skipping; its grid must be refreshed with update_occupancy().
        self.occupancy = None
        if occupancy is not None:
            step = 2.0 * self.cfg.radius / self.cfg.n_samples
            self.occupancy = OccupancyGrid(occupancy, self.cfg.radius, step)

    def update_occupancy(self, field: nn.Module, times: torch.Tensor | None = None, generator: torch.Generator | None = None) -> None:
        """Refresh the occupancy grid from ``field`` (no-op without one)."""
        if self.occupancy is not None:
            self.occupancy.update(field, times, generator)

    def _evaluate(self, field, points: torch.Tensor, times: torch.Tensor | None, with_normal: bool) -> FieldOutput:
        """The field at every point, skipping (density 0) points in empty occupancy cells."""
        if self.occupancy is None:
            return field(points, times, with_normal=with_normal)
        keep = self.occupancy.query(points)
        rows = keep.nonzero().squeeze(1)
        if rows.numel() == points.shape[0]:
            return field(points, times, with_normal=with_normal)
        out = field(points[rows], None if times is None else times[rows], with_normal=with_normal)
        n = points.shape[0]

        def scatter(values: torch.Tensor | None) -> torch.Tensor | None:
            if values is None:
                return None
            full = values.new_zeros((n,) + values.shape[1:])
            return full.index_copy(0, rows, values)

        return FieldOutput(scatter(out.density), scatter(out.albedo), scatter(out.normal))

    # -- rays -----------------------------------------------------------------------------------

    def _bounds(self, rays_o: torch.Tensor, rays_d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cfg.bound == "box":
            return ray_box_bounds(rays_o, rays_d, self.cfg.radius)
        return ray_sphere_bounds(rays_o, rays_d, self.cfg.radius)

    def _weights(self, density: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
        if backends.resolve(self.cfg.backend, "nerfacc", density.device) == "nerfacc":
            return _nerfacc_weights(density, deltas)
        return volume_rendering_weights(density, deltas)[0]

    def _sample(self, field, rays_o, rays_d, times, near, far, stratified, generator):
        """Sample distances t [R, S] and interval lengths [R, S], with optional resampling."""
        cfg = self.cfg
        t, deltas = stratified_intervals(near, far, cfg.n_samples, stratified, generator)
        if cfg.n_importance == 0:
            return t, deltas
        with torch.no_grad():
            coarse = self._evaluate(field, self._points(rays_o, rays_d, t), self._sample_times(times, t), False).density
            weights = self._weights(coarse.view_as(t), deltas)
            edges = torch.cat([near[:, None], near[:, None] + torch.cumsum(deltas, dim=-1)], dim=-1)
            fine = sample_pdf(edges, weights, cfg.n_importance, stratified, generator)
        t, _ = torch.sort(torch.cat([t, fine], dim=-1), dim=-1)
        return t, intervals_around(t, near, far)

    @staticmethod
    def _points(rays_o: torch.Tensor, rays_d: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (rays_o[:, None, :] + rays_d[:, None, :] * t[..., None]).reshape(-1, 3)

    @staticmethod
    def _sample_times(times: torch.Tensor | None, t: torch.Tensor) -> torch.Tensor | None:
        return None if times is None else times[:, None].expand_as(t).reshape(-1)

    def render_rays(
        self,
        field: nn.Module,
        rays_o: torch.Tensor,
        rays_d: torch.Tensor,
        background: nn.Module,
        times: torch.Tensor | None = None,
        light_positions: torch.Tensor | None = None,
        ambient: torch.Tensor | None = None,
        with_normal: bool = False,
        stratified: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> RayBundleOutput:
        """Render R rays (origins [R, 3], unit directions [R, 3]); ``times`` [R] for 4D fields;
        ``light_positions`` [R, 3] and ``ambient`` [R] for lambertian shading."""
        if rays_o.dim() != 2 or rays_o.shape[1] != 3 or rays_d.shape != rays_o.shape:
            raise InputError(f"rays must be [R, 3] origins and directions, got {tuple(rays_o.shape)} and {tuple(rays_d.shape)}")
        if times is not None and times.shape != rays_o.shape[:1]:
            raise InputError(f"times must be [R] = [{rays_o.shape[0]}], got {tuple(times.shape)}")
        lambert = self.cfg.shading == "lambertian"
        if lambert and (light_positions is None or ambient is None):
            raise InputError("lambertian shading needs light_positions [R, 3] and ambient [R] (or render(lights=...))")
        stratified = self.cfg.stratified if stratified is None else stratified
        # Once for all rays, so a random background is one colour per call, not per chunk.
        background_rgb = background(rays_d)
        chunks = []
        for start in range(0, rays_o.shape[0], self.cfg.chunk_size):
            part = slice(start, start + self.cfg.chunk_size)
            chunks.append(
                self._render_chunk(
                    field,
                    rays_o[part],
                    rays_d[part],
                    background_rgb[part],
                    None if times is None else times[part],
                    None if light_positions is None else light_positions[part],
                    None if ambient is None else ambient[part],
                    with_normal or lambert,
                    stratified,
                    generator,
                )
            )
        if len(chunks) == 1:
            return chunks[0]
        merged = {}
        for name in RayBundleOutput.__dataclass_fields__:
            values = [getattr(c, name) for c in chunks]
            merged[name] = None if values[0] is None else torch.cat(values, dim=0)
        return RayBundleOutput(**merged)

    def _render_chunk(self, field, rays_o, rays_d, background_rgb, times, light_positions, ambient, with_normal, stratified, generator):
        near, far = self._bounds(rays_o, rays_d)
        t, deltas = self._sample(field, rays_o, rays_d, times, near, far, stratified, generator)
        n_rays, n_samples = t.shape
        points = self._points(rays_o, rays_d, t)
        out = self._evaluate(field, points, self._sample_times(times, t), with_normal)
        density = out.density.view(n_rays, n_samples)
        if self.cfg.check_finite and not bool(torch.isfinite(density).all()):
            bad = int((~torch.isfinite(density)).sum())
            raise NonFiniteError(f"the field returned NaN/Inf density at {bad} of {density.numel()} samples")
        weights = self._weights(density, deltas)
        color = out.albedo.view(n_rays, n_samples, 3)
        normals = None if out.normal is None else out.normal.view(n_rays, n_samples, 3)
        if self.cfg.shading == "lambertian":
            color = lambertian(
                color, normals, points.view(n_rays, n_samples, 3), light_positions[:, None, :], ambient[:, None, None].to(color)
            )
        opacity = weights.sum(dim=-1)
        rgb = (weights[..., None] * color).sum(dim=-2) + (1.0 - opacity)[:, None] * background_rgb
        depth, variance = depth_variance(weights, t)
        z_variance = variance * (opacity > 0.5).to(variance.dtype)
        normal = None
        if normals is not None:
            normal = F.normalize((weights[..., None] * normals).sum(dim=-2), dim=-1)
        return RayBundleOutput(rgb, opacity, depth, z_variance, weights, t, normal, normals)

    # -- images ---------------------------------------------------------------------------------

    def render(
        self,
        field: nn.Module,
        cameras: CameraBatch,
        height: int,
        width: int,
        background: nn.Module,
        lights: LightBatch | None = None,
        with_normal: bool = False,
        generator: torch.Generator | None = None,
        stratified: bool | None = None,
    ) -> RenderOutput:
        """Render ``len(cameras)`` images of ``height × width``; a 4D batch (``cameras.times`` set)
        renders each image at its own time. Per-sample terms are flattened over all rays."""
        if height < 1 or width < 1:
            raise InputError(f"image size must be positive, got {height}x{width}")
        n_images, pixels = len(cameras), height * width
        origins, dirs = cameras.rays(height, width)
        rays_o, rays_d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
        times = None if cameras.times is None else cameras.times.to(rays_o).repeat_interleave(pixels)
        light_positions = ambient = None
        if lights is not None:
            light_positions = lights.position.to(rays_o).repeat_interleave(pixels, dim=0)
            ambient = lights.ambient.to(rays_o).repeat_interleave(pixels)
        elif self.cfg.shading == "lambertian":
            raise InputError("lambertian shading needs lights (e.g. anyto3d.cameras.headlight(cameras))")
        rays = self.render_rays(
            field, rays_o, rays_d, background, times, light_positions, ambient, with_normal, stratified, generator
        )
        def image(values: torch.Tensor) -> torch.Tensor:
            return values.reshape(n_images, height, width, -1)

        return RenderOutput(
            rgb=image(rays.rgb),
            opacity=image(rays.opacity),
            depth=image(rays.depth),
            normal=None if rays.normal is None else image(rays.normal),
            z_variance=image(rays.z_variance),
            weights=rays.weights,
            sample_normals=rays.sample_normals,
            ray_dirs=rays_d,
        )


__all__ = [
    "CPU_VOLUME_RENDERER",
    "OccupancyGrid",
    "OccupancyGridConfig",
    "RayBundleOutput",
    "VolumeRenderer",
    "VolumeRendererConfig",
    "depth_variance",
    "intervals_around",
    "ray_box_bounds",
    "ray_sphere_bounds",
    "sample_pdf",
    "stratified_intervals",
    "volume_rendering_weights",
]
