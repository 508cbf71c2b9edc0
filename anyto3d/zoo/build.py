"""Build the tiny world end to end: data, encoders, VAE, priors — one command per DVC stage.

Each sub-command is one stage of ``dvc.yaml`` (``dvc repro zoo`` runs them in order, the
numbers come from ``params.yaml``'s ``zoo:`` block)::

    python -m anyto3d.zoo.build data       --out data/zoo              # renders + clips + ground truth
    python -m anyto3d.zoo.build binder     --data data/zoo --steps N --audio-steps M
    python -m anyto3d.zoo.build judge_data --data data/zoo --views N   # the judge's extra views
    python -m anyto3d.zoo.build judge      --data data/zoo --steps N
    python -m anyto3d.zoo.build embed      --data data/zoo             # binder embeddings of the training data
    python -m anyto3d.zoo.build vae        --data data/zoo --steps N
    python -m anyto3d.zoo.build prior2d|novelview|multiview|video --data data/zoo --steps N

Models are written under :data:`MODELS_DIR` (``anyto3d/zoo/models/<name>/``, committed to git,
so a fresh clone generates without training); datasets under ``--data`` (DVC-cached, not in git).

Only objects of the ``train`` split are rendered into ``train/`` and ``clips/``; ``heldout/``
holds the held-out combinations, which only evaluation reads (:mod:`anyto3d.zoo.splits`).
``judge_train/`` holds extra training objects for the judge alone (every composition and
second colour that is not held out, :func:`~anyto3d.zoo.splits.judge_objects`).

Conditioning the priors train on: the 2D and multi-view priors see, per view, either the binder's
embedding of the image itself (unCLIP's training signal) or of the view's caption — chosen once
per view by a seeded coin — so text, image and audio embeddings (audio is aligned to the image
tower) all land in the distribution the prior knows. The novel-view prior sees the reference's
image embedding; the video prior the clip caption's embedding.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

MODELS_DIR = Path(__file__).resolve().parent / "models"
MODEL_NAMES = ("binder", "judge", "vae", "prior2d", "novelview", "multiview", "video")
PRIOR_KINDS = ("prior2d", "novelview", "multiview", "video")
EMBEDDINGS = {"views": "embeddings-views.safetensors", "clips": "embeddings-clips.safetensors"}


def model_dir(name: str, root: str | os.PathLike | None = None) -> Path:
    """Where the tiny model ``name`` lives (``$ANYTO3D_TINY_MODELS`` overrides the packaged dir)."""
    base = Path(root or os.environ.get("ANYTO3D_TINY_MODELS") or MODELS_DIR)
    return base / name


# ---------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------

def build_data(out: Path, views: int, heldout_views: int, clips_per_pair: int, frames: int, seed: int) -> dict:
    from dataclasses import replace

    from anyto3d.zoo.dataset import DatasetConfig, export_ground_truth, render_clips, render_dataset
    from anyto3d.zoo.splits import heldout_objects, train_objects
    from anyto3d.zoo.world import catalogue

    cfg = replace(DatasetConfig(), views_per_group=4)
    objects = catalogue()
    train, heldout = train_objects(objects), heldout_objects(objects)
    t0 = time.perf_counter()
    render_dataset(train, views, out / "train", seed=seed, cfg=cfg)
    render_dataset(heldout, heldout_views, out / "heldout", seed=seed + 1, cfg=cfg)
    singles = [o for o in train if o.relation is None]
    render_clips(singles, out / "clips", clips_per_pair=clips_per_pair, n_frames=frames, seed=seed)
    export_ground_truth(objects, out / "ground_truth")
    return {"seconds": round(time.perf_counter() - t0, 1), "train_objects": len(train), "heldout_objects": len(heldout)}


JUDGE_EXTRA = "judge_train"


def build_judge_data(out: Path, views: int, seed: int) -> dict:
    """Render the judge's extra training objects (few views each, many objects) to ``judge_train/``."""
    from dataclasses import replace

    from anyto3d.zoo.dataset import DatasetConfig, render_dataset
    from anyto3d.zoo.splits import judge_objects

    t0 = time.perf_counter()
    objects = judge_objects()
    render_dataset(objects, views, out / JUDGE_EXTRA, seed=seed + 2, cfg=replace(DatasetConfig(), views_per_group=4))
    return {"seconds": round(time.perf_counter() - t0, 1), "objects": len(objects), "views": len(objects) * views}


@torch.no_grad()
def build_embeddings(data: Path, seed: int) -> dict:
    """Binder embeddings of every training view (image or caption, by a seeded coin) and clip."""
    from safetensors.torch import save_file

    from anyto3d.zoo.binder import TinyBinder
    from anyto3d.zoo.dataset import load_dataset

    binder = TinyBinder.from_pretrained(model_dir("binder"))
    views = load_dataset(data / "train")
    rgb = torch.from_numpy(views.rgba[..., :3]).float() / 255.0
    image = torch.cat([binder.embed_image(rgb[i : i + 512]) for i in range(0, rgb.shape[0], 512)])
    captions = views.index["captions"]
    text_bank = torch.cat([binder.embed_texts(captions[i : i + 512]) for i in range(0, len(captions), 512)])
    text = text_bank[torch.from_numpy(views.caption_id.astype(np.int64))]
    coin = torch.rand(image.shape[0], generator=torch.Generator().manual_seed(seed)) < 0.5
    mixed = torch.where(coin[:, None], text, image)
    save_file({"embedding": mixed.contiguous(), "image": image.contiguous()}, str(data / EMBEDDINGS["views"]))

    clip_index = json.loads((data / "clips" / "index.json").read_text())
    with np.load(data / "clips" / "clips.npz") as npz:
        caption_id = npz["caption_id"].astype(np.int64)
    clip_captions = clip_index["captions"]
    clip_text = torch.cat([binder.embed_texts(clip_captions[i : i + 512]) for i in range(0, len(clip_captions), 512)])
    save_file({"embedding": clip_text[torch.from_numpy(caption_id)].contiguous()}, str(data / EMBEDDINGS["clips"]))
    return {"views": int(image.shape[0]), "clips": int(caption_id.shape[0]), "dim": binder.dim}


def build_encoder(kind: str, data: Path, steps: int, audio_steps: int | None, seed: int, audio_only: bool = False) -> dict:
    """Train the binder or the judge. ``audio_only`` (binder): keep the published binder's image
    and text towers, so the priors' conditioning stays valid, and train a new audio tower."""
    import shutil

    from anyto3d.zoo.train_encoders import main as train_encoders

    out = _work_dir(data, kind + ("-audio" if audio_only else ""))
    args = [kind, "--data", str(data / "train"), "--eval-data", str(data / "heldout"), "--out", str(out),
            "--steps", str(steps), "--seed", str(seed), "--no-progress"]  # fmt: skip
    if audio_steps is not None:
        args += ["--audio-steps", str(audio_steps)]
    if kind == "judge":
        args += ["--extra-data", str(data / JUDGE_EXTRA)]
    if audio_only:
        source = out.with_name(out.name + "-source")
        if not source.is_dir():  # a copy: the published directory is replaced at the end
            shutil.copytree(model_dir(kind), source)
        args += ["--audio-only-from", str(source)]
    metrics = train_encoders(args)
    _publish(out, out, model_dir(kind))
    return metrics


def build_prior(kind: str, data: Path, steps: int, seed: int, batch: int, checkpoint_every: int, latent: bool = True,
                turn_candidates: int = 2, train_views: str = "all", lr_schedule: str = "constant",
                snr_gamma: float | None = None, timestep_power: float = 1.0) -> dict:
    from safetensors.torch import load_file

    from anyto3d.module_io import CONFIG_NAME
    from anyto3d.zoo.train_priors import TrainConfig, train_prior, train_vae

    out = _work_dir(data, kind)
    cfg = TrainConfig(batch_size=batch, checkpoint_every=checkpoint_every, progress=False,
                      framed_only=train_views == "framed", lr_schedule=lr_schedule, snr_gamma=snr_gamma,
                      timestep_power=timestep_power)
    if kind == "novelview":  # the published novel-view prior's pairs (TrainConfig, MODEL_CARD session 6)
        cfg.pair_exclude_self, cfg.pair_turn_candidates = True, turn_candidates
    if kind == "vae":
        cfg.lr, cfg.ema_decay = 1e-3, 0.99
        metrics = train_vae(data / "train", out, steps, seed, cfg=cfg)
    else:
        dim = json.loads((model_dir("binder") / CONFIG_NAME).read_text())["config"]["dim"]
        source = EMBEDDINGS["clips" if kind == "video" else "views"]
        key = "image" if kind == "novelview" else "embedding"
        embeddings = load_file(str(data / source))[key]
        metrics = train_prior(
            kind,
            data / ("clips" if kind == "video" else "train"),
            out,
            steps,
            seed,
            vae_dir=model_dir("vae") if latent else None,
            embeddings=embeddings,
            cfg=cfg,
            embedding_dim=dim,
        )
    _publish(out / "model", out, model_dir(kind))
    return metrics


def _work_dir(data: Path, kind: str) -> Path:
    """Checkpoints and logs of a training run (under the DVC-cached data, never in git)."""
    return Path(os.environ.get("ANYTO3D_ZOO_WORK", data / "work")) / kind


def _publish(model: Path, logs: Path, dest: Path) -> None:
    """Copy a finished model (its own weights as float16, to keep the committed zoo small; they
    load back into float32 modules), metrics and sample sheet to the committed directory."""
    import shutil

    from safetensors.torch import load_file, save_file

    staging = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(model, staging, ignore=shutil.ignore_patterns("checkpoints", "train_log.json"))
    own = staging / "model.safetensors"
    if own.is_file():
        state = load_file(str(own))
        save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, str(own))
    for extra in ("metrics.json", "samples.png", "train_log.json"):
        if (logs / extra).is_file():
            shutil.copy2(logs / extra, staging / extra)
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m anyto3d.zoo.build", description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=("data", "judge_data", "embed", *MODEL_NAMES))
    parser.add_argument("--data", "--out", dest="data", default="data/zoo")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--audio-steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--views", type=int, default=96)
    parser.add_argument("--heldout-views", type=int, default=32)
    parser.add_argument("--clips-per-pair", type=int, default=2)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--audio-only", action="store_true",
                        help="binder: keep the published image and text towers; train only a new audio tower")
    parser.add_argument("--turn-candidates", type=int, default=2,
                        help="novelview: reference draws per target, the farthest turn kept (1: uniform)")
    parser.add_argument("--train-views", choices=("all", "framed"), default="all",
                        help="2D, novel-view, multi-view priors: learn from every view, or only from those "
                        "that show the whole object (TrainConfig.framed_only)")
    parser.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                        help="priors and VAE: keep the rate after warm-up, or decay it to zero on a cosine "
                        "(TrainConfig.lr_schedule)")
    parser.add_argument("--snr-gamma", type=float, default=None,
                        help="priors: weight the diffusion loss by Min-SNR-γ with this γ (TrainConfig.snr_gamma; "
                        "default: uniform, the published recipes)")
    parser.add_argument("--timestep-power", type=float, default=1.0,
                        help="priors: draw training steps with density ∝ t^(p−1), towards the noisy end for p > 1 "
                        "(TrainConfig.timestep_power; default 1: uniform)")
    parser.add_argument("--latent", action=argparse.BooleanOptionalAction, default=True,
                        help="priors: train in the tiny VAE's latents (default) or in pixels (--no-latent)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = Path(args.data)
    t0 = time.perf_counter()
    if args.stage == "data":
        result = build_data(data, args.views, args.heldout_views, args.clips_per_pair, args.frames, args.seed)
    elif args.stage == "judge_data":
        result = build_judge_data(data, args.views, args.seed)
    elif args.stage == "embed":
        result = build_embeddings(data, args.seed)
    elif args.stage in ("binder", "judge"):
        result = build_encoder(args.stage, data, args.steps, args.audio_steps, args.seed, args.audio_only)
    else:
        result = build_prior(args.stage, data, args.steps, args.seed, args.batch, args.checkpoint_every, args.latent,
                             args.turn_candidates, args.train_views, args.lr_schedule, args.snr_gamma,
                             args.timestep_power)
    result = {k: v for k, v in result.items() if k != "loss_curve"}
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result, indent=1, default=str))
    return result


if __name__ == "__main__":
    main()
