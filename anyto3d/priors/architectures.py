"""The paper models' networks at full size, with random weights: for GPU timing and memory figures.

No weights can be downloaded here, so the cost of the paper-scale losses is measured on the
released architectures built from their configs (the values in each release's ``config.json``)
and initialised at random: a guidance step costs the same whatever the weights hold. The
builders take no device: call them under ``with torch.device(...)`` to build on a GPU directly,
or on ``"meta"`` to count parameters without allocating any.

Each prior's ``full_size_components`` assembles these into the components its adapter takes
(``LatentDiffusionPrior.build_full_size``); ``anyto3d bench losses --size full`` times them.
"""

from __future__ import annotations

#: SD 1.x/2.x and Zeroscope's KL autoencoder (8× down, 4 latent channels).
SD_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "scaling_factor": 0.18215,
}

_SD_UNET_BODY = {
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "norm_num_groups": 32,
}
#: SD 1.x's UNet (CLIP ViT-L/14 text context, 8 heads everywhere); Zero-1-to-3 widens its input.
SD1_UNET = {**_SD_UNET_BODY, "cross_attention_dim": 768, "attention_head_dim": 8, "sample_size": 64}
#: SD 2.x's UNet (OpenCLIP ViT-H/14 text context, 64-channel heads, linear projections).
SD2_UNET = {**_SD_UNET_BODY, "cross_attention_dim": 1024, "attention_head_dim": [5, 10, 20, 20],
            "use_linear_projection": True, "sample_size": 64}

#: SD 2.x's text encoder: OpenCLIP ViT-H/14's text tower without its last layer (23 of 24).
SD2_TEXT_ENCODER = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
                    "num_attention_heads": 16, "hidden_act": "gelu", "projection_dim": 512}
#: CLIP ViT-L/14's image tower with its projection (Zero-1-to-3's image condition).
CLIP_L14_VISION = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                   "num_attention_heads": 16, "image_size": 224, "patch_size": 14, "projection_dim": 768,
                   "hidden_act": "quick_gelu"}

#: Zeroscope v2 576w's UNet3DConditionModel (ModelScope text-to-video's): SD's body with 3D
#: blocks (temporal convolutions and attention), 64-channel heads, SD 2.x's text context.
ZEROSCOPE_UNET3D = {**_SD_UNET_BODY,
                    "down_block_types": ["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"],
                    "up_block_types": ["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3,
                    "cross_attention_dim": 1024, "attention_head_dim": 64, "sample_size": 32}


def sd_vae(sample_size: int = 512):
    from diffusers import AutoencoderKL

    return AutoencoderKL(**SD_VAE, sample_size=sample_size)


def sd_unet(config: dict, **overrides):
    """A ``UNet2DConditionModel`` from :data:`SD1_UNET`/:data:`SD2_UNET` with ``overrides``."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**{**config, **overrides})


def sd2_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406,
                                       eos_token_id=49407, pad_token_id=1, **SD2_TEXT_ENCODER))


def clip_l14_image_encoder():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_L14_VISION))


def zeroscope_unet3d():
    from diffusers import UNet3DConditionModel

    return UNet3DConditionModel(**ZEROSCOPE_UNET3D)


def parameter_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "CLIP_L14_VISION",
    "SD1_UNET",
    "SD2_TEXT_ENCODER",
    "SD2_UNET",
    "SD_VAE",
    "ZEROSCOPE_UNET3D",
    "clip_l14_image_encoder",
    "parameter_count",
    "sd2_text_encoder",
    "sd_unet",
    "sd_vae",
    "zeroscope_unet3d",
]
