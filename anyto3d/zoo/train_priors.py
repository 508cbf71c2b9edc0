"""Training loops, sample sheets and sample judging for the tiny world's priors (DESIGN §6).

``train_prior(kind, data_dir, out_dir, steps, seed)`` trains one of ``prior2d``, ``novelview``,
``multiview``, ``video`` (:mod:`anyto3d.zoo.priors`) on a rendered dataset
(:func:`anyto3d.zoo.dataset.render_dataset`; clips from :func:`~anyto3d.zoo.dataset.render_clips`
for ``video``) with the standard diffusion objective (:func:`anyto3d.losses.diffusion.diffusion_loss`),
conditioning dropout for classifier-free guidance, EMA weights, AdamW with a short warm-up, and
resumable checkpoints. ``train_vae`` trains the small ``AutoencoderKL`` of the latent path; pass
its directory as ``vae_dir`` to train a prior in latents.

What each prior learns from:

* ``prior2d``: a view and its embedding, noised at a random level (unCLIP's augmentation).
* ``novelview``: pairs of views of one object at one field of view — the target view given the
  reference view, the relative camera (:func:`anyto3d.cameras.relative_camera`) and the
  reference's embedding; ``TrainConfig.pair_exclude_self`` and ``pair_turn_candidates`` choose
  how the reference is drawn.
* ``multiview``: N views of one object (the dataset's MVDream-style groups when it was rendered
  with ``views_per_group = N``, else N random views of the object), one timestep and one dropout
  draw per group.
* ``video``: clips and their caption embedding.

Embeddings are a tensor ``[N, D]``, one per view (or clip) in dataset order — the binder's
embeddings, computed by the caller — or, when none is given, :class:`~anyto3d.zoo.priors.WorldCodeEmbedding`
of each view's object (and motion).

Reproducibility: one ``torch.Generator`` seeded with ``seed`` draws every batch index, timestep,
noise, dropout and augmentation; the prior is built under the same seed; the generator's state is
in every checkpoint, so a resumed run continues the same sequence. Checkpoints
(``out_dir/checkpoints/step-########.pt``, loaded with ``weights_only=True``) are written every
``checkpoint_every`` steps; the newest is resumed from.

Outputs under ``out_dir``: ``model/`` (the EMA weights, ``save_pretrained``), ``metrics.json``
(losses, steps/s, sizes), ``samples.png`` (a sample sheet).

Measured cost at the planned sizes (``preset="planned"``, 32² images; 1 thread, on the shared
2-core machine under a load of ~3, so these are pessimistic; 2 threads were *slower* there):
VAE (32-64, batch 64) 0.61 steps/s; 2D prior in pixels (batch 64) 0.38, in the VAE's 16² × 4
latents 1.63; novel view (pixels, batch 64) 0.26; multi-view (pixels, 16 objects × 4 views) 0.22;
video in latents (16 clips × 8 frames) 0.18; video in pixels at 32² < 0.08 (not viable on CPU).
The latent path (~4× cheaper per step) is therefore recommended for the 2D, multi-view and
video priors.

Command line::

    python -m anyto3d.zoo.train_priors {prior2d,novelview,multiview,video,vae} --data D --out O --steps N
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from anyto3d.cameras import relative_camera
from anyto3d.checkpoints import CheckpointManager
from anyto3d.errors import InputError
from anyto3d.images import prior_to_renderer, renderer_to_prior, to_uint8
from anyto3d.losses.diffusion import diffusion_loss, draw_timesteps, drop_condition
from anyto3d.priors.base import Condition, Prior
from anyto3d.zoo.priors import (
    PRIOR_CLASSES,
    WorldCodeEmbedding,
    build_tiny_vae,
    load_tiny_vae,
)
from anyto3d.zoo.schedule import learning_rate

KINDS = (*PRIOR_CLASSES, "vae")


@dataclass
class TrainConfig:
    """Optimisation settings (the de-risk run's: AdamW 4e-4, batch 64, EMA .995, 15 % null)."""

    batch_size: int = 64
    lr: float = 4e-4
    # "constant" after warm-up (the published recipes), or "cosine": down to zero at the last step,
    # so a run that is still improving when its step budget ends settles instead of stopping mid-stride
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    warmup_steps: int = 50
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    p_uncond: float = 0.15
    # Min-SNR-γ loss weighting (anyto3d.losses.diffusion.min_snr_weight); None: uniform in the
    # raw target, the published recipes
    snr_gamma: float | None = None
    # draw training steps with density ∝ t^(power−1) (anyto3d.losses.diffusion.draw_timesteps);
    # 1: uniform, the published recipes
    timestep_power: float = 1.0
    # Novel-view pairs only. A target's reference is one of the other views of its object at its
    # lens, never the target itself (with the uniform draw, 16 % of pairs were the view itself: a
    # lesson in copying the reference), and of ``pair_turn_candidates`` such draws the one turned
    # farthest in azimuth, so large turns — the back of an object — are seen more often.
    pair_exclude_self: bool = False
    pair_turn_candidates: int = 1
    # 2D, novel-view and multi-view priors: learn only from views that show the whole object
    # (:func:`~anyto3d.zoo.dataset.whole_in_frame`; a multi-view group only if all its views do,
    # a novel-view pair only if both do). A third of the views are close-ups — often a wall of
    # one colour — and a camera-unaware prior sampled without them draws whole, judgeable objects.
    framed_only: bool = False
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    sheet_steps: int = 25  # DDIM steps for the sample sheet (0: no sheet)
    sheet_guidance: float = 3.0
    progress: bool = True


# ---------------------------------------------------------------------------------------------
# EMA (checkpoints: anyto3d.checkpoints)
# ---------------------------------------------------------------------------------------------


class EMA:
    """Exponential moving average of parameters, with the usual warm-up (1+n)/(10+n) cap."""

    def __init__(self, params: dict[str, torch.Tensor], decay: float):
        self.decay = float(decay)
        self.shadow = {k: v.detach().clone() for k, v in params.items()}
        self.updates = 0

    @torch.no_grad()
    def update(self, params: dict[str, torch.Tensor]) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in params.items():
            self.shadow[k].lerp_(v.detach(), 1 - d)

    def state_dict(self) -> dict:
        return {"shadow": self.shadow, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}
        self.updates = int(state["updates"])


def lr_factor(step: int, steps: int, cfg: TrainConfig) -> float:
    """Multiplier of ``cfg.lr`` at ``step`` (0-based) of ``steps``: the warm-up, then constant or a
    half cosine to zero at the last step (``cfg.lr_schedule``)."""
    if cfg.lr_schedule == "constant":
        return min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    if cfg.lr_schedule == "cosine":
        return learning_rate(step, steps, 1.0, max(1, cfg.warmup_steps), floor=0.0)
    raise InputError(f"unknown lr_schedule {cfg.lr_schedule!r}; choose constant or cosine")


def _trainable(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def fit(
    module: torch.nn.Module,
    loss_fn: Callable[[torch.Generator], torch.Tensor],
    steps: int,
    out_dir: str | os.PathLike,
    seed: int,
    cfg: TrainConfig,
    desc: str = "train",
) -> dict:
    """The shared loop: AdamW + warm-up, grad clipping, EMA, checkpoints, resume, tqdm.

    ``loss_fn(generator)`` draws a batch and returns the loss. Returns ``{"losses", "ema",
    "elapsed_s", "steps_per_s", "start_step", "earlier_seconds"}`` (``earlier_seconds``: the loop
    time of the runs this one resumed, carried in the checkpoints); the module ends with its *EMA*
    weights loaded.
    """
    from tqdm.auto import tqdm

    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    params = _trainable(module)
    opt = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, cfg))
    ema = EMA(params, cfg.ema_decay)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(
        seed
    )  # the global RNG drives in-network dropout (UNet3D's temporal convolutions)
    ckpt = CheckpointManager(Path(out_dir) / "checkpoints", cfg.checkpoint_every, cfg.keep_checkpoints, prefix="step-")
    losses: list[float] = []
    start, earlier = 0, 0.0
    latest = ckpt.latest()
    state = None if latest is None else latest[1]
    if state is not None:
        if int(state["seed"]) != seed:
            raise InputError(
                f"checkpoints in {ckpt.directory} were made with seed {state['seed']}, not {seed}"
            )
        module.load_state_dict(state["model"], strict=False)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        ema.load_state_dict(state["ema"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["global_rng"])
        losses = state["losses"].tolist()
        start = int(latest[0])
        earlier = float(state.get("seconds", 0.0))  # absent in checkpoints older than the field
    module.train()
    loop_start = time.perf_counter()
    timed_from, t0 = None, None
    bar = tqdm(
        range(start, steps),
        desc=desc,
        disable=not cfg.progress,
        initial=start,
        total=steps,
    )
    for step in bar:
        if step == start + min(5, max(0, steps - start - 1)):
            timed_from, t0 = (
                step,
                time.perf_counter(),
            )  # skip the first steps' warm-up cost
        loss = loss_fn(gen)
        if not torch.isfinite(loss):
            from anyto3d.errors import NonFiniteError

            raise NonFiniteError(f"{desc}: loss is {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params.values(), cfg.grad_clip)
        opt.step()
        sched.step()
        ema.update(params)
        losses.append(float(loss.detach()))
        if cfg.progress and step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        done = step + 1
        if ckpt.due(done) or done == steps:
            ckpt.save(
                done,
                {
                    "seed": seed,
                    "model": {
                        k: v.detach().clone()
                        for k, v in module.state_dict().items()
                        if k in params
                    },
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "ema": ema.state_dict(),
                    "generator": gen.get_state(),
                    "global_rng": torch.get_rng_state(),
                    "losses": torch.tensor(losses, dtype=torch.float64),
                    "seconds": earlier + time.perf_counter() - loop_start,
                },
            )
    elapsed = time.perf_counter() - t0 if t0 is not None else 0.0
    n_timed = steps - timed_from if timed_from is not None else 0
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(ema.shadow[k])
    module.eval()
    return {
        "losses": losses,
        "start_step": start,
        "earlier_seconds": earlier,
        "elapsed_s": elapsed,
        "steps_per_s": n_timed / elapsed if elapsed > 0 else float("nan"),
    }


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def load_view_images(data_dir: str | os.PathLike):
    """``(images [N, 3, H, W] in [-1, 1], RenderedDataset)`` from a :func:`render_dataset` directory."""
    from anyto3d.zoo.dataset import load_dataset

    data = load_dataset(data_dir)
    rgb = torch.from_numpy(data.rgba[..., :3]).float() / 255.0
    return renderer_to_prior(rgb), data


def load_clips(data_dir: str | os.PathLike) -> tuple[torch.Tensor, dict, dict]:
    """``(clips [N, 3, F, H, W] in [-1, 1], arrays, index)`` from a :func:`render_clips` directory."""
    path = Path(data_dir)
    if not (path / "index.json").is_file() or not (path / "clips.npz").is_file():
        raise InputError(
            f"{path} is not a complete clip dataset (render_clips writes clips.npz and index.json)"
        )
    index = json.loads((path / "index.json").read_text())
    with np.load(path / "clips.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    rgb = (
        torch.from_numpy(arrays.pop("rgba")[..., :3]).float() / 255.0
    )  # [N, F, H, W, 3]
    clips = rgb.permute(0, 4, 1, 2, 3) * 2.0 - 1.0
    return clips, arrays, index


@torch.no_grad()
def encode_all(prior: Prior, images: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """``prior.encode`` over a whole dataset in chunks (identity/resize for pixel priors)."""
    return torch.cat(
        [prior.encode(images[i : i + chunk]) for i in range(0, images.shape[0], chunk)]
    )


def _check_embeddings(embeddings: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    embeddings = torch.as_tensor(embeddings, dtype=torch.float32)
    if embeddings.shape != (n, dim):
        raise InputError(
            f"embeddings must be [{n}, {dim}] (one per view/clip), got {tuple(embeddings.shape)}"
        )
    return embeddings


def world_view_embeddings(data, dim: int, seed: int = 0) -> torch.Tensor:
    """WorldCodeEmbedding of each view's object, ``[N, dim]``."""
    codes = WorldCodeEmbedding(dim, seed)(data.objects)
    return codes[torch.from_numpy(data.object_index.astype(np.int64))]


def _training_views(data, framed_only: bool) -> torch.Tensor:
    """Indices of the views a prior learns from: all, or those that show the whole object."""
    keep = np.asarray(data.framed) if framed_only else np.ones(len(data.object_index), bool)
    if not keep.any():
        raise InputError("no training view shows the whole object (framed_only)")
    return torch.from_numpy(np.nonzero(keep)[0].astype(np.int64))


def _set_apart(group_ids: np.ndarray, data, framed_only: bool) -> np.ndarray:
    """Group ids (int64) with, under ``framed_only``, each view that does not show the whole
    object in a group of its own: a view drawn from a framed view's group is then framed too."""
    ids = np.asarray(group_ids, dtype=np.int64)
    if not framed_only:
        return ids
    return np.where(np.asarray(data.framed), ids, ids.max() + 1 + np.arange(len(ids)))


def _object_groups(object_index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded table of each object's view indices ``[n_obj, max]`` and the counts ``[n_obj]``."""
    obj = torch.from_numpy(object_index.astype(np.int64))
    n_obj = int(obj.max()) + 1
    counts = torch.bincount(obj, minlength=n_obj)
    table = torch.zeros(n_obj, int(counts.max()), dtype=torch.long)
    for o in range(n_obj):
        idx = torch.nonzero(obj == o).flatten()
        table[o, : idx.numel()] = idx
    return table, counts


def same_lens_groups(object_index: np.ndarray, fovy: np.ndarray) -> np.ndarray:
    """One group id per view: views of the same object at the same fovy (to 1e-4 rad)."""
    keys = np.stack([np.asarray(object_index, np.int64), np.round(np.asarray(fovy, np.float64) * 1e4).astype(np.int64)], 1)
    return np.unique(keys, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)


def _pick_from_groups(
    table, counts, objects: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    r = (
        (torch.rand(objects.shape[0], generator=gen) * counts[objects])
        .long()
        .clamp_max(counts[objects] - 1)
    )
    return table[objects, r]


def _pick_reference(
    table, counts, groups: torch.Tensor, targets: torch.Tensor, azimuth: torch.Tensor,
    gen: torch.Generator, exclude_self: bool, candidates: int,
) -> torch.Tensor:
    """A reference view per target from its group (``TrainConfig.pair_exclude_self`` and
    ``pair_turn_candidates``); a group of one view pairs the view with itself."""
    n = counts[groups]
    best, best_turn = targets, torch.full(targets.shape, -1.0)
    for _ in range(max(1, int(candidates))):
        if exclude_self:
            # uniform over the other n - 1 views: draw a slot below the last, and take the last
            # view where the drawn slot holds the target itself
            r = (torch.rand(targets.shape[0], generator=gen) * (n - 1)).long().clamp_max((n - 2).clamp_min(0))
            pick = table[groups, r]
            pick = torch.where((pick == targets) & (n > 1), table[groups, n - 1], pick)
        else:
            pick = _pick_from_groups(table, counts, groups, gen)
        turn = torch.remainder(azimuth[pick] - azimuth[targets] + math.pi, 2 * math.pi).sub(math.pi).abs()
        if candidates > 1:  # equal turns (a 4-view group's two sides) tie at random, not by rounding
            turn = turn + 1e-3 * torch.rand(turn.shape, generator=gen)
        better = turn > best_turn
        best, best_turn = torch.where(better, pick, best), torch.where(better, turn, best_turn)
    return best


def _drop_grouped(
    prior: Prior, cond: Condition, p: float, group: int, gen: torch.Generator
) -> Condition:
    """Conditioning dropout with one draw per group of ``group`` rows (a multi-view object)."""
    if group == 1:
        return drop_condition(prior, cond, p, gen)
    null = prior.unconditional(cond)
    B = next(iter(cond.values())).shape[0]
    drop = (torch.rand(B // group, generator=gen) < p).repeat_interleave(group)
    return {
        k: torch.where(drop.view(B, *([1] * (v.dim() - 1))), null[k], v)
        for k, v in cond.items()
    }


def make_loss_fn(
    kind: str,
    prior: Prior,
    data_dir,
    embeddings: torch.Tensor | None,
    cfg: TrainConfig,
    seed: int,
):
    """``(loss_fn(generator), context)`` for one prior kind (module docstring); context holds the
    data the sample sheet needs."""
    B = cfg.batch_size
    D = prior.config.embedding_dim
    weighting = {"snr_gamma": cfg.snr_gamma, "timestep_power": cfg.timestep_power}
    if kind == "video":
        clips, arrays, index = load_clips(data_dir)
        F_ = prior.config.num_frames
        if clips.shape[2] % F_:
            raise InputError(
                f"clips have {clips.shape[2]} frames, not a multiple of the prior's {F_}"
            )
        clips = clips[:, :, :: clips.shape[2] // F_]
        z_all = torch.cat(
            [
                prior.encode(clips[i : i + 32]).detach()
                for i in range(0, clips.shape[0], 32)
            ]
        )
        if embeddings is None:
            from anyto3d.zoo.world import WorldObject

            objs = [
                WorldObject.from_id(index["objects"][int(i)]["id"])
                for i in arrays["object_index"]
            ]
            motions = [index["motions"][int(m)] for m in arrays["motion_index"]]
            embeddings = WorldCodeEmbedding(D, seed)(objs, motions)
        emb = _check_embeddings(embeddings, z_all.shape[0], D)

        def loss_fn(gen):
            idx = torch.randint(0, z_all.shape[0], (B,), generator=gen)
            cond = drop_condition(
                prior, prior.build_condition(emb[idx]), cfg.p_uncond, gen
            )
            return diffusion_loss(prior, z_all[idx], cond, generator=gen, **weighting)

        return loss_fn, {"z": z_all, "embeddings": emb, "captions": index["captions"]}

    images, data = load_view_images(data_dir)
    z_all = encode_all(prior, images)
    emb = None
    if D > 0:
        emb = world_view_embeddings(data, D, seed) if embeddings is None else embeddings
        emb = _check_embeddings(emb, len(data), D)
    context = {"z": z_all, "embeddings": emb, "data": data}

    pool = _training_views(data, cfg.framed_only)

    if kind == "prior2d":
        top = prior.config.noise_aug_max

        def loss_fn(gen):
            idx = pool[torch.randint(0, pool.shape[0], (B,), generator=gen)]
            level = top * torch.rand(B, generator=gen) ** 2
            cond = prior.build_condition(emb[idx], noise_level=level, generator=gen)
            cond = drop_condition(prior, cond, cfg.p_uncond, gen)
            return diffusion_loss(prior, z_all[idx], cond, generator=gen, **weighting)

        return loss_fn, context

    cams = data.cameras()
    object_index = _set_apart(data.object_index, data, cfg.framed_only)
    table, counts = _object_groups(object_index)
    obj_of = torch.from_numpy(object_index)

    if kind == "novelview":
        # Zero-1-to-3's camera has no field of view (its renders share one), so a pair with two
        # fields of view would ask for a target whose size the condition cannot tell: partners
        # are views of the same object at the same fovy (the fixed-lens sampler's views, and the
        # views of one multi-view group).
        lens_group = _set_apart(same_lens_groups(data.object_index, data.fovy), data, cfg.framed_only)
        pair_table, pair_counts = _object_groups(lens_group)
        pair_of = torch.from_numpy(lens_group)
        azimuth = cams.azimuth.reshape(-1).float()

        def loss_fn(gen):
            target = pool[torch.randint(0, pool.shape[0], (B,), generator=gen)]
            ref = _pick_reference(pair_table, pair_counts, pair_of[target], target, azimuth, gen,
                                  cfg.pair_exclude_self, cfg.pair_turn_candidates)
            rel = relative_camera(cams[ref], cams[target])
            cond = prior.build_condition(
                reference=z_all[ref],
                relative_camera=rel,
                embedding=emb[ref] if D else None,
            )
            cond = drop_condition(prior, cond, cfg.p_uncond, gen)
            return diffusion_loss(prior, z_all[target], cond, generator=gen, **weighting)

        return loss_fn, context

    if kind == "multiview":
        N = prior.num_views
        if B % N:
            raise InputError(f"batch size {B} is not a multiple of num_views={N}")
        grouped = int(data.index.get("config", {}).get("views_per_group", 1)) == N
        n_groups = z_all.shape[0] // N
        whole_groups = torch.arange(n_groups)
        if cfg.framed_only:
            whole_groups = whole_groups[np.asarray(data.framed[: n_groups * N]).reshape(n_groups, N).all(axis=1)]
        if grouped and whole_groups.numel() == 0:
            raise InputError("no multi-view group shows the whole object in all its views (framed_only)")

        def loss_fn(gen):
            if (
                grouped
            ):  # the dataset's MVDream-style groups (one elevation, azimuths 90° apart)
                g = whole_groups[torch.randint(0, whole_groups.numel(), (B // N,), generator=gen)]
                idx = (g[:, None] * N + torch.arange(N)).flatten()
            else:  # N random views of one object
                first = pool[torch.randint(0, pool.shape[0], (B // N,), generator=gen)]
                idx = _pick_from_groups(
                    table, counts, obj_of[first].repeat_interleave(N), gen
                )
            cond = prior.build_condition(emb[idx], cams.c2w[idx])
            cond = _drop_grouped(prior, cond, cfg.p_uncond, N, gen)
            t = draw_timesteps(prior.schedule.num_timesteps, B // N, gen, cfg.timestep_power).repeat_interleave(N)
            return diffusion_loss(prior, z_all[idx], cond, t=t, generator=gen, snr_gamma=cfg.snr_gamma)

        return loss_fn, {**context, "grouped": grouped}

    raise InputError(
        f"unknown prior kind {kind!r}; choose from {', '.join(PRIOR_CLASSES)}"
    )


# ---------------------------------------------------------------------------------------------
# Sample sheets and judging
# ---------------------------------------------------------------------------------------------


def _grid(images: torch.Tensor, ncol: int, pad: int = 1) -> np.ndarray:
    """``[M, 3, H, W]`` in [-1, 1] → uint8 ``[rows·(H+pad), ncol·(W+pad), 3]`` on white."""
    m, _, h, w = images.shape
    rows = math.ceil(m / ncol)
    canvas = torch.ones(rows * (h + pad) + pad, ncol * (w + pad) + pad, 3)
    hwc = prior_to_renderer(images)
    for i in range(m):
        r, c = divmod(i, ncol)
        canvas[
            pad + r * (h + pad) : pad + r * (h + pad) + h,
            pad + c * (w + pad) : pad + c * (w + pad) + w,
        ] = hwc[i]
    return to_uint8(canvas)


def sample_sheet(
    prior: Prior,
    cond: Condition,
    path: str | os.PathLike,
    guidance_scale: float = 3.0,
    steps: int = 25,
    seed: int = 0,
    ncol: int | None = None,
    scale: int = 2,
) -> torch.Tensor:
    """Sample ``prior`` under ``cond`` and write a PNG grid; returns the samples (in [-1, 1]).

    Images fill rows of ``ncol`` (default 8); a multi-view prior's groups and a video prior's clips
    take one row each (views / frames across).
    """
    from PIL import Image

    samples = prior.sample(
        cond,
        guidance_scale=guidance_scale,
        steps=steps,
        generator=torch.Generator().manual_seed(seed),
    )
    if samples.dim() == 5:  # [B, 3, F, H, W] → frames across
        from anyto3d.priors.zeroscope import video_to_frames

        flat, ncol = video_to_frames(samples), samples.shape[2]
    else:
        flat = samples
        ncol = ncol or getattr(prior, "num_views", None) or min(8, samples.shape[0])
    grid = _grid(flat.float(), ncol)
    img = Image.fromarray(grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return samples


def sheet_condition(kind: str, prior: Prior, context: dict, n: int = 8) -> Condition:
    """A conditioning for ``n`` samples drawn from the training data (distinct objects first)."""
    emb = context["embeddings"]
    if kind == "video":
        step = max(1, emb.shape[0] // n)
        return prior.build_condition(emb[::step][:n])
    data = context["data"]
    _, first = np.unique(data.object_index, return_index=True)
    pick = torch.from_numpy(np.sort(first)[:n].astype(np.int64))
    if kind == "prior2d":
        return prior.build_condition(emb[pick])
    if (
        kind == "novelview"
    ):  # the reference itself, then the back view of the same object
        m = min(n // 2, pick.numel())
        ref = pick[:m].repeat_interleave(2)
        rel = torch.zeros(2 * m, 4)
        rel[:, 2] = 1.0
        rel[1::2, 1], rel[1::2, 2] = 0.0, -1.0  # Δaz = 180°
        return prior.build_condition(
            reference=context["z"][ref],
            relative_camera=rel,
            embedding=emb[ref] if prior.config.embedding_dim else None,
        )
    if kind == "multiview":
        from anyto3d.cameras import PRESETS, sample_multiview_cameras

        m = max(1, min(n // prior.num_views, pick.numel()))
        gen = torch.Generator().manual_seed(0)
        c2w = torch.cat(
            [
                sample_multiview_cameras(PRESETS["fourdfy"], prior.num_views, gen).c2w
                for _ in range(m)
            ]
        )
        return prior.build_condition(emb[pick[:m]], c2w)
    raise InputError(f"unknown prior kind {kind!r}")


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def _write_metrics(out: Path, metrics: dict) -> None:
    tmp = out / ".metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=1))
    os.replace(tmp, out / "metrics.json")


def _loss_summary(losses: list[float]) -> dict:
    k = max(1, min(50, len(losses) // 5))
    curve = [
        round(float(np.mean(losses[i : i + k])), 5)
        for i in range(0, len(losses), max(k, len(losses) // 40))
    ]
    return {
        "loss_first": float(np.mean(losses[:k])),
        "loss_last": float(np.mean(losses[-k:])),
        "loss_curve": curve,
    }


def train_prior(
    kind: str,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    steps: int,
    seed: int = 0,
    preset: str = "planned",
    vae_dir: str | os.PathLike | None = None,
    embeddings: torch.Tensor | None = None,
    cfg: TrainConfig | None = None,
    **overrides,
) -> dict:
    """Train one prior (module docstring); returns the metrics written to ``out_dir/metrics.json``.

    ``preset``/``overrides`` size the prior (``build_tiny``); ``vae_dir`` (a ``train_vae`` output,
    or its ``model/``) puts it in latents; ``embeddings`` ``[N, D]`` replace the world-code stand-in.
    """
    if kind == "vae":
        return train_vae(data_dir, out_dir, steps, seed, cfg=cfg, **overrides)
    if kind not in PRIOR_CLASSES:
        raise InputError(f"unknown prior kind {kind!r}; choose from {', '.join(KINDS)}")
    cfg = cfg or TrainConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vae = None
    if vae_dir is not None:
        vae_dir = Path(vae_dir)
        vae = load_tiny_vae(
            vae_dir / "model" if (vae_dir / "model").is_dir() else vae_dir
        )
    prior = PRIOR_CLASSES[kind].build_tiny(preset, vae=vae, seed=seed, **overrides)
    loss_fn, context = make_loss_fn(kind, prior, data_dir, embeddings, cfg, seed)
    t0 = time.perf_counter()
    result = fit(prior, loss_fn, steps, out, seed, cfg, desc=kind)
    train_seconds = round(time.perf_counter() - t0 + result["earlier_seconds"], 1)
    prior.save_pretrained(out / "model")
    metrics = {
        "kind": kind,
        "prior_class": type(prior).__name__,
        "steps": steps,
        "seed": seed,
        "preset": preset,
        "latent": vae is not None,
        "batch_size": cfg.batch_size,
        "lr_schedule": cfg.lr_schedule,
        "snr_gamma": cfg.snr_gamma,
        "timestep_power": cfg.timestep_power,
        "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in _trainable(prior).values()),
        "steps_per_s": result["steps_per_s"],
        "resumed_from": result["start_step"],
        "train_seconds": train_seconds,  # this run plus the loop time of the runs it resumed
        **_loss_summary(result["losses"]),
    }
    if kind in ("prior2d", "novelview", "multiview"):
        metrics["framed_only"] = cfg.framed_only
    if kind == "novelview":
        metrics.update(pair_exclude_self=cfg.pair_exclude_self, pair_turn_candidates=cfg.pair_turn_candidates)
    if cfg.sheet_steps > 0:
        sample_sheet(
            prior,
            sheet_condition(kind, prior, context),
            out / "samples.png",
            guidance_scale=cfg.sheet_guidance,
            steps=cfg.sheet_steps,
            seed=seed,
        )
    _write_metrics(out, metrics)
    return metrics


def vae_loss(
    vae,
    images: torch.Tensor,
    kl_weight: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Reconstruction MSE of a posterior sample + ``kl_weight`` · KL(q(z|x) ‖ N(0, I)) per latent element."""
    dist = vae.encode(images).latent_dist
    z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=generator)
    recon = vae.decode(z).sample
    kl = 0.5 * (dist.mean**2 + dist.var - 1.0 - dist.logvar).mean()
    return F.mse_loss(recon, images) + kl_weight * kl


@torch.no_grad()
def reconstruction_error(vae, images: torch.Tensor) -> float:
    """Mean squared error of decode(mode(encode(x))) in [-1, 1] units."""
    recon = vae.decode(vae.encode(images).latent_dist.mode()).sample
    return float(F.mse_loss(recon, images))


@torch.no_grad()
def fit_scaling_factor(vae, images: torch.Tensor) -> float:
    """1 / std of the latents (SD's ``scaling_factor`` rule), stored in the VAE's config."""
    z = vae.encode(images).latent_dist.mode()
    factor = float(1.0 / z.std().clamp_min(1e-6))
    vae.register_to_config(scaling_factor=factor)
    return factor


def train_vae(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    steps: int,
    seed: int = 0,
    block_out_channels: tuple[int, ...] = (32, 64),
    latent_channels: int = 4,
    kl_weight: float = 1e-4,
    cfg: TrainConfig | None = None,
) -> dict:
    """Train the latent path's ``AutoencoderKL`` on the renders; writes ``out_dir/model`` (diffusers
    layout, safetensors) with the fitted ``scaling_factor``, and ``metrics.json``."""
    cfg = cfg or TrainConfig(lr=1e-3, ema_decay=0.99)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images, _ = load_view_images(data_dir)
    vae = build_tiny_vae(
        tuple(block_out_channels), latent_channels, images.shape[-1], seed
    )
    held = images[: min(256, images.shape[0])]
    before = reconstruction_error(vae, held)
    B = cfg.batch_size

    def loss_fn(gen):
        idx = torch.randint(0, images.shape[0], (B,), generator=gen)
        return vae_loss(vae, images[idx], kl_weight, gen)

    t0 = time.perf_counter()
    result = fit(vae, loss_fn, steps, out, seed, cfg, desc="vae")
    train_seconds = round(time.perf_counter() - t0 + result["earlier_seconds"], 1)
    after = reconstruction_error(vae, held)
    factor = fit_scaling_factor(vae, images[: min(1024, images.shape[0])])
    vae.save_pretrained(out / "model", safe_serialization=True)
    metrics = {
        "kind": "vae",
        "steps": steps,
        "seed": seed,
        "batch_size": B,
        "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in vae.parameters()),
        "train_seconds": train_seconds,
        "steps_per_s": result["steps_per_s"],
        "resumed_from": result["start_step"],
        "recon_mse_before": before,
        "recon_mse_after": after,
        "scaling_factor": factor,
        **_loss_summary(result["losses"]),
    }
    _write_metrics(out, metrics)
    return metrics


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m anyto3d.zoo.train_priors", description=__doc__.split("\n")[0]
    )
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument(
        "--data",
        required=True,
        help="render_dataset directory (render_clips for video)",
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--preset", default="planned", choices=("planned", "test"))
    parser.add_argument(
        "--vae", default=None, help="train_vae output: train the prior in its latents"
    )
    parser.add_argument(
        "--embeddings",
        default=None,
        help="safetensors file with 'embedding' [N, D] (binder)",
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--sheet-steps", type=int, default=25)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(
        batch_size=args.batch,
        checkpoint_every=args.checkpoint_every,
        sheet_steps=args.sheet_steps,
        progress=not args.no_progress,
    )
    if args.kind == "vae":
        cfg.lr, cfg.ema_decay = 1e-3, 0.99
    if args.lr is not None:
        cfg.lr = args.lr
    embeddings = None
    if args.embeddings:
        from safetensors.torch import load_file

        embeddings = load_file(args.embeddings)["embedding"]
    if args.kind == "vae":
        metrics = train_vae(args.data, args.out, args.steps, args.seed, cfg=cfg)
    else:
        metrics = train_prior(
            args.kind,
            args.data,
            args.out,
            args.steps,
            args.seed,
            preset=args.preset,
            vae_dir=args.vae,
            embeddings=embeddings,
            cfg=cfg,
        )
    print(json.dumps({k: v for k, v in metrics.items() if k != "loss_curve"}, indent=1))
    return metrics


__all__ = [
    "EMA",
    "KINDS",
    "TrainConfig",
    "encode_all",
    "fit",
    "fit_scaling_factor",
    "load_clips",
    "load_view_images",
    "make_loss_fn",
    "reconstruction_error",
    "sample_sheet",
    "sheet_condition",
    "train_prior",
    "train_vae",
    "vae_loss",
    "world_view_embeddings",
]


if __name__ == "__main__":
    main()
