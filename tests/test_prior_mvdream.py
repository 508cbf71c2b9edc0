"""MVDream on a reduced-size random-weight SD UNet: multi-view attention, cameras, CFG, weights."""

import json
import math

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

from anyto3d.cameras import CameraBatch
from anyto3d.errors import InputError, MissingWeightsError
from anyto3d.priors.latent import LatentDiffusionPrior
from anyto3d.priors.mvdream import (
    MVDREAM_SD21_UNET_PARAMS,
    MultiViewAttnProcessor,
    MVDreamPrior,
    normalize_camera,
    unet_config_from_ldm,
)

# A reduced MultiViewUNetModel parameter set (32 channels so ldm's fixed 32 GroupNorm groups fit).
SMALL_LDM_PARAMS = {
    "image_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 32,
    "attention_resolutions": [1],
    "num_res_blocks": 1,
    "channel_mult": [1, 2],
    "num_head_channels": 8,
    "transformer_depth": 1,
    "context_dim": 16,
    "camera_dim": 16,
}


def _four_view_cameras(n_objects=2, elevation=0.2, distance=2.0):
    azimuth = torch.arange(4 * n_objects, dtype=torch.float32) * (math.pi / 2)
    return CameraBatch.from_spherical(torch.tensor(elevation), azimuth, torch.tensor(distance), torch.tensor(0.7))


@pytest.fixture(scope="module")
def prior():
    return MVDreamPrior.build_dummy(seed=0)


def _latents(prior, b=8, seed=2):
    return torch.randn(b, *prior.latent_shape, generator=torch.Generator().manual_seed(seed))


def test_condition_shapes_and_normalised_cameras(prior):
    cams = _four_view_cameras(2)
    cond = prior.build_condition(text=["a red cube", "a blue torus"], cameras=cams)
    assert cond["encoder_hidden_states"].shape == (8, 77, 16) and cond["camera"].shape == (8, 16)
    # per-object prompts are repeated over that object's 4 views (object-major layout)
    per_view = prior.build_condition(text=["a red cube"] * 4 + ["a blue torus"] * 4, cameras=cams)
    assert torch.equal(cond["encoder_hidden_states"], per_view["encoder_hidden_states"])
    # the camera is c2w with its position scaled to unit length, flattened row-major
    c2w = cams.c2w[1]
    expected = c2w.clone()
    expected[:3, 3] = c2w[:3, 3] / 2.0
    torch.testing.assert_close(cond["camera"][1].view(4, 4), expected)
    assert torch.allclose(cond["camera"].view(-1, 4, 4)[:, :3, 3].norm(dim=-1), torch.ones(8))
    z = _latents(prior)
    assert prior.predict_noise(z, torch.tensor(500), cond).shape == z.shape


def test_batches_must_be_whole_groups_of_views(prior):
    cams = _four_view_cameras(1)
    with pytest.raises(InputError):
        prior.build_condition(text=["a"], cameras=cams[0:3])
    with pytest.raises(InputError):
        prior.build_condition(text=["a", "b", "c"], cameras=cams)
    with pytest.raises(InputError):
        prior.build_condition(text=["a"], cameras=cams.c2w)
    cond = prior.build_condition(text=["a"], cameras=cams)
    with pytest.raises(InputError):
        prior.predict_noise(_latents(prior, 6), torch.tensor(10), {k: v[:6] for k, v in cond.items()})


def test_views_of_one_object_interact_and_objects_do_not(prior):
    cond = prior.build_condition(text=["a red cube", "a blue torus"], cameras=_four_view_cameras(2))
    z, t = _latents(prior), torch.tensor(400)
    eps = prior.predict_noise(z, t, cond)
    z_changed = z.clone()
    z_changed[2] += 1.0  # view 2 of object 0
    eps_changed = prior.predict_noise(z_changed, t, cond)
    delta = (eps_changed - eps).flatten(1).abs().amax(1)
    assert delta[1] > 1e-4 and delta[0] > 1e-4 and delta[3] > 1e-4  # other views of object 0 react
    assert torch.all(delta[4:] == 0)  # object 1 is untouched


def test_multiview_attention_is_attention_over_all_views_tokens(prior):
    attn = prior.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    x = torch.randn(8, 5, attn.to_q.in_features, generator=torch.Generator().manual_seed(4))
    joint = MultiViewAttnProcessor(joint_views=True)(attn, x, num_views=4)

    def attention(tokens):  # plain multi-head softmax attention, written out
        b, n, _ = tokens.shape
        q, k, v = (lin(tokens).view(b, n, attn.heads, -1).transpose(1, 2) for lin in (attn.to_q, attn.to_k, attn.to_v))
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        return attn.to_out[0]((w @ v).transpose(1, 2).reshape(b, n, -1))

    expected = attention(x.view(2, 20, -1)).view(8, 5, -1)
    torch.testing.assert_close(joint, expected, atol=1e-5, rtol=1e-5)
    per_view = MultiViewAttnProcessor(joint_views=False)(attn, x, num_views=4)
    torch.testing.assert_close(per_view, attention(x), atol=1e-5, rtol=1e-5)
    assert (joint - per_view).abs().max() > 1e-4


def test_camera_embedding_matters_and_enters_through_the_class_embedding(prior):
    z, t = _latents(prior), torch.tensor(300)
    cond_a = prior.build_condition(text=["a red cube"], cameras=_four_view_cameras(2, elevation=0.2))
    cond_b = prior.build_condition(text=["a red cube"], cameras=_four_view_cameras(2, elevation=0.9))
    assert (prior.predict_noise(z, t, cond_a) - prior.predict_noise(z, t, cond_b)).abs().max() > 1e-4
    # distance is normalised away: MVDream sees the direction only
    cond_far = prior.build_condition(text=["a red cube"], cameras=_four_view_cameras(2, elevation=0.2, distance=3.5))
    eps_near, eps_far = prior.predict_noise(z, t, cond_a), prior.predict_noise(z, t, cond_far)
    torch.testing.assert_close(eps_near, eps_far, atol=1e-5, rtol=1e-5)
    # with the camera MLP's weight silenced, cameras stop mattering (its bias still shifts the embedding)
    emb = prior.unet.class_embedding.linear_2
    saved = emb.weight.detach().clone()
    try:
        with torch.no_grad():
            emb.weight.zero_()
        torch.testing.assert_close(prior.predict_noise(z, t, cond_a), prior.predict_noise(z, t, cond_b))
    finally:
        with torch.no_grad():
            emb.weight.copy_(saved)


def test_unconditional_keeps_cameras_and_cfg_matches_two_calls(prior):
    cond = prior.build_condition(text=["a red cube", "a blue torus"], cameras=_four_view_cameras(2))
    uncond = prior.unconditional(cond)
    assert torch.equal(uncond["camera"], cond["camera"])
    assert torch.equal(uncond["encoder_hidden_states"], prior.empty_text_embedding(8))
    z, t, s = _latents(prior), torch.tensor(700), 50.0
    eps_c, eps_u = prior.predict_noise(z, t, cond), prior.predict_noise(z, t, uncond)
    assert (eps_c - eps_u).abs().max() > 1e-4  # text changes the output
    torch.testing.assert_close(prior.guided_noise(z, t, cond, s), eps_u + s * (eps_c - eps_u), atol=1e-4, rtol=1e-5)


def test_negative_prompt_replaces_the_empty_prompt(prior):
    cams = _four_view_cameras(1)
    cond = prior.build_condition(text=["a red cube"], cameras=cams, negative_text=["blurry"])
    uncond = prior.unconditional(cond)
    assert torch.equal(uncond["encoder_hidden_states"], prior.text_embeddings(["blurry"] * 4))
    assert torch.equal(uncond["camera"], cond["camera"])


def test_save_load_round_trip(prior, tmp_path):
    prior.save_pretrained(tmp_path / "mv")
    assert json.loads((tmp_path / "mv" / "model_index.json").read_text())["anyto3d_num_views"] == 4
    loaded = MVDreamPrior.from_pretrained(tmp_path / "mv")
    assert loaded.num_views == 4
    z, t = _latents(prior), torch.tensor([100] * 8)
    cams = _four_view_cameras(2)
    out = loaded.predict_noise(z, t, loaded.build_condition(text=["a red cube"], cameras=cams))
    assert torch.equal(out, prior.predict_noise(z, t, prior.build_condition(text=["a red cube"], cameras=cams)))


# ---------------------------------------------------------------------------------------------
# ldm checkpoint conversion
# ---------------------------------------------------------------------------------------------

_LDM_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}  # fmt: skip


def diffusers_to_ldm(state: dict, config: dict) -> dict:
    """Rename a diffusers SD UNet state dict to MVDream's ldm names (written from the ldm layout).

    ldm numbers blocks flatly: input_blocks.0 is conv_in; each down level contributes
    ``layers_per_block`` (resnet[, transformer]) blocks then one downsampler block; the middle
    block is resnet, transformer, resnet; each up level has ``layers_per_block + 1`` blocks, the
    last carrying the upsampler after its resnet (and transformer).
    """
    per_level = config["layers_per_block"]
    up_has_attention = [t.startswith("CrossAttn") for t in config["up_block_types"]]
    out = {}
    for key, value in state.items():
        p = key.split(".")
        if p[0] in ("time_embedding", "class_embedding"):
            name = "time_embed" if p[0] == "time_embedding" else "camera_embed"
            new = f"{name}.{'0' if p[1] == 'linear_1' else '2'}.{p[2]}"
        elif p[0] == "conv_in":
            new = f"input_blocks.0.0.{p[1]}"
        elif p[0] in ("conv_norm_out", "conv_out"):
            new = f"out.{'0' if p[0] == 'conv_norm_out' else '2'}.{p[1]}"
        elif p[0] == "down_blocks":
            level, kind, index, rest = int(p[1]), p[2], int(p[3]), ".".join(p[4:])
            first = 1 + level * (per_level + 1)
            if kind == "resnets":
                new = f"input_blocks.{first + index}.0.{_LDM_RESNET[p[4]]}.{'.'.join(p[5:])}"
            elif kind == "attentions":
                new = f"input_blocks.{first + index}.1.{rest}"
            else:  # downsamplers.0.conv.{weight,bias}
                new = f"input_blocks.{first + per_level}.0.op.{p[-1]}"
        elif p[0] == "mid_block":
            kind, index = p[1], int(p[2])
            if kind == "resnets":
                new = f"middle_block.{2 * index}.{_LDM_RESNET[p[3]]}.{'.'.join(p[4:])}"
            else:
                new = f"middle_block.1.{'.'.join(p[3:])}"
        elif p[0] == "up_blocks":
            level, kind, index = int(p[1]), p[2], int(p[3])
            first = level * (per_level + 1)
            if kind == "resnets":
                new = f"output_blocks.{first + index}.0.{_LDM_RESNET[p[4]]}.{'.'.join(p[5:])}"
            elif kind == "attentions":
                new = f"output_blocks.{first + index}.1.{'.'.join(p[4:])}"
            else:  # upsamplers.0.conv.{weight,bias}
                slot = 2 if up_has_attention[level] else 1
                new = f"output_blocks.{first + per_level}.{slot}.conv.{p[-1]}"
        else:
            raise AssertionError(f"unmapped key {key}")
        assert new not in out, f"two keys map to {new}"
        out[new] = value
    return out


@pytest.fixture(scope="module")
def ldm_source():
    """A random UNet with MVDream's (reduced) architecture and its weights under ldm names."""
    torch.manual_seed(7)
    config = unet_config_from_ldm(SMALL_LDM_PARAMS)
    unet = UNet2DConditionModel(**config)
    with torch.no_grad():  # make every weight non-trivial so a swapped key cannot go unnoticed
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return unet, config, diffusers_to_ldm(unet.state_dict(), config)


def _prior_around(unet):
    """MVDream around ``unet`` with the other components of ``LatentDiffusionPrior.build_dummy(seed=0)``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        comps = LatentDiffusionPrior.dummy_components()
    comps["unet"] = unet
    return MVDreamPrior(**comps)


def test_unet_config_for_the_release_matches_sd21_base():
    cfg = unet_config_from_ldm(MVDREAM_SD21_UNET_PARAMS)
    assert cfg["block_out_channels"] == [320, 640, 1280, 1280]
    assert cfg["attention_head_dim"] == [5, 10, 20, 20]  # SD 2.1 base's heads (64 channels each)
    assert cfg["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert cfg["up_block_types"] == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    assert cfg["cross_attention_dim"] == 1024 and cfg["use_linear_projection"] and cfg["layers_per_block"] == 2
    assert cfg["class_embed_type"] == "projection" and cfg["projection_class_embeddings_input_dim"] == 16
    assert cfg["sample_size"] == 32  # 256² renders


def test_ldm_unet_weights_convert_key_for_key(ldm_source, tmp_path):
    unet, config, ldm_state = ldm_source
    assert any(k.startswith("camera_embed.0") for k in ldm_state)
    ckpt = {"model.diffusion_model." + k: v for k, v in ldm_state.items()}
    ckpt["first_stage_model.decoder.conv_in.weight"] = torch.zeros(1)  # other parts of the file are ignored
    save_file(ckpt, str(tmp_path / "sd-v2.1-base-4view.safetensors"))
    base_dir = LatentDiffusionPrior.build_dummy(seed=0).save_pretrained(tmp_path / "sd21base")
    prior = MVDreamPrior.from_ldm_checkpoint(tmp_path, sd_base_dir=base_dir, unet_params=SMALL_LDM_PARAMS)
    converted = prior.unet.state_dict()
    assert converted.keys() == unet.state_dict().keys()
    assert all(torch.equal(converted[k], v) for k, v in unet.state_dict().items())
    reference = _prior_around(unet)
    cams, z = _four_view_cameras(1), _latents(prior, 4)
    t = torch.tensor(250)
    expected = reference.predict_noise(z, t, reference.build_condition(text=["a red cube"], cameras=cams))
    torch.testing.assert_close(prior.predict_noise(z, t, prior.build_condition(text=["a red cube"], cameras=cams)), expected)


def test_ashawkey_diffusers_layout_with_ldm_unet_loads(ldm_source, tmp_path):
    unet, config, ldm_state = ldm_source
    reference = _prior_around(unet)
    reference.save_pretrained(tmp_path / "mv")
    unet_dir = tmp_path / "mv" / "unet"
    for f in unet_dir.iterdir():
        f.unlink()
    (unet_dir / "config.json").write_text(json.dumps({"_class_name": "MultiViewUNetModel", **SMALL_LDM_PARAMS}))
    save_file(ldm_state, str(unet_dir / "diffusion_pytorch_model.safetensors"))
    loaded = MVDreamPrior.from_pretrained(tmp_path / "mv")
    cams, z = _four_view_cameras(1), _latents(loaded, 4)
    cond_of = lambda p: p.build_condition(text=["a blue torus"], cameras=cams)  # noqa: E731
    t = torch.tensor(50)
    torch.testing.assert_close(loaded.predict_noise(z, t, cond_of(loaded)), reference.predict_noise(z, t, cond_of(reference)))


def test_release_checkpoint_is_found_under_the_weights_setting(ldm_source, tmp_path, monkeypatch):
    unet, _, ldm_state = ldm_source
    release = tmp_path / "weights" / "MVDream" / "MVDream"
    release.mkdir(parents=True)
    torch.save({"model.diffusion_model." + k: v for k, v in ldm_state.items()}, release / "sd-v2.1-base-4view.pt")
    sd_base = tmp_path / "weights" / "stabilityai" / "stable-diffusion-2-1-base"
    LatentDiffusionPrior.build_dummy(seed=0).save_pretrained(sd_base)
    monkeypatch.setenv("ANYTO3D_WEIGHTS", str(tmp_path / "weights"))
    prior = MVDreamPrior.from_ldm_checkpoint(unet_params=SMALL_LDM_PARAMS)
    assert all(torch.equal(prior.unet.state_dict()[k], v) for k, v in unet.state_dict().items())


def test_missing_or_wrong_checkpoints_say_what_is_expected(ldm_source, tmp_path, monkeypatch):
    monkeypatch.delenv("ANYTO3D_WEIGHTS", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(MissingWeightsError, match="MVDream/MVDream") as err:
        MVDreamPrior.from_ldm_checkpoint()
    assert "sd-v2.1-base-4view.pt" in str(err.value) and "ANYTO3D_WEIGHTS" in str(err.value)
    with pytest.raises(MissingWeightsError, match="sd-v2.1-base-4view"):
        MVDreamPrior.from_ldm_checkpoint(tmp_path / "nowhere.pt")
    with pytest.raises(MissingWeightsError, match="4view"):
        MVDreamPrior.from_ldm_checkpoint(tmp_path)
    _, _, ldm_state = ldm_source
    no_camera = {"model.diffusion_model." + k: v for k, v in ldm_state.items() if "camera_embed" not in k}
    save_file(no_camera, str(tmp_path / "plain-sd-4view.safetensors"))
    with pytest.raises(InputError, match="camera"):
        MVDreamPrior.from_ldm_checkpoint(tmp_path / "plain-sd-4view.safetensors", unet_params=SMALL_LDM_PARAMS)


def test_normalize_camera_handles_a_batch_exactly():
    c2w = torch.eye(4).repeat(2, 1, 1)
    c2w[0, :3, 3] = torch.tensor([0.0, 3.0, 4.0])
    c2w[1, :3, 3] = torch.tensor([0.0, 0.0, 0.5])
    flat = normalize_camera(c2w).view(2, 4, 4)
    torch.testing.assert_close(flat[0, :3, 3], torch.tensor([0.0, 0.6, 0.8]))
    torch.testing.assert_close(flat[1, :3, 3], torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(flat[:, :3, :3], c2w[:, :3, :3])
    assert torch.equal(flat[:, 3], c2w[:, 3])
