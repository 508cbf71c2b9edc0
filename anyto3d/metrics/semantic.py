"""Semantic agreement of an asset's renders with its prompt (XBind §V-A4, Table I).

XBind renders every asset from 120 views with uniformly spaced azimuths and scores:

* **CLIP-R** (text prompts): CLIP R-Precision, "of images rendered from each 3D object using
  136 text prompts ... and compute the average". XBind cites DreamFusion for it, where
  R-Precision is the top-1 retrieval accuracy of the true caption among the candidate captions,
  computed *per rendered view* and averaged over the views. We do the same: one retrieval per
  view, averaged (so one asset scores a fraction in [0, 1]; a suite's mean is the table cell).
* **CLIP-I** (image prompts): "the CLIP similarity between the rendered images and the reference
  image and take the average": the mean over views of the cosine to the reference image.
* **ARCC** (audio prompts), XBind Eq. 14: ARCC(A, I) = cos(C(A), C(I)) with C the multimodal
  aligned encoder, averaged over the views.

The functions take embeddings, so the same code scores with OpenCLIP/ImageBind at paper scale and
the tiny binder in the tiny world. :func:`r_precision_from_scores` is the retrieval itself, for
scorers that are not cosine similarities (the tiny judge's log-likelihoods,
:meth:`anyto3d.zoo.judge.TinyJudge.clip_like`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from anyto3d.errors import InputError


def _as_matrix(x: torch.Tensor, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dim() == 1:
        x = x.unsqueeze(0)
    if x.dim() != 2 or x.shape[0] == 0:
        raise InputError(f"{name} must be a non-empty [N, D] matrix of embeddings, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise InputError(f"{name} contains NaN or Inf")
    return x.double()


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[N, M] cosine similarities between the rows of ``a`` [N, D] and ``b`` [M, D] (any norms)."""
    if a.shape[-1] != b.shape[-1]:
        raise InputError(f"embedding widths differ: {a.shape[-1]} vs {b.shape[-1]} (different encoders?)")
    return F.normalize(a, dim=-1, eps=1e-12) @ F.normalize(b, dim=-1, eps=1e-12).T


def r_precision_from_scores(scores: torch.Tensor, true_index: int, alike: torch.Tensor | None = None) -> float:
    """Top-1 R-Precision of per-view retrieval scores ``scores`` [V, P] (higher = better match).

    A view is a hit when the true candidate scores strictly higher than every other candidate (a
    tie does not single out the truth, so it counts as a miss); the result is the fraction of
    views that are hits. ``alike`` [V, P] (bool) marks the candidates that make the same picture
    as the truth from each view (a cube with one marked face, seen from behind, is the plain
    cube): no picture can beat them, so they are left out of that view's competition.
    """
    scores = _as_matrix(scores, "retrieval scores")
    n = scores.shape[1]
    if not 0 <= int(true_index) < n:
        raise InputError(f"true_index {true_index} is outside the {n} candidates")
    if n < 2:
        raise InputError("R-Precision needs at least two candidates (the truth and a distractor)")
    rivals = torch.ones_like(scores, dtype=torch.bool)
    if alike is not None:
        alike = torch.as_tensor(alike, dtype=torch.bool, device=scores.device)
        if alike.shape != scores.shape:
            raise InputError(f"alike has shape {tuple(alike.shape)}, the scores {tuple(scores.shape)}")
        rivals &= ~alike
    rivals[:, int(true_index)] = False
    best_rival = scores.masked_fill(~rivals, float("-inf")).max(dim=1).values
    hits = scores[:, int(true_index)] > best_rival
    return float(hits.double().mean())


def clip_r_precision(
    view_embeddings: torch.Tensor, candidate_embeddings: torch.Tensor, true_index: int, per_view: bool = True
) -> float:
    """CLIP R-Precision (XBind §V-A4 "CLIP-R", after DreamFusion).

    ``view_embeddings`` [V, D]: the renders' image embeddings; ``candidate_embeddings`` [P, D]: the
    suite's prompt embeddings; ``true_index``: the prompt the asset was made from. With
    ``per_view=True`` (XBind and DreamFusion) every view retrieves a prompt by cosine similarity and
    the hits are averaged over views; ``per_view=False`` retrieves once from the mean view embedding
    (a 0/1 score).
    """
    views = _as_matrix(view_embeddings, "view embeddings")
    candidates = _as_matrix(candidate_embeddings, "candidate embeddings")
    if not per_view:
        views = F.normalize(views, dim=-1).mean(dim=0, keepdim=True)
    return r_precision_from_scores(cosine_matrix(views, candidates), true_index)


def clip_i(view_embeddings: torch.Tensor, reference_embedding: torch.Tensor) -> float:
    """CLIP-I (XBind §V-A4): the mean over views of cos(E(render_v), E(reference image))."""
    views = _as_matrix(view_embeddings, "view embeddings")
    reference = _as_matrix(reference_embedding, "reference embedding")
    if reference.shape[0] != 1:
        raise InputError(f"CLIP-I takes one reference embedding, got {reference.shape[0]}")
    return float(cosine_matrix(views, reference).mean())


def arcc(view_embeddings: torch.Tensor, audio_embedding: torch.Tensor) -> float:
    """Audio-Rendering Cosine Consistency, XBind Eq. 14: ARCC(A, I) = cos(C(A), C(I)), C the
    multimodal-aligned encoder, averaged over the rendered views I."""
    views = _as_matrix(view_embeddings, "view embeddings")
    audio = _as_matrix(audio_embedding, "audio embedding")
    if audio.shape[0] != 1:
        raise InputError(f"ARCC takes one audio embedding, got {audio.shape[0]}")
    return float(cosine_matrix(views, audio).mean())


__all__ = ["arcc", "clip_i", "clip_r_precision", "cosine_matrix", "r_precision_from_scores"]
