"""DDIM through the Prior interface, checked on priors whose ε̂ is known in closed form."""

import math

import pytest
import torch

from anyto3d.priors.base import NoiseSchedule, Prior
from anyto3d.priors.sampling import ddim_sample, ddim_step, ddim_timesteps


class PointMassPrior(Prior):
    """Data = one point x* (``cond["target"]``); the exact ε̂ is (z_t − √ᾱ x*)/√(1−ᾱ).
    The unconditional branch's point is 0."""

    def __init__(self):
        super().__init__(NoiseSchedule.cosine(1000))

    def build_condition(self, target):
        return {"target": target}

    def unconditional(self, cond):
        return {"target": torch.zeros_like(cond["target"])}

    def forward_model(self, z_t, t, cond):
        a = self.schedule.alpha_bar(t, z_t)
        return (z_t - a.sqrt() * cond["target"]) / (1 - a).sqrt()


class GaussianPrior(Prior):
    """Data ~ N(μ, s²) per pixel: E[ε | z_t] = √(1−ᾱ)(z_t − √ᾱ μ) / (ᾱ s² + 1 − ᾱ)."""

    def __init__(self, std):
        super().__init__(NoiseSchedule.cosine(1000))
        self.std = std

    def build_condition(self, mean):
        return {"mean": mean}

    def unconditional(self, cond):
        return cond

    def forward_model(self, z_t, t, cond):
        a = self.schedule.alpha_bar(t, z_t)
        return (1 - a).sqrt() * (z_t - a.sqrt() * cond["mean"]) / (a * self.std**2 + 1 - a)


class HalvingCodecPrior(PointMassPrior):
    """A 'latent' prior: 1-channel latents decode to 3-channel images at half the value."""

    def decode(self, latents):
        return 0.5 * latents.repeat(1, 3, 1, 1)


def target(shape=(2, 3, 8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 1.6 - 0.8


def test_trailing_timesteps():
    t = ddim_timesteps(1000, 50)
    assert t[0] == 999 and t[-1] == 19 and len(t) == 50
    assert (t[:-1] - t[1:] == 20).all()
    assert torch.equal(ddim_timesteps(1000, 1000), torch.arange(999, -1, -1))
    with pytest.raises(ValueError):
        ddim_timesteps(1000, 0)


def test_ddim_step_matches_hand_computation():
    z, eps, noise = torch.tensor([0.7]), torch.tensor([-0.2]), torch.tensor([1.3])
    a_t, a_s, eta = torch.tensor(0.3), torch.tensor(0.6), 0.5
    x0 = (0.7 - math.sqrt(0.7) * -0.2) / math.sqrt(0.3)
    sigma = 0.5 * math.sqrt(0.4 / 0.7) * math.sqrt(1 - 0.3 / 0.6)
    expected = math.sqrt(0.6) * x0 + math.sqrt(0.4 - sigma**2) * -0.2 + sigma * 1.3
    z_prev, x0_hat = ddim_step(z, eps, a_t, a_s, eta, noise)
    assert z_prev.item() == pytest.approx(expected, rel=1e-6)
    assert x0_hat.item() == pytest.approx(x0, rel=1e-6)
    # η = 1 is the DDPM posterior variance β̃ = (1−ᾱ_s)/(1−ᾱ_t)·(1−ᾱ_t/ᾱ_s).
    sigma1 = math.sqrt(0.4 / 0.7 * (1 - 0.3 / 0.6))
    z1, _ = ddim_step(z, eps, a_t, a_s, 1.0, noise)
    z0, _ = ddim_step(z, eps, a_t, a_s, 0.0)
    expected_gap = sigma1 * 1.3 + (math.sqrt(0.4 - sigma1**2) - math.sqrt(0.4)) * -0.2
    assert (z1 - z0).item() == pytest.approx(expected_gap, rel=1e-5)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_point_mass_prior_lands_on_the_point(eta):
    prior, x_star = PointMassPrior(), target()
    out = ddim_sample(prior, prior.build_condition(x_star), x_star.shape, steps=20, guidance_scale=1.0, eta=eta,
                      generator=torch.Generator().manual_seed(3))  # fmt: skip
    assert torch.allclose(out, x_star, atol=1e-4)


def test_guidance_extrapolates_between_the_two_points():
    # ε̂ is affine in the point, so CFG with scale s lands on x_u + s(x_c − x_u) = s·x* here.
    prior, x_star = PointMassPrior(), 0.3 * target()
    out = ddim_sample(prior, prior.build_condition(x_star), x_star.shape, steps=10, guidance_scale=3.0,
                      generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert torch.allclose(out, 3.0 * x_star, atol=1e-4)


def test_decode_is_applied_to_latents():
    prior, x_star = HalvingCodecPrior(), target((1, 1, 8, 8))
    cond = prior.build_condition(x_star)
    images = ddim_sample(prior, cond, x_star.shape, steps=5, guidance_scale=1.0)
    latents = ddim_sample(prior, cond, x_star.shape, steps=5, guidance_scale=1.0, return_latents=True)
    assert images.shape == (1, 3, 8, 8)
    assert torch.allclose(latents, x_star, atol=1e-4)
    assert torch.allclose(images, 0.5 * x_star.repeat(1, 3, 1, 1), atol=1e-4)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_gaussian_prior_samples_have_the_data_statistics(eta):
    # With every timestep the sampler is (nearly) exact: 4096 samples of N(0.3, 0.2²).
    prior = GaussianPrior(std=0.2)
    mean = torch.full((1, 1, 64, 64), 0.3)

    def sample(steps):
        return ddim_sample(prior, prior.build_condition(mean), mean.shape, steps=steps, guidance_scale=1.0, eta=eta,
                           generator=torch.Generator().manual_seed(0))  # fmt: skip

    fine = sample(1000)
    assert fine.mean().item() == pytest.approx(0.3, abs=0.01)
    assert fine.std().item() == pytest.approx(0.2, rel=0.04)
    # 50 steps under-disperse a little (discretisation), but stay within 15 %.
    coarse = sample(50)
    assert coarse.mean().item() == pytest.approx(0.3, abs=0.01)
    assert 0.85 * 0.2 < coarse.std().item() < fine.std().item()


def test_seed_determines_the_sample():
    prior = GaussianPrior(std=0.2)
    cond = prior.build_condition(torch.zeros(1, 3, 8, 8))

    def sample(seed, eta):
        return ddim_sample(prior, cond, (1, 3, 8, 8), steps=10, guidance_scale=1.0, eta=eta,
                           generator=torch.Generator().manual_seed(seed))  # fmt: skip

    for eta in (0.0, 1.0):
        assert torch.equal(sample(7, eta), sample(7, eta))
        assert not torch.allclose(sample(7, eta), sample(8, eta))
    assert not torch.allclose(sample(7, 0.0), sample(7, 1.0))
