"""Zero-1-to-3 adapter on reduced-size real classes with random weights."""

import pytest
import torch

from anyto3d.errors import InputError, MissingWeightsError
from anyto3d.priors.weights import ENV_VAR
from anyto3d.priors.zero123 import CCProjection, Zero123Prior

CLIP_DIM = 16  # 768 in the release


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models gain nothing from 2 threads; on a loaded 2-core box OpenMP spinning made one
    UNet forward 30x slower. Restored afterwards for other modules."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def prior():
    return Zero123Prior.build_dummy(clip_dim=CLIP_DIM)


@pytest.fixture
def reference():
    return torch.rand(1, 3, 24, 24) * 2 - 1


@pytest.fixture
def z():
    return torch.randn(3, 4, 8, 8)


def _camera(d_polar, d_az, d_r):
    return torch.tensor([[d_polar, torch.sin(torch.tensor(d_az)), torch.cos(torch.tensor(d_az)), d_r]])


def test_architecture_and_condition_shapes(prior, reference):
    assert prior.unet.config.in_channels == 8  # [z_t ‖ reference latent]
    assert prior.prediction_type == "epsilon"
    cams = torch.randn(3, 4)
    cond = prior.build_condition(reference, cams)  # one reference broadcast to 3 cameras
    assert cond["encoder_hidden_states"].shape == (3, 1, CLIP_DIM)
    assert cond["image_latent"].shape == (3, 4, 8, 8)
    assert torch.equal(cond["image_latent"][0], cond["image_latent"][2])


def test_image_latent_is_the_unscaled_posterior_mode(prior, reference):
    ref = prior.encode_reference(reference)
    x = torch.nn.functional.interpolate(reference, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(ref["image_latent"], prior.vae.encode(x).latent_dist.mode())
    # and it is the scaled latent of encode() divided by scaling_factor (the diffusers-port convention)
    torch.testing.assert_close(ref["image_latent"], prior.encode(reference, posterior="mode") / prior.scaling_factor)


def test_cross_attention_context_is_cc_projection_of_embedding_and_camera(prior, reference):
    cam = _camera(0.3, 1.0, 0.2)
    ref = prior.encode_reference(reference)
    cond = prior.build_condition(reference=ref, relative_camera=cam)
    w, b = prior.clip_camera_projection.projection.weight, prior.clip_camera_projection.projection.bias
    by_hand = torch.cat([ref["image_embedding"], cam], dim=-1) @ w.T + b
    torch.testing.assert_close(cond["encoder_hidden_states"][:, 0], by_hand)


def test_clip_embedding_uses_clip_preprocessing(prior):
    img = torch.rand(1, 3, 32, 32) * 2 - 1  # already the dummy encoder's input size: resize is the identity
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    expected = prior.image_encoder(pixel_values=((img + 1) / 2 - mean) / std).image_embeds
    torch.testing.assert_close(prior.clip_image_embedding(img), expected)


def test_predict_noise_is_the_unet_on_concatenated_input(prior, reference, z):
    cond = prior.build_condition(reference, torch.randn(3, 4))
    t = torch.tensor([600])
    by_hand = prior.unet(torch.cat([z, cond["image_latent"]], 1), t.expand(3), encoder_hidden_states=cond["encoder_hidden_states"]).sample
    torch.testing.assert_close(prior.predict_noise(z, t, cond), by_hand)


def test_v_prediction_variant_converts_by_hand(reference, z):
    p = Zero123Prior.build_dummy(clip_dim=CLIP_DIM, prediction_type="v_prediction")
    cond = p.build_condition(reference, torch.randn(3, 4))
    t = torch.tensor([10, 500, 990])
    v = p.forward_model(z, t, cond)
    a = p.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(p.predict_noise(z, t, cond), a.sqrt() * v + (1 - a).sqrt() * z)


def test_relative_camera_changes_the_output(prior, reference, z):
    t = torch.tensor([500])
    ref = prior.encode_reference(reference)
    front = prior.predict_noise(z[:1], t, prior.build_condition(reference=ref, relative_camera=_camera(0.0, 0.0, 0.0)))
    side = prior.predict_noise(z[:1], t, prior.build_condition(reference=ref, relative_camera=_camera(0.0, 1.57, 0.0)))
    up = prior.predict_noise(z[:1], t, prior.build_condition(reference=ref, relative_camera=_camera(0.5, 0.0, 0.0)))
    assert (front - side).abs().max() > 1e-4 and (front - up).abs().max() > 1e-4


def test_reference_image_changes_the_output(prior, reference, z):
    t = torch.tensor([500])
    cam = _camera(0.1, 0.5, 0.0)
    a = prior.predict_noise(z[:1], t, prior.build_condition(reference, cam))
    b = prior.predict_noise(z[:1], t, prior.build_condition(-reference, cam))
    assert (a - b).abs().max() > 1e-4


def test_unconditional_is_zeros_for_both(prior, reference):
    cond = prior.build_condition(reference, torch.randn(2, 4))
    unc = prior.unconditional(cond)
    assert unc.keys() == cond.keys()
    assert all(torch.count_nonzero(v) == 0 and v.shape == cond[k].shape for k, v in unc.items())


def test_cfg_equals_two_separate_calls(prior, reference, z):
    cond = prior.build_condition(reference, torch.randn(3, 4))
    t = torch.tensor([250])
    eps_c = prior.predict_noise(z, t, cond)
    eps_u = prior.predict_noise(z, t, prior.unconditional(cond))
    torch.testing.assert_close(prior.guided_noise(z, t, cond, 3.0), eps_u + 3.0 * (eps_c - eps_u), atol=1e-5, rtol=1e-5)


def test_bad_inputs(prior, reference):
    with pytest.raises(InputError, match=r"\[B, 4\]"):
        prior.build_condition(reference, torch.zeros(2, 3))
    with pytest.raises(InputError, match="exactly one"):
        prior.build_condition(relative_camera=torch.zeros(1, 4))
    with pytest.raises(InputError, match="reference images"):
        prior.build_condition(torch.zeros(2, 3, 16, 16), torch.zeros(3, 4))
    with pytest.raises(InputError, match="in_channels"):
        comps = Zero123Prior.dummy_components(clip_dim=CLIP_DIM)
        comps["unet"] = prior.vae  # any module whose config lacks in_channels == 8
        Zero123Prior(**comps)


def test_save_load_round_trip_gives_identical_outputs(prior, reference, z, tmp_path):
    prior.save_pretrained(tmp_path / "zero123")
    assert (tmp_path / "zero123" / "clip_camera_projection" / "config.json").is_file()
    loaded = Zero123Prior.from_pretrained(tmp_path / "zero123")
    assert isinstance(loaded.clip_camera_projection, CCProjection)
    cams = torch.randn(3, 4)
    t = torch.tensor([700])
    c1, c2 = prior.build_condition(reference, cams), loaded.build_condition(reference, cams)
    assert torch.equal(c1["encoder_hidden_states"], c2["encoder_hidden_states"])
    assert torch.equal(prior.guided_noise(z, t, c1, 5.0), loaded.guided_noise(z, t, c2, 5.0))


def test_missing_weights_names_zero123(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(MissingWeightsError) as err:
        Zero123Prior.from_pretrained(tmp_path / "absent")
    msg = str(err.value)
    assert "zero123" in msg and "clip_camera_projection/config.json" in msg and ENV_VAR in msg
