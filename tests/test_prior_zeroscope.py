"""Zeroscope (UNet3DConditionModel text-to-video) on a reduced-size random-weight model."""

import json

import pytest
import torch

from anyto3d.errors import InputError, MissingWeightsError
from anyto3d.priors.zeroscope import ZEROSCOPE_576W_SIZE, ZeroscopePrior, frames_to_video, video_to_frames


@pytest.fixture(scope="module")
def prior():
    # 4×8 latents (8×16 frames): the 320×576 release's landscape aspect at toy size
    return ZeroscopePrior.build_dummy(seed=0, latent_size=(4, 8), posterior="mode")


def _video_latents(prior, b=2, frames=4, seed=1):
    return torch.randn(b, *prior.video_latent_shape(frames), generator=torch.Generator().manual_seed(seed))


def test_frames_and_video_layouts_are_inverse_and_clip_major():
    frames = torch.arange(2 * 3, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 3, 2, 2)
    video = frames_to_video(frames, num_frames=3)
    assert video.shape == (2, 3, 3, 2, 2)
    assert video[1, :, 2].unique().item() == 5.0  # clip 1, frame 2 = row 1·3 + 2
    assert torch.equal(video_to_frames(video), frames)
    with pytest.raises(InputError):
        frames_to_video(frames, num_frames=4)


def test_per_frame_vae_round_trip_shapes_and_independence(prior):
    g = torch.Generator().manual_seed(0)
    video = torch.rand(2, 3, 4, 8, 16, generator=g) * 2 - 1
    latents = prior.encode(video)
    assert latents.shape == (2, 4, 4, 4, 8) == (2, *prior.video_latent_shape(4))
    assert prior.decode(latents).shape == video.shape
    # each frame is encoded on its own: frame k of clip b equals encoding that image alone
    alone = super(ZeroscopePrior, prior).encode(video[1, :, 2][None])
    torch.testing.assert_close(latents[1, :, 2], alone[0], atol=1e-5, rtol=1e-5)
    # frames at another resolution are resized to image_size first (4D-fy renders half size)
    assert prior.encode(torch.zeros(1, 3, 2, 4, 8)).shape == (1, 4, 2, 4, 8)
    with pytest.raises(InputError, match="frames_to_video"):
        prior.encode(video_to_frames(video))


def test_condition_and_noise_shapes(prior):
    cond = prior.build_condition(text=["a corgi running", "a flag waving"])
    assert set(cond) == {"encoder_hidden_states"} and cond["encoder_hidden_states"].shape == (2, 77, 16)
    z = _video_latents(prior)
    assert prior.predict_noise(z, torch.tensor(500), cond).shape == z.shape
    with pytest.raises(InputError):
        prior.predict_noise(z[:, :, 0], torch.tensor(500), cond)


def test_cfg_equals_two_separate_calls(prior):
    cond = prior.build_condition(text=["a corgi running"] * 2)
    z, t, s = _video_latents(prior), torch.tensor(600), 101.0  # threestudio's 100 in its ε_c-based form
    eps_c = prior.predict_noise(z, t, cond)
    eps_u = prior.predict_noise(z, t, prior.unconditional(cond))
    assert (eps_c - eps_u).abs().max() > 1e-4  # the text changes the output
    torch.testing.assert_close(prior.guided_noise(z, t, cond, s), eps_u + s * (eps_c - eps_u), atol=1e-3, rtol=1e-5)


def test_frames_interact_through_the_temporal_layers_and_clips_do_not(prior):
    cond = prior.build_condition(text=["a corgi running"] * 2)
    z, t = _video_latents(prior), torch.tensor(400)
    z_changed = z.clone()
    z_changed[0, :, 1] += 1.0  # frame 1 of clip 0
    delta = (prior.predict_noise(z_changed, t, cond) - prior.predict_noise(z, t, cond)).abs()
    assert all(delta[0, :, f].max() > 1e-4 for f in (0, 2, 3))
    assert delta[1].max() == 0

    # silence every temporal attention and frames become independent images
    temporal = [m for m in prior.unet.modules() if type(m).__name__ == "TransformerTemporalModel"]
    assert temporal
    saved = [(m.proj_out.weight.detach().clone(), m.proj_out.bias.detach().clone()) for m in temporal]
    try:
        with torch.no_grad():
            for m in temporal:
                m.proj_out.weight.zero_()
                m.proj_out.bias.zero_()
        # the temporal convolutions start as the identity (zero-initialised output layer), as in the release init
        delta = (prior.predict_noise(z_changed, t, cond) - prior.predict_noise(z, t, cond)).abs()
        assert delta[0, :, 1].max() > 1e-4 and all(delta[0, :, f].max() == 0 for f in (0, 2, 3))
    finally:
        with torch.no_grad():
            for m, (w, b) in zip(temporal, saved):
                m.proj_out.weight.copy_(w)
                m.proj_out.bias.copy_(b)


def test_save_load_round_trip(prior, tmp_path):
    prior.save_pretrained(tmp_path / "zs")
    index = json.loads((tmp_path / "zs" / "model_index.json").read_text())
    assert index["_class_name"] == "TextToVideoSDPipeline" and index["unet"] == ["diffusers", "UNet3DConditionModel"]
    loaded = ZeroscopePrior.from_pretrained(tmp_path / "zs")
    assert loaded.image_size == prior.image_size == (8, 16)
    z, t = _video_latents(prior), torch.tensor([100, 900])
    cond_of = lambda p: p.build_condition(text=["a flag waving"] * 2)  # noqa: E731
    assert torch.equal(loaded.predict_noise(z, t, cond_of(loaded)), prior.predict_noise(z, t, cond_of(prior)))
    # a diffusers-layout directory not written by us (the release) gets the 320×576 frame size
    del index["anyto3d_image_size"]
    (tmp_path / "zs" / "model_index.json").write_text(json.dumps(index))
    assert ZeroscopePrior.from_pretrained(tmp_path / "zs").image_size == ZEROSCOPE_576W_SIZE


def test_missing_weights_name_the_model_and_the_setting(tmp_path, monkeypatch):
    monkeypatch.delenv("ANYTO3D_WEIGHTS", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(MissingWeightsError) as err:
        ZeroscopePrior.from_pretrained()
    message = str(err.value)
    assert "cerspense/zeroscope_v2_576w" in message and "ANYTO3D_WEIGHTS" in message and "unet/config.json" in message
