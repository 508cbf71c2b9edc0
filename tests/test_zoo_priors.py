"""The tiny world's priors (anyto3d.zoo.priors) and their training loops (anyto3d.zoo.train_priors)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from anyto3d.cameras import (
    PRESETS,
    relative_camera,
    sample_cameras,
    sample_multiview_cameras,
)
from anyto3d.checkpoints import CheckpointManager
from anyto3d.errors import InputError
from anyto3d.losses.diffusion import diffusion_loss
from anyto3d.zoo.dataset import DatasetConfig, render_dataset
from anyto3d.zoo.evaluate import judge_samples
from anyto3d.zoo.judge import IGNORE
from anyto3d.zoo.priors import (
    PRIOR_CLASSES,
    TinyImagePrior,
    TinyMultiViewPrior,
    TinyNovelViewPrior,
    TinyVideoPrior,
    WorldCodeEmbedding,
    load_tiny_prior,
    noise_augment_embedding,
)
from anyto3d.zoo.train_priors import (
    TrainConfig,
    _object_groups,
    _pick_from_groups,
    _pick_reference,
    load_view_images,
    lr_factor,
    make_loss_fn,
    reconstruction_error,
    same_lens_groups,
    sample_sheet,
    train_prior,
    world_view_embeddings,
)
from anyto3d.zoo.world import WorldObject

OBJECTS = [
    WorldObject.single("cube", "red"),
    WorldObject.single("sphere", "blue"),
    WorldObject.single("cone", "green"),
    WorldObject.single("cylinder", "yellow"),
]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def views_dir(tmp_path_factory):
    """4 objects × 32 views at 16², in MVDream-style groups of 4."""
    out = tmp_path_factory.mktemp("views")
    cfg = DatasetConfig(
        resolution=16, captions_per_object=2, views_per_group=4, lighting="headlight"
    )
    render_dataset(OBJECTS, 32, out, cfg=cfg, seed=0)
    return out


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _image_case(prior, b=2, seed=0):
    g = _gen(seed)
    cond = prior.build_condition(
        torch.randn(b, prior.config.embedding_dim, generator=g)
    )
    z = torch.randn(b, 3, 16, 16, generator=g)
    return (
        z,
        cond,
        lambda: prior.build_condition(
            torch.randn(b, prior.config.embedding_dim, generator=g)
        ),
    )


def _novel_case(prior, b=2, seed=0):
    g = _gen(seed)
    ref = torch.rand(1, 3, 16, 16, generator=g) * 2 - 1
    rel = relative_camera(
        sample_cameras(PRESETS["xbind_phase_i"], b, g),
        sample_cameras(PRESETS["xbind_phase_i"], b, g),
    )
    cond = prior.build_condition(reference_image=ref, relative_camera=rel)
    z = torch.randn(b, 3, 16, 16, generator=g)
    other = torch.rand(1, 3, 16, 16, generator=g) * 2 - 1
    return (
        z,
        cond,
        lambda: prior.build_condition(reference_image=other, relative_camera=rel),
    )


def _multiview_case(prior, b=2, seed=0):
    g = _gen(seed)
    cams = torch.cat(
        [sample_multiview_cameras(PRESETS["fourdfy"], 4, g).c2w for _ in range(b)]
    )
    cond = prior.build_condition(
        torch.randn(b, prior.config.embedding_dim, generator=g), cams
    )
    z = torch.randn(4 * b, 3, 16, 16, generator=g)
    return (
        z,
        cond,
        lambda: prior.build_condition(
            torch.randn(b, prior.config.embedding_dim, generator=g), cams
        ),
    )


def _video_case(prior, b=2, seed=0):
    g = _gen(seed)
    cond = prior.build_condition(
        torch.randn(b, prior.config.embedding_dim, generator=g)
    )
    z = torch.randn(b, 3, prior.config.num_frames, 16, 16, generator=g)
    return (
        z,
        cond,
        lambda: prior.build_condition(
            torch.randn(b, prior.config.embedding_dim, generator=g)
        ),
    )


CASES = {
    "prior2d": (TinyImagePrior, _image_case),
    "novelview": (TinyNovelViewPrior, _novel_case),
    "multiview": (TinyMultiViewPrior, _multiview_case),
    "video": (TinyVideoPrior, _video_case),
}


def _randomise(prior, seed=1):
    """Fresh diffusers UNets zero their output conv; give every weight a value so outputs depend on inputs."""
    g = _gen(seed)
    with torch.no_grad():
        for p in prior.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return prior.eval()


@pytest.mark.parametrize("kind", list(CASES))
def test_prior_interface_shapes_cfg_condition_and_round_trip(kind, tmp_path):
    cls, case = CASES[kind]
    prior = _randomise(cls.build_tiny("test"))
    z, cond, other_cond = case(prior)
    t = torch.tensor([500])
    with torch.no_grad():
        eps = prior.predict_noise(z, t, cond)
        assert eps.shape == z.shape and torch.isfinite(eps).all()
        # CFG in the standard form ε_u + s(ε_c − ε_u)
        eps_u = prior.predict_noise(z, t, prior.unconditional(cond))
        guided = prior.guided_noise(z, t, cond, 4.0)
        torch.testing.assert_close(
            guided, eps_u + 4.0 * (eps - eps_u), atol=1e-5, rtol=1e-4
        )
        # the condition matters
        assert (prior.predict_noise(z, t, other_cond()) - eps).abs().max() > 1e-3
        assert (eps_u - eps).abs().max() > 1e-3
    prior.save_pretrained(tmp_path / kind)
    loaded = load_tiny_prior(tmp_path / kind)
    assert type(loaded) is cls
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.predict_noise(z, t, cond), eps, atol=0, rtol=0
        )


@pytest.mark.parametrize("kind", list(CASES))
def test_fresh_priors_read_the_embedding_at_unit_rms_and_old_configs_do_not(kind, tmp_path):
    cls, _ = CASES[kind]
    overrides = {"embedding_dim": 8} if kind == "novelview" else {}
    prior = cls.build_tiny("test", **overrides)
    assert prior.config.scale_embedding  # every fresh prior scales
    unit = torch.nn.functional.normalize(torch.randn(3, 8, generator=_gen(5)), dim=-1)
    scaled = prior.embedding_input(unit, torch.float32)
    torch.testing.assert_close(scaled.pow(2).mean(-1), torch.ones(3))
    # weights saved before the field existed load unscaled, as they were trained
    prior.save_pretrained(tmp_path / kind)
    cfg_path = tmp_path / kind / "config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["scale_embedding"]
    cfg_path.write_text(json.dumps(cfg))
    old = load_tiny_prior(tmp_path / kind)
    assert not old.config.scale_embedding
    torch.testing.assert_close(old.embedding_input(unit, torch.float32), unit)


@pytest.mark.parametrize("kind", ["prior2d", "novelview", "multiview"])
def test_scale_shift_conditions_resblocks_by_film_and_round_trips(kind, tmp_path):
    cls, case = CASES[kind]
    prior = _randomise(cls.build_tiny("test", time_scale_shift=True))
    resnet = prior.unet.down_blocks[0].resnets[0]
    # FiLM: the embedding gives a scale and a shift per channel, twice the channels of the block
    assert resnet.time_emb_proj.out_features == 2 * resnet.conv1.out_channels
    z, cond, other_cond = case(prior)
    t = torch.tensor([500])
    with torch.no_grad():
        eps = prior.predict_noise(z, t, cond)
        assert (prior.predict_noise(z, t, other_cond()) - eps).abs().max() > 1e-3
    prior.save_pretrained(tmp_path / kind)
    loaded = load_tiny_prior(tmp_path / kind)
    assert loaded.config.time_scale_shift
    with torch.no_grad():
        torch.testing.assert_close(loaded.predict_noise(z, t, cond), eps, atol=0, rtol=0)
    # weights saved before the field existed load with the additive embedding they were trained with
    cfg_path = tmp_path / kind / "config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["time_scale_shift"]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(RuntimeError, match="time_emb_proj"):
        load_tiny_prior(tmp_path / kind)  # the additive UNet's projections are half the size


def test_2d_prior_cross_attention_reads_the_embedding_as_tokens_and_round_trips(tmp_path):
    """``context_tokens`` > 0: a UNet2DConditionModel whose cross-attention reads the embedding as
    tokens, beside the additive path; the default stays the published UNet2DModel."""
    from diffusers import UNet2DConditionModel, UNet2DModel

    assert isinstance(TinyImagePrior.build_tiny("test").unet, UNet2DModel)
    prior = _randomise(TinyImagePrior.build_tiny("test", context_tokens=3, cross_attention_dim=16))
    assert isinstance(prior.unet, UNet2DConditionModel) and prior.unet.config.cross_attention_dim == 16
    assert prior.context_proj.out_features == 3 * 16
    z, cond, other_cond = CASES["prior2d"][1](prior)
    t = torch.tensor([500])
    with torch.no_grad():
        eps = prior.predict_noise(z, t, cond)
        # with the additive path cut, the embedding still reaches the output through the tokens
        prior.embedding_proj[2].weight.zero_()
        prior.embedding_proj[2].bias.zero_()
        tokens_only = prior.predict_noise(z, t, cond)
        assert (prior.predict_noise(z, t, other_cond()) - tokens_only).abs().max() > 1e-3
    prior.save_pretrained(tmp_path / "p2d")
    loaded = load_tiny_prior(tmp_path / "p2d")
    assert loaded.config.context_tokens == 3
    with torch.no_grad():
        torch.testing.assert_close(loaded.predict_noise(z, t, cond), tokens_only, atol=0, rtol=0)
        assert (eps - tokens_only).abs().max() > 1e-4  # the additive path mattered too


def test_scale_shift_is_refused_where_it_does_not_exist():
    with pytest.raises(InputError, match="UNet3DConditionModel"):
        TinyVideoPrior.build_tiny("test", time_scale_shift=True)


def test_novel_view_pairs_share_object_and_lens():
    objects = np.array([0, 0, 0, 0, 1, 1, 0])
    fovy = np.radians([40.0, 40.0, 30.0, 30.0, 40.0, 40.0, 40.00001])
    g = same_lens_groups(objects, fovy)
    assert g[0] == g[1] == g[6]  # same object, same lens (to 1e-4 rad)
    assert g[2] == g[3] and g[2] != g[0]  # another lens: another group
    assert g[4] == g[5] and len({g[0], g[2], g[4]}) == 3  # another object: another group


def _four_view_groups():
    """Object 0: four views 90° apart; object 1: three views; object 2: one view."""
    objects = np.array([0, 0, 0, 0, 1, 1, 1, 2])
    table, counts = _object_groups(objects)
    azimuth = torch.tensor([0.0, np.pi / 2, np.pi, -np.pi / 2, 0.0, 3.0, 1.0, 0.0])
    targets = torch.arange(8).repeat(3000)
    return table, counts, torch.from_numpy(objects)[targets], targets, azimuth


def test_novel_view_reference_draw_defaults_to_the_uniform_one():
    """Defaults (self allowed, one candidate) are the uniform draw the session-5 prior trained on."""
    table, counts, groups, targets, azimuth = _four_view_groups()
    ref = _pick_reference(table, counts, groups, targets, azimuth, _gen(5), False, 1)
    assert torch.equal(ref, _pick_from_groups(table, counts, groups, _gen(5)))


def test_novel_view_reference_excludes_the_target_and_favours_large_turns():
    table, counts, groups, targets, azimuth = _four_view_groups()
    ref = _pick_reference(table, counts, groups, targets, azimuth, _gen(5), True, 1)
    assert torch.equal(torch.from_numpy(np.array([0, 0, 0, 0, 1, 1, 1, 2]))[ref], groups)  # same object
    alone = groups == 2
    assert bool((ref[~alone] != targets[~alone]).all()) and bool((ref[alone] == targets[alone]).all())
    partners = torch.bincount(ref[targets == 0], minlength=4)[1:].float() / 3000
    torch.testing.assert_close(partners, torch.full((3,), 1 / 3), atol=0.04, rtol=0)  # uniform over the others
    # two candidates: the back (180°) unless both draws are sides, P = 1 − (2/3)² = 5/9; the
    # two sides tie and split the rest evenly
    ref2 = _pick_reference(table, counts, groups, targets, azimuth, _gen(5), True, 2)
    partners = torch.bincount(ref2[targets == 0], minlength=4)[1:].float() / 3000
    torch.testing.assert_close(partners, torch.tensor([2 / 9, 5 / 9, 2 / 9]), atol=0.04, rtol=0)


def test_novel_view_film_conditioning_builds_and_reads_the_camera():
    prior = _randomise(TinyNovelViewPrior.build_tiny("test", time_scale_shift=True))
    assert prior.unet.config.resnet_time_scale_shift == "scale_shift"
    ref = torch.rand(1, 3, 16, 16, generator=_gen(3)) * 2 - 1
    z = torch.randn(2, 3, 16, 16, generator=_gen(4))
    cams = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, -1.0, 0.0]])
    with torch.no_grad():
        eps = prior.predict_noise(z[:1].expand(2, -1, -1, -1), torch.tensor([400, 400]),
                                  prior.build_condition(reference_image=ref, relative_camera=cams))
    assert (eps[0] - eps[1]).abs().mean() > 1e-3


@pytest.mark.parametrize("harmonics", [0, 2])
def test_novel_view_camera_paths(harmonics):
    """K > 0: the camera has its own MLP on [Δpolar, Δr, sin kΔaz, cos kΔaz]; 0: the saved
    layout, one MLP over camera and embedding."""
    prior = _randomise(TinyNovelViewPrior.build_tiny("test", embedding_dim=8, camera_harmonics=harmonics))
    assert hasattr(prior, "camera_proj") == (harmonics > 0)
    if harmonics:
        az = torch.tensor([0.3, -2.0])
        cam = torch.stack([torch.tensor([0.1, 0.0]), az.sin(), az.cos(), torch.tensor([0.2, -0.1])], 1)
        f = prior.camera_features(cam)
        torch.testing.assert_close(f[:, :2], cam[:, [0, 3]])
        torch.testing.assert_close(f[:, 2:4], torch.stack([az.sin(), (2 * az).sin()], 1))
        torch.testing.assert_close(f[:, 4:], torch.stack([az.cos(), (2 * az).cos()], 1))
    ref = torch.rand(1, 3, 16, 16, generator=_gen(3)) * 2 - 1
    emb = torch.nn.functional.normalize(torch.randn(1, 8, generator=_gen(6)), dim=-1)
    z = torch.randn(2, 3, 16, 16, generator=_gen(4))
    cams = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, -1.0, 0.0]])
    with torch.no_grad():
        eps = prior.predict_noise(z, torch.tensor([400, 400]), prior.build_condition(
            reference_image=ref, relative_camera=cams, embedding=emb))
        other = prior.predict_noise(z, torch.tensor([400, 400]), prior.build_condition(
            reference_image=ref, relative_camera=cams.flip(0), embedding=emb))
    assert (eps - other).abs().mean() > 1e-3  # the camera is read on either path


def test_novel_view_relative_camera_changes_the_output():
    prior = _randomise(TinyNovelViewPrior.build_tiny("test"))
    ref = torch.rand(1, 3, 16, 16, generator=_gen(3)) * 2 - 1
    front = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    back = torch.tensor([[0.0, 0.0, -1.0, 0.0]])  # Δazimuth = 180°
    z = torch.randn(1, 3, 16, 16, generator=_gen(4))
    with torch.no_grad():
        e_front = prior.predict_noise(
            z,
            torch.tensor([400]),
            prior.build_condition(reference_image=ref, relative_camera=front),
        )
        e_back = prior.predict_noise(
            z,
            torch.tensor([400]),
            prior.build_condition(reference_image=ref, relative_camera=back),
        )
    assert (e_front - e_back).abs().mean() > 1e-3
    with pytest.raises(InputError):
        prior.build_condition(reference_image=ref, relative_camera=torch.zeros(1, 3))


def test_multiview_views_interact_within_their_group_only():
    prior = _randomise(TinyMultiViewPrior.build_tiny("test"))
    z, cond, _ = _multiview_case(prior, b=2)
    t = torch.tensor([300])
    with torch.no_grad():
        base = prior.predict_noise(z, t, cond)
        z2 = z.clone()
        z2[1] += torch.randn(
            z2[1].shape, generator=_gen(9)
        )  # change view 1 of object 0
        moved = prior.predict_noise(z2, t, cond)
    assert (moved[0] - base[0]).abs().max() > 1e-4  # view 0 sees view 1 (same object)
    torch.testing.assert_close(
        moved[4:], base[4:], atol=1e-5, rtol=0
    )  # object 1's views do not
    with pytest.raises(InputError):
        prior.build_condition(
            torch.zeros(1, prior.config.embedding_dim), torch.eye(4).repeat(3, 1, 1)
        )


def test_video_frames_interact():
    prior = _randomise(TinyVideoPrior.build_tiny("test"))
    z, cond, _ = _video_case(prior, b=2)
    t = torch.tensor([300])
    with torch.no_grad():
        base = prior.predict_noise(z, t, cond)
        z2 = z.clone()
        z2[0, :, 0] += torch.randn(
            z2[0, :, 0].shape, generator=_gen(5)
        )  # change frame 0 of clip 0
        moved = prior.predict_noise(z2, t, cond)
    assert (
        moved[0, :, -1] - base[0, :, -1]
    ).abs().max() > 1e-4  # the last frame sees the first
    torch.testing.assert_close(
        moved[1], base[1], atol=1e-5, rtol=0
    )  # other clips do not


def test_noise_augmentation_levels():
    e = torch.nn.functional.normalize(torch.randn(3, 16, generator=_gen(0)), dim=-1)
    torch.testing.assert_close(noise_augment_embedding(e, torch.zeros(3), _gen(1)), e)
    # ℓ = 1: pure noise at the embedding's norm, whatever the embedding was
    f = torch.nn.functional.normalize(torch.randn(3, 16, generator=_gen(2)), dim=-1)
    torch.testing.assert_close(
        noise_augment_embedding(e, 1.0, _gen(1)),
        noise_augment_embedding(f, 1.0, _gen(1)),
    )
    # ℓ = 1/2: equal parts signal and noise (cos 45° = √½ of the signal)
    pure = noise_augment_embedding(e, 1.0, _gen(1))
    half = noise_augment_embedding(e, 0.5, _gen(1))
    torch.testing.assert_close(
        half, np.sqrt(0.5) * e + np.sqrt(0.5) * pure, atol=1e-5, rtol=1e-4
    )
    prior = TinyImagePrior.build_tiny("test")
    cond = prior.build_condition(e[:, :8], noise_level=0.3, generator=_gen(0))
    assert cond["noise_level"].tolist() == pytest.approx([0.3] * 3)
    assert prior.unconditional(cond)["noise_level"].abs().sum() == 0
    with pytest.raises(InputError):
        noise_augment_embedding(e, 1.5)


def test_world_code_embedding_is_compositional():
    emb = WorldCodeEmbedding(
        1024, seed=0
    )  # wide, so chance cosines (~1/√1024) stay small
    codes = emb(
        [
            WorldObject.single("cube", "red"),
            WorldObject.single("cube", "blue"),
            WorldObject.single("sphere", "blue"),
        ]
    )
    torch.testing.assert_close(codes.norm(dim=-1), torch.ones(3))
    cos = codes @ codes.T
    # sharing one attribute of two makes codes similar (cos ≈ 1/2), sharing none does not
    assert (
        abs(cos[0, 1] - 0.5) < 0.15
        and abs(cos[1, 2] - 0.5) < 0.15
        and abs(cos[0, 2]) < 0.15
    )
    torch.testing.assert_close(
        WorldCodeEmbedding(1024, seed=0)([WorldObject.single("cube", "red")])[0],
        codes[0],
    )


def test_tiny_real_training_of_the_2d_prior(views_dir, tmp_path):
    """200 steps at 16² on 4 objects: the loss drops, and the prior has learnt what the embedding says."""
    cfg = TrainConfig(
        batch_size=16,
        lr=3e-3,
        warmup_steps=20,
        ema_decay=0.95,
        p_uncond=0.1,
        checkpoint_every=1000,
        sheet_steps=0,
        progress=False,
    )
    metrics = train_prior(
        "prior2d",
        views_dir,
        tmp_path,
        200,
        seed=0,
        preset="test",
        cfg=cfg,
        noise_aug_max=0.3,
    )
    assert metrics["loss_last"] < 0.55 * metrics["loss_first"], metrics  # measured 0.43
    prior = load_tiny_prior(tmp_path / "model")
    images, data = load_view_images(views_dir)
    right = world_view_embeddings(data, prior.config.embedding_dim)
    wrong = torch.roll(
        right.view(len(OBJECTS), -1, right.shape[-1]), 1, dims=0
    ).reshape_as(right)
    assert not torch.equal(wrong[0], right[0])
    z0 = prior.encode(images)
    noise = torch.randn(z0.shape, generator=_gen(7))
    t = torch.full(
        (z0.shape[0],), 700
    )  # ᾱ ≈ 0.2: the embedding must say what the object is
    z_t = prior.schedule.add_noise(z0, noise, t)
    with torch.no_grad():
        err_right = (
            (prior.predict_noise(z_t, t, prior.build_condition(right)) - noise)
            .pow(2)
            .mean()
        )
        err_wrong = (
            (prior.predict_noise(z_t, t, prior.build_condition(wrong)) - noise)
            .pow(2)
            .mean()
        )
    assert (
        err_right < 0.8 * err_wrong
    )  # measured 0.66, (float(err_right), float(err_wrong))


def test_novel_view_training_runs_on_same_lens_pairs(views_dir, tmp_path):
    cfg = TrainConfig(batch_size=8, checkpoint_every=100, sheet_steps=1, progress=False,
                      pair_exclude_self=True, pair_turn_candidates=2)  # the published recipe
    metrics = train_prior("novelview", views_dir, tmp_path, 6, seed=1, preset="test", cfg=cfg, embedding_dim=8)
    assert metrics["steps"] == 6 and np.isfinite(metrics["loss_last"])
    assert metrics["pair_exclude_self"] and metrics["pair_turn_candidates"] == 2
    prior = load_tiny_prior(tmp_path / "model")
    assert prior.config.camera_harmonics == 2 and prior.config.scale_embedding
    assert (tmp_path / "samples.png").is_file()


def _drawn_rows(kind, views_dir, framed_only, monkeypatch, steps=6):
    """Dataset rows each loss call trained on (targets, and novel-view references)."""
    import anyto3d.zoo.train_priors as tp

    prior = PRIOR_CLASSES[kind].build_tiny("test", seed=0, embedding_dim=8)
    cfg = TrainConfig(batch_size=8, p_uncond=0.0, framed_only=framed_only)
    seen = []
    monkeypatch.setattr(tp, "diffusion_loss", lambda prior, z0, cond, **kw: seen.append((z0, cond)) or z0.sum())
    loss_fn, context = make_loss_fn(kind, prior, views_dir, None, cfg, seed=0)
    gen = _gen(2)
    for _ in range(steps):
        loss_fn(gen)
    table = context["z"].flatten(1)

    def rows(z):
        match = (z.flatten(1)[:, None] == table[None]).all(-1)
        assert bool(match.any(1).all())
        return match.float().argmax(1)

    drawn = torch.cat([rows(z0) for z0, _ in seen])
    if kind == "novelview":
        drawn = torch.cat([drawn, *[rows(cond["reference"]) for _, cond in seen]])
    return drawn.numpy(), context["data"]


@pytest.mark.parametrize("kind", ["prior2d", "novelview", "multiview"])
def test_framed_only_trains_on_views_that_show_the_whole_object(kind, views_dir, monkeypatch):
    drawn, data = _drawn_rows(kind, views_dir, True, monkeypatch)
    framed = np.asarray(data.framed)
    assert 0.2 < framed.mean() < 0.95  # the fixture has close-ups to leave out
    assert framed[drawn].all()
    if kind == "multiview":  # whole groups of 4, each framed in every view
        assert (drawn.reshape(-1, 4) // 4 == drawn.reshape(-1, 4)[:, :1] // 4).all()
    every, _ = _drawn_rows(kind, views_dir, False, monkeypatch)
    assert not framed[every].all()  # by default the close-ups are trained on too


def test_cosine_schedule_warms_up_then_decays_to_zero_while_constant_stays_flat():
    cosine = TrainConfig(lr_schedule="cosine", warmup_steps=10)
    f = [lr_factor(s, 110, cosine) for s in range(110)]
    assert f[0] == pytest.approx(0.1) and f[9] == 1.0
    assert f[60] == pytest.approx(0.5)  # half way through the 100 decay steps
    assert f[-1] == pytest.approx(0.0, abs=1e-3)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    constant = [lr_factor(s, 110, TrainConfig(warmup_steps=10)) for s in range(110)]
    assert constant[:10] == pytest.approx(f[:10]) and set(constant[9:]) == {1.0}
    with pytest.raises(InputError, match="lr_schedule"):
        lr_factor(0, 10, TrainConfig(lr_schedule="linear"))


@pytest.mark.parametrize("schedule, last_lr", [("constant", 4e-4), ("cosine", 0.0)])
def test_the_training_loop_follows_the_schedule(schedule, last_lr, views_dir, tmp_path):
    cfg = TrainConfig(batch_size=4, warmup_steps=2, lr_schedule=schedule, sheet_steps=0, progress=False)
    metrics = train_prior("prior2d", views_dir, tmp_path, 6, seed=0, preset="test", cfg=cfg)
    assert metrics["lr_schedule"] == schedule
    _, state = CheckpointManager(tmp_path / "checkpoints", 1, prefix="step-").latest()
    assert state["scheduler"]["_last_lr"][0] == pytest.approx(last_lr, abs=1e-12)


@pytest.mark.parametrize("kind", ["prior2d", "novelview", "multiview", "video"])
def test_loss_weighting_reaches_every_priors_loss(kind, views_dir, tmp_path, monkeypatch):
    import anyto3d.zoo.train_priors as tp

    prior = PRIOR_CLASSES[kind].build_tiny("test", seed=0, embedding_dim=8)
    seen, powers = [], []
    monkeypatch.setattr(tp, "diffusion_loss", lambda prior, z0, cond, **kw: seen.append(kw) or z0.sum())
    real_draw = tp.draw_timesteps
    monkeypatch.setattr(tp, "draw_timesteps", lambda T, n, g, power: powers.append(power) or real_draw(T, n, g, power))
    data = views_dir
    if kind == "video":
        from anyto3d.zoo.dataset import render_clips

        data = tmp_path
        render_clips(OBJECTS[:1], data, motions=("spin",), clips_per_pair=1, n_frames=prior.config.num_frames, seed=0)
    cfg = TrainConfig(batch_size=4, snr_gamma=5.0, timestep_power=2.0)
    loss_fn, _ = make_loss_fn(kind, prior, data, None, cfg, seed=0)
    loss_fn(_gen(0))
    assert len(seen) == 1 and seen[0]["snr_gamma"] == 5.0
    if kind == "multiview":  # one step per group of views, drawn by the loss function itself
        assert powers == [2.0] and (seen[0]["t"].view(-1, 4) == seen[0]["t"][::4, None]).all()
    else:
        assert seen[0]["timestep_power"] == 2.0


def test_training_resumes_exactly(views_dir, tmp_path):
    cfg = TrainConfig(batch_size=8, checkpoint_every=2, sheet_steps=0, progress=False)
    straight = train_prior(
        "multiview", views_dir, tmp_path / "a", 4, seed=3, preset="test", cfg=cfg
    )
    first = train_prior(
        "multiview", views_dir, tmp_path / "b", 2, seed=3, preset="test", cfg=cfg
    )
    resumed = train_prior(
        "multiview", views_dir, tmp_path / "b", 4, seed=3, preset="test", cfg=cfg
    )
    assert resumed["resumed_from"] == 2
    # the resumed run's time includes the first run's loop (carried in the checkpoint)
    step, ckpt = CheckpointManager(tmp_path / "b" / "checkpoints", every=1, prefix="step-").latest()
    assert step == 4
    ckpt = torch.load(tmp_path / "b" / "checkpoints" / "step-0000000002.pt", weights_only=True)["state"]
    assert 0 < ckpt["seconds"] <= first["train_seconds"]
    assert resumed["train_seconds"] >= ckpt["seconds"]
    assert resumed["loss_last"] == pytest.approx(straight["loss_last"], rel=1e-6)
    a = load_tiny_prior(tmp_path / "a" / "model").state_dict()
    b = load_tiny_prior(tmp_path / "b" / "model").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)


def test_vae_training_and_the_latent_prior(views_dir, tmp_path):
    cfg = TrainConfig(
        batch_size=16,
        lr=2e-3,
        warmup_steps=10,
        ema_decay=0.9,
        checkpoint_every=1000,
        progress=False,
    )
    metrics = train_prior(
        "vae",
        views_dir,
        tmp_path / "vae",
        80,
        seed=0,
        block_out_channels=(16, 32),
        cfg=cfg,
    )
    assert metrics["recon_mse_after"] < 0.3 * metrics["recon_mse_before"], metrics
    from anyto3d.zoo.priors import load_tiny_vae

    vae = load_tiny_vae(tmp_path / "vae" / "model")
    assert vae.config.scaling_factor == pytest.approx(metrics["scaling_factor"])
    images, _ = load_view_images(views_dir)
    assert reconstruction_error(vae, images) == pytest.approx(
        metrics["recon_mse_after"], rel=1e-4
    )
    # the latent 2D prior: UNet on 8² × 4 latents, images in and out at 16²
    prior = _randomise(
        TinyImagePrior.build_tiny(
            "test", vae=vae, image_size=16, block_out_channels=(16, 32)
        )
    )
    assert (prior.config.image_size, prior.config.channels, prior.image_size) == (
        8,
        4,
        16,
    )
    z = prior.encode(images[:2])
    assert z.shape == (2, 4, 8, 8)
    assert z.std() == pytest.approx(1.0, rel=0.5)  # the fitted scaling factor
    cond = prior.build_condition(torch.randn(2, 8, generator=_gen(0)))
    out = sample_sheet(prior, cond, tmp_path / "sheet.png", steps=2)
    assert out.shape == (2, 3, 16, 16)
    prior.save_pretrained(tmp_path / "latent")
    loaded = load_tiny_prior(tmp_path / "latent")
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode(z), prior.decode(z), atol=0, rtol=0)
    # diffusion_loss runs through the latent prior unchanged
    assert torch.isfinite(diffusion_loss(prior, z, cond))


def test_sample_sheet_writes_a_grid(tmp_path):
    from PIL import Image

    prior = TinyVideoPrior.build_tiny("test")
    cond = prior.build_condition(torch.randn(2, 8, generator=_gen(0)))
    out = sample_sheet(prior, cond, tmp_path / "v.png", steps=2, scale=1)
    assert out.shape == (2, 3, 4, 16, 16)
    assert Image.open(tmp_path / "v.png").size == (
        4 * 17 + 1,
        2 * 17 + 1,
    )  # frames across, clips down


def test_judge_samples_counts_against_targets():
    samples = torch.zeros(4, 3, 8, 8)

    def classifier(images):
        assert (
            images.shape == (4, 8, 8, 3) and float(images.min()) == 0.5
        )  # renderer layout, [0, 1]
        return {
            "shape": torch.tensor([0, 1, 1, 1]),
            "color": torch.tensor([[5.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]]),
        }

    scores = judge_samples(
        samples,
        {"shape": torch.tensor([0, 1, 1, 0]), "color": torch.tensor([0, 1, 1, 1])},
        classifier,
    )
    assert (
        scores["shape"] == 0.75
        and scores["color"] == 0.75
        and scores["all"] == 0.5
        and scores["groups"] == 0.5
    )
    grouped = judge_samples(
        samples,
        {"shape": torch.tensor([0, 1])},
        lambda x: {"shape": torch.tensor([0, 0, 1, 1])},
        2,
    )
    assert grouped == {"shape": 1.0, "all": 1.0, "groups": 1.0}
    with pytest.raises(InputError):
        judge_samples(samples, {"facing": torch.zeros(4)}, classifier)
    # an IGNORE label (a view whose named object has no front) is not scored: the facing
    # accuracy is over the other three, and the ignored view is right on facing
    ignored = judge_samples(
        samples,
        {"shape": torch.tensor([0, 1, 1, 1]), "facing": torch.tensor([0, IGNORE, 2, 1])},
        lambda x: {"shape": torch.tensor([0, 1, 1, 1]), "facing": torch.tensor([0, 1, 2, 0])},
    )
    assert ignored["facing"] == pytest.approx(2 / 3) and ignored["all"] == 0.75
