"""Zero-1-to-3: XBind's 3D-aware novel-view prior (the 3D SDS of Eq. 10).

Conditioning on a reference view x_r and a relative camera (as the release, ``ldm_zero123`` and
its diffusers port ``bennyguo/zero123-xl-diffusers``):

* **concat**: the UNet has 8 input channels, ``[z_t ‖ c_concat]``; ``c_concat`` is the VAE
  posterior *mode* of x_r **without** the ``scaling_factor``. Zero-1-to-3 was trained that way
  (``encode_first_stage(x).mode()``; the scale factor only applies to the denoised latent), the
  diffusers port does the same, and threestudio's diffusers variant gets there by dividing its
  scaled latent by ``scaling_factor``. The noisy latent z_t itself is scaled as usual.
* **cross-attention**: ``cc_projection(cat(CLIP_image_embedding(x_r)[768], camera[4]))`` → 768,
  one token. ``camera`` = [Δpolar (rad), sin Δazimuth, cos Δazimuth, Δradius] with Δ = target −
  reference for azimuth and radius. The release's first component is the change of the *polar*
  angle (90° − elevation), i.e. reference elevation − target elevation (threestudio:
  ``deg2rad((90 − elev) − (90 − cond_elev))``); pass it with that sign.
* **unconditional** (CFG): zeros for both the projected cross-attention token and the concat
  latent, as the release.

The CLIP image embedding follows ldm_zero123's FrozenCLIPImageEmbedder: [-1,1] → [0,1], bicubic
resize to the encoder's input size, CLIP mean/std normalisation, projected image embedding.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from anyto3d.errors import InputError
from anyto3d.priors.base import Condition
from anyto3d.priors.latent import LatentDiffusionPrior, cpu_parts, dummy_scheduler, dummy_unet, dummy_vae, resize_images

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CAMERA_DIM = 4


class CCProjection(ModelMixin, ConfigMixin):
    """Zero-1-to-3's ``cc_projection``: Linear(CLIP dim + 4 → CLIP dim) over [embedding ‖ camera].

    Same name, config keys and parameter names (``projection.weight/bias``) as the diffusers port,
    so its ``clip_camera_projection/`` directory loads directly.
    """

    @register_to_config
    def __init__(self, in_channel: int = 772, out_channel: int = 768):
        super().__init__()
        self.projection = torch.nn.Linear(in_channel, out_channel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(x)


def dummy_image_encoder(hidden_size: int = 16, projection_dim: int = 16, image_size: int = 32):
    """A real CLIPVisionModelWithProjection (2 layers) with random weights."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=8,
        projection_dim=projection_dim,
    )
    return CLIPVisionModelWithProjection(cfg)


class Zero123Prior(LatentDiffusionPrior):
    """Zero-1-to-3 behind the Prior interface. Condition keys: ``encoder_hidden_states`` [B,1,D]
    (the projected image+camera token) and ``image_latent`` [B,4,h,w] (the unscaled concat latent)."""

    model_key: ClassVar[str] = "zero123"
    pipeline_class_name: ClassVar[str] = "Zero1to3StableDiffusionPipeline"
    component_classes: ClassVar[dict] = {
        "vae": ("diffusers", "AutoencoderKL", "diffusers_model"),
        "unet": ("diffusers", "UNet2DConditionModel", "diffusers_model"),
        "scheduler": ("diffusers", "DDIMScheduler", "scheduler"),
        "image_encoder": ("transformers", "CLIPVisionModelWithProjection", "transformers_model"),
        "clip_camera_projection": ("anyto3d.priors.zero123", "CCProjection", "diffusers_model"),
    }
    optional_components: ClassVar[tuple[str, ...]] = ()

    def __init__(self, vae, unet, scheduler, image_encoder=None, clip_camera_projection=None, **kwargs):
        if image_encoder is None or clip_camera_projection is None:
            raise InputError("Zero123Prior needs image_encoder and clip_camera_projection components")
        if unet.config.in_channels != 2 * vae.config.latent_channels:
            raise InputError(
                f"Zero123's UNet takes [z_t ‖ reference latent]: in_channels must be {2 * vae.config.latent_channels}, "
                f"got {unet.config.in_channels}"
            )
        super().__init__(
            vae, unet, scheduler, image_encoder=image_encoder, clip_camera_projection=clip_camera_projection, **kwargs
        )

    @property
    def clip_image_size(self) -> int:
        return int(self.image_encoder.config.image_size)

    # -- reference encoding ----------------------------------------------------------------------
    def clip_image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [-1,1] → the CLIP projected image embedding [B, D] (ldm_zero123 preprocessing)."""
        self._check_images(images)
        size = self.clip_image_size
        x = (images + 1.0) * 0.5
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=True)
        mean = torch.tensor(CLIP_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        x = ((x - mean) / std).to(self.image_encoder.dtype)
        return self.image_encoder(pixel_values=x).image_embeds.to(images.dtype)

    def encode_reference(self, reference_image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encode x_r once: {"image_embedding": [B, D], "image_latent": [B, 4, h, w] (unscaled mode)}.

        Reuse the result across steps (``build_condition(reference=...)``): only the camera changes.
        """
        self._check_images(reference_image)
        x = resize_images(reference_image, self.image_size)
        latent = self.vae.encode(x.to(self.vae.dtype)).latent_dist.mode()  # unscaled: see module docstring
        embedding = self.clip_image_embedding(reference_image)
        return {"image_embedding": embedding, "image_latent": latent.to(reference_image.dtype)}

    def project_camera(self, image_embedding: torch.Tensor, relative_camera: torch.Tensor) -> torch.Tensor:
        """cc_projection(cat(embedding [B,D], camera [B,4])) → cross-attention context [B, 1, D]."""
        x = torch.cat([image_embedding, relative_camera.to(image_embedding)], dim=-1)
        return self.clip_camera_projection(x.to(self.dtype))[:, None, :]

    # -- Prior interface ---------------------------------------------------------------------------
    def build_condition(
        self,
        reference_image: torch.Tensor | None = None,
        relative_camera: torch.Tensor | None = None,
        reference: dict[str, torch.Tensor] | None = None,
        **unused,
    ) -> Condition:
        """x_r [1 or B,3,H,W] in [-1,1] (or its ``encode_reference`` output) + camera [B,4] → condition."""
        if unused:
            raise InputError(f"Zero123Prior.build_condition got unexpected inputs {sorted(unused)}")
        if (reference_image is None) == (reference is None):
            raise InputError("give exactly one of reference_image=[B,3,H,W] or reference=encode_reference(...)")
        if relative_camera is None or relative_camera.dim() != 2 or relative_camera.shape[1] != CAMERA_DIM:
            shape = None if relative_camera is None else tuple(relative_camera.shape)
            raise InputError(f"relative_camera must be [B, 4] = [Δpolar, sin Δaz, cos Δaz, Δradius]; got {shape}")
        ref = self.encode_reference(reference_image) if reference is None else reference
        b = relative_camera.shape[0]
        emb, latent = ref["image_embedding"], ref["image_latent"]
        if emb.shape[0] not in (1, b):
            raise InputError(f"{emb.shape[0]} reference images for {b} cameras (give 1 or {b})")
        emb, latent = emb.expand(b, -1), latent.expand(b, -1, -1, -1)
        return {"encoder_hidden_states": self.project_camera(emb, relative_camera), "image_latent": latent.to(self.dtype)}

    def unconditional(self, cond: Condition) -> Condition:
        return {k: torch.zeros_like(v) for k, v in cond.items()}

    def forward_model(self, z_t: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        x = torch.cat([z_t.to(self.dtype), cond["image_latent"].to(self.dtype)], dim=1)
        out = self.unet(x, t, encoder_hidden_states=cond["encoder_hidden_states"].to(self.dtype)).sample
        return out.to(z_t.dtype)

    # -- dummies -----------------------------------------------------------------------------------
    @classmethod
    def full_size_components(cls) -> dict[str, object]:
        """Zero-1-to-3 at full size, random weights: SD 1.x's UNet over 8 input channels (noisy ‖
        reference latent) at 256², CLIP ViT-L/14's image tower and the 772 → 768 projection."""
        from anyto3d.priors import architectures as arch

        parts = cpu_parts("epsilon")
        return {"vae": arch.sd_vae(256), "unet": arch.sd_unet(arch.SD1_UNET, in_channels=8, sample_size=32),
                "scheduler": parts["scheduler"], "image_encoder": arch.clip_l14_image_encoder(),
                "clip_camera_projection": CCProjection(768 + CAMERA_DIM, 768)}

    @classmethod
    def dummy_components(
        cls,
        prediction_type: str = "epsilon",
        latent_size: int = 8,
        unet_channels: tuple[int, ...] = (16, 32),
        clip_dim: int = 16,
        clip_image_size: int = 32,
    ) -> dict[str, object]:
        """Zero-1-to-3's architecture at reduced size, random weights (ε-prediction like the release)."""
        return {
            "vae": dummy_vae(),
            "unet": dummy_unet(
                sample_size=latent_size, in_channels=8, block_out_channels=unet_channels, cross_attention_dim=clip_dim
            ),
            "scheduler": dummy_scheduler(prediction_type),
            "image_encoder": dummy_image_encoder(hidden_size=clip_dim, projection_dim=clip_dim, image_size=clip_image_size),
            "clip_camera_projection": CCProjection(clip_dim + CAMERA_DIM, clip_dim),
        }
