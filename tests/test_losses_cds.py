"""CDS (XBind Eq. 3) against closed forms on the exact Gaussian-data prior.

The gradient identity: with the x0 std rescale off, the gradient on the latents (before / B) is
w·(ε̂(z_{t1}, t1) − ε̂(ẑ_{t2}, t2)) where z_{t1} = z + σ1 ε* (VE), ẑ_{t2} = z_{t1} + (σ2 − σ1) ε̂1,
the prior sees z/√(1+σ²), and w is the weighting at t1 (released code).
"""

import pytest
import torch

from anyto3d.errors import InputError
from anyto3d.losses.cds import (
    CDS_COARSE,
    CDS_REFINE,
    CDSTimestepConfig,
    FixedNoise,
    consistency_distillation,
    sample_cds_timesteps,
)
from anyto3d.priors.pixel import GaussianPixelPrior

STD = 0.5
H = W = 8


def vp_eps(prior, z_vp, t, mean):
    a = float(prior.schedule.alphas_cumprod[t])
    return (1 - a) ** 0.5 * (z_vp - a**0.5 * mean) / (a * STD**2 + 1 - a)


def sigma(prior, t):
    a = float(prior.schedule.alphas_cumprod[t])
    return ((1 - a) / a) ** 0.5


@pytest.fixture
def setup():
    torch.manual_seed(0)
    prior = GaussianPixelPrior(std=STD).double()
    images = torch.rand(2, H, W, 3, dtype=torch.float64, requires_grad=True)
    mean = torch.randn(1, 3, H, W, dtype=torch.float64) * 0.5
    eps_star = torch.randn(1, 3, H, W, dtype=torch.float64)
    return prior, images, {"mean": mean}, eps_star


def latent_grad(images):
    return images.grad.permute(0, 3, 1, 2) / 2  # undo x = 2·img − 1; still / B


@pytest.mark.parametrize("weighting", ["uniform", "sds"])
def test_cds_gradient_is_w_times_eps_t1_minus_eps_t2(setup, weighting):
    prior, images, cond, eps_star = setup
    t1, t2, s = 640, 410, 7.0
    consistency_distillation(prior, images, cond, t1, t2, eps_star, guidance_scale=s, weighting=weighting).backward()
    z = (images.detach() * 2 - 1).permute(0, 3, 1, 2)
    s1, s2 = sigma(prior, t1), sigma(prior, t2)
    mu_cfg = s * cond["mean"]  # CFG of an affine-in-μ ε with μ_u = 0
    zt1 = z + s1 * eps_star
    eps1 = vp_eps(prior, zt1 / (1 + s1**2) ** 0.5, t1, mu_cfg)
    zt2 = zt1 + (s2 - s1) * eps1
    eps2 = vp_eps(prior, zt2 / (1 + s2**2) ** 0.5, t2, mu_cfg)
    a1 = float(prior.schedule.alphas_cumprod[t1])
    w = 1.0 if weighting == "uniform" else 1 - a1
    torch.testing.assert_close(latent_grad(images), w * (eps1 - eps2) / 2)


def test_cds_gaussian_closed_form_pulls_toward_the_data(setup):
    """For N(μ, s²) data the gradient is s²(σ1−σ2)(z + σ1 ε* − μ)/((s²+σ1²)(s²+σ2²)): toward μ."""
    prior, images, cond, eps_star = setup
    t1, t2 = 700, 450
    consistency_distillation(prior, images, cond, t1, t2, eps_star, guidance_scale=1.0, weighting="uniform").backward()
    z = (images.detach() * 2 - 1).permute(0, 3, 1, 2)
    s1, s2, v = sigma(prior, t1), sigma(prior, t2), STD**2
    expected = v * (s1 - s2) * (z + s1 * eps_star - cond["mean"]) / ((v + s1**2) * (v + s2**2))
    torch.testing.assert_close(latent_grad(images), expected / 2)


def test_weight_at_t2_is_the_papers_lambda_t2(setup):
    prior, images, cond, eps_star = setup
    consistency_distillation(prior, images, cond, 600, 300, eps_star, guidance_scale=2.0, weighting="sds").backward()
    g_t1 = images.grad.clone()
    images.grad = None
    consistency_distillation(
        prior, images, cond, 600, 300, eps_star, guidance_scale=2.0, weighting="sds", weight_at="t2"
    ).backward()
    a1, a2 = (float(prior.schedule.alphas_cumprod[t]) for t in (600, 300))
    torch.testing.assert_close(images.grad, g_t1 * (1 - a2) / (1 - a1))


def test_x0_std_rescale_follows_the_released_formula(setup):
    prior, images, cond, eps_star = setup
    t1, t2, s, r = 640, 410, 9.0, 0.5
    consistency_distillation(
        prior, images, cond, t1, t2, eps_star, guidance_scale=s, x0_std_rescale=r
    ).backward()
    z = (images.detach() * 2 - 1).permute(0, 3, 1, 2)
    s1, s2 = sigma(prior, t1), sigma(prior, t2)
    a1 = float(prior.schedule.alphas_cumprod[t1])
    vp1 = (z + s1 * eps_star) / (1 + s1**2) ** 0.5
    eps1 = vp_eps(prior, vp1, t1, s * cond["mean"])
    eps1_c = vp_eps(prior, vp1, t1, cond["mean"])
    x0 = (vp1 - (1 - a1) ** 0.5 * eps1) / a1**0.5
    x0_c = (vp1 - (1 - a1) ** 0.5 * eps1_c) / a1**0.5
    factor = torch.stack([x0_c[i].std() / x0[i].std() for i in range(2)]).view(2, 1, 1, 1)
    x0_adj = r * factor * x0 + (1 - r) * x0
    eps1_tilde = (vp1 - a1**0.5 * x0_adj) / (1 - a1) ** 0.5
    zt2 = z + s1 * eps_star + (s2 - s1) * eps1_tilde
    eps2 = vp_eps(prior, zt2 / (1 + s2**2) ** 0.5, t2, s * cond["mean"])
    expected = (eps1_tilde - eps2) - (s1 / s2) * (eps1_tilde - eps1)
    assert not torch.allclose(expected, eps1 - eps2)  # the rescale matters here
    torch.testing.assert_close(latent_grad(images), expected / 2, rtol=1e-6, atol=1e-9)


def test_fixed_noise_is_drawn_once_and_shared():
    holder = FixedNoise(seed=7)
    a = holder(torch.zeros(3, 4, 5, 5))
    b = holder(torch.ones(3, 4, 5, 5))
    assert torch.equal(a, b) and torch.equal(a[0], a[2])
    assert torch.equal(FixedNoise(seed=7)(torch.zeros(1, 4, 5, 5))[0], a[0])  # re-created from the seed
    assert not torch.equal(FixedNoise(seed=8)(torch.zeros(1, 4, 5, 5))[0], a[0])
    with pytest.raises(InputError, match="FixedNoise per latent shape"):
        holder(torch.zeros(3, 4, 6, 6))
    per_item = FixedNoise(seed=7, shared=False)
    c = per_item(torch.zeros(2, 4, 5, 5))
    assert not torch.equal(c[0], c[1])
    with pytest.raises(InputError):
        per_item(torch.zeros(3, 4, 5, 5))


def test_fixed_noise_holder_equals_passing_the_tensor(setup):
    prior, images, cond, _ = setup
    holder = FixedNoise(seed=1)
    eps_star = holder(torch.zeros(1, 3, H, W)).double()
    l1 = consistency_distillation(prior, images, cond, 500, 300, holder, guidance_scale=3.0)
    l2 = consistency_distillation(prior, images, cond, 500, 300, eps_star, guidance_scale=3.0)
    torch.testing.assert_close(l1, l2)


def test_timestep_sampler_follows_the_released_schedule():
    gen = torch.Generator().manual_seed(0)
    gaps = []
    for step in (0, 750, 3000):
        for _ in range(50):
            t1, t2 = sample_cds_timesteps(CDS_COARSE, step, 1000, gen)
            gaps.append(t1 - t2)
            assert 100 <= t2 <= 880 and t1 <= 980
        expected_t2 = int(1000 * ((0.7 - 0.1) * (1 - (step / 3000) ** 0.5) + 0.1))
        assert t2 == expected_t2
    assert 100 <= min(gaps) <= 110 and 280 <= max(gaps) <= 299  # t1 − t2 ∈ [100, 300)
    for step in (0, 3000):
        for _ in range(30):
            t1, t2 = sample_cds_timesteps(CDS_REFINE, step, 1000, gen)
            assert 20 <= t2 < t1 <= 500 and 100 <= t1 - t2 < 200


def test_bad_cds_inputs():
    with pytest.raises(InputError, match="t1 > t2"):
        CDSTimestepConfig(gap_min=0.0)
    prior = GaussianPixelPrior(std=STD)
    images = torch.rand(1, H, W, 3)
    cond = {"mean": torch.zeros(1, 3, H, W)}
    with pytest.raises(InputError, match="t1 > t2"):
        consistency_distillation(prior, images, cond, 300, 300, torch.zeros(1, 3, H, W))
    with pytest.raises(InputError, match="weight_at"):
        consistency_distillation(prior, images, cond, 400, 300, torch.zeros(1, 3, H, W), weight_at="t3")
