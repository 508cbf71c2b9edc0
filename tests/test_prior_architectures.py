"""The paper models at full size (random weights), built on the meta device: the released
architectures' parameter counts, and every adapter assembled around them at the release's sizes."""

import pytest
import torch

from anyto3d.priors import architectures as arch
from anyto3d.priors.mvdream import MVDREAM_SD21_UNET_PARAMS, MVDreamPrior, unet_config_from_ldm
from anyto3d.priors.sd_unclip import StableUnCLIPPrior
from anyto3d.priors.sd_vsd import StableDiffusionVSDPrior
from anyto3d.priors.zero123 import Zero123Prior
from anyto3d.priors.zeroscope import ZeroscopePrior

# Published parameter counts of the released networks (their model cards and diffusers' loaders).
SD_VAE_PARAMS = 83_653_863
SD1_UNET_PARAMS = 859_520_964
SD2_UNET_PARAMS = 865_910_724
SD2_TEXT_ENCODER_PARAMS = 340_387_840


def _mlp(n_in: int, n_hidden: int = 1280) -> int:
    """Parameters of diffusers' TimestepEmbedding(n_in → 1280 → 1280), the class-embedding MLP."""
    return n_in * n_hidden + n_hidden + n_hidden * n_hidden + n_hidden


@pytest.fixture
def meta():
    with torch.device("meta"):
        yield


def test_released_networks_have_their_published_sizes(meta):
    assert arch.parameter_count(arch.sd_vae()) == SD_VAE_PARAMS
    assert arch.parameter_count(arch.sd_unet(arch.SD1_UNET)) == SD1_UNET_PARAMS
    assert arch.parameter_count(arch.sd_unet(arch.SD2_UNET)) == SD2_UNET_PARAMS
    assert arch.parameter_count(arch.sd2_text_encoder()) == SD2_TEXT_ENCODER_PARAMS


def test_each_release_widens_its_base_unet_only_where_its_paper_says(meta):
    # Zero-1-to-3: 4 more input channels (the reference latent) into the 3×3 conv_in of 320 channels
    zero123 = arch.sd_unet(arch.SD1_UNET, in_channels=8)
    assert arch.parameter_count(zero123) == SD1_UNET_PARAMS + 4 * 320 * 9
    # unCLIP-H: [image embedding ‖ its noise-level embedding] (2 × 1024) through the class MLP
    unclip = arch.sd_unet(arch.SD2_UNET, class_embed_type="projection", projection_class_embeddings_input_dim=2048)
    assert arch.parameter_count(unclip) == SD2_UNET_PARAMS + _mlp(2048)
    # MVDream: SD 2.1 base plus the 16-d camera MLP, from the released ldm parameters
    mvdream = arch.sd_unet(unet_config_from_ldm(MVDREAM_SD21_UNET_PARAMS))
    assert arch.parameter_count(mvdream) == SD2_UNET_PARAMS + _mlp(16)


@pytest.mark.parametrize(
    ("cls", "image_size", "latent", "prediction"),
    [
        (StableUnCLIPPrior, (768, 768), (4, 96, 96), "v_prediction"),
        (Zero123Prior, (256, 256), (4, 32, 32), "epsilon"),
        (MVDreamPrior, (256, 256), (4, 32, 32), "epsilon"),
        (ZeroscopePrior, (320, 576), (4, 40, 72), "epsilon"),
        (StableDiffusionVSDPrior, (512, 512), (4, 64, 64), "epsilon"),
    ],
)
def test_adapters_assemble_around_the_full_size_networks(cls, image_size, latent, prediction):
    prior = cls.build_full_size(device="meta", dtype=torch.float16)
    assert prior.image_size == image_size and prior.latent_shape == latent
    assert prior.prediction_type == prediction
    assert prior.dtype == torch.float16 and prior.device.type == "meta"
    # frozen, except VSD's LoRA (4D-fy Eq. 5 trains it)
    assert all(".lora_" in n for n, p in prior.unet.named_parameters() if p.requires_grad)
    # the schedule stays a real CPU table: only the networks live on the build device
    assert prior.schedule.alphas_cumprod.device.type == "cpu"
    assert torch.all(prior.schedule.alphas_cumprod[1:] < prior.schedule.alphas_cumprod[:-1])
    assert arch.parameter_count(prior.vae) == SD_VAE_PARAMS


def test_zeroscope_unet3d_is_modelscope_sized(meta):
    unet = arch.zeroscope_unet3d()
    # the 2D body of SD 2.x's UNet plus temporal convolutions and attention: 1.41 B in all
    assert 1.40e9 < arch.parameter_count(unet) < 1.42e9
    assert unet.config.cross_attention_dim == arch.SD2_TEXT_ENCODER["hidden_size"]
