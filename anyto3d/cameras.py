"""Camera conventions, per-phase samplers and evaluation orbits.

Convention (one for the whole project, DESIGN §4):

* World is **z-up**. The object sits at the origin.
* A camera is an OpenGL-style camera-to-world matrix ``c2w`` whose columns are
  (right, up, -forward, position): the camera looks down its own -z axis.
* **Elevation** is the angle above the xy-plane; **azimuth** is measured from +x toward +y.
  Configs hold degrees; every tensor here holds radians.
* Pixel (row i, column j) of an ``H x W`` image looks through the pixel centre; row 0 is the
  top of the image. :meth:`CameraBatch.rays` and :meth:`CameraBatch.mvp` agree on this, so a
  volume render and a rasterised render of the same scene line up pixel for pixel.

Samplers draw from a :class:`torch.Generator` only, so a seed fixes every camera.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

WORLD_UP = (0.0, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------


def spherical_to_position(elevation: torch.Tensor, azimuth: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """Camera centres [B, 3] from elevation/azimuth (radians) and distance to the origin."""
    ce = torch.cos(elevation)
    return torch.stack(
        [distance * ce * torch.cos(azimuth), distance * ce * torch.sin(azimuth), distance * torch.sin(elevation)],
        dim=-1,
    )


def look_at(eye: torch.Tensor, target: torch.Tensor | None = None, up: torch.Tensor | None = None) -> torch.Tensor:
    """OpenGL camera-to-world matrices [B, 4, 4] for cameras at ``eye`` [B, 3] looking at ``target``.

    When the view direction is parallel to ``up`` (looking straight down or up), the world +x
    axis is used as a fallback up so the basis stays well defined.
    """
    eye = eye.reshape(-1, 3)
    if target is None:
        target = torch.zeros_like(eye)
    if up is None:
        up = eye.new_tensor(WORLD_UP).expand_as(eye)
    forward = F.normalize(target - eye, dim=-1)
    right = torch.cross(forward, up, dim=-1)
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    alt_up = eye.new_tensor((1.0, 0.0, 0.0)).expand_as(eye)
    right = torch.where(degenerate, torch.cross(forward, alt_up, dim=-1), right)
    right = F.normalize(right, dim=-1)
    cam_up = torch.cross(right, forward, dim=-1)
    c2w = torch.zeros(eye.shape[0], 4, 4, dtype=eye.dtype, device=eye.device)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = cam_up
    c2w[:, :3, 2] = -forward
    c2w[:, :3, 3] = eye
    c2w[:, 3, 3] = 1.0
    return c2w


def perspective(fovy: torch.Tensor, aspect: float, near: float, far: float) -> torch.Tensor:
    """OpenGL projection matrices [B, 4, 4] (camera looks down -z; NDC y points up)."""
    fovy = torch.as_tensor(fovy).reshape(-1)
    fy = 1.0 / torch.tan(fovy / 2)
    proj = torch.zeros(fovy.shape[0], 4, 4, dtype=fovy.dtype, device=fovy.device)
    proj[:, 0, 0] = fy / aspect
    proj[:, 1, 1] = fy
    proj[:, 2, 2] = -(far + near) / (far - near)
    proj[:, 2, 3] = -2.0 * far * near / (far - near)
    proj[:, 3, 2] = -1.0
    return proj


def focal_length(fovy: torch.Tensor, height: int) -> torch.Tensor:
    """Focal length in pixels for a vertical field of view (radians)."""
    return 0.5 * height / torch.tan(torch.as_tensor(fovy) / 2)


@dataclass
class CameraBatch:
    """A batch of pinhole cameras in the project convention (module docstring).

    ``times`` (in [0, 1)) is set for 4D/video batches and is ``None`` for static ones.
    """

    c2w: torch.Tensor  # [B, 4, 4]
    fovy: torch.Tensor  # [B] radians
    elevation: torch.Tensor  # [B] radians
    azimuth: torch.Tensor  # [B] radians
    distance: torch.Tensor  # [B]
    times: torch.Tensor | None = None  # [B] in [0, 1)

    @classmethod
    def from_spherical(
        cls,
        elevation: torch.Tensor,
        azimuth: torch.Tensor,
        distance: torch.Tensor,
        fovy: torch.Tensor,
        times: torch.Tensor | None = None,
    ) -> "CameraBatch":
        elevation, azimuth, distance, fovy = torch.broadcast_tensors(
            *(torch.as_tensor(v, dtype=torch.float32).reshape(-1) for v in (elevation, azimuth, distance, fovy))
        )
        eye = spherical_to_position(elevation, azimuth, distance)
        return cls(look_at(eye), fovy.clone(), elevation.clone(), azimuth.clone(), distance.clone(), times)

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def position(self) -> torch.Tensor:
        return self.c2w[:, :3, 3]

    def __getitem__(self, index) -> "CameraBatch":
        def pick(t: torch.Tensor | None):
            if t is None:
                return None
            out = t[index]
            return out.unsqueeze(0) if out.dim() == t.dim() - 1 else out

        return CameraBatch(*(pick(t) for t in (self.c2w, self.fovy, self.elevation, self.azimuth, self.distance, self.times)))

    def to(self, device=None, dtype=None) -> "CameraBatch":
        def move(t):
            return None if t is None else t.to(device=device, dtype=dtype)

        return CameraBatch(*(move(t) for t in (self.c2w, self.fovy, self.elevation, self.azimuth, self.distance, self.times)))

    def rays(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """World-space ray origins and unit directions, each [B, H, W, 3], through pixel centres."""
        dtype, device = self.c2w.dtype, self.c2w.device
        focal = focal_length(self.fovy, height).to(dtype).view(-1, 1, 1)
        rows = torch.arange(height, dtype=dtype, device=device) + 0.5
        cols = torch.arange(width, dtype=dtype, device=device) + 0.5
        ii, jj = torch.meshgrid(rows, cols, indexing="ij")
        x = (jj - width / 2)[None] / focal
        y = -(ii - height / 2)[None] / focal
        d_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # [B, H, W, 3]
        dirs = torch.einsum("bij,bhwj->bhwi", self.c2w[:, :3, :3], d_cam)
        dirs = F.normalize(dirs, dim=-1)
        origins = self.position.view(-1, 1, 1, 3).expand_as(dirs)
        return origins, dirs

    def mvp(self, height: int, width: int, near: float = 0.1, far: float = 100.0) -> torch.Tensor:
        """Model-view-projection matrices [B, 4, 4] mapping world points to OpenGL clip space."""
        proj = perspective(self.fovy, width / height, near, far).to(self.c2w)
        return proj @ torch.linalg.inv(self.c2w)


def relative_camera(reference: CameraBatch, target: CameraBatch) -> torch.Tensor:
    """Zero-1-to-3's relative camera [B, 4]: [Δpolar, sin Δazimuth, cos Δazimuth, Δradius].

    Zero-1-to-3 measures the *polar* angle (90° − elevation), so its first component is
    θ_target − θ_reference = elevation_reference − elevation_target. The other deltas are
    target minus reference (radians; radius in world units), as in the release.
    """
    d_el = reference.elevation - target.elevation
    d_az = target.azimuth - reference.azimuth
    d_r = target.distance - reference.distance
    return torch.stack([d_el, torch.sin(d_az), torch.cos(d_az), d_r], dim=-1)


# ---------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CameraSamplerConfig:
    """Ranges (degrees, world units) a training camera is drawn from; each is [low, high].

    ``sphere_uniform_prob`` is the probability of drawing elevation uniformly on the sphere
    (uniform in sin(elevation)) rather than uniformly in degrees; the 4D-fy release mixes both.
    """

    elevation_deg: tuple[float, float] = (-45.0, 45.0)
    azimuth_deg: tuple[float, float] = (-180.0, 180.0)
    distance: tuple[float, float] = (2.5, 2.5)
    fovy_deg: tuple[float, float] = (40.0, 40.0)
    sphere_uniform_prob: float = 0.0


# XBind §V-A: Phase I/III and Phase II cameras.
XBIND_PHASE_I = CameraSamplerConfig((-45.0, 45.0), (-180.0, 180.0), (2.5, 2.5), (40.0, 40.0))
XBIND_PHASE_III = XBIND_PHASE_I
XBIND_PHASE_II = CameraSamplerConfig((-10.0, 45.0), (-135.0, 225.0), (1.5, 2.0), (30.0, 45.0))
# 4D-fy release (research/papers_code.md §2.4): single-view, multi-view and video steps.
FOURDFY = CameraSamplerConfig((0.0, 30.0), (-180.0, 180.0), (2.5, 3.0), (15.0, 60.0), sphere_uniform_prob=0.5)

PRESETS: dict[str, CameraSamplerConfig] = {
    "xbind_phase_i": XBIND_PHASE_I,
    "xbind_phase_ii": XBIND_PHASE_II,
    "xbind_phase_iii": XBIND_PHASE_III,
    "fourdfy": FOURDFY,
}


def _uniform(lo: float, hi: float, n: int, generator: torch.Generator | None) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def _sample_elevation(cfg: CameraSamplerConfig, n: int, generator: torch.Generator | None) -> torch.Tensor:
    lo, hi = (math.radians(v) for v in cfg.elevation_deg)
    in_degrees = _uniform(lo, hi, n, generator)
    if cfg.sphere_uniform_prob <= 0:
        return in_degrees
    # Uniform on the sphere's band: uniform in sin(elevation).
    on_sphere = torch.asin(_uniform(math.sin(lo), math.sin(hi), n, generator))
    pick = torch.rand(n, generator=generator) < cfg.sphere_uniform_prob
    return torch.where(pick, on_sphere, in_degrees)


def sample_cameras(
    cfg: CameraSamplerConfig, batch_size: int, generator: torch.Generator | None = None
) -> CameraBatch:
    """Independent random cameras (XBind phases, 4D-fy single-view steps)."""
    elevation = _sample_elevation(cfg, batch_size, generator)
    azimuth = torch.deg2rad(_uniform(*cfg.azimuth_deg, batch_size, generator))
    distance = _uniform(*cfg.distance, batch_size, generator)
    fovy = torch.deg2rad(_uniform(*cfg.fovy_deg, batch_size, generator))
    return CameraBatch.from_spherical(elevation, azimuth, distance, fovy)


def sample_multiview_cameras(
    cfg: CameraSamplerConfig, n_views: int = 4, generator: torch.Generator | None = None
) -> CameraBatch:
    """MVDream-style group: ``n_views`` evenly spaced azimuths plus one shared random offset;
    elevation, distance and fovy are shared by the group."""
    elevation = _sample_elevation(cfg, 1, generator).expand(n_views)
    offset = torch.deg2rad(_uniform(*cfg.azimuth_deg, 1, generator))
    azimuth = offset + torch.arange(n_views) * (2 * math.pi / n_views)
    azimuth = torch.remainder(azimuth + math.pi, 2 * math.pi) - math.pi
    distance = _uniform(*cfg.distance, 1, generator).expand(n_views)
    fovy = torch.deg2rad(_uniform(*cfg.fovy_deg, 1, generator)).expand(n_views)
    return CameraBatch.from_spherical(elevation, azimuth, distance, fovy)


def sample_frame_times(n_frames: int = 16, generator: torch.Generator | None = None) -> torch.Tensor:
    """4D-fy clip times: t0 ~ U(0, 1/n) then t_k = t0 + k/n, so every time in [0, 1) is reachable."""
    t0 = torch.rand(1, generator=generator) / n_frames
    return t0 + torch.arange(n_frames) / n_frames


def sample_video_cameras(
    cfg: CameraSamplerConfig, n_frames: int = 16, generator: torch.Generator | None = None
) -> CameraBatch:
    """One random camera shared by a clip of ``n_frames`` frames, with 4D-fy frame times."""
    one = sample_cameras(cfg, 1, generator)
    times = sample_frame_times(n_frames, generator)
    idx = torch.zeros(n_frames, dtype=torch.long)
    clip = one[idx]
    return replace(clip, times=times)


def orbit_cameras(
    n_views: int = 120,
    elevation_deg: float = 15.0,
    distance: float = 2.5,
    fovy_deg: float = 40.0,
    azimuth_start_deg: float = 0.0,
    times: torch.Tensor | None = None,
) -> CameraBatch:
    """The evaluation orbit: ``n_views`` azimuths uniform over 360° at a fixed elevation.

    ``linspace(0, 360, n, endpoint=False)`` so no view is repeated. Pass ``times`` to render
    a 4D scene along the same orbit (e.g. ``torch.linspace(0, 1, n)``).
    """
    azimuth = torch.deg2rad(azimuth_start_deg + torch.arange(n_views, dtype=torch.float32) * (360.0 / n_views))
    elevation = torch.full((n_views,), math.radians(elevation_deg))
    cams = CameraBatch.from_spherical(
        elevation, azimuth, torch.full((n_views,), distance), torch.full((n_views,), math.radians(fovy_deg))
    )
    return replace(cams, times=times) if times is not None else cams


# ---------------------------------------------------------------------------------------------
# Lights
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LightSamplerConfig:
    """Point lights near the camera (Magic3D-style): direction = camera direction perturbed by
    N(0, ``perturb_std``²), distance = ``distance_scale`` × camera distance; ``ambient`` the
    ambient ratio range (a diffuse weight of 1 - ambient)."""

    distance_scale: tuple[float, float] = (0.8, 1.5)
    perturb_std: float = 0.5
    ambient: tuple[float, float] = (0.1, 0.3)


@dataclass
class LightBatch:
    position: torch.Tensor  # [B, 3]
    ambient: torch.Tensor  # [B]

    def to(self, device=None, dtype=None) -> "LightBatch":
        return LightBatch(self.position.to(device=device, dtype=dtype), self.ambient.to(device=device, dtype=dtype))


def sample_lights(
    cameras: CameraBatch, cfg: LightSamplerConfig = LightSamplerConfig(), generator: torch.Generator | None = None
) -> LightBatch:
    n = len(cameras)
    direction = F.normalize(cameras.position, dim=-1)
    direction = F.normalize(direction + cfg.perturb_std * torch.randn(n, 3, generator=generator), dim=-1)
    scale = _uniform(*cfg.distance_scale, n, generator)
    position = direction * (cameras.distance * scale)[:, None]
    ambient = _uniform(*cfg.ambient, n, generator)
    return LightBatch(position=position, ambient=ambient)


def headlight(cameras: CameraBatch, ambient: float = 0.3) -> LightBatch:
    """A light at each camera centre: deterministic shading for evaluation renders."""
    return LightBatch(position=cameras.position.clone(), ambient=torch.full((len(cameras),), ambient))


__all__ = [
    "CameraBatch",
    "CameraSamplerConfig",
    "LightBatch",
    "LightSamplerConfig",
    "PRESETS",
    "XBIND_PHASE_I",
    "XBIND_PHASE_II",
    "XBIND_PHASE_III",
    "FOURDFY",
    "focal_length",
    "headlight",
    "look_at",
    "orbit_cameras",
    "perspective",
    "relative_camera",
    "sample_cameras",
    "sample_frame_times",
    "sample_lights",
    "sample_multiview_cameras",
    "sample_video_cameras",
    "spherical_to_position",
]
