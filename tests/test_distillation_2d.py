"""The pixel prior, and the 2D distillation check: each loss moves one image toward its class.

The check (slow): a :class:`PixelDiffusionPrior` is trained in the fixture on 16² images of three
classes (red discs, green squares, blue stripes, on white, with jittered position, size and
colour); the classifier is the nearest class mean (softmax over −MSE/0.01). Then the pixels of one
image, starting from grey, are optimised with SDS, augmented SDS, CDS and VSD conditioned on each
class in turn; the classifier's probability for the class must rise to ≥ 0.8. Start/end scores
are printed (run with ``-s`` to see them).

Settings worth knowing: v-prediction trains far faster than ε-prediction at this budget (400
steps: every DDIM sample classified correctly vs 8/12); CDS's fixed noise ε* is baked into a 2D
image (for Gaussian data its fixed point is z = μ − σ_{t1} ε*; in 3D the views average it out),
so the CDS result is noisy but still of the right class.
"""

import copy
import dataclasses

import pytest
import torch

from anyto3d.errors import InputError, MissingWeightsError
from anyto3d.losses.cds import CDS_COARSE, FixedNoise, consistency_distillation, sample_cds_timesteps
from anyto3d.losses.diffusion import diffusion_loss, drop_condition
from anyto3d.losses.sds import augmented_sds, score_distillation_sampling
from anyto3d.losses.vsd import lora_finetune_loss, variational_score_distillation
from anyto3d.priors.pixel import PixelDiffusionPrior, PixelPriorConfig
from anyto3d.schedules import Constant, SqrtAnneal, TimestepRange, sample_timestep

SIZE = 16
COLOURS = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.75, 0.1], [0.1, 0.2, 0.9]])


@pytest.fixture(autouse=True)
def _one_thread():
    """Small UNets run several times faster on one thread than on two on a loaded 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------
# PixelDiffusionPrior
# ---------------------------------------------------------------------------------------------


def test_pixel_prior_conditioning_and_shapes():
    prior = PixelDiffusionPrior.build_dummy()
    cond = prior.build_condition(class_labels=[2, 0])
    assert torch.equal(cond["embedding"], torch.eye(8)[[2, 0]])
    assert torch.equal(prior.unconditional(cond)["embedding"], torch.zeros(2, 8))
    z = torch.randn(2, 3, 16, 16)
    t = torch.tensor([10, 900])
    eps = prior.predict_noise(z, t, cond)
    assert eps.shape == z.shape and torch.isfinite(eps).all()
    # the condition matters, and CFG is the standard form
    eps_u = prior.predict_noise(z, t, prior.unconditional(cond))
    assert not torch.allclose(eps, eps_u)
    torch.testing.assert_close(prior.guided_noise(z, t, cond, 3.0), eps_u + 3.0 * (eps - eps_u), rtol=1e-4, atol=1e-5)
    assert prior.encode(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 16, 16)
    with pytest.raises(InputError, match="class labels"):
        prior.build_condition(class_labels=[8])
    with pytest.raises(InputError, match="embedding"):
        prior.build_condition(embedding=torch.zeros(2, 5))


def test_pixel_prior_v_prediction_is_converted():
    prior = PixelDiffusionPrior.build_dummy(prediction_type="v_prediction", schedule="linear")
    z, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 500])
    cond = prior.build_condition(embedding=torch.randn(2, 8))
    v = prior.forward_model(z, t, cond)
    torch.testing.assert_close(prior.predict_noise(z, t, cond), prior.schedule.v_to_eps(z, v, t))
    assert abs(float(prior.schedule.alphas_cumprod[0]) - (1 - 1e-4)) < 1e-6  # linear β from 1e-4


def test_pixel_prior_save_load_round_trip(tmp_path):
    prior = PixelDiffusionPrior.build_dummy(embedding_dim=5)
    prior.save_pretrained(tmp_path / "prior")
    loaded = PixelDiffusionPrior.from_pretrained(tmp_path / "prior")
    assert loaded.config == prior.config
    z, t = torch.randn(1, 3, 16, 16), torch.tensor([300])
    cond = prior.build_condition(class_labels=[3])
    torch.testing.assert_close(loaded.predict_noise(z, t, cond), prior.predict_noise(z, t, cond))
    with pytest.raises(MissingWeightsError, match="model.safetensors"):
        PixelDiffusionPrior.from_pretrained(tmp_path / "nowhere")


def test_pixel_prior_config_validation():
    with pytest.raises(InputError, match="divisible"):
        PixelPriorConfig(image_size=18, block_out_channels=(16, 32, 64), attention=(False, False, False))
    with pytest.raises(InputError, match="one flag"):
        PixelPriorConfig(block_out_channels=(16, 32), attention=(False,))


# ---------------------------------------------------------------------------------------------
# The 2D world
# ---------------------------------------------------------------------------------------------


def make_shapes(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """[N, 16, 16, 3] in [0,1]: class 0 red disc, 1 green square, 2 blue stripes, on white."""
    ys, xs = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    images = torch.ones(labels.shape[0], SIZE, SIZE, 3)
    for i, label in enumerate(labels.tolist()):
        cx, cy = (SIZE / 2 + torch.rand(2, generator=generator) * 4 - 2).tolist()
        r = 3.5 + 2 * float(torch.rand(1, generator=generator))
        if label == 0:
            mask = (xs - cx) ** 2 + (ys - cy) ** 2 <= r**2
        elif label == 1:
            mask = ((xs - cx).abs() <= r) & ((ys - cy).abs() <= r)
        else:
            phase = int(torch.randint(0, 4, (1,), generator=generator))
            box = ((xs - cx).abs() <= r + 1) & ((ys - cy).abs() <= r + 1)
            mask = box & ((((ys.long() + phase) // 2) % 2) == 0)
        colour = (COLOURS[label] + (torch.rand(3, generator=generator) - 0.5) * 0.1).clamp(0, 1)
        images[i][mask] = colour
    return images


TRAIN_STEPS = 350


@pytest.fixture(scope="module")
def world():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(3000) % 3
    data = make_shapes(labels, gen).permute(0, 3, 1, 2) * 2 - 1
    torch.manual_seed(0)
    config = PixelPriorConfig(
        image_size=SIZE, embedding_dim=3, block_out_channels=(16, 32), attention=(False, False),
        prediction_type="v_prediction",
    )
    prior = PixelDiffusionPrior(config)
    opt = torch.optim.AdamW(prior.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=TRAIN_STEPS, pct_start=0.1)
    for _ in range(TRAIN_STEPS):
        idx = torch.randint(0, labels.shape[0], (32,), generator=gen)
        cond = drop_condition(prior, prior.build_condition(class_labels=labels[idx]), 0.15, gen)
        loss = diffusion_loss(prior, data[idx], cond, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    prior.eval().requires_grad_(False)
    held_out_labels = torch.arange(600) % 3
    held_out = make_shapes(held_out_labels, torch.Generator().manual_seed(1))
    means = torch.stack([held_out[held_out_labels == k].mean(0) for k in range(3)])
    torch.set_num_threads(threads)
    return prior, means, float(loss.detach())


def class_probabilities(image: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Nearest-class-mean classifier: softmax over −MSE/0.01 to each class mean."""
    mse = ((image[None] - means) ** 2).mean(dim=(1, 2, 3))
    return torch.softmax(-mse / 0.01, dim=0)


ITERS = 100
ALL_T = TimestepRange(Constant(0.02), Constant(0.98))


def distil(prior, loss_name: str, target: int, means) -> tuple[float, float]:
    gen = torch.Generator().manual_seed(target)
    cond = prior.build_condition(class_labels=[target])
    image = torch.full((1, SIZE, SIZE, 3), 0.5, requires_grad=True)
    opt = torch.optim.Adam([image], lr=0.03)
    start = float(class_probabilities(image.detach()[0], means)[target])
    eps_star = FixedNoise(seed=target)
    cds_schedule = dataclasses.replace(CDS_COARSE, anneal_steps=ITERS)
    hifa_t = TimestepRange(Constant(0.3), SqrtAnneal(0.98, 0.3, ITERS), deterministic=True)
    if loss_name == "vsd":
        lora = copy.deepcopy(prior).requires_grad_(True).train()
        lora_opt = torch.optim.Adam(lora.parameters(), lr=1e-3)
    for step in range(ITERS):
        opt.zero_grad()
        if loss_name == "sds":
            t = sample_timestep(ALL_T, step, 1000, generator=gen)
            loss = score_distillation_sampling(prior, image, cond, t, guidance_scale=7.5, generator=gen)
        elif loss_name == "augmented_sds":  # HiFA: deterministic sqrt-annealed t, 4-step DDIM x̂0
            t = sample_timestep(hifa_t, step, 1000, generator=gen)
            loss = augmented_sds(
                prior, image, cond, t, guidance_scale=7.5, image_weight=0.1, image_scale="none",
                denoise_steps=4, latent_form="x0", generator=gen,
            )
        elif loss_name == "cds":  # released coarse schedule, fixed ε*
            t1, t2 = sample_cds_timesteps(cds_schedule, step, 1000, gen)
            loss = consistency_distillation(prior, image, cond, t1, t2, eps_star, guidance_scale=7.5)
        else:  # VSD with a LoRA stand-in: a full copy of the prior fine-tuned on the renders
            t = sample_timestep(ALL_T, step, 1000, generator=gen)
            loss, info = variational_score_distillation(
                prior, lora, image, cond, cond, t, guidance_scale=7.5, generator=gen, return_diagnostics=True
            )
            lora_opt.zero_grad()
            lora_finetune_loss(lora, info["latents"], cond, generator=gen).backward()
            lora_opt.step()
        loss.backward()
        opt.step()
        with torch.no_grad():
            image.clamp_(0, 1)
    end = float(class_probabilities(image.detach()[0], means)[target])
    return start, end


@pytest.mark.slow
@pytest.mark.parametrize("loss_name", ["sds", "augmented_sds", "cds", "vsd"])
def test_distillation_moves_the_image_to_its_class(world, loss_name):
    prior, means, final_loss = world
    scores = {target: distil(prior, loss_name, target, means) for target in range(3)}
    summary = ", ".join(f"class {k}: {s:.3f} -> {e:.3f}" for k, (s, e) in scores.items())
    print(f"\n2D distillation [{loss_name}] (prior trained {TRAIN_STEPS} steps, loss {final_loss:.3f}): {summary}")
    for target, (start, end) in scores.items():
        assert end > start and end >= 0.8, f"{loss_name}: {summary}"
