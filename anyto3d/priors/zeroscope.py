"""Zeroscope v2 576w (text-to-video) as a Prior: the video SDS score of 4D-fy (its Eq. 6).

Zeroscope is ModelScope's text-to-video architecture — diffusers' ``UNet3DConditionModel``: SD's
2D UNet with temporal convolutions and temporal attention after each spatial layer — fine-tuned at
320×576, with an SD 2.x VAE applied **per frame** and the OpenCLIP-H text encoder; ε-prediction.

Video layout at this boundary (DESIGN §4 extended to time):

* a clip is ``[B, 3, F, H, W]`` in [−1, 1] — channels before frames, diffusers' video layout, so
  that latents ``[B, 4, F, h, w]`` are what the 3D UNet consumes without a transpose;
* a renderer produces a clip as ``F`` images ``[B·F, 3, H, W]``, **clip-major** (rows
  ``k·F … k·F+F−1`` are clip ``k``'s frames in time order): :func:`frames_to_video` and
  :func:`video_to_frames` convert between the two.

:meth:`ZeroscopePrior.encode` resizes each frame to ``image_size`` (320×576 for the release;
4D-fy renders 160×288 and upsamples bilinearly) and encodes frames independently; ``decode`` is the
inverse. A 4-D tensor passed to ``encode`` is an error (is it one clip of F frames or F clips?).

One timestep per clip (threestudio's Zeroscope guidance draws one t for the whole clip); the
conditioning is ``{"encoder_hidden_states": [B, L, D]}`` and the unconditional branch the empty
prompt. CFG is ``ε_u + s(ε_c − ε_u)``: threestudio/4D-fy's Zeroscope guidance computes
``ε_c + s(ε_c − ε_u)`` with s = 100, which is this form with s = 101 — a config reproducing it must
add 1 (:mod:`anyto3d.priors.base`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import torch

from anyto3d.errors import InputError
from anyto3d.priors.base import Condition
from anyto3d.priors.latent import LatentDiffusionPrior

#: Zeroscope v2 576w's training resolution (H, W).
ZEROSCOPE_576W_SIZE = (320, 576)


def frames_to_video(frames: torch.Tensor, num_frames: int) -> torch.Tensor:
    """``[B·F, 3, H, W]`` clip-major frames → ``[B, 3, F, H, W]``."""
    if frames.dim() != 4:
        raise InputError(f"frames must be [B·F, C, H, W]; got {tuple(frames.shape)}")
    if num_frames < 1 or frames.shape[0] % num_frames:
        raise InputError(f"{frames.shape[0]} frames do not split into clips of {num_frames}")
    b = frames.shape[0] // num_frames
    return frames.reshape(b, num_frames, *frames.shape[1:]).transpose(1, 2)


def video_to_frames(video: torch.Tensor) -> torch.Tensor:
    """``[B, C, F, H, W]`` → ``[B·F, C, H, W]`` clip-major frames."""
    if video.dim() != 5:
        raise InputError(f"video must be [B, C, F, H, W]; got {tuple(video.shape)}")
    b, c, f, h, w = video.shape
    return video.transpose(1, 2).reshape(b * f, c, h, w)


class ZeroscopePrior(LatentDiffusionPrior):
    """Zeroscope v2 576w: text → ε for video latents ``[B, 4, F, h, w]`` (module docstring)."""

    model_key: ClassVar[str | None] = "zeroscope_v2_576w"
    component_classes: ClassVar[dict[str, tuple[str, str, str]]] = {
        **LatentDiffusionPrior.component_classes,
        "unet": ("diffusers", "UNet3DConditionModel", "diffusers_model"),
    }
    pipeline_class_name: ClassVar[str] = "TextToVideoSDPipeline"

    # -- per-frame latent codec -------------------------------------------------------------------
    def _check_video(self, video: torch.Tensor, channels: int, what: str) -> None:
        if video.dim() != 5 or video.shape[1] != channels:
            raise InputError(
                f"{what} must be [B, {channels}, F, H, W]; got {tuple(video.shape)} "
                "(a batch of rendered frames [B·F, 3, H, W] converts with frames_to_video)"
            )

    def encode(
        self, video: torch.Tensor, generator: torch.Generator | None = None, posterior: str | None = None
    ) -> torch.Tensor:
        """Clips ``[B, 3, F, H, W]`` in [−1, 1] → latents ``[B, 4, F, h, w]``, each frame encoded alone."""
        self._check_video(video, 3, "video")
        frames = super().encode(video_to_frames(video), generator=generator, posterior=posterior)
        return frames_to_video(frames, video.shape[2])

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, 4, F, h, w]`` → clips ``[B, 3, F, H, W]`` (not clamped)."""
        self._check_video(latents, self.latent_shape[0], "video latents")
        frames = super().decode(video_to_frames(latents))
        return frames_to_video(frames, latents.shape[2])

    def video_latent_shape(self, num_frames: int) -> tuple[int, int, int, int]:
        """(C, F, h, w) of one clip's latent."""
        c, h, w = self.latent_shape
        return (c, num_frames, h, w)

    # -- denoiser ---------------------------------------------------------------------------------
    def forward_model(self, z_t: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        """ε for video latents ``[B, 4, F, h, w]``; frames interact through the temporal layers."""
        self._check_video(z_t, self.latent_shape[0], "video latents")
        out = self.unet(
            z_t.to(self.dtype),
            t,
            encoder_hidden_states=cond["encoder_hidden_states"].to(self.dtype),
        ).sample
        return out.to(z_t.dtype)

    # -- load -------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, local_dir: str | Path | None = None, **kwargs) -> "ZeroscopePrior":
        """``cerspense/zeroscope_v2_576w`` (diffusers layout) or our own save; never downloaded.

        Frames are resized to 320×576 unless ``image_size`` is given or the directory was saved by
        this adapter with another size.
        """
        saved_size = False
        if local_dir is not None and (Path(local_dir) / "model_index.json").is_file():
            saved_size = "anyto3d_image_size" in json.loads((Path(local_dir) / "model_index.json").read_text())
        if not saved_size:
            kwargs.setdefault("image_size", ZEROSCOPE_576W_SIZE)
        return super().from_pretrained(local_dir, **kwargs)

    # -- dummies ----------------------------------------------------------------------------------
    full_size_options: ClassVar[dict] = {"image_size": ZEROSCOPE_576W_SIZE}

    @classmethod
    def full_size_components(cls) -> dict[str, object]:
        """Zeroscope v2 576w at full size, random weights: ModelScope's UNet3D, SD's VAE and text encoder."""
        from anyto3d.priors import architectures as arch

        return {**super().full_size_components(), "unet": arch.zeroscope_unet3d()}

    @classmethod
    def dummy_components(
        cls,
        prediction_type: str = "epsilon",
        latent_size: int | tuple[int, int] = 8,
        unet_channels: tuple[int, ...] = (16, 32),
        text_hidden_size: int = 16,
        with_text: bool = True,
    ) -> dict[str, object]:
        """SD dummies with a reduced-size ``UNet3DConditionModel`` (real class, random weights)."""
        from diffusers import UNet3DConditionModel

        comps = super().dummy_components(prediction_type, 8, unet_channels, text_hidden_size, with_text)
        comps["unet"] = UNet3DConditionModel(
            sample_size=latent_size,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
            block_out_channels=tuple(unet_channels),
            layers_per_block=1,
            norm_num_groups=min(unet_channels) // 2,
            cross_attention_dim=text_hidden_size,
            attention_head_dim=4,
        )
        return comps


__all__ = ["ZEROSCOPE_576W_SIZE", "ZeroscopePrior", "frames_to_video", "video_to_frames"]
