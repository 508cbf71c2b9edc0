"""The tiny world's four diffusion priors, on diffusers classes at small sizes (DESIGN §6).

Each is a :class:`~anyto3d.priors.base.Prior`, so every loss in :mod:`anyto3d.losses` runs on it
unchanged, and each has ``build_tiny(preset, **overrides)``, ``save_pretrained(dir)`` and
``from_pretrained(dir)`` (``config.json`` + ``model.safetensors``, plus a diffusers ``vae/``
directory when the prior works in latents). :func:`load_tiny_prior` reads any of them.

=====================  =====================  ===============================================
role (paper model)      class                  network / conditioning
=====================  =====================  ===============================================
2D (SD 2.1 unCLIP)      TinyImagePrior         ``UNet2DModel`` (extends PixelDiffusionPrior);
                                               binder embedding + its noise level, added to
                                               the time embedding; camera-unaware
novel view (Zero123)    TinyNovelViewPrior     ``UNet2DModel`` on [z_t ‖ reference] channels;
                                               relative camera [Δpolar, sin Δaz, cos Δaz, Δr]
                                               (+ optional reference embedding) → time emb.
multi-view (MVDream)    TinyMultiViewPrior     ``UNet2DConditionModel`` with MVDream's
                                               multi-view self-attention; 16-d camera as class
                                               embedding; embedding → cross-attention tokens
video (Zeroscope)       TinyVideoPrior         ``UNet3DConditionModel`` on [B, C, F, h, w];
                                               embedding → cross-attention tokens
=====================  =====================  ===============================================

**Embeddings are plain tensors** ``[B, D]`` (the binder's aligned space, or any stand-in such as
:class:`WorldCodeEmbedding`); the priors never import an encoder.

**2D prior and the unCLIP noise augmentation.** SD 2.1 unCLIP conditions on a CLIP image
embedding that was noised during training at a random level, and the level is an input too, so a
sampler can ask for a looser (more varied) reading of the embedding. Here
:func:`noise_augment_embedding` noises the embedding (scaled to unit per-component variance)
with a cosine schedule at level ℓ ∈ [0, 1]; ℓ goes through sinusoidal features concatenated to
the embedding before the MLP. Inference uses ℓ = 0 by default. The prior sees no camera, like
Stable Diffusion; DreamFusion's view-dependent prompts are available the same way they are for
SD: embed the caption with a view suffix (``"a red house, back view"``) with the binder's text
tower and pass *that* embedding — the prior itself stays camera-unaware.

**Latent path.** Any prior can work through a small ``AutoencoderKL`` (:func:`build_tiny_vae`,
trained by ``train_priors.train_vae``): pass ``vae=`` to the constructor; the UNet then runs on
latents (``config.image_size``/``config.channels`` describe the UNet's grid: the latent one) and
``encode``/``decode`` go through the VAE (posterior mode, scaled by the VAE's fitted
``scaling_factor``). The VAE is frozen inside a prior.

Null conditions (CFG, conditioning dropout): zero embedding and level (2D); zero reference,
camera and embedding (novel view, as the Zero-1-to-3 release); zero embedding with the cameras
kept (multi-view, as MVDream); zero embedding (video).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import nn

from anyto3d.cameras import CameraBatch
from anyto3d.errors import InputError, MissingWeightsError
from anyto3d.module_io import CONFIG_NAME, load_module, save_module
from anyto3d.priors.base import Condition, Prior
from anyto3d.priors.mvdream import install_multiview_attention, normalize_camera
from anyto3d.priors.pixel import (
    PixelDiffusionPrior,
    PixelPriorConfig,
    make_schedule,
    resnet_time_scale_shift,
)
from anyto3d.priors.sampling import ddim_sample

VAE_DIR = "vae"
RELATIVE_CAMERA_DIM = 4  # Zero-1-to-3: [Δpolar, sin Δaz, cos Δaz, Δradius]
MULTIVIEW_CAMERA_DIM = 16  # MVDream: normalised c2w, flattened


# ---------------------------------------------------------------------------------------------
# Embedding helpers
# ---------------------------------------------------------------------------------------------


def sinusoidal_features(x: torch.Tensor, n: int) -> torch.Tensor:
    """``[B]`` scalars in [0, 1] → ``[B, n]`` sin/cos features (n even) at octave frequencies."""
    if n == 0:
        return x.new_zeros(x.shape[0], 0)
    freqs = 2.0 ** torch.arange(n // 2, dtype=x.dtype, device=x.device) * math.pi
    ang = x[:, None] * freqs
    return torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1)


def noise_augment_embedding(
    embedding: torch.Tensor,
    level: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """unCLIP's embedding noise augmentation at level ℓ ∈ [0, 1] (ℓ = 0: unchanged).

    The embedding is scaled to unit per-component RMS, mixed with Gaussian noise as
    ``cos(πℓ/2)·e + sin(πℓ/2)·ξ`` (a variance-preserving cosine schedule), and scaled back to
    the embedding's norm, so a fully noised embedding carries no information and ℓ = 0 is exact.
    """
    level = torch.as_tensor(
        level, dtype=embedding.dtype, device=embedding.device
    ).reshape(-1)
    level = level.expand(embedding.shape[0])
    if bool((level < 0).any()) or bool((level > 1).any()):
        raise InputError(f"noise levels must lie in [0, 1], got {level.tolist()}")
    D = embedding.shape[-1]
    norm = embedding.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    unit = embedding / norm * math.sqrt(D)
    xi = torch.randn(embedding.shape, generator=generator, dtype=embedding.dtype).to(
        embedding.device
    )
    a = torch.cos(level * math.pi / 2)[:, None]
    b = torch.sin(level * math.pi / 2)[:, None]
    return (a * unit + b * xi) * norm / math.sqrt(D)


def _object_tokens(obj) -> list[str]:
    """Attribute tokens of a world object from its id (``cone-red.on.cube-blue`` →
    ``a:cone, a:red, rel:on, b:cube, b:blue``): shared by every object with that attribute."""
    parts = obj.id.split(".")
    if len(parts) == 1:
        return [f"x:{p}" for p in parts[0].split("-")]
    subject, relation, reference = parts
    return (
        [f"a:{p}" for p in subject.split("-")]
        + [f"rel:{relation}"]
        + [f"b:{p}" for p in reference.split("-")]
    )


class WorldCodeEmbedding:
    """A stand-in for the binder: a fixed unit vector per object, the normalised sum of random
    vectors of its attributes (shape, colour, orientation, relation; plus the motion for clips).

    Compositional, so held-out shape × colour combinations get meaningful codes. Deterministic in
    ``(dim, seed)``. Use it to train and test the priors without a trained binder; pass the
    binder's embeddings instead for the real world.
    """

    def __init__(self, dim: int = 64, seed: int = 0):
        if dim < 1:
            raise InputError(f"embedding dim must be >= 1, got {dim}")
        self.dim, self.seed = int(dim), int(seed)
        self._cache: dict[str, torch.Tensor] = {}

    def token(self, name: str) -> torch.Tensor:
        from anyto3d.zoo.world import stable_rank

        if name not in self._cache:
            g = torch.Generator().manual_seed(
                stable_rank(name, self.seed) % (2**63 - 1)
            )
            self._cache[name] = torch.randn(self.dim, generator=g)
        return self._cache[name]

    def __call__(self, objects: list, motions: list[str] | None = None) -> torch.Tensor:
        """``[len(objects), dim]`` unit vectors (``motions``: one per object, for clips)."""
        if motions is not None and len(motions) != len(objects):
            raise InputError(f"{len(motions)} motions for {len(objects)} objects")
        out = []
        for i, obj in enumerate(objects):
            tokens = _object_tokens(obj) + (
                [f"motion:{motions[i]}"] if motions is not None else []
            )
            v = torch.stack([self.token(t) for t in tokens]).sum(0)
            out.append(v / v.norm())
        return torch.stack(out)


# ---------------------------------------------------------------------------------------------
# The VAE
# ---------------------------------------------------------------------------------------------


def build_tiny_vae(
    block_out_channels: tuple[int, ...] = (32, 64),
    latent_channels: int = 4,
    image_size: int = 32,
    seed: int = 0,
):
    """A small ``AutoencoderKL`` (downsampling 2**(levels − 1)); train it with ``train_priors.train_vae``."""
    from diffusers import AutoencoderKL

    n = len(block_out_channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=1,
            latent_channels=latent_channels,
            norm_num_groups=min(8, min(block_out_channels)),
            sample_size=image_size,
            scaling_factor=1.0,
        )


def vae_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


# ---------------------------------------------------------------------------------------------
# Shared machinery
# ---------------------------------------------------------------------------------------------


@dataclass
class TinyUNetConfig:
    """What every tiny prior shares. ``image_size``/``channels`` are the UNet's grid (the latent
    grid when a VAE is attached). Defaults are the planned 32² pixel sizes."""

    image_size: int = 32
    channels: int = 3
    embedding_dim: int = 64
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    attention: tuple[bool, ...] = (False, False, True)
    layers_per_block: int = 1
    norm_num_groups: int = 8
    attention_head_dim: int = 32
    num_timesteps: int = 1000
    schedule: Literal["cosine", "linear"] = "cosine"
    # v-prediction trained much faster than ε at this scale (measured with the losses helper)
    prediction_type: Literal["epsilon", "v_prediction"] = "v_prediction"
    latent_factor: int = 1  # image pixels per UNet cell (1: pixel space)
    # Feed the unit embedding at unit per-component RMS (× √D). Unscaled, its components
    # (≈ 0.09 at D = 128) were a twentieth of the inputs beside them (noise-level features,
    # cameras), and the 2D prior learnt colour but no shape: 0.06 of samples had the asked
    # shape, even for training objects (measured). False only for weights saved before the
    # field existed.
    scale_embedding: bool = False
    # True: the time embedding (which carries the condition) scales and shifts each ResNet
    # block's normalised features (FiLM) instead of being added to them. Not for the video
    # prior: UNet3DConditionModel has no such option.
    time_scale_shift: bool = False

    def __post_init__(self):
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        self.attention = tuple(bool(a) for a in self.attention)
        if len(self.attention) != len(self.block_out_channels):
            raise InputError("attention needs one flag per entry of block_out_channels")
        if self.image_size % 2 ** (len(self.block_out_channels) - 1):
            raise InputError(
                f"image_size {self.image_size} is not divisible by 2^{len(self.block_out_channels) - 1}"
            )
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise InputError(
                f"block_out_channels {self.block_out_channels} must be multiples of norm_num_groups"
            )
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise InputError(
                f"prediction_type {self.prediction_type!r} is not 'epsilon' or 'v_prediction'"
            )
        if self.latent_factor < 1:
            raise InputError(f"latent_factor must be >= 1, got {self.latent_factor}")

    @classmethod
    def from_dict(cls, data: dict):
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InputError(f"unknown {cls.__name__} keys {sorted(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _down_up(
    attention: tuple[bool, ...],
    attn_down: str,
    plain_down: str,
    attn_up: str,
    plain_up: str,
):
    down = tuple(attn_down if a else plain_down for a in attention)
    up = tuple(attn_up if a else plain_up for a in reversed(attention))
    return down, up


def _cross_attention_unet(config, **extra):
    """A UNet2DConditionModel on ``config``'s grid and levels, cross-attention where ``attention``
    is set (the 2D prior's token option and the multi-view prior share it); ``extra``: the rest."""
    from diffusers import UNet2DConditionModel

    down, up = _down_up(config.attention, "CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    return UNet2DConditionModel(
        sample_size=config.image_size,
        in_channels=config.channels,
        out_channels=config.channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        norm_num_groups=config.norm_num_groups,
        cross_attention_dim=config.cross_attention_dim,
        resnet_time_scale_shift=resnet_time_scale_shift(config.time_scale_shift),
        **extra,
    )


class TinyPriorMixin:
    """Latent codec (identity or a frozen VAE), save/load and sampling for the tiny priors."""

    config_class: ClassVar[type] = TinyUNetConfig
    #: presets for ``build_tiny``: "planned" (the trained sizes) and "test" (CPU-test sizes)
    presets: ClassVar[dict[str, dict]] = {}

    def embedding_input(self, embedding: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The conditioning embedding as the network reads it (``scale_embedding``: × √D)."""
        embedding = embedding.to(dtype)
        if self.config.scale_embedding:
            embedding = embedding * math.sqrt(self.config.embedding_dim)
        return embedding

    # -- VAE ------------------------------------------------------------------------------------
    def _attach_vae(self, vae) -> None:
        self.vae = vae
        self.image_size = self.config.image_size * self.config.latent_factor
        if vae is None:
            if self.config.latent_factor != 1:
                raise InputError(
                    f"latent_factor {self.config.latent_factor} needs a VAE"
                )
            return
        if (
            vae_factor(vae) != self.config.latent_factor
            or vae.config.latent_channels != self.config.channels
        ):
            raise InputError(
                f"VAE (factor {vae_factor(vae)}, {vae.config.latent_channels} channels) does not match the UNet grid "
                f"(latent_factor {self.config.latent_factor}, channels {self.config.channels})"
            )
        vae.requires_grad_(False)
        vae.eval()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode_frames(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in [-1, 1] → UNet-grid tensors (resized; through the VAE if any)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise InputError(
                f"images must be [B, 3, H, W] in [-1, 1]; got {tuple(images.shape)}"
            )
        size = self.image_size
        if images.shape[-2:] != (size, size):
            shrink = images.shape[-1] > size or images.shape[-2] > size
            images = nn.functional.interpolate(
                images,
                (size, size),
                mode="bilinear",
                align_corners=False,
                antialias=shrink,
            )
        if self.vae is None:
            return images
        z = self.vae.encode(images.to(self.vae.dtype)).latent_dist.mode()
        return (z * float(self.vae.config.scaling_factor)).to(images.dtype)

    def decode_frames(self, z: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return z
        return self.vae.decode(
            (z / float(self.vae.config.scaling_factor)).to(self.vae.dtype)
        ).sample.to(z.dtype)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_frames(images)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decode_frames(latents)

    # -- construction / persistence ---------------------------------------------------------------
    @classmethod
    def build_tiny(cls, preset: str = "planned", vae=None, seed: int = 0, **overrides):
        """A fresh prior at a named size (``presets``), deterministic in ``seed``; ``image_size`` is in
        pixels (the UNet grid is ``image_size // factor`` when a ``vae`` is given)."""
        if preset not in cls.presets:
            raise InputError(
                f"unknown preset {preset!r} for {cls.__name__}; choose from {', '.join(cls.presets)}"
            )
        # every fresh prior scales its embedding; only weights saved without the field do not
        values = {"scale_embedding": True, **cls.presets[preset], **overrides}
        if vae is not None:
            values.setdefault("channels", int(vae.config.latent_channels))
            values.setdefault("latent_factor", vae_factor(vae))
            values["image_size"] = values.get("image_size", 32) // vae_factor(
                vae
            )  # pixels → latent grid
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(cls.config_class(**values), vae=vae)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The prior's own weights (the frozen VAE is saved separately)."""
        return {
            k: v
            for k, v in self.state_dict().items()
            if not k.startswith(VAE_DIR + ".")
        }

    def save_pretrained(self, path: str | Path) -> Path:
        path = save_module(path, {"anyto3d_class": type(self).__name__, **self.config.to_dict()}, self.trainable_state())
        if self.vae is not None:
            self.vae.save_pretrained(path / VAE_DIR, safe_serialization=True)
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu"):
        path = Path(path)
        data, state = load_module(
            path, "tiny prior", f"train it: python -m anyto3d.zoo.train_priors <kind> --data D --out {path}"
        )
        name = data.pop("anyto3d_class", cls.__name__)
        if name != cls.__name__:
            raise InputError(
                f"{path} holds a {name}, not a {cls.__name__} (use load_tiny_prior)"
            )
        vae = load_tiny_vae(path / VAE_DIR) if (path / VAE_DIR).is_dir() else None
        prior = cls(cls.config_class.from_dict(data), vae=vae)
        result = prior.load_state_dict(state, strict=False)
        bad = [
            k for k in result.missing_keys if not k.startswith(VAE_DIR + ".")
        ] + list(result.unexpected_keys)
        if bad:
            raise InputError(f"weights in {path} do not match the config: {bad[:4]}")
        return prior.to(
            device
        ).eval()  # eval: UNet3D's temporal convolutions have dropout

    # -- sampling ----------------------------------------------------------------------------------
    def latent_batch_shape(self, cond: Condition) -> tuple[int, ...]:
        b = next(iter(cond.values())).shape[0]
        return (b, self.config.channels, self.config.image_size, self.config.image_size)

    @torch.no_grad()
    def sample(
        self,
        cond: Condition,
        guidance_scale: float = 3.0,
        steps: int = 50,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """DDIM (η = 0) samples with CFG, decoded, in [-1, 1] (pixel priors clamp x̂_0 to [-1, 1])."""
        clip = 1.0 if self.vae is None else None
        return ddim_sample(
            self,
            cond,
            self.latent_batch_shape(cond),
            steps=steps,
            guidance_scale=guidance_scale,
            generator=generator,
            clip_x0=clip,
        )


def load_tiny_vae(path: str | Path):
    from diffusers import AutoencoderKL

    path = Path(path)
    if not (path / "config.json").is_file():
        raise MissingWeightsError(
            f"no tiny VAE in {path} (train it: python -m anyto3d.zoo.train_priors vae ...)"
        )
    return AutoencoderKL.from_pretrained(path, local_files_only=True)


def _check_embedding(embedding, dim: int, device) -> torch.Tensor:
    embedding = torch.as_tensor(embedding, dtype=torch.float32)
    if embedding.dim() == 1:
        embedding = embedding[None]
    if embedding.dim() != 2 or embedding.shape[1] != dim:
        raise InputError(f"embedding must be [B, {dim}], got {tuple(embedding.shape)}")
    return embedding.to(device)


# ---------------------------------------------------------------------------------------------
# 2D prior (unCLIP's role)
# ---------------------------------------------------------------------------------------------


@dataclass
class TinyImagePriorConfig(TinyUNetConfig):
    """2D prior: the embedding and sinusoidal features of its noise level feed the time embedding."""

    level_features: int = 8
    noise_aug_max: float = (
        1.0  # training draws ℓ = max · u², u ~ U(0, 1) (biased to light noise)
    )
    # > 0: the embedding also enters as this many cross-attention tokens (UNet2DConditionModel,
    # cross-attention at the levels ``attention`` marks and in the middle block), beside the
    # additive path, as the multi-view and video priors read theirs. 0: the published UNet2DModel.
    context_tokens: int = 0
    cross_attention_dim: int = 64


class TinyImagePrior(TinyPriorMixin, PixelDiffusionPrior):
    """The tiny world's unCLIP: ``{"embedding": [B, D], "noise_level": [B]}`` → ε (module docstring).

    Extends :class:`PixelDiffusionPrior` (same UNet2DModel and embedding MLP) with the noise-level
    input and the optional VAE.
    """

    config_class: ClassVar[type] = TinyImagePriorConfig
    presets: ClassVar[dict[str, dict]] = {
        "planned": {"image_size": 32, "embedding_dim": 64},
        "test": {
            "image_size": 16,
            "embedding_dim": 8,
            "block_out_channels": (16, 32),
            "attention": (False, True),
            "attention_head_dim": 16,
        },
    }

    def __init__(self, config: TinyImagePriorConfig | None = None, vae=None):
        config = config or TinyImagePriorConfig()
        base = {f.name: getattr(config, f.name) for f in fields(PixelPriorConfig)}
        PixelDiffusionPrior.__init__(self, PixelPriorConfig(**base))
        self.config = config
        width = config.block_out_channels[0] * 4
        self.embedding_proj = nn.Sequential(
            nn.Linear(config.embedding_dim + config.level_features, width),
            nn.SiLU(),
            nn.Linear(width, width),
        )
        if config.context_tokens > 0:
            # heads of attention_head_dim channels, as the UNet2DModel's (diffusers counts heads here)
            heads = tuple(max(1, c // config.attention_head_dim) for c in config.block_out_channels)
            self.unet = _cross_attention_unet(config, attention_head_dim=heads, class_embed_type="identity")
            self.context_proj = nn.Linear(config.embedding_dim, config.context_tokens * config.cross_attention_dim)
        self._attach_vae(vae)

    def build_condition(
        self,
        embedding: torch.Tensor | None = None,
        noise_level: float | torch.Tensor = 0.0,
        generator: torch.Generator | None = None,
        **unused,
    ) -> Condition:
        """Embedding ``[B, D]`` (or ``[D]``), noised at ``noise_level`` (scalar or ``[B]``, in [0, 1])."""
        if unused:
            raise InputError(
                f"TinyImagePrior.build_condition got unexpected inputs {sorted(unused)}"
            )
        if embedding is None:
            raise InputError("the 2D prior needs embedding=[B, D]")
        emb = _check_embedding(embedding, self.config.embedding_dim, self.device)
        level = (
            torch.as_tensor(noise_level, dtype=torch.float32)
            .reshape(-1)
            .to(self.device)
            .expand(emb.shape[0])
        )
        if bool((level > 0).any()):
            emb = noise_augment_embedding(emb, level, generator)
        return {"embedding": emb, "noise_level": level.clone()}

    def unconditional(self, cond: Condition) -> Condition:
        return {k: torch.zeros_like(v) for k, v in cond.items()}

    def forward_model(
        self, z_t: torch.Tensor, t: torch.Tensor, cond: Condition
    ) -> torch.Tensor:
        feats = sinusoidal_features(
            cond["noise_level"].to(z_t.dtype), self.config.level_features
        )
        embedding = self.embedding_input(cond["embedding"], z_t.dtype)
        emb = self.embedding_proj(torch.cat([embedding, feats], dim=-1))
        c = self.config
        if c.context_tokens > 0:
            context = self.context_proj(embedding).view(-1, c.context_tokens, c.cross_attention_dim)
            return self.unet(z_t, t, encoder_hidden_states=context, class_labels=emb).sample
        return self.unet(z_t, t, class_labels=emb).sample

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_frames(images)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decode_frames(latents)


# ---------------------------------------------------------------------------------------------
# Novel-view prior (Zero-1-to-3's role)
# ---------------------------------------------------------------------------------------------


@dataclass
class TinyNovelViewConfig(TinyUNetConfig):
    """``embedding_dim`` 0 disables the reference-embedding input (camera only)."""

    embedding_dim: int = 0
    # 0: the raw relative camera shares one MLP with the embedding (weights saved before this
    # field). K > 0: the camera, with sin/cos of k·Δaz for k = 1..K, has an MLP of its own. In the
    # shared MLP the 4 camera inputs sat beside 128 embedding inputs, and the trained prior's
    # error moved by 3 % between the asked turn and none (60 % with its own MLP): it copied the
    # reference (measured, MODEL_CARD).
    camera_harmonics: int = 0


class TinyNovelViewPrior(TinyPriorMixin, Prior):
    """Zero-1-to-3's role: ε for a target view given the reference view and the relative camera.

    Condition ``{"reference": [B, C, h, w]`` (the encoded reference view, concatenated to z_t on
    channels), ``"camera": [B, 4]`` (:func:`anyto3d.cameras.relative_camera`), and, when
    ``embedding_dim > 0``, ``"embedding": [B, D]`` (the reference's binder embedding)``}``. Camera
    and embedding go through an MLP to the time-embedding width and are added to it.
    """

    config_class: ClassVar[type] = TinyNovelViewConfig
    presets: ClassVar[dict[str, dict]] = {
        "planned": {"image_size": 32, "camera_harmonics": 4},
        "test": {
            "image_size": 16,
            "camera_harmonics": 2,
            "block_out_channels": (16, 32),
            "attention": (False, True),
            "attention_head_dim": 16,
        },
    }

    def __init__(self, config: TinyNovelViewConfig | None = None, vae=None):
        from diffusers import UNet2DModel

        config = config or TinyNovelViewConfig()
        super().__init__(make_schedule(config.schedule, config.num_timesteps))
        self.config = config
        self.prediction_type = config.prediction_type
        down, up = _down_up(
            config.attention,
            "AttnDownBlock2D",
            "DownBlock2D",
            "AttnUpBlock2D",
            "UpBlock2D",
        )
        self.unet = UNet2DModel(
            sample_size=config.image_size,
            in_channels=2 * config.channels,
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
        width = config.block_out_channels[0] * 4

        def mlp(n_in: int) -> nn.Module:
            return nn.Sequential(nn.Linear(n_in, width), nn.SiLU(), nn.Linear(width, width))

        if config.camera_harmonics > 0:
            self.camera_proj = mlp(2 + 2 * config.camera_harmonics)
            self.condition_proj = mlp(config.embedding_dim) if config.embedding_dim > 0 else None
        else:
            self.condition_proj = mlp(RELATIVE_CAMERA_DIM + config.embedding_dim)
        self._attach_vae(vae)

    def camera_features(self, camera: torch.Tensor) -> torch.Tensor:
        """[Δpolar, Δradius, sin kΔaz, cos kΔaz (k = 1..K)] from the relative camera ``[B, 4]``."""
        d_az = torch.atan2(camera[:, 1], camera[:, 2])
        k = torch.arange(1, self.config.camera_harmonics + 1, dtype=camera.dtype, device=camera.device)
        return torch.cat([camera[:, :1], camera[:, 3:], torch.sin(d_az[:, None] * k), torch.cos(d_az[:, None] * k)], -1)

    def build_condition(
        self,
        reference_image: torch.Tensor | None = None,
        relative_camera: torch.Tensor | None = None,
        embedding: torch.Tensor | None = None,
        reference: torch.Tensor | None = None,
        **unused,
    ) -> Condition:
        """Reference view ``[1 or B, 3, H, W]`` in [-1, 1] (or its ``encode`` output as ``reference``),
        relative cameras ``[B, 4]`` and, if the prior takes one, the reference embedding ``[1 or B, D]``."""
        if unused:
            raise InputError(
                f"TinyNovelViewPrior.build_condition got unexpected inputs {sorted(unused)}"
            )
        if (reference_image is None) == (reference is None):
            raise InputError(
                "give exactly one of reference_image=[B,3,H,W] or reference=prior.encode(image)"
            )
        if (
            relative_camera is None
            or relative_camera.dim() != 2
            or relative_camera.shape[1] != RELATIVE_CAMERA_DIM
        ):
            shape = None if relative_camera is None else tuple(relative_camera.shape)
            raise InputError(
                f"relative_camera must be [B, 4] = [Δpolar, sin Δaz, cos Δaz, Δradius]; got {shape}"
            )
        b = relative_camera.shape[0]
        ref = (
            self.encode(reference_image.to(self.device))
            if reference is None
            else reference.to(self.device)
        )
        if ref.shape[0] not in (1, b):
            raise InputError(
                f"{ref.shape[0]} reference images for {b} cameras (give 1 or {b})"
            )
        cond = {
            "reference": ref.expand(b, -1, -1, -1).contiguous(),
            "camera": relative_camera.float().to(self.device),
        }
        if self.config.embedding_dim > 0:
            if embedding is None:
                raise InputError(
                    f"this novel-view prior also takes the reference embedding [B, {self.config.embedding_dim}]"
                )
            emb = _check_embedding(embedding, self.config.embedding_dim, self.device)
            if emb.shape[0] not in (1, b):
                raise InputError(
                    f"{emb.shape[0]} embeddings for {b} cameras (give 1 or {b})"
                )
            cond["embedding"] = emb.expand(b, -1).contiguous()
        elif embedding is not None:
            raise InputError(
                "this novel-view prior was built without an embedding input (embedding_dim=0)"
            )
        return cond

    def unconditional(self, cond: Condition) -> Condition:
        return {k: torch.zeros_like(v) for k, v in cond.items()}

    def forward_model(
        self, z_t: torch.Tensor, t: torch.Tensor, cond: Condition
    ) -> torch.Tensor:
        camera = cond["camera"].to(z_t.dtype)
        embedding = [self.embedding_input(cond["embedding"], z_t.dtype)] if "embedding" in cond else []
        if self.config.camera_harmonics > 0:
            emb = self.camera_proj(self.camera_features(camera))
            if embedding:
                emb = emb + self.condition_proj(embedding[0])
        else:
            emb = self.condition_proj(torch.cat([camera, *embedding], dim=-1))
        x = torch.cat([z_t, cond["reference"].to(z_t.dtype)], dim=1)
        return self.unet(x, t, class_labels=emb).sample


# ---------------------------------------------------------------------------------------------
# Multi-view prior (MVDream's role)
# ---------------------------------------------------------------------------------------------


@dataclass
class TinyMultiViewConfig(TinyUNetConfig):
    """``attention_head_dim`` here is the number of heads (diffusers' UNet2DConditionModel quirk)."""

    attention_head_dim: int = 4
    num_views: int = 4
    context_tokens: int = 4
    cross_attention_dim: int = 64


class TinyMultiViewPrior(TinyPriorMixin, Prior):
    """MVDream's role: N views of one object denoised jointly, each with its camera.

    Batch rows are object-major groups of ``num_views`` views. Condition
    ``{"embedding": [B·N, D], "camera": [B·N, 16]}`` (:func:`~anyto3d.priors.mvdream.normalize_camera`).
    The embedding becomes ``context_tokens`` cross-attention tokens; the camera is the UNet's
    projection class embedding (MVDream's camera MLP); every self-attention spans the group's views
    (:func:`~anyto3d.priors.mvdream.install_multiview_attention`).
    """

    config_class: ClassVar[type] = TinyMultiViewConfig
    presets: ClassVar[dict[str, dict]] = {
        "planned": {
            "image_size": 32,
            "block_out_channels": (32, 64, 128),
            "attention": (False, True, True),
        },
        "test": {
            "image_size": 16,
            "embedding_dim": 8,
            "block_out_channels": (16, 32),
            "attention": (False, True),
            "attention_head_dim": 2,
            "cross_attention_dim": 16,
            "context_tokens": 2,
        },
    }

    def __init__(self, config: TinyMultiViewConfig | None = None, vae=None):
        config = config or TinyMultiViewConfig()
        super().__init__(make_schedule(config.schedule, config.num_timesteps))
        self.config = config
        self.prediction_type = config.prediction_type
        self.num_views = config.num_views
        self.unet = _cross_attention_unet(
            config,
            attention_head_dim=config.attention_head_dim,
            use_linear_projection=True,
            class_embed_type="projection",
            projection_class_embeddings_input_dim=MULTIVIEW_CAMERA_DIM,
        )
        install_multiview_attention(self.unet)
        self.context_proj = nn.Linear(
            config.embedding_dim, config.context_tokens * config.cross_attention_dim
        )
        self._attach_vae(vae)

    def build_condition(
        self,
        embedding: torch.Tensor | None = None,
        cameras: CameraBatch | torch.Tensor | None = None,
        **unused,
    ) -> Condition:
        """Embedding ``[1, D]``, one per object ``[B, D]`` or one per view ``[B·N, D]``; cameras a
        :class:`CameraBatch` or c2w ``[B·N, 4, 4]`` (object-major, B·N a multiple of ``num_views``)."""
        if unused:
            raise InputError(
                f"TinyMultiViewPrior.build_condition got unexpected inputs {sorted(unused)}"
            )
        if embedding is None or cameras is None:
            raise InputError("the multi-view prior needs embedding=[B, D] and cameras")
        c2w = (
            cameras.c2w
            if isinstance(cameras, CameraBatch)
            else torch.as_tensor(cameras, dtype=torch.float32)
        )
        n = c2w.shape[0]
        if n == 0 or n % self.num_views:
            raise InputError(
                f"{n} cameras is not a positive multiple of num_views={self.num_views}"
            )
        emb = _check_embedding(embedding, self.config.embedding_dim, self.device)
        if emb.shape[0] == 1:
            emb = emb.expand(n, -1)
        elif emb.shape[0] == n // self.num_views:
            emb = emb.repeat_interleave(self.num_views, dim=0)
        elif emb.shape[0] != n:
            raise InputError(
                f"{emb.shape[0]} embeddings for {n // self.num_views} objects × {self.num_views} views"
            )
        return {
            "embedding": emb.contiguous(),
            "camera": normalize_camera(c2w.float()).to(self.device),
        }

    def unconditional(self, cond: Condition) -> Condition:
        """Cameras kept, embedding dropped (as MVDream drops the text only)."""
        return {
            "embedding": torch.zeros_like(cond["embedding"]),
            "camera": cond["camera"],
        }

    def forward_model(
        self, z_t: torch.Tensor, t: torch.Tensor, cond: Condition
    ) -> torch.Tensor:
        if z_t.shape[0] % self.num_views:
            raise InputError(
                f"batch of {z_t.shape[0]} is not a multiple of num_views={self.num_views}"
            )
        c = self.config
        context = self.context_proj(self.embedding_input(cond["embedding"], z_t.dtype)).view(
            -1, c.context_tokens, c.cross_attention_dim
        )
        return self.unet(
            z_t,
            t,
            encoder_hidden_states=context,
            class_labels=cond["camera"].to(z_t.dtype),
            cross_attention_kwargs={"num_views": self.num_views},
        ).sample


# ---------------------------------------------------------------------------------------------
# Video prior (Zeroscope's role)
# ---------------------------------------------------------------------------------------------


@dataclass
class TinyVideoConfig(TinyUNetConfig):
    """``attention_head_dim`` is the per-head width of UNet3DConditionModel's attentions."""

    attention_head_dim: int = 8
    num_frames: int = 8
    context_tokens: int = 4
    cross_attention_dim: int = 64

    def __post_init__(self):
        super().__post_init__()
        if self.time_scale_shift:
            raise InputError("the video prior's UNet3DConditionModel has no time_scale_shift (FiLM) option")


class TinyVideoPrior(TinyPriorMixin, Prior):
    """Zeroscope's role: ε for clips ``[B, C, F, h, w]`` (diffusers' video layout, as
    :mod:`anyto3d.priors.zeroscope`), conditioned on a caption embedding ``{"embedding": [B, D]}``
    projected to ``context_tokens`` cross-attention tokens. Frames interact through the UNet's
    temporal convolutions and attentions. Frames go through the VAE one by one when one is attached.
    """

    config_class: ClassVar[type] = TinyVideoConfig
    presets: ClassVar[dict[str, dict]] = {
        "planned": {
            "image_size": 32,
            "block_out_channels": (32, 64, 64),
            "attention": (False, True, True),
        },
        "test": {
            "image_size": 16,
            "embedding_dim": 8,
            "block_out_channels": (16, 32),
            "attention": (False, True),
            "attention_head_dim": 4,
            "cross_attention_dim": 16,
            "context_tokens": 2,
            "num_frames": 4,
        },
    }

    def __init__(self, config: TinyVideoConfig | None = None, vae=None):
        from diffusers import UNet3DConditionModel

        config = config or TinyVideoConfig()
        super().__init__(make_schedule(config.schedule, config.num_timesteps))
        self.config = config
        self.prediction_type = config.prediction_type
        down, up = _down_up(
            config.attention,
            "CrossAttnDownBlock3D",
            "DownBlock3D",
            "CrossAttnUpBlock3D",
            "UpBlock3D",
        )
        self.unet = UNet3DConditionModel(
            sample_size=config.image_size,
            in_channels=config.channels,
            out_channels=config.channels,
            down_block_types=down,
            up_block_types=up,
            block_out_channels=config.block_out_channels,
            layers_per_block=config.layers_per_block,
            norm_num_groups=config.norm_num_groups,
            cross_attention_dim=config.cross_attention_dim,
            attention_head_dim=config.attention_head_dim,
        )
        self.context_proj = nn.Linear(
            config.embedding_dim, config.context_tokens * config.cross_attention_dim
        )
        self._attach_vae(vae)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Clips ``[B, 3, F, H, W]`` in [-1, 1] → ``[B, C, F, h, w]``, frame by frame."""
        from anyto3d.priors.zeroscope import frames_to_video, video_to_frames

        if video.dim() != 5 or video.shape[1] != 3:
            raise InputError(f"video must be [B, 3, F, H, W]; got {tuple(video.shape)}")
        return frames_to_video(
            self.encode_frames(video_to_frames(video)), video.shape[2]
        )

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        from anyto3d.priors.zeroscope import frames_to_video, video_to_frames

        return frames_to_video(
            self.decode_frames(video_to_frames(latents)), latents.shape[2]
        )

    def build_condition(
        self, embedding: torch.Tensor | None = None, **unused
    ) -> Condition:
        if unused:
            raise InputError(
                f"TinyVideoPrior.build_condition got unexpected inputs {sorted(unused)}"
            )
        if embedding is None:
            raise InputError("the video prior needs embedding=[B, D]")
        return {
            "embedding": _check_embedding(
                embedding, self.config.embedding_dim, self.device
            )
        }

    def unconditional(self, cond: Condition) -> Condition:
        return {"embedding": torch.zeros_like(cond["embedding"])}

    def forward_model(
        self, z_t: torch.Tensor, t: torch.Tensor, cond: Condition
    ) -> torch.Tensor:
        if z_t.dim() != 5:
            raise InputError(
                f"video latents must be [B, C, F, h, w]; got {tuple(z_t.shape)}"
            )
        c = self.config
        context = self.context_proj(self.embedding_input(cond["embedding"], z_t.dtype)).view(
            -1, c.context_tokens, c.cross_attention_dim
        )
        return self.unet(z_t, t, encoder_hidden_states=context).sample

    def latent_batch_shape(self, cond: Condition) -> tuple[int, ...]:
        b = cond["embedding"].shape[0]
        c = self.config
        return (b, c.channels, c.num_frames, c.image_size, c.image_size)


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

PRIOR_CLASSES: dict[str, type] = {
    "prior2d": TinyImagePrior,
    "novelview": TinyNovelViewPrior,
    "multiview": TinyMultiViewPrior,
    "video": TinyVideoPrior,
}


def load_tiny_prior(path: str | Path, device: str | torch.device = "cpu") -> Prior:
    """Any tiny prior saved by ``save_pretrained`` (its class is in ``config.json``)."""
    path = Path(path)
    if not (path / CONFIG_NAME).is_file():
        raise MissingWeightsError(f"no tiny prior in {path} (no {CONFIG_NAME})")
    name = json.loads((path / CONFIG_NAME).read_text()).get("anyto3d_class")
    by_name = {c.__name__: c for c in PRIOR_CLASSES.values()}
    if name not in by_name:
        raise InputError(
            f"{path}/{CONFIG_NAME} names {name!r}, not one of {', '.join(by_name)}"
        )
    return by_name[name].from_pretrained(path, device)


__all__ = [
    "PRIOR_CLASSES",
    "TinyImagePrior",
    "TinyImagePriorConfig",
    "TinyMultiViewConfig",
    "TinyMultiViewPrior",
    "TinyNovelViewConfig",
    "TinyNovelViewPrior",
    "TinyPriorMixin",
    "TinyUNetConfig",
    "TinyVideoConfig",
    "TinyVideoPrior",
    "WorldCodeEmbedding",
    "build_tiny_vae",
    "load_tiny_prior",
    "load_tiny_vae",
    "noise_augment_embedding",
    "sinusoidal_features",
    "vae_factor",
]
