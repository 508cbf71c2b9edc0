"""SD 2.1 base + LoRA + camera embedding (VSD's two scores), on a reduced-size random-weight SD."""

import json

import pytest
import torch
from safetensors.torch import load_file

from anyto3d.cameras import CameraBatch
from anyto3d.errors import InputError
from anyto3d.priors.latent import LatentDiffusionPrior
from anyto3d.priors.sd_vsd import LORA_TARGET_MODULES, StableDiffusionVSDPrior


def _cameras(n=2):
    return CameraBatch.from_spherical(
        torch.linspace(0.1, 0.5, n), torch.linspace(0.0, 2.0, n), torch.tensor(2.0), torch.tensor(0.7)
    )


def _train_lora_a_little(prior):
    """Stand-in for LoRA fine-tuning: non-zero LoRA B matrices and camera-MLP output layer."""
    with torch.no_grad():
        for name, p in prior.unet.named_parameters():
            if ".lora_B" in name:
                p.normal_(0.0, 0.3)
        prior.camera_embedding.linear_2.weight.normal_(0.0, 0.3)


@pytest.fixture(scope="module")
def prior():
    torch.manual_seed(0)
    return StableDiffusionVSDPrior.build_dummy(seed=0)


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(1)
    p = StableDiffusionVSDPrior.build_dummy(seed=0)
    _train_lora_a_little(p)
    return p


@pytest.fixture(scope="module")
def base_sd():
    """The same SD weights without any LoRA machinery (same seed → same dummy components)."""
    return LatentDiffusionPrior.build_dummy(seed=0)


def _latents(prior, b=2, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, *prior.latent_shape, generator=g)


def test_condition_shapes_and_camera_flattening(prior):
    cams = _cameras(3)
    pre = prior.build_condition(text=["a red cube"] * 3)
    lora = prior.build_condition(text=["a red cube"], camera_c2w=cams.c2w)
    assert set(pre) == {"encoder_hidden_states"} and pre["encoder_hidden_states"].shape == (3, 77, 16)
    assert set(lora) == {"encoder_hidden_states", "camera"}
    assert lora["camera"].shape == (3, 16)
    # row-major flattening of c2w: entry (i, j) lands at 4i + j
    assert torch.equal(lora["camera"][1].view(4, 4), cams.c2w[1])
    assert lora["camera"][2, 3] == cams.c2w[2, 0, 3]
    dropped = prior.camera_condition(cams.c2w, torch.tensor([False, True, False]))
    assert torch.equal(dropped[1], torch.zeros(16)) and torch.equal(dropped[0], cams.c2w[0].flatten())
    z = _latents(prior, 3)
    assert prior.predict_noise(z, torch.tensor(500), lora).shape == z.shape


def test_bad_inputs_raise(prior):
    with pytest.raises(InputError):
        prior.build_condition(text=["a", "b"], camera_c2w=_cameras(3).c2w)
    with pytest.raises(InputError):
        prior.camera_condition(torch.eye(4))
    with pytest.raises(InputError):
        prior.build_condition(text=["a"], drop_mask=torch.tensor([True]))


def test_pretrained_branch_is_the_base_unet_even_with_trained_lora(trained, base_sd):
    z, t = _latents(trained), torch.tensor([100, 700])
    cond = trained.build_condition(text=["a red cube", "a blue torus"])
    expected = base_sd.predict_noise(z, t, base_sd.build_condition(text=["a red cube", "a blue torus"]))
    assert torch.equal(trained.predict_noise(z, t, cond), expected)


def test_lora_branch_starts_equal_to_pretrained_and_differs_after_training(prior, trained, base_sd):
    z, t = _latents(prior), torch.tensor(400)
    cams = _cameras(2).c2w
    text = ["a red cube"] * 2
    base = base_sd.predict_noise(z, t, base_sd.build_condition(text=text))
    # zero-initialised LoRA B and camera output layer: the LoRA branch is SD itself at the start
    assert torch.allclose(prior.predict_noise(z, t, prior.build_condition(text=text, camera_c2w=cams)), base, atol=1e-6)
    eps_lora = trained.predict_noise(z, t, trained.build_condition(text=text, camera_c2w=cams))
    assert (eps_lora - base).abs().max() > 1e-2


def test_lora_parameters_are_only_lora_and_camera_and_only_they_get_gradients(trained):
    params = trained.lora_parameters()
    lora_names = [n for n, _ in trained.unet.named_parameters() if ".lora_" in n]
    n_attention_layers = sum(1 for n in trained.unet.attn_processors)
    assert len(lora_names) == n_attention_layers * len(LORA_TARGET_MODULES) * 2  # A and B per projection
    assert len(params) == len(lora_names) + 4  # + camera MLP (2 linears × weight, bias)
    ids = {id(p) for p in params}
    base_params = [p for n, p in trained.named_parameters() if id(p) not in ids]
    assert base_params and all(not p.requires_grad for p in base_params)

    trained.zero_grad(set_to_none=True)
    z = _latents(trained)
    cond = trained.build_condition(text=["a red cube"], camera_c2w=_cameras(2).c2w)
    trained.forward_model(z, torch.tensor([300, 300]), cond).pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert all(p.grad is None for p in base_params)
    trained.zero_grad(set_to_none=True)


def test_camera_changes_only_the_lora_branch(trained):
    z, t = _latents(trained), torch.tensor(500)
    cams_a, cams_b = _cameras(2).c2w, _cameras(2).c2w.flip(0)
    text = ["a red cube"] * 2
    eps_a = trained.predict_noise(z, t, trained.build_condition(text=text, camera_c2w=cams_a))
    eps_b = trained.predict_noise(z, t, trained.build_condition(text=text, camera_c2w=cams_b))
    no_camera = trained.build_condition(text=text, camera_c2w=cams_a, drop_mask=torch.tensor([True, True]))
    eps_none = trained.predict_noise(z, t, no_camera)
    assert (eps_a - eps_b).abs().max() > 1e-3
    assert (eps_a - eps_none).abs().max() > 1e-3
    # the unconditional LoRA branch is exactly the dropped-camera input
    uncond = trained.unconditional(trained.build_condition(text=text, camera_c2w=cams_a))
    assert torch.equal(trained.predict_noise(z, t, uncond), eps_none)


def test_cfg_equals_two_separate_calls_in_both_branches(trained):
    z, t, s = _latents(trained), torch.tensor(600), 7.5
    for cond in (
        trained.build_condition(text=["a red cube, front view"] * 2),
        trained.build_condition(text=["a red cube"], camera_c2w=_cameras(2).c2w),
    ):
        eps_c = trained.predict_noise(z, t, cond)
        eps_u = trained.predict_noise(z, t, trained.unconditional(cond))
        assert (eps_c - eps_u).abs().max() > 1e-4
        expected = eps_u + s * (eps_c - eps_u)
        torch.testing.assert_close(trained.guided_noise(z, t, cond, s), expected, atol=1e-5, rtol=1e-5)


def test_text_changes_the_prediction(trained):
    z, t = _latents(trained), torch.tensor(500)
    a = trained.predict_noise(z, t, trained.build_condition(text=["a red cube"] * 2))
    b = trained.predict_noise(z, t, trained.build_condition(text=["a blue torus"] * 2))
    assert (a - b).abs().max() > 1e-4


def test_v_prediction_lora_branch_converts_and_targets_v():
    p = StableDiffusionVSDPrior.build_dummy(seed=0, lora_prediction_type="v_prediction")
    assert p.prediction_type == "epsilon" and p.lora_prediction_type == "v_prediction"
    g = torch.Generator().manual_seed(5)
    z0, noise = torch.randn(2, *p.latent_shape, generator=g), torch.randn(2, *p.latent_shape, generator=g)
    t = torch.tensor([50, 900])
    z_t = p.schedule.add_noise(z0, noise, t)
    a = p.schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    v = p.lora_target(z0, noise, t)
    torch.testing.assert_close(v, a.sqrt() * noise - (1 - a).sqrt() * z0)
    # a perfect v-model's output converts back to the true noise
    torch.testing.assert_close(p.schedule.v_to_eps(z_t, v, t), noise, atol=1e-5, rtol=1e-5)
    cond = p.build_condition(text=["a red cube"], camera_c2w=_cameras(2).c2w)
    raw = p.forward_model(z_t, t, cond)
    torch.testing.assert_close(p.predict_noise(z_t, t, cond), p.schedule.v_to_eps(z_t, raw, t))
    # the pretrained branch is still ε: predict_noise returns the raw output
    pre = p.build_condition(text=["a red cube"] * 2)
    assert torch.equal(p.predict_noise(z_t, t, pre), p.forward_model(z_t, t, pre))
    assert torch.equal(StableDiffusionVSDPrior.build_dummy(seed=0).lora_target(z0, noise, t), noise)

    # the LoRA branch as a Prior of its own: v-prediction type, same modules, same outputs
    branch = p.lora_branch
    assert branch.prediction_type == "v_prediction" and branch.schedule is p.schedule
    assert branch.unet is p.unet and branch.camera_embedding is p.camera_embedding
    assert {id(q) for q in branch.parameters() if q.requires_grad} == {id(q) for q in p.lora_parameters()}
    assert not any(k.startswith("lora_branch") or k.startswith("_") for k in p.state_dict())
    torch.testing.assert_close(branch.predict_noise(z_t, t, cond), p.predict_noise(z_t, t, cond))
    torch.testing.assert_close(branch.guided_noise(z_t, t, cond, 3.0), p.guided_noise(z_t, t, cond, 3.0))
    with pytest.raises(InputError):
        branch.forward_model(z_t, t, pre)


def test_save_load_round_trip(trained, tmp_path):
    trained.save_pretrained(tmp_path / "vsd")
    unet_keys = load_file(str(tmp_path / "vsd" / "unet" / "diffusion_pytorch_model.safetensors")).keys()
    assert not any("lora" in k or "base_layer" in k for k in unet_keys)  # a plain SD UNet on disk
    assert json.loads((tmp_path / "vsd" / "lora" / "lora_config.json").read_text())["lora_rank"] == 4
    loaded = StableDiffusionVSDPrior.from_pretrained(tmp_path / "vsd")
    z, t = _latents(trained), torch.tensor([200, 800])
    for cond_of in (
        lambda p: p.build_condition(text=["a red cube"] * 2),
        lambda p: p.build_condition(text=["a red cube"], camera_c2w=_cameras(2).c2w),
    ):
        assert torch.equal(loaded.predict_noise(z, t, cond_of(loaded)), trained.predict_noise(z, t, cond_of(trained)))
    # the saved base directory is also a valid plain SD for the shared base class
    plain = LatentDiffusionPrior.from_pretrained(tmp_path / "vsd")
    base = plain.predict_noise(z, t, plain.build_condition(text=["a red cube"] * 2))
    assert torch.equal(base, trained.predict_noise(z, t, trained.build_condition(text=["a red cube"] * 2)))
