"""Score trial priors beside the published one: the zoo evaluation's rules, any model directory.

``python -m anyto3d.zoo.compare prior2d DIR [DIR ...] --samples 128 --seed 5 --split heldout train``

Each model directory (a ``train_priors``/``build`` output's ``model/``, or the published
``anyto3d/zoo/models/<kind>``) is scored exactly as ``metrics/zoo.json`` scores the published
prior (:mod:`anyto3d.zoo.evaluate`), with the published binder and judge, on the held-out split
and, with ``--split train``, on the training objects as well: a prior that is wrong on the
objects it learnt from under-fits, one right there but not on held-out ones fails to generalise.
``--condition code`` (2D prior) conditions on world codes instead of the binder's text
embedding: a prior trained on them (``train_priors`` without ``--embeddings``) tells the
condition's limits from the prior's. One JSON line per directory and split; nothing is written.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from anyto3d.errors import InputError
from anyto3d.zoo.evaluate import (
    CONDITIONS,
    EvalConfig,
    evaluate_multiview,
    evaluate_novelview,
    evaluate_prior2d,
    evaluate_video,
    scaled_config,
)

KINDS = ("prior2d", "novelview", "multiview", "video")
SPLITS = ("heldout", "train")  # each a directory under --data (build data)
HEADLINE = ("score", "all", "shape", "color", "facing", "groups", "views", "motion", "object")


def _summary(scores: dict) -> dict:
    out = {k: round(float(scores[k]), 4) for k in HEADLINE if isinstance(scores.get(k), float)}
    if "singles" in scores:
        out["singles"] = round(float(scores["singles"]["all"]), 4)
    if "truth" in scores:
        out["truth"] = round(float(scores["truth"].get("all", scores["truth"].get("groups", 0.0))), 4)
    return out


def compare(kind: str, model_dirs: list, data_root, cfg: EvalConfig, splits=("heldout",), condition: str = "text",
            code_seed: int = 0, models_root=None) -> list[dict]:
    """Score each of ``model_dirs`` (a prior of ``kind``) on each of ``splits``; one row each."""
    from anyto3d.zoo.binder import TinyBinder
    from anyto3d.zoo.build import model_dir
    from anyto3d.zoo.dataset import load_dataset
    from anyto3d.zoo.judge import TinyJudge
    from anyto3d.zoo.priors import load_tiny_prior

    if kind not in KINDS:
        raise InputError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if condition not in CONDITIONS:
        raise InputError(f"condition must be one of {', '.join(CONDITIONS)}, got {condition!r}")
    if condition != "text" and kind != "prior2d":
        raise InputError(f"--condition {condition} applies to the 2D prior only")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise InputError(f"unknown split {unknown[0]!r}; choose from {', '.join(SPLITS)}")
    if kind == "video" and list(splits) != ["heldout"]:
        raise InputError("the video prior is scored on held-out motion captions only (--split heldout)")
    binder = TinyBinder.from_pretrained(model_dir("binder", models_root))
    judge = TinyJudge.from_pretrained(model_dir("judge", models_root))
    datasets = {s: load_dataset(Path(data_root) / s) for s in splits if kind != "video"}
    rows = []
    for directory in model_dirs:
        prior = load_tiny_prior(Path(directory))
        for split in splits:
            with torch.no_grad():
                if kind == "video":
                    scores = evaluate_video(prior, binder, judge, cfg)[0]
                elif kind == "prior2d":
                    scores = evaluate_prior2d(prior, binder, judge, datasets[split], cfg, condition, code_seed)[0]
                else:
                    fn = evaluate_novelview if kind == "novelview" else evaluate_multiview
                    scores = fn(prior, binder, judge, datasets[split], cfg)[0]
            rows.append({"model": str(directory), "kind": kind, "split": split, "condition": condition,
                         "samples": cfg.samples_2d, "seed": cfg.seed, **_summary(scores)})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m anyto3d.zoo.compare", description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("models", nargs="+", help="prior model directories")
    parser.add_argument("--data", default="data/zoo", help="the zoo dataset (build data)")
    parser.add_argument("--split", nargs="+", default=["heldout"], choices=SPLITS)
    parser.add_argument("--condition", default="text", choices=CONDITIONS, help="2D prior: text embedding or world code")
    parser.add_argument("--code-seed", type=int, default=0, help="the world codes' seed (train_priors' --seed)")
    parser.add_argument("--samples", type=int, default=EvalConfig.samples_2d,
                        help="2D samples; novel-view references, multi-view groups and clips scale with it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=EvalConfig.steps)
    parser.add_argument("--guidance", type=float, default=EvalConfig.guidance_scale)
    parser.add_argument("--models-root", default=None, help="where the binder and judge live (default: the published)")
    args = parser.parse_args(argv)
    cfg = scaled_config(args.samples, steps=args.steps, guidance_scale=args.guidance, seed=args.seed)
    rows = compare(args.kind, args.models, args.data, cfg, tuple(args.split), args.condition, args.code_seed,
                   args.models_root)  # fmt: skip
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


__all__ = ["KINDS", "compare", "main"]


if __name__ == "__main__":
    import sys

    try:
        main()
    except InputError as err:  # one line and exit 2, no traceback (anyto3d.errors)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
