"""Stable Diffusion 2.1 unCLIP: XBind's 2D prior, conditioned on the aligned embedding C_m.

The UNet takes an image embedding through ``class_labels`` (class_embed_type "projection",
input ``2·D``) and text through cross-attention. As diffusers' StableUnCLIP pipelines and the
original ``CLIPEmbeddingNoiseAugmentation`` do, the embedding is noise-augmented first:

    e' = unscale(add_noise(scale(e), ε, noise_level)),
    class_labels = [e', timestep_embedding(noise_level)]            (2·D values)

with ``scale``/``unscale`` the StableUnCLIPImageNormalizer (CLIP-embedding mean/std) and
``add_noise`` the ``image_noising_scheduler`` (DDPM, squaredcos_cap_v2, 1000 levels).
ImageBind's joint space is OpenCLIP ViT-H's (D = 1024), so its embedding goes in directly
(BindDiffusion, research/papers_code.md §5); whether XBind normalises it and which noise level
it uses are not published: both are the caller's choice (default noise level 0, as diffusers).

**Unconditional branch** (CFG): the empty prompt's text embedding and ``class_labels`` all
zeros, i.e. the zero vector *after* noise augmentation, noise-level embedding included — what
``StableUnCLIPImg2ImgPipeline`` does (``torch.zeros_like(image_embeds)``). BindDiffusion instead
keeps the same ``class_labels`` in the negative branch (only the text differs):
``unconditional_image="same"`` reproduces that.

Weights: the diffusers ``stabilityai/stable-diffusion-2-1-unclip`` layout (v-prediction, 768²);
``image_encoder``/``feature_extractor`` are not loaded (the embedding comes from ImageBind).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from anyto3d.errors import InputError
from anyto3d.priors.base import Condition
from anyto3d.priors.latent import (
    LatentDiffusionPrior,
    cpu_parts,
    dummy_scheduler,
    dummy_text_encoder,
    dummy_unet,
    dummy_vae,
)

_NORMALIZER_MODULE = "diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer"


def dummy_image_normalizer(embedding_dim: int):
    """A StableUnCLIPImageNormalizer with non-trivial random mean/std (so scale/unscale matter)."""
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer

    norm = StableUnCLIPImageNormalizer(embedding_dim=embedding_dim)
    with torch.no_grad():
        norm.mean.copy_(0.1 * torch.randn(1, embedding_dim))
        norm.std.copy_(0.5 + torch.rand(1, embedding_dim))
    return norm


def unclip_noising_scheduler(num_train_timesteps: int = 1000):
    """The embedding noise-augmentation scheduler of SD 2.1 unCLIP (DDPM, squaredcos_cap_v2)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="squaredcos_cap_v2")


class StableUnCLIPPrior(LatentDiffusionPrior):
    """SD 2.1 unCLIP behind the Prior interface. Condition keys: ``encoder_hidden_states`` [B,L,Dt],
    ``class_labels`` [B, 2·D]."""

    model_key: ClassVar[str] = "sd-2-1-unclip"
    pipeline_class_name: ClassVar[str] = "StableUnCLIPImg2ImgPipeline"
    component_classes: ClassVar[dict] = {
        **LatentDiffusionPrior.component_classes,
        "image_normalizer": (_NORMALIZER_MODULE, "StableUnCLIPImageNormalizer", "diffusers_model"),
        "image_noising_scheduler": ("diffusers", "DDPMScheduler", "scheduler"),
    }
    optional_components: ClassVar[tuple[str, ...]] = ()
    constructor_options: ClassVar[tuple[str, ...]] = ("image_size", "posterior", "unconditional_image")

    def __init__(self, *args, image_normalizer=None, image_noising_scheduler=None, unconditional_image: str = "zeros", **kwargs):
        if image_normalizer is None or image_noising_scheduler is None:
            raise InputError("StableUnCLIPPrior needs image_normalizer and image_noising_scheduler components")
        if unconditional_image not in ("zeros", "same"):
            raise InputError(
                f"unconditional_image must be 'zeros' (diffusers) or 'same' (BindDiffusion), got {unconditional_image!r}"
            )
        super().__init__(*args, image_normalizer=image_normalizer, image_noising_scheduler=image_noising_scheduler, **kwargs)
        self.unconditional_image = unconditional_image
        self._require_text()

    @property
    def embedding_dim(self) -> int:
        """D of the image embedding (1024 for SD 2.1 unCLIP-H / ImageBind)."""
        return int(self.image_normalizer.config.embedding_dim)

    @property
    def max_noise_level(self) -> int:
        return int(self.image_noising_scheduler.config.num_train_timesteps)

    # -- conditioning ----------------------------------------------------------------------------
    def noise_augment(
        self,
        image_embedding: torch.Tensor,
        noise_level: int = 0,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """unCLIP's embedding noise augmentation → ``class_labels`` [B, 2·D] (see module docstring)."""
        if not (isinstance(noise_level, int) and 0 <= noise_level < self.max_noise_level):
            raise InputError(f"noise_level must be an integer in [0, {self.max_noise_level}), got {noise_level!r}")
        from diffusers.models.embeddings import get_timestep_embedding

        norm = self.image_normalizer
        e = image_embedding.to(norm.mean.device, norm.mean.dtype)
        if noise is None:
            gen_device = "cpu" if generator is None else generator.device
            noise = torch.randn(e.shape, generator=generator, dtype=e.dtype, device=gen_device).to(e.device)
        levels = torch.full((e.shape[0],), noise_level, dtype=torch.long, device=e.device)
        noised = self.image_noising_scheduler.add_noise(norm.scale(e), noise.to(e), levels)
        noised = norm.unscale(noised)
        level_emb = get_timestep_embedding(levels, self.embedding_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        return torch.cat([noised, level_emb.to(noised.dtype)], dim=1)

    def build_condition(
        self,
        image_embedding: torch.Tensor | None = None,
        text: list[str] | None = None,
        noise_level: int = 0,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        **unused,
    ) -> Condition:
        """C_m [B, D] (+ optional prompts, one or B; default the empty prompt) → the unCLIP condition."""
        if unused:
            raise InputError(f"StableUnCLIPPrior.build_condition got unexpected inputs {sorted(unused)}")
        if image_embedding is None or image_embedding.dim() != 2 or image_embedding.shape[1] != self.embedding_dim:
            shape = None if image_embedding is None else tuple(image_embedding.shape)
            raise InputError(f"image_embedding must be [B, {self.embedding_dim}]; got {shape}")
        b = image_embedding.shape[0]
        text = [""] * b if text is None else list(text)
        if len(text) == 1 and b > 1:
            text = text * b
        if len(text) != b:
            raise InputError(f"got {len(text)} prompts for {b} image embeddings (give 1 or {b})")
        class_labels = self.noise_augment(image_embedding, noise_level, noise=noise, generator=generator)
        return {"encoder_hidden_states": self.text_embeddings(text), "class_labels": class_labels.to(self.device, self.dtype)}

    def unconditional(self, cond: Condition) -> Condition:
        b = cond["class_labels"].shape[0]
        labels = cond["class_labels"] if self.unconditional_image == "same" else torch.zeros_like(cond["class_labels"])
        return {"encoder_hidden_states": self.empty_text_embedding(b), "class_labels": labels}

    def forward_model(self, z_t: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        out = self.unet(
            z_t.to(self.dtype),
            t,
            encoder_hidden_states=cond["encoder_hidden_states"].to(self.dtype),
            class_labels=cond["class_labels"].to(self.dtype),
        ).sample
        return out.to(z_t.dtype)

    # -- dummies -----------------------------------------------------------------------------------
    @classmethod
    def full_size_components(cls) -> dict[str, object]:
        """SD 2.1 unCLIP-H at full size, random weights: 768² images, v-prediction, the 1024-d image
        embedding and its noise-level embedding concatenated into the UNet's class embedding."""
        from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer

        from anyto3d.priors import architectures as arch

        with torch.device("cpu"):
            noising = unclip_noising_scheduler()
        unet = arch.sd_unet(arch.SD2_UNET, sample_size=96, class_embed_type="projection",
                            projection_class_embeddings_input_dim=2 * 1024)
        return {"vae": arch.sd_vae(768), "unet": unet, "text_encoder": arch.sd2_text_encoder(),
                "image_normalizer": StableUnCLIPImageNormalizer(embedding_dim=1024),
                "image_noising_scheduler": noising, **cpu_parts("v_prediction")}

    @classmethod
    def dummy_components(
        cls,
        prediction_type: str = "v_prediction",
        latent_size: int = 8,
        unet_channels: tuple[int, ...] = (16, 32),
        text_hidden_size: int = 16,
        embedding_dim: int = 16,
    ) -> dict[str, object]:
        """SD 2.1 unCLIP's architecture at reduced size (random weights; v-prediction like the release)."""
        from anyto3d.encoders.clip_tokenizer import clip_tokenizer

        return {
            "vae": dummy_vae(),
            "unet": dummy_unet(
                sample_size=latent_size,
                block_out_channels=unet_channels,
                cross_attention_dim=text_hidden_size,
                class_embed_type="projection",
                projection_class_embeddings_input_dim=2 * embedding_dim,
            ),
            "scheduler": dummy_scheduler(prediction_type),
            "text_encoder": dummy_text_encoder(text_hidden_size),
            "tokenizer": clip_tokenizer(),
            "image_normalizer": dummy_image_normalizer(embedding_dim),
            "image_noising_scheduler": unclip_noising_scheduler(),
        }
