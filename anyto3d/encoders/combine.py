"""Combined prompts: one condition from several modalities (beyond both papers, DESIGN §1).

In an aligned space a prompt of several parts — "a teapot" + the sound of rain + a photo — is
the **normalised weighted sum of the parts' unit embeddings**:

    C = normalise( Σ_i w_i · ê_i ),   ê_i = e_i / ‖e_i‖

Each part is normalised first, so a model's per-modality scale (ImageBind's ×20 on audio) does
not decide the mix; the weights do. Weights are relative: (2, 1) equals (0.5, 0.25).

**Negative weights are rejected.** A weight is a share of the prompt; "minus a concept" has no
reliable meaning in ImageBind's space (the 2D prior was never conditioned on such vectors), and a
sum whose parts can cancel could collapse to an arbitrary direction. Parts whose weighted sum
still nearly cancels (opposite embeddings) are rejected as well.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from anyto3d.errors import InputError
from anyto3d.modality import Prompt

#: A combined vector shorter than this (before normalisation) means the parts cancel out.
MIN_COMBINED_NORM = 1e-3


def combine_embeddings(parts: Sequence[tuple[torch.Tensor, float]]) -> torch.Tensor:
    """Unit vector ``normalise(Σ w_i ê_i)`` of (embedding [D] or [B, D], weight) parts (module docstring)."""
    if len(parts) == 0:
        raise InputError("a combined prompt needs at least one part")
    shape = None
    total = None
    weight_sum = 0.0
    for index, (embedding, weight) in enumerate(parts):
        weight = float(weight)
        if not torch.isfinite(torch.tensor(weight)):
            raise InputError(f"part {index}: weight {weight} is not a finite number")
        if weight < 0:
            raise InputError(f"part {index}: weight {weight} is negative; weights must be >= 0 (shares of the prompt)")
        if shape is None:
            shape = embedding.shape
        elif embedding.shape != shape:
            raise InputError(
                f"part {index}: embedding shape {tuple(embedding.shape)} does not match part 0's {tuple(shape)} "
                "(all parts must come from the same aligned space)"
            )
        norm = embedding.norm(dim=-1, keepdim=True)
        if (norm < 1e-12).any() or not torch.isfinite(embedding).all():
            raise InputError(f"part {index}: embedding is zero or not finite")
        term = weight * (embedding / norm)
        total = term if total is None else total + term
        weight_sum += weight
    if weight_sum <= 0:
        raise InputError("all weights of the combined prompt are zero; give at least one part a positive weight")
    assert total is not None
    if (total.norm(dim=-1) / weight_sum < MIN_COMBINED_NORM).any():
        raise InputError("the parts of the combined prompt cancel out (their weighted embeddings sum to ~0)")
    return F.normalize(total, dim=-1)


def embed_combined(encoder, parts: Sequence[tuple[str, Prompt, float]]) -> torch.Tensor:
    """Embed (modality, prompt, weight) parts with ``encoder`` and combine them -> unit [1, D]."""
    if len(parts) == 0:
        raise InputError("a combined prompt needs at least one part")
    return combine_embeddings([(encoder.embed(modality, prompt), weight) for modality, prompt, weight in parts])


__all__ = ["MIN_COMBINED_NORM", "combine_embeddings", "embed_combined"]
