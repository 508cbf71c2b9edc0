"""The one interface every multimodal encoder sits behind (DESIGN §3 "Encoder").

An encoder maps prompts of its modalities into one aligned embedding space:

* ``embed(modality, data) -> [B, D]`` for prompts loaded by :mod:`anyto3d.modality`
  (:class:`TextPrompt`, :class:`ImagePrompt`, :class:`AudioPrompt`, or lists of them — never
  file paths: loading and validation happen there). The result is **unit-normalised**: the
  aligned space is compared by cosine, and a model's per-modality scale (ImageBind multiplies
  audio by 20 and text by a learnt logit scale; see :mod:`anyto3d.encoders.imagebind`) is a
  contrastive temperature, not content. An adapter that must hand a paper model a *scaled*
  vector (e.g. unCLIP conditioning) asks the encoder for it explicitly.
  Runs without gradients.
* ``embed_image(rgb) -> [B, D]``: rendered images ``[B, H, W, 3]`` in [0, 1], **differentiable**
  with respect to ``rgb`` (the MS loss backpropagates through it), unit-normalised.

The encoder's own weights are frozen (``requires_grad=False``, eval mode).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from anyto3d.errors import InputError
from anyto3d.modality import AudioPrompt, ImagePrompt, Prompt, TextPrompt

PROMPT_TYPES: dict[str, type] = {"text": TextPrompt, "image": ImagePrompt, "audio": AudioPrompt}

#: CLIP's image normalisation (OpenAI), also used by ImageBind's vision tower and OpenCLIP.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def as_prompt_list(modality: str, data: Prompt | Sequence[Prompt]) -> list[Prompt]:
    """Check that ``data`` is one prompt or a non-empty list of prompts of ``modality``."""
    expected = PROMPT_TYPES.get(modality)
    if expected is None:
        raise InputError(f"unknown modality {modality!r}; choose from {', '.join(PROMPT_TYPES)}")
    items = [data] if isinstance(data, (TextPrompt, ImagePrompt, AudioPrompt)) else list(data)
    if not items:
        raise InputError(f"no {modality} prompts given")
    for item in items:
        if not isinstance(item, expected):
            raise TypeError(
                f"{modality} embedding needs {expected.__name__} data, got {type(item).__name__}; "
                "load inputs with anyto3d.modality.load_prompt(...)"
            )
    return items


def clip_preprocess(
    rgb: torch.Tensor,
    size: int,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> torch.Tensor:
    """[B, H, W, 3] in [0, 1] -> [B, 3, size, size] normalised, differentiably.

    As CLIP's preprocessing: resize the short side to ``size`` (bicubic, antialiased), centre
    crop, normalise with ``mean``/``std``. Bicubic overshoot is clamped back to [0, 1], as an
    8-bit image library would.
    """
    if rgb.dim() != 4 or rgb.shape[-1] != 3:
        raise ValueError(f"expected images [B, H, W, 3], got {tuple(rgb.shape)}")
    x = rgb.permute(0, 3, 1, 2)
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
        x = x.clamp(0.0, 1.0)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    x = x[:, :, top : top + size, left : left + size]
    mean_t = x.new_tensor(mean).view(1, 3, 1, 1)
    std_t = x.new_tensor(std).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


class Encoder(nn.Module, ABC):
    """A frozen multimodal encoder into an aligned embedding space (module docstring)."""

    #: Modalities ``embed`` accepts, a subset of ("text", "image", "audio").
    modalities: tuple[str, ...] = ()

    @property
    @abstractmethod
    def dim(self) -> int:
        """Dimension D of the aligned space."""

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for p in self.parameters():
            return p.dtype
        return torch.float32

    def freeze(self) -> "Encoder":
        self.eval()
        self.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> "Encoder":
        # Always inference behaviour (dropout/drop-path off): the encoder is never trained here.
        return super().train(False)

    def embed(self, modality: str, data: Prompt | Sequence[Prompt]) -> torch.Tensor:
        """Unit-normalised embeddings [B, D] of prompts of one modality (no gradients)."""
        if modality not in self.modalities:
            raise InputError(
                f"{type(self).__name__} does not embed {modality!r}; it embeds {', '.join(self.modalities)}"
            )
        prompts = as_prompt_list(modality, data)
        with torch.no_grad():
            return F.normalize(self.embed_prompts(modality, prompts).float(), dim=-1)

    @abstractmethod
    def embed_prompts(self, modality: str, prompts: list[Prompt]) -> torch.Tensor:
        """Embeddings [B, D] of validated prompts (normalised by :meth:`embed`)."""

    @abstractmethod
    def embed_image(self, rgb: torch.Tensor) -> torch.Tensor:
        """Unit-normalised embeddings [B, D] of images [B, H, W, 3] in [0, 1]; differentiable."""


__all__ = ["CLIP_MEAN", "CLIP_STD", "Encoder", "PROMPT_TYPES", "as_prompt_list", "clip_preprocess"]
