"""Videos, GIFs, contact sheets and turntable renders of an asset.

* ``.mp4`` is H.264 through imageio's pyav plugin with ``codec="libx264"`` (without the codec
  argument the plugin fails on this stack; no system ffmpeg is needed). H.264 in yuv420p needs
  even frame sizes, so an odd height or width is padded by repeating the last row/column.
* ``.gif`` goes through imageio's Pillow plugin, looping forever.
Files are encoded in memory and written atomically (temporary sibling + rename).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from anyto3d.cameras import CameraBatch, orbit_cameras
from anyto3d.errors import InputError, NonFiniteError
from anyto3d.export.mesh_export import write_atomic

RenderFn = Callable[[CameraBatch], torch.Tensor]


def frames_to_uint8(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """Frames [N, H, W, 3] (uint8, or float in [0, 1] — clamped) as a uint8 numpy array.

    A single image [H, W, 3] is one frame; an alpha channel is dropped.
    """
    f = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if f.ndim == 3:
        f = f[None]
    if f.ndim != 4 or f.shape[-1] not in (3, 4) or 0 in f.shape:
        raise InputError(f"frames must be [N, H, W, 3] with N, H, W > 0, got shape {f.shape}")
    f = f[..., :3]
    if f.dtype == np.uint8:
        return np.ascontiguousarray(f)
    if not np.issubdtype(f.dtype, np.floating):
        raise InputError(f"frames must be uint8 or float in [0, 1], got {f.dtype}")
    if not np.isfinite(f).all():
        raise NonFiniteError("frames contain non-finite values (NaN or Inf)")
    return (np.clip(f, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _pad_to_even(frames: np.ndarray) -> np.ndarray:
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if not (pad_h or pad_w):
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def encode_video(frames: torch.Tensor | np.ndarray, suffix: str, fps: float = 30) -> bytes:
    """Encode frames as ``.mp4`` (H.264) or ``.gif`` bytes."""
    import imageio.v3 as iio

    if fps <= 0:
        raise InputError(f"fps must be positive, got {fps}")
    f = frames_to_uint8(frames)
    suffix = suffix.lower()
    if suffix == ".mp4":
        return iio.imwrite("<bytes>", _pad_to_even(f), extension=".mp4", plugin="pyav", codec="libx264", fps=fps)
    if suffix == ".gif":
        return iio.imwrite("<bytes>", f, extension=".gif", duration=1000.0 / fps, loop=0)
    raise InputError(f"video format {suffix!r} is not supported; use .mp4 or .gif")


def write_video(path: str | os.PathLike, frames: torch.Tensor | np.ndarray, fps: float = 30) -> Path:
    """Write frames [N, H, W, 3] to ``path`` (``.mp4`` or ``.gif``, chosen by the extension)."""
    path = Path(path)
    write_atomic({path: encode_video(frames, path.suffix, fps)})
    return path


def contact_sheet(frames: torch.Tensor | np.ndarray, columns: int | None = None, fill: int = 255) -> np.ndarray:
    """Tile frames [N, H, W, 3] into one uint8 image [rows·H, columns·W, 3], row-major.

    ``columns`` defaults to ⌈√N⌉; cells past the last frame are ``fill`` (white).
    """
    f = frames_to_uint8(frames)
    n, height, width, _ = f.shape
    columns = columns or math.ceil(math.sqrt(n))
    if columns <= 0:
        raise InputError(f"columns must be positive, got {columns}")
    rows = math.ceil(n / columns)
    sheet = np.full((rows * columns, height, width, 3), fill, dtype=np.uint8)
    sheet[:n] = f
    grid = sheet.reshape(rows, columns, height, width, 3).transpose(0, 2, 1, 3, 4)
    return grid.reshape(rows * height, columns * width, 3)


@torch.no_grad()
def turntable(
    render_fn: RenderFn,
    n_views: int = 120,
    elevation_deg: float = 15.0,
    distance: float = 2.5,
    fovy_deg: float = 40.0,
    batch_size: int = 8,
    times: torch.Tensor | None = None,
) -> np.ndarray:
    """Render the evaluation orbit (:func:`anyto3d.cameras.orbit_cameras`) in batches.

    ``render_fn`` maps a :class:`CameraBatch` to images [B, H, W, 3] in [0, 1]. ``times`` (e.g.
    ``torch.linspace(0, 1, n_views)``) renders a 4D scene along the orbit. Returns uint8
    [n_views, H, W, 3], frame k at azimuth k·360°/n_views.
    """
    if n_views <= 0 or batch_size <= 0:
        raise InputError(f"n_views and batch_size must be positive, got {n_views} and {batch_size}")
    cameras = orbit_cameras(n_views, elevation_deg, distance, fovy_deg, times=times)
    frames = []
    for start in range(0, n_views, batch_size):
        batch = cameras[start : start + batch_size]
        images = render_fn(batch)
        if images.dim() != 4 or images.shape[0] != len(batch) or images.shape[-1] != 3:
            raise InputError(
                f"render_fn must return [B, H, W, 3] for a batch of {len(batch)} cameras, got {tuple(images.shape)}"
            )
        frames.append(frames_to_uint8(images))
    return np.concatenate(frames)


__all__ = ["contact_sheet", "encode_video", "frames_to_uint8", "turntable", "write_video"]
