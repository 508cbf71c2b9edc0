"""SD 2.1 unCLIP adapter (and the latent-diffusion base) on reduced-size real classes, random weights."""

import math

import pytest
import torch

from anyto3d.errors import InputError, MissingWeightsError
from anyto3d.priors.sd_unclip import StableUnCLIPPrior
from anyto3d.priors.weights import ENV_VAR

D = 16  # image embedding dim of the dummy (1024 in the release)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models gain nothing from 2 threads, and on a loaded 2-core box OpenMP spinning made one
    UNet forward 30x slower (measured 2.0 s vs 0.065 s); restored afterwards for other modules."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def prior():
    return StableUnCLIPPrior.build_dummy(embedding_dim=D)


@pytest.fixture
def z():
    return torch.randn(2, 4, 8, 8)


def _cond(prior, emb, noise_level=0, text=None):
    return prior.build_condition(emb, text=text, noise_level=noise_level, generator=torch.Generator().manual_seed(3))


def test_architecture_and_shapes(prior, z):
    assert prior.prediction_type == "v_prediction"  # as the release (BindDiffusion: v-parameterization)
    assert prior.image_size == (16, 16) and prior.latent_shape == (4, 8, 8)
    assert prior.schedule.num_timesteps == 1000
    emb = torch.randn(2, D)
    cond = _cond(prior, emb, text=["a red cube"])  # one prompt broadcasts to the batch
    assert cond["class_labels"].shape == (2, 2 * D)
    assert cond["encoder_hidden_states"].shape == (2, 77, 16)
    assert torch.equal(cond["encoder_hidden_states"][0], cond["encoder_hidden_states"][1])
    assert prior.predict_noise(z, torch.tensor([500]), cond).shape == z.shape


def test_encode_is_scaled_vae_latent_and_decode_inverts_the_scaling(prior):
    x = torch.rand(2, 3, 32, 32) * 2 - 1  # resized to image_size (16) first
    z = prior.encode(x, posterior="mode")
    small = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    by_hand = prior.vae.encode(small).latent_dist.mode() * prior.scaling_factor
    torch.testing.assert_close(z, by_hand)
    torch.testing.assert_close(prior.decode(z), prior.vae.decode(z / prior.scaling_factor).sample)
    # sampling the posterior differs from the mode but is reproducible with a generator
    s1 = prior.encode(x, generator=torch.Generator().manual_seed(0))
    s2 = prior.encode(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s1, s2) and not torch.equal(s1, z)
    # gradients reach the input image (SDS differentiates through the encoder)
    x.requires_grad_(True)
    prior.encode(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in prior.parameters())  # weights stay frozen
    with pytest.raises(InputError):
        prior.encode(torch.zeros(2, 4, 16, 16))


def test_v_prediction_converted_to_epsilon_by_hand(prior, z):
    cond = _cond(prior, torch.randn(2, D))
    t = torch.tensor([700, 50])
    v = prior.forward_model(z, t, cond)
    a = prior.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(prior.predict_noise(z, t, cond), a.sqrt() * v + (1 - a).sqrt() * z)


def test_noise_augmentation_by_hand(prior):
    emb = torch.randn(3, D)
    noise = torch.randn(3, D)
    level = 250
    labels = prior.noise_augment(emb, level, noise=noise)
    mean, std = prior.image_normalizer.mean, prior.image_normalizer.std
    a = prior.image_noising_scheduler.alphas_cumprod[level]
    noised = (a.sqrt() * (emb - mean) / std + (1 - a).sqrt() * noise) * std + mean
    torch.testing.assert_close(labels[:, :D], noised)
    # sinusoidal embedding of the level: [cos, sin] of level·10000^(−i/(D/2)) (flip_sin_to_cos, shift 0)
    freqs = torch.exp(-math.log(10000.0) * torch.arange(D // 2) / (D // 2))
    expected = torch.cat([torch.cos(level * freqs), torch.sin(level * freqs)])
    torch.testing.assert_close(labels[:, D:], expected.expand(3, -1))


def test_noise_level_changes_class_labels_and_output(prior, z):
    emb = torch.randn(2, D)
    c0, c1 = _cond(prior, emb, noise_level=0), _cond(prior, emb, noise_level=600)
    assert (c0["class_labels"] - c1["class_labels"]).abs().max() > 0.1
    t = torch.tensor([400])
    assert (prior.predict_noise(z, t, c0) - prior.predict_noise(z, t, c1)).abs().max() > 1e-4
    for bad in (-1, 1000, 2.5):
        with pytest.raises(InputError, match="noise_level"):
            prior.build_condition(emb, noise_level=bad)


def test_conditioning_changes_output(prior, z):
    t = torch.tensor([400])
    eps_a = prior.predict_noise(z, t, _cond(prior, torch.randn(2, D)))
    eps_b = prior.predict_noise(z, t, _cond(prior, torch.randn(2, D)))
    assert (eps_a - eps_b).abs().max() > 1e-4
    emb = torch.randn(2, D)
    eps_t1 = prior.predict_noise(z, t, _cond(prior, emb, text=["a cube"]))
    eps_t2 = prior.predict_noise(z, t, _cond(prior, emb, text=["a dog"]))
    assert (eps_t1 - eps_t2).abs().max() > 1e-4


def test_unconditional_matches_the_unclip_pipeline(prior):
    cond = _cond(prior, torch.randn(2, D), text=["a cube", "a dog"])
    unc = prior.unconditional(cond)
    assert torch.equal(unc["class_labels"], torch.zeros(2, 2 * D))
    empty = prior.encode_text([""])
    torch.testing.assert_close(unc["encoder_hidden_states"], empty.expand(2, -1, -1))


def test_unconditional_same_embedding_option():
    p = StableUnCLIPPrior.build_dummy(embedding_dim=D, unconditional_image="same")
    cond = _cond(p, torch.randn(2, D), text=["a cube"])
    assert torch.equal(p.unconditional(cond)["class_labels"], cond["class_labels"])
    with pytest.raises(InputError):
        StableUnCLIPPrior.build_dummy(embedding_dim=D, unconditional_image="negative")


def test_cfg_equals_two_separate_calls(prior, z):
    cond = _cond(prior, torch.randn(2, D), text=["a cube"])
    t = torch.tensor([300])
    eps_c = prior.predict_noise(z, t, cond)
    eps_u = prior.predict_noise(z, t, prior.unconditional(cond))
    torch.testing.assert_close(prior.guided_noise(z, t, cond, 7.5), eps_u + 7.5 * (eps_c - eps_u), atol=1e-5, rtol=1e-5)


def test_text_embeddings_are_cached(prior):
    e1 = prior.text_embeddings(["a cube", "a cube"])
    assert "a cube" in prior._text_cache
    torch.testing.assert_close(e1[0], prior.encode_text(["a cube"])[0])


def test_bad_inputs(prior):
    with pytest.raises(InputError, match=rf"\[B, {D}\]"):
        prior.build_condition(torch.randn(2, D + 1))
    with pytest.raises(InputError, match="prompts"):
        prior.build_condition(torch.randn(3, D), text=["a", "b"])
    with pytest.raises(InputError, match="unexpected"):
        prior.build_condition(torch.randn(1, D), camera=torch.zeros(1, 4))


def test_save_load_round_trip_gives_identical_outputs(prior, z, tmp_path):
    prior.save_pretrained(tmp_path / "unclip")
    loaded = StableUnCLIPPrior.from_pretrained(tmp_path / "unclip")
    assert loaded.prediction_type == "v_prediction" and loaded.image_size == prior.image_size
    emb, noise = torch.randn(2, D), torch.randn(2, D)
    t = torch.tensor([321])
    c1 = prior.build_condition(emb, text=["a cube"], noise_level=100, noise=noise)
    c2 = loaded.build_condition(emb, text=["a cube"], noise_level=100, noise=noise)
    assert torch.equal(c1["class_labels"], c2["class_labels"])
    assert torch.equal(prior.guided_noise(z, t, c1, 5.0), loaded.guided_noise(z, t, c2, 5.0))
    assert torch.equal(prior.encode(torch.zeros(1, 3, 16, 16), posterior="mode"), loaded.encode(torch.zeros(1, 3, 16, 16), posterior="mode"))


def test_missing_weights_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(MissingWeightsError) as err:
        StableUnCLIPPrior.from_pretrained(tmp_path / "nothing_here")
    msg = str(err.value)
    assert "sd-2-1-unclip" in msg and "unet/config.json" in msg and ENV_VAR in msg
