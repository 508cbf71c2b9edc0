"""Pixel-space priors (identity codec): a small learned one and an exact analytic one.

* :class:`PixelDiffusionPrior` — a diffusers ``UNet2DModel`` at small size, conditioned on an
  embedding vector (a class one-hot, or an aligned-encoder embedding: the tiny world's unCLIP
  role). The embedding goes through a 2-layer MLP to the UNet's time-embedding width and is added
  to the time embedding (``class_embed_type="identity"``). The null embedding is all zeros;
  training drops the condition to it with probability ``p_uncond`` (:func:`drop_condition`
  in :mod:`anyto3d.losses.diffusion`) so CFG works. Saved as ``config.json`` +
  ``model.safetensors``.
* :class:`GaussianPixelPrior` — data ``x ~ N(μ_c, s²I)`` with the condition giving μ_c. Its
  ε̂ is the exact posterior mean E[ε | z_t] = √(1−ᾱ)(z_t − √ᾱ μ)/(ᾱ s² + 1 − ᾱ), affine in z_t,
  so every distillation gradient has a closed form. For tests and worked examples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from anyto3d.errors import InputError
from anyto3d.module_io import load_module, save_module
from anyto3d.priors.base import Condition, NoiseSchedule, Prior


def linear_schedule(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
    """DDPM's linear β schedule."""
    betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    return NoiseSchedule(torch.cumprod(1 - betas, 0).float())


def make_schedule(kind: str, num_timesteps: int) -> NoiseSchedule:
    if kind == "cosine":
        return NoiseSchedule.cosine(num_timesteps)
    if kind == "linear":
        return linear_schedule(num_timesteps)
    raise InputError(f"noise schedule {kind!r} is not 'cosine' or 'linear'")


def resnet_time_scale_shift(film: bool) -> str:
    """diffusers' name for how the time embedding enters a ResBlock."""
    return "scale_shift" if film else "default"


@dataclass
class PixelPriorConfig:
    """Architecture and schedule of a :class:`PixelDiffusionPrior`.

    The defaults are the tiny world's 32² prior measured in ``research/tinyworld_derisk.md``
    (channels 32-64-128, one ResBlock per level, attention at the lowest resolution, cosine
    schedule, T = 1000, ε-prediction).
    """

    image_size: int = 32
    channels: int = 3
    embedding_dim: int = 16
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    attention: tuple[bool, ...] = (False, False, True)
    layers_per_block: int = 1
    norm_num_groups: int = 8
    attention_head_dim: int = 32
    num_timesteps: int = 1000
    schedule: Literal["cosine", "linear"] = "cosine"
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    # True: the time (+ condition) embedding scales and shifts each ResBlock's normalised
    # features (FiLM, diffusers' resnet_time_scale_shift="scale_shift") instead of being added
    time_scale_shift: bool = False

    def __post_init__(self):
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        self.attention = tuple(bool(a) for a in self.attention)
        if len(self.attention) != len(self.block_out_channels):
            raise InputError("attention needs one flag per entry of block_out_channels")
        if self.image_size % 2 ** (len(self.block_out_channels) - 1):
            raise InputError(
                f"image_size {self.image_size} is not divisible by 2^{len(self.block_out_channels) - 1} "
                "(one halving per extra level)"
            )
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise InputError(f"block_out_channels {self.block_out_channels} must be multiples of norm_num_groups")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise InputError(f"prediction_type {self.prediction_type!r} is not 'epsilon' or 'v_prediction'")

    @classmethod
    def from_dict(cls, data: dict) -> "PixelPriorConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InputError(f"unknown pixel prior config keys {sorted(unknown)}")
        return cls(**data)


#: A tiny configuration for tests and CPU smoke runs (16², two levels).
DUMMY_CONFIG = dict(
    image_size=16, embedding_dim=8, block_out_channels=(16, 32), attention=(False, True),
    norm_num_groups=8, attention_head_dim=16, num_timesteps=1000,
)


class PixelDiffusionPrior(Prior):
    """A small pixel-space diffusion prior conditioned on an embedding vector (module docstring).

    Condition: ``{"embedding": [B, embedding_dim]}``; unconditional: zeros of that shape.
    """

    def __init__(self, config: PixelPriorConfig | None = None):
        from diffusers import UNet2DModel

        config = config or PixelPriorConfig()
        super().__init__(make_schedule(config.schedule, config.num_timesteps))
        self.config = config
        self.prediction_type = config.prediction_type
        self.image_size = config.image_size
        down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in config.attention)
        up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(config.attention))
        self.unet = UNet2DModel(
            sample_size=config.image_size,
            in_channels=config.channels,
            out_channels=config.channels,
            down_block_types=down,
            up_block_types=up,
            block_out_channels=config.block_out_channels,
            layers_per_block=config.layers_per_block,
            norm_num_groups=config.norm_num_groups,
            attention_head_dim=config.attention_head_dim,
            class_embed_type="identity",
            resnet_time_scale_shift=resnet_time_scale_shift(config.time_scale_shift),
        )
        width = config.block_out_channels[0] * 4  # UNet2DModel's time-embedding width
        self.embedding_proj = nn.Sequential(
            nn.Linear(config.embedding_dim, width), nn.SiLU(), nn.Linear(width, width)
        )

    # -- construction / persistence ---------------------------------------------------------
    @classmethod
    def build_dummy(cls, **overrides) -> "PixelDiffusionPrior":
        """A tiny random-weight prior (16², channels 16-32) for tests."""
        return cls(PixelPriorConfig(**{**DUMMY_CONFIG, **overrides}))

    def save_pretrained(self, path: str | Path) -> Path:
        cfg = asdict(self.config)
        cfg["block_out_channels"] = list(cfg["block_out_channels"])
        cfg["attention"] = list(cfg["attention"])
        return save_module(path, {"anyto3d_class": "PixelDiffusionPrior", **cfg}, self.state_dict())

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> "PixelDiffusionPrior":
        data, state = load_module(
            path, "pixel diffusion prior", "train one with the tiny zoo, or point the model path at its directory"
        )
        data.pop("anyto3d_class", None)
        prior = cls(PixelPriorConfig.from_dict(data))
        prior.load_state_dict(state)
        return prior.to(device)

    # -- conditioning -----------------------------------------------------------------------
    def build_condition(self, embedding: torch.Tensor | None = None, class_labels=None, **unused) -> Condition:
        """``embedding`` [B, D] or [D]; or ``class_labels`` (ints) as one-hot vectors of size D."""
        if (embedding is None) == (class_labels is None):
            raise InputError("give exactly one of embedding or class_labels")
        D = self.config.embedding_dim
        if class_labels is not None:
            labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
            if bool((labels < 0).any()) or bool((labels >= D).any()):
                raise InputError(f"class labels must lie in [0, {D}), got {labels.tolist()}")
            embedding = torch.nn.functional.one_hot(labels, D).float()
        embedding = torch.as_tensor(embedding, dtype=torch.float32)
        if embedding.dim() == 1:
            embedding = embedding[None]
        if embedding.dim() != 2 or embedding.shape[1] != D:
            raise InputError(f"embedding must be [B, {D}], got {tuple(embedding.shape)}")
        return {"embedding": embedding.to(self.device)}

    def unconditional(self, cond: Condition) -> Condition:
        return {"embedding": torch.zeros_like(cond["embedding"])}

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- denoiser ---------------------------------------------------------------------------
    def forward_model(self, z_t: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        emb = self.embedding_proj(cond["embedding"].to(z_t.dtype))
        return self.unet(z_t, t, class_labels=emb).sample

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Identity codec, resizing to ``image_size`` (bilinear, antialiased when shrinking)."""
        size = self.config.image_size
        if images.shape[-2:] == (size, size):
            return images
        shrink = images.shape[-1] > size or images.shape[-2] > size
        return torch.nn.functional.interpolate(
            images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink
        )

    @torch.no_grad()
    def sample(
        self,
        cond: Condition,
        guidance_scale: float = 3.0,
        steps: int = 50,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """DDIM (η = 0) samples [B, 3, H, W] in [-1, 1] with CFG, for looking at what the prior learnt."""
        B = cond["embedding"].shape[0]
        size, T = self.config.image_size, self.schedule.num_timesteps
        z = torch.randn((B, self.config.channels, size, size), generator=generator).to(self.device)
        grid = torch.linspace(T - 1, 0, steps).round().long()
        for i, t in enumerate(grid):
            tb = t.expand(B).to(self.device)
            eps = self.guided_noise(z, tb, cond, guidance_scale)
            x0 = self.schedule.predict_x0(z, eps, tb).clamp(-1, 1)
            a = self.schedule.alpha_bar(tb, z)
            eps = (z - a.sqrt() * x0) / (1 - a).sqrt()
            if i == steps - 1:
                return x0
            a_next = self.schedule.alpha_bar(grid[i + 1].expand(B).to(self.device), z)
            z = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
        return z


class GaussianPixelPrior(Prior):
    """Exact prior of Gaussian data x ~ N(μ, s²I), μ given by the condition (module docstring).

    Condition ``{"mean": μ}`` with μ of the latent's shape (batch 1 or B); unconditional: μ =
    ``null_mean`` everywhere. ``prediction_type="v_prediction"`` returns the exact v instead of ε
    (to exercise the conversion). No parameters.
    """

    def __init__(
        self,
        std: float = 0.5,
        null_mean: float = 0.0,
        num_timesteps: int = 1000,
        schedule: Literal["cosine", "linear"] = "cosine",
        prediction_type: Literal["epsilon", "v_prediction"] = "epsilon",
        image_size: int = 8,
    ):
        super().__init__(make_schedule(schedule, num_timesteps))
        self.std = float(std)
        self.null_mean = float(null_mean)
        self.prediction_type = prediction_type
        self.image_size = image_size

    def build_condition(self, mean: torch.Tensor | None = None, **unused) -> Condition:
        if mean is None:
            raise InputError("GaussianPixelPrior needs mean=<tensor of the latent shape>")
        return {"mean": torch.as_tensor(mean, dtype=torch.float32)}

    def unconditional(self, cond: Condition) -> Condition:
        return {"mean": torch.full_like(cond["mean"], self.null_mean)}

    def exact_noise(self, z_t: torch.Tensor, t: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """E[ε | z_t] = √(1−ᾱ)(z_t − √ᾱ μ)/(ᾱ s² + 1 − ᾱ)."""
        a = self.schedule.alpha_bar(t, z_t)
        return (1 - a).sqrt() * (z_t - a.sqrt() * mean) / (a * self.std**2 + 1 - a)

    def forward_model(self, z_t: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        mean = cond["mean"].to(z_t)
        eps = self.exact_noise(z_t, t, mean)
        if self.prediction_type == "epsilon":
            return eps
        a = self.schedule.alpha_bar(t, z_t)
        x0 = (z_t - (1 - a).sqrt() * eps) / a.sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * x0


__all__ = [
    "DUMMY_CONFIG",
    "GaussianPixelPrior",
    "PixelDiffusionPrior",
    "PixelPriorConfig",
    "linear_schedule",
    "make_schedule",
]
