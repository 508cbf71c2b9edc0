"""A complete tiny zoo with random weights at test sizes, for tests and smoke runs.

:func:`build_test_zoo` writes the same directory layout the trained zoo has
(:func:`anyto3d.zoo.build.model_dir`: ``binder``, ``judge``, ``vae``, ``prior2d``, ``novelview``,
``multiview``, ``video``), so code that loads the zoo is exercised end to end in seconds; point
``$ANYTO3D_TINY_MODELS`` (or a ``models_dir`` setting) at it. The outputs are noise, by design.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


def build_test_zoo(root: str | os.PathLike, seed: int = 0, latent: bool = True) -> Path:
    """Write random-weight test-size models under ``root``; returns ``root``."""
    from anyto3d.zoo.binder import TEST_BINDER, TinyBinder
    from anyto3d.zoo.judge import TEST_JUDGE, TinyJudge
    from anyto3d.zoo.priors import PRIOR_CLASSES, build_tiny_vae

    root = Path(root)
    torch.manual_seed(seed)
    binder = TinyBinder(TEST_BINDER)
    binder.save_pretrained(root / "binder")
    TinyJudge(TEST_JUDGE).save_pretrained(root / "judge")
    vae = build_tiny_vae(block_out_channels=(8, 16), image_size=16, seed=seed) if latent else None
    if vae is not None:
        vae.save_pretrained(root / "vae", safe_serialization=True)
    for kind, cls in PRIOR_CLASSES.items():
        extra = {"embedding_dim": binder.dim}
        prior = cls.build_tiny("test", vae=vae, seed=seed, **extra)
        prior.save_pretrained(root / kind)
    return root


__all__ = ["build_test_zoo"]
