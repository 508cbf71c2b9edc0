"""VSD (4D-fy Eq. 4–5), its LoRA step, and the standard diffusion loss.

Two exact Gaussian-data priors with the same data std but different means play the pretrained and
the LoRA model: then ε_pre − ε_lora = −√(1−ᾱ)√ᾱ(μ_pre − μ_lora)/(ᾱ s² + 1 − ᾱ), independent of z_t.
"""

import copy

import pytest
import torch

from anyto3d.errors import InputError
from anyto3d.losses.diffusion import (
    diffusion_loss,
    diffusion_target,
    draw_timesteps,
    drop_condition,
    min_snr_weight,
)
from anyto3d.losses.vsd import lora_finetune_loss, variational_score_distillation
from anyto3d.priors.pixel import GaussianPixelPrior, PixelDiffusionPrior

STD = 0.5
H = W = 8


@pytest.fixture(autouse=True)
def _one_thread():
    """Small UNets run ~10x faster on one thread than on two on a loaded 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def setup():
    torch.manual_seed(0)
    pre = GaussianPixelPrior(std=STD).double()
    lora = GaussianPixelPrior(std=STD, null_mean=0.3).double()
    images = torch.rand(2, H, W, 3, dtype=torch.float64, requires_grad=True)
    mu_pre = torch.randn(1, 3, H, W, dtype=torch.float64)
    mu_lora = torch.randn(1, 3, H, W, dtype=torch.float64)
    return pre, lora, images, {"mean": mu_pre}, {"mean": mu_lora}


@pytest.mark.parametrize("lora_scale", [1.0, 2.0])
def test_vsd_gradient_is_w_times_pretrained_minus_lora(setup, lora_scale):
    pre, lora, images, cond, lora_cond = setup
    t, s = 350, 7.5
    noise = torch.randn(2, 3, H, W, dtype=torch.float64)
    variational_score_distillation(
        pre, lora, images, cond, lora_cond, t, noise, guidance_scale=s, lora_guidance_scale=lora_scale
    ).backward()
    a = float(pre.schedule.alphas_cumprod[t])
    mu_pre = s * cond["mean"]  # CFG against the null mean 0
    mu_lora = 0.3 + lora_scale * (lora_cond["mean"] - 0.3)  # CFG against the LoRA's null mean 0.3
    diff = -((1 - a) ** 0.5) * a**0.5 * (mu_pre - mu_lora) / (a * STD**2 + 1 - a)
    expected = (1 - a) * diff.expand(2, -1, -1, -1)
    torch.testing.assert_close(images.grad.permute(0, 3, 1, 2) / 2, expected / 2)
    # the sampled noise only enters z_t, and cancels here
    g = images.grad.clone()
    images.grad = None
    variational_score_distillation(
        pre, lora, images, cond, lora_cond, t, torch.randn(2, 3, H, W, dtype=torch.float64),
        guidance_scale=s, lora_guidance_scale=lora_scale,
    ).backward()
    torch.testing.assert_close(images.grad, g)


def test_vsd_with_identical_models_has_zero_gradient(setup):
    pre, _, images, cond, _ = setup
    loss, info = variational_score_distillation(
        pre, pre, images, cond, cond, 500, guidance_scale=1.0, return_diagnostics=True
    )
    loss.backward()
    assert images.grad.abs().max() == 0
    assert info["latents"].shape == (2, 3, H, W) and not info["latents"].requires_grad


def test_vsd_needs_one_schedule(setup):
    pre, _, images, cond, lora_cond = setup
    other = GaussianPixelPrior(std=STD, schedule="linear").double()
    with pytest.raises(InputError, match="noise schedule"):
        variational_score_distillation(pre, other, images, cond, lora_cond, 100)


def test_diffusion_loss_targets_by_hand():
    torch.manual_seed(0)
    z0 = torch.randn(3, 3, H, W, dtype=torch.float64)
    noise = torch.randn_like(z0)
    t = torch.tensor([10, 500, 990])
    cond = {"mean": torch.zeros(1, 3, H, W, dtype=torch.float64)}
    for kind in ("epsilon", "v_prediction"):
        prior = GaussianPixelPrior(std=STD, prediction_type=kind).double()
        a = prior.schedule.alphas_cumprod[t].double().view(3, 1, 1, 1)
        z_t = a.sqrt() * z0 + (1 - a).sqrt() * noise
        out = prior.forward_model(z_t, t, {"mean": cond["mean"].expand(3, -1, -1, -1)})
        target = noise if kind == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * z0
        torch.testing.assert_close(diffusion_target(prior, z0, noise, t), target)
        torch.testing.assert_close(diffusion_loss(prior, z0, cond, t, noise), ((out - target) ** 2).mean())


def test_min_snr_weighting_by_hand():
    torch.manual_seed(0)
    z0 = torch.randn(3, 3, H, W, dtype=torch.float64)
    noise = torch.randn_like(z0)
    t = torch.tensor([10, 500, 990])
    cond = {"mean": torch.zeros(1, 3, H, W, dtype=torch.float64)}
    for kind in ("epsilon", "v_prediction"):
        prior = GaussianPixelPrior(std=STD, prediction_type=kind).double()
        a = prior.schedule.alphas_cumprod[t].double()
        snr = a / (1 - a)
        assert snr[0] > 5 > snr[1] > snr[2]  # the cap binds only on the nearly clean step
        # x0-space weight min(SNR, 5), over what the raw target carries: SNR (ε) or SNR + 1 (v)
        by_hand = [5 / snr[0], 1.0, 1.0] if kind == "epsilon" else [5 / (snr[0] + 1), *(snr[1:] / (snr[1:] + 1))]
        w = min_snr_weight(prior, t, 5.0)
        torch.testing.assert_close(w.double(), torch.stack([torch.as_tensor(x, dtype=torch.float64) for x in by_hand]),
                                   rtol=1e-6, atol=0)
        a4 = a.view(3, 1, 1, 1)
        out = prior.forward_model(a4.sqrt() * z0 + (1 - a4).sqrt() * noise, t,
                                  {"mean": cond["mean"].expand(3, -1, -1, -1)})
        per_item = ((out - diffusion_target(prior, z0, noise, t)) ** 2).flatten(1).mean(1)
        torch.testing.assert_close(diffusion_loss(prior, z0, cond, t, noise, snr_gamma=5.0),
                                   (w.double() * per_item).mean())
    # ε with a cap nothing reaches is the plain loss
    prior = GaussianPixelPrior(std=STD, prediction_type="epsilon").double()
    torch.testing.assert_close(diffusion_loss(prior, z0, cond, t, noise, snr_gamma=1e12),
                               diffusion_loss(prior, z0, cond, t, noise))
    with pytest.raises(InputError, match="snr_gamma"):
        diffusion_loss(prior, z0, cond, t, noise, snr_gamma=0.0)


def test_draw_timesteps_uniform_or_towards_noise():
    # power 1 is the plain uniform draw, bit for bit (the published recipes)
    torch.testing.assert_close(draw_timesteps(1000, 64, torch.Generator().manual_seed(3)),
                               torch.randint(0, 1000, (64,), generator=torch.Generator().manual_seed(3)))
    # power 2: density 2t/T², so mean 2T/3 and a quarter of the draws below T/2
    t = draw_timesteps(1000, 200_000, torch.Generator().manual_seed(0), power=2.0)
    assert t.dtype == torch.int64 and int(t.min()) >= 0 and int(t.max()) == 999
    assert float(t.double().mean()) == pytest.approx(666.2, abs=2.0)
    assert float((t < 500).double().mean()) == pytest.approx(0.25, abs=0.005)
    with pytest.raises(InputError, match="timestep_power"):
        draw_timesteps(1000, 4, power=0.0)


def test_drop_condition_uses_the_null_condition():
    prior = GaussianPixelPrior(std=STD, null_mean=-1.0)
    cond = {"mean": torch.ones(64, 3, 2, 2)}
    assert torch.equal(drop_condition(prior, cond, 1.0)["mean"], -torch.ones(64, 3, 2, 2))
    assert drop_condition(prior, cond, 0.0) is cond
    gen = torch.Generator().manual_seed(0)
    dropped = (drop_condition(prior, cond, 0.5, gen)["mean"][:, 0, 0, 0] < 0).float().mean()
    assert 0.25 < dropped < 0.75
    with pytest.raises(InputError):
        drop_condition(prior, cond, 1.5)


def test_lora_step_decreases_its_loss():
    torch.manual_seed(0)
    lora = PixelDiffusionPrior.build_dummy()
    latents = torch.rand(4, 3, 16, 16) * 2 - 1  # "renders", detached
    cond = lora.build_condition(class_labels=[1, 1, 1, 1])
    gen = torch.Generator().manual_seed(1)
    t_eval = torch.randint(0, 1000, (32,), generator=gen)
    noise_eval = torch.randn(32, 3, 16, 16, generator=gen)
    z_eval = latents.repeat(8, 1, 1, 1)
    cond_eval = {"embedding": cond["embedding"].repeat(8, 1)}

    def evaluate():
        with torch.no_grad():
            return float(diffusion_loss(lora, z_eval, cond_eval, t_eval, noise_eval))

    before = evaluate()
    opt = torch.optim.Adam(lora.parameters(), lr=3e-3)
    for _ in range(20):
        opt.zero_grad()
        lora_finetune_loss(lora, latents, cond, camera_dropout=0.1, generator=gen).backward()
        opt.step()
    after = evaluate()
    print(f"LoRA-step diffusion loss {before:.4f} -> {after:.4f}")
    assert after < 0.8 * before


def test_vsd_and_lora_losses_touch_disjoint_parameters():
    torch.manual_seed(0)
    pre = PixelDiffusionPrior.build_dummy()
    lora = copy.deepcopy(pre)
    images = torch.rand(2, 16, 16, 3, requires_grad=True)
    cond = pre.build_condition(class_labels=[0])
    loss, info = variational_score_distillation(pre, lora, images, cond, cond, 400, guidance_scale=3.0,
                                                return_diagnostics=True)
    total = loss + lora_finetune_loss(lora, info["latents"], cond)
    total.backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in pre.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora.parameters())


def test_vsd_with_the_sd_adapter_and_its_lora_branch():
    """The contract with ``anyto3d.priors.sd_vsd``: ``prior`` and ``prior.lora_branch`` (one UNet)."""
    from anyto3d.priors.sd_vsd import StableDiffusionVSDPrior

    prior = StableDiffusionVSDPrior.build_dummy()
    images = torch.rand(2, 32, 32, 3, requires_grad=True)
    cond = prior.build_condition(text=["a cat"])
    lora_cond = prior.build_condition(text=["a cat"], camera_c2w=torch.eye(4).repeat(2, 1, 1))
    loss, info = variational_score_distillation(
        prior, prior.lora_branch, images, cond, lora_cond, 500, return_diagnostics=True
    )
    (loss + lora_finetune_loss(prior.lora_branch, info["latents"], lora_cond)).backward()
    assert images.grad.abs().sum() > 0
    trained = {id(p) for p in prior.lora_parameters()}
    touched = [p for p in prior.parameters() if p.grad is not None]
    assert touched and all(id(p) in trained for p in touched)
