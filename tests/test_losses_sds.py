"""SDS, augmented SDS, 3D SDS, MVDream SDS and video SDS against closed forms.

The prior is :class:`GaussianPixelPrior`: data N(μ, s²I), identity codec, exact
ε̂(z_t) = √(1−ᾱ)(z_t − √ᾱ μ)/(ᾱ s² + 1 − ᾱ). Everything below is computed by hand from that
formula and compared with ``images.grad``, which must be the method's latent gradient / B carried
back through the layout conversion x = 2·images − 1 (so a factor 2 and a permute).
"""

import pytest
import torch

from anyto3d.errors import InputError
from anyto3d.losses.sds import (
    augmented_sds,
    multiview_sds,
    score_distillation_sampling,
    sds_3d,
)
from anyto3d.losses.video_sds import frames_to_clip, video_sds
from anyto3d.priors.pixel import GaussianPixelPrior

STD = 0.5
H = W = 8


def exact_eps(prior, z_t, t, mean):
    a = prior.schedule.alphas_cumprod[t].double().view(-1, *([1] * (z_t.dim() - 1)))
    return (1 - a).sqrt() * (z_t - a.sqrt() * mean) / (a * STD**2 + 1 - a)


def alpha(prior, t, dims=4):
    return prior.schedule.alphas_cumprod[t].double().view(-1, *([1] * (dims - 1)))


def to_latent_grad(images_grad):
    """images.grad [B,H,W,3] → the latent gradient / B it carries (undo x = 2·img − 1)."""
    return images_grad.permute(0, 3, 1, 2) / 2


@pytest.fixture
def setup():
    torch.manual_seed(0)
    prior = GaussianPixelPrior(std=STD).double()
    images = torch.rand(2, H, W, 3, dtype=torch.float64, requires_grad=True)
    mean = torch.randn(1, 3, H, W, dtype=torch.float64) * 0.5
    noise = torch.randn(2, 3, H, W, dtype=torch.float64)
    return prior, images, {"mean": mean}, noise


def test_sds_gradient_is_weighted_noise_residual_with_cfg(setup):
    prior, images, cond, noise = setup
    t, s = 600, 7.5
    loss = score_distillation_sampling(prior, images, cond, t, noise, guidance_scale=s)
    loss.backward()
    z = (images.detach() * 2 - 1).permute(0, 3, 1, 2)
    a = alpha(prior, torch.tensor([t, t]))
    z_t = a.sqrt() * z + (1 - a).sqrt() * noise
    eps_c = exact_eps(prior, z_t, torch.tensor([t, t]), cond["mean"])
    eps_u = exact_eps(prior, z_t, torch.tensor([t, t]), torch.zeros_like(cond["mean"]))
    expected = (1 - a) * (eps_u + s * (eps_c - eps_u) - noise)
    torch.testing.assert_close(to_latent_grad(images.grad), expected / 2)
    # the value is 0.5‖g‖²/B, a diagnostic of the gradient's size
    torch.testing.assert_close(loss.detach(), 0.5 * (expected**2).sum() / 2)


@pytest.mark.parametrize("weighting", ["sds", "uniform", "fantasia3d"])
def test_weightings(setup, weighting):
    prior, images, cond, noise = setup
    t = 300
    score_distillation_sampling(prior, images, cond, t, noise, guidance_scale=1.0, weighting=weighting).backward()
    g = to_latent_grad(images.grad).clone()
    images.grad = None
    score_distillation_sampling(prior, images, cond, t, noise, guidance_scale=1.0, weighting="uniform").backward()
    g_uniform = to_latent_grad(images.grad)
    a = float(prior.schedule.alphas_cumprod[t])
    w = {"sds": 1 - a, "uniform": 1.0, "fantasia3d": a**0.5 * (1 - a)}[weighting]
    torch.testing.assert_close(g, w * g_uniform)


def test_per_item_timesteps_and_shared_default(setup):
    prior, images, cond, noise = setup
    _, info = score_distillation_sampling(prior, images, cond, 500, noise, guidance_scale=2.0, return_diagnostics=True)
    assert info["t"].tolist() == [500, 500]  # one t shared by the batch by default
    ts = torch.tensor([100, 900])
    score_distillation_sampling(prior, images, cond, ts, noise, guidance_scale=2.0).backward()
    z = (images.detach() * 2 - 1).permute(0, 3, 1, 2)
    a = alpha(prior, ts)
    z_t = a.sqrt() * z + (1 - a).sqrt() * noise
    eps_c = exact_eps(prior, z_t, ts, cond["mean"])
    eps_u = exact_eps(prior, z_t, ts, torch.zeros_like(cond["mean"]))
    expected = (1 - a) * (eps_u + 2.0 * (eps_c - eps_u) - noise)
    torch.testing.assert_close(to_latent_grad(images.grad), expected / 2)


def test_v_prediction_prior_gives_the_same_gradient(setup):
    prior, images, cond, noise = setup
    prior_v = GaussianPixelPrior(std=STD, prediction_type="v_prediction").double()
    score_distillation_sampling(prior, images, cond, 700, noise, guidance_scale=3.0).backward()
    g_eps = images.grad.clone()
    images.grad = None
    score_distillation_sampling(prior_v, images, cond, 700, noise, guidance_scale=3.0).backward()
    torch.testing.assert_close(images.grad, g_eps)


def test_grad_clip_clamps_elementwise(setup):
    prior, images, cond, noise = setup
    score_distillation_sampling(prior, images, cond, 900, noise, guidance_scale=20.0, weighting="uniform").backward()
    g = to_latent_grad(images.grad).clone() * 2  # undo / B
    assert g.abs().max() > 0.3
    images.grad = None
    score_distillation_sampling(
        prior, images, cond, 900, noise, guidance_scale=20.0, weighting="uniform", grad_clip=0.3
    ).backward()
    torch.testing.assert_close(to_latent_grad(images.grad) * 2, g.clamp(-0.3, 0.3))


def test_noise_drawn_from_generator_is_reproducible(setup):
    prior, images, cond, _ = setup
    g1 = torch.Generator().manual_seed(3)
    g2 = torch.Generator().manual_seed(3)
    l1 = score_distillation_sampling(prior, images, cond, 400, guidance_scale=2.0, generator=g1)
    l2 = score_distillation_sampling(prior, images, cond, 400, guidance_scale=2.0, generator=g2)
    assert torch.equal(l1, l2)


def test_bad_inputs_raise_input_errors(setup):
    prior, images, cond, noise = setup
    with pytest.raises(InputError, match="renders"):
        score_distillation_sampling(prior, images.permute(0, 3, 1, 2), cond, 10, guidance_scale=1.0)
    with pytest.raises(InputError, match=r"\[0, 1000\)"):
        score_distillation_sampling(prior, images, cond, 1000, noise, guidance_scale=1.0)
    with pytest.raises(InputError, match="noise"):
        score_distillation_sampling(prior, images, cond, 10, noise[:1], guidance_scale=1.0)
    with pytest.raises(InputError, match="weighting"):
        score_distillation_sampling(prior, images, cond, 10, noise, guidance_scale=1.0, weighting="dreamfusion")
    with pytest.raises(InputError, match="batch"):
        score_distillation_sampling(prior, images, {"mean": cond["mean"].repeat(3, 1, 1, 1)}, 10, noise, guidance_scale=1.0)


def test_sds_3d_only_adds_the_conditioning_step(setup):
    prior, images, cond, noise = setup
    sds_3d(prior, images, 500, noise, guidance_scale=5.0, mean=cond["mean"]).backward()
    g = images.grad.clone()
    images.grad = None
    score_distillation_sampling(prior, images, cond, 500, noise, guidance_scale=5.0).backward()
    torch.testing.assert_close(g, images.grad)


# ---------------------------------------------------------------------------------------------
# Augmented SDS
# ---------------------------------------------------------------------------------------------


class CountingPrior(GaussianPixelPrior):
    decodes = 0

    def decode(self, latents):
        CountingPrior.decodes += 1
        return latents


def test_augmented_sds_without_image_term_is_sds_and_never_decodes(setup):
    _, images, cond, noise = setup
    prior = CountingPrior(std=STD).double()
    CountingPrior.decodes = 0
    augmented_sds(prior, images, cond, 500, noise, guidance_scale=4.0, image_weight=0.0).backward()
    g = images.grad.clone()
    assert CountingPrior.decodes == 0
    images.grad = None
    score_distillation_sampling(prior, images, cond, 500, noise, guidance_scale=4.0).backward()
    torch.testing.assert_close(g, images.grad)


@pytest.mark.parametrize("image_scale", ["snr", "none"])
def test_augmented_sds_image_term_one_step(setup, image_scale):
    prior, images, cond, noise = setup
    t, s, omega = 400, 4.0, 0.3
    augmented_sds(prior, images, cond, t, noise, guidance_scale=s, image_weight=omega, image_scale=image_scale).backward()
    z = (images.detach() * 2 - 1).permute(0, 3, 1, 2)
    a = alpha(prior, torch.tensor([t, t]))
    z_t = a.sqrt() * z + (1 - a).sqrt() * noise
    eps_c = exact_eps(prior, z_t, torch.tensor([t, t]), cond["mean"])
    eps_u = exact_eps(prior, z_t, torch.tensor([t, t]), torch.zeros_like(cond["mean"]))
    eps = eps_u + s * (eps_c - eps_u)
    x0_hat = (z_t - (1 - a).sqrt() * eps) / a.sqrt()
    scale = a.sqrt() / (1 - a).sqrt() if image_scale == "snr" else 1.0
    # identity codec: x = z, so the latent and image terms add on the same tensor
    expected = (1 - a) * (eps - noise) + (1 - a) * omega * (z - x0_hat) * scale
    torch.testing.assert_close(to_latent_grad(images.grad), expected / 2)


def test_augmented_sds_x0_form_and_multistep_ddim(setup):
    prior, images, cond, noise = setup
    t, s, steps = 800, 3.0, 4
    augmented_sds(
        prior, images, cond, t, noise, guidance_scale=s, image_weight=0.0, latent_form="x0", denoise_steps=steps
    ).backward()
    z = (images.detach() * 2 - 1).permute(0, 3, 1, 2)
    mean_cfg = s * cond["mean"]  # ε is affine in μ and μ_u = 0, so CFG is the prior of mean s·μ
    zz = torch.sqrt(alpha(prior, torch.tensor([t, t]))) * z + torch.sqrt(1 - alpha(prior, torch.tensor([t, t]))) * noise
    grid = [t * (steps - k) // steps for k in range(steps)]
    for k, tk in enumerate(grid):  # deterministic DDIM t → ... → 0
        tb = torch.tensor([tk, tk])
        eps = exact_eps(prior, zz, tb, mean_cfg)
        a = alpha(prior, tb)
        x0 = (zz - (1 - a).sqrt() * eps) / a.sqrt()
        if k + 1 < steps:
            a_next = alpha(prior, torch.tensor([grid[k + 1]] * 2))
            zz = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    w = 1 - alpha(prior, torch.tensor([t, t]))
    torch.testing.assert_close(to_latent_grad(images.grad), w * (z - x0) / 2)


class HalfResPrior(GaussianPixelPrior):
    """A latent codec: 2× average-pool to encode, nearest 2× upsample to decode."""

    def encode(self, images):
        return torch.nn.functional.avg_pool2d(images, 2)

    def decode(self, latents):
        return torch.nn.functional.interpolate(latents, scale_factor=2, mode="nearest")


def test_augmented_sds_with_a_latent_codec_reaches_the_render(setup):
    _, images, _, _ = setup
    prior = HalfResPrior(std=STD).double()
    cond = {"mean": torch.zeros(1, 3, H // 2, W // 2, dtype=torch.float64)}
    noise = torch.randn(2, 3, H // 2, W // 2, dtype=torch.float64)
    t, omega = 500, 0.5
    augmented_sds(prior, images, cond, t, noise, guidance_scale=1.0, image_weight=omega, image_scale="none").backward()
    x = (images.detach() * 2 - 1).permute(0, 3, 1, 2)
    z = torch.nn.functional.avg_pool2d(x, 2)
    a = alpha(prior, torch.tensor([t, t]))
    z_t = a.sqrt() * z + (1 - a).sqrt() * noise
    eps = exact_eps(prior, z_t, torch.tensor([t, t]), cond["mean"])
    x_hat = prior.decode((z_t - (1 - a).sqrt() * eps) / a.sqrt())
    g_z = (1 - a) * (eps - noise)
    g_x = (1 - a) * omega * (x - x_hat)
    # chain rule by hand: avg_pool's adjoint spreads g_z/4 over each 2×2 block
    expected = torch.nn.functional.interpolate(g_z, scale_factor=2, mode="nearest") / 4 + g_x
    torch.testing.assert_close(to_latent_grad(images.grad), expected / 2)


# ---------------------------------------------------------------------------------------------
# MVDream SDS
# ---------------------------------------------------------------------------------------------


def test_multiview_reconstruction_without_rescale_is_sds_with_sigma_weight():
    prior = GaussianPixelPrior(std=STD).double()
    images = torch.rand(4, H, W, 3, dtype=torch.float64, requires_grad=True)
    cond = {"mean": torch.randn(4, 3, H, W, dtype=torch.float64)}
    noise = torch.randn(4, 3, H, W, dtype=torch.float64)
    t = 450
    multiview_sds(prior, images, cond, t, noise, n_views=4, guidance_scale=6.0, recon_std_rescale=0.0).backward()
    g = images.grad.clone()
    images.grad = None
    score_distillation_sampling(prior, images, cond, t, noise, guidance_scale=6.0, weighting="uniform").backward()
    a = float(prior.schedule.alphas_cumprod[t])
    torch.testing.assert_close(g, ((1 - a) / a) ** 0.5 * images.grad)


def test_multiview_std_rescale_toward_non_cfg_x0():
    prior = GaussianPixelPrior(std=STD).double()
    images = torch.rand(8, H, W, 3, dtype=torch.float64, requires_grad=True)
    cond = {"mean": torch.randn(8, 3, H, W, dtype=torch.float64)}
    noise = torch.randn(8, 3, H, W, dtype=torch.float64)
    t, s, r = 300, 10.0, 0.5
    multiview_sds(prior, images, cond, t, noise, n_views=4, guidance_scale=s, recon_std_rescale=r).backward()
    z = (images.detach() * 2 - 1).permute(0, 3, 1, 2)
    a = alpha(prior, torch.full((8,), t))
    z_t = a.sqrt() * z + (1 - a).sqrt() * noise
    eps_c = exact_eps(prior, z_t, torch.full((8,), t), cond["mean"])
    eps_u = exact_eps(prior, z_t, torch.full((8,), t), torch.zeros_like(cond["mean"]))
    x0 = (z_t - (1 - a).sqrt() * (eps_u + s * (eps_c - eps_u))) / a.sqrt()
    x0_c = (z_t - (1 - a).sqrt() * eps_c) / a.sqrt()
    expected_x0 = torch.empty_like(x0)
    for grp in (slice(0, 4), slice(4, 8)):  # std over each 4-view group
        factor = x0_c[grp].std() / x0[grp].std()
        expected_x0[grp] = r * factor * x0[grp] + (1 - r) * x0[grp]
    torch.testing.assert_close(to_latent_grad(images.grad), (z - expected_x0) / 8, rtol=1e-6, atol=1e-9)


def test_multiview_needs_whole_groups():
    prior = GaussianPixelPrior(std=STD)
    with pytest.raises(InputError, match="multiple of 4"):
        multiview_sds(prior, torch.rand(3, H, W, 3), {"mean": torch.zeros(1, 3, H, W)}, 10)


# ---------------------------------------------------------------------------------------------
# Video SDS
# ---------------------------------------------------------------------------------------------


def test_frames_to_clip_layout_and_upsampling():
    frames = torch.rand(5, 4, 6, 3)
    clip = frames_to_clip(frames)
    assert clip.shape == (1, 3, 5, 4, 6)
    torch.testing.assert_close(clip[0, :, 2], frames[2].permute(2, 0, 1) * 2 - 1)
    assert frames_to_clip(frames, size=(8, 12)).shape == (1, 3, 5, 8, 12)
    with pytest.raises(InputError, match="frames"):
        frames_to_clip(torch.rand(4, 6, 3))


def test_video_sds_one_t_per_clip_closed_form():
    prior = GaussianPixelPrior(std=STD).double()
    frames = torch.rand(6, H, W, 3, dtype=torch.float64, requires_grad=True)
    mean = torch.randn(1, 3, 6, H, W, dtype=torch.float64)
    noise = torch.randn(1, 3, 6, H, W, dtype=torch.float64)
    t, s = 650, 5.0
    loss, info = video_sds(prior, frames, {"mean": mean}, t, noise, guidance_scale=s, return_diagnostics=True)
    loss.backward()
    assert info["t"].tolist() == [t]
    z = (frames.detach() * 2 - 1).permute(3, 0, 1, 2)[None]  # [1, 3, F, H, W]
    a = float(prior.schedule.alphas_cumprod[t])
    z_t = a**0.5 * z + (1 - a) ** 0.5 * noise
    eps = (1 - a) ** 0.5 * (z_t - a**0.5 * s * mean) / (a * STD**2 + 1 - a)
    expected = (1 - a) * (eps - noise)  # / B with B = 1 clip
    torch.testing.assert_close(frames.grad, 2 * expected[0].permute(1, 2, 3, 0))


def test_video_sds_with_the_zeroscope_adapter():
    """The contract with ``anyto3d.priors.zeroscope``: encode takes clips [B,3,F,H,W]."""
    from anyto3d.priors.zeroscope import ZeroscopePrior

    prior = ZeroscopePrior.build_dummy()
    frames = torch.rand(4, 16, 24, 3, requires_grad=True)
    loss = video_sds(prior, frames, prior.build_condition(text=["a dog running"]), 300)
    loss.backward()
    assert torch.isfinite(frames.grad).all() and frames.grad.abs().sum() > 0


def test_sds_3d_with_the_zero123_adapter():
    """The contract with ``anyto3d.priors.zero123``: reference view + relative cameras → condition."""
    from anyto3d.priors.zero123 import Zero123Prior

    prior = Zero123Prior.build_dummy()
    images = torch.rand(2, 32, 32, 3, requires_grad=True)
    reference = prior.encode_reference(torch.rand(1, 3, 32, 32) * 2 - 1)
    sds_3d(prior, images, 400, reference=reference, relative_camera=torch.randn(2, 4)).backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_multiview_sds_with_the_mvdream_adapter():
    from anyto3d.cameras import CameraBatch
    from anyto3d.priors.mvdream import MVDreamPrior

    prior = MVDreamPrior.build_dummy()
    cameras = CameraBatch.from_spherical(
        torch.zeros(4), torch.arange(4.0) * torch.pi / 2, torch.full((4,), 2.0), torch.full((4,), 0.7)
    )
    cond = prior.build_condition(text=["a chair"], cameras=cameras, negative_text=["ugly"])
    images = torch.rand(4, 32, 32, 3, requires_grad=True)
    for reconstruction in (True, False):
        images.grad = None
        multiview_sds(prior, images, cond, 300, reconstruction=reconstruction).backward()
        assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
