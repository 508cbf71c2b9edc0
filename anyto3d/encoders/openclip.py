"""OpenCLIP adapter: the image (and text) encoder of the MS loss and of the CLIP metrics.

The architecture comes from ``open_clip.create_model(name, pretrained=<local file or None>)`` —
never a pretrained *tag*, so nothing is downloaded — and the weights from a local checkpoint found by
:func:`anyto3d.priors.weights.resolve_weights` (``open_clip_model.safetensors`` or
``open_clip_pytorch_model.bin``, as the Hub repositories ship them; ``torch.load`` runs with
``weights_only=True``).

A reduced-size model for tests is the same call with a config dict: ``create_model`` applies its
keyword arguments over the named config (``embed_dim=…, vision_cfg={…}, text_cfg={…}``), so any
architecture the ``model_configs/*.json`` files can describe can be given inline
(:data:`OPENCLIP_DUMMY_CFG`).

OpenAI's CLIP weights were trained with QuickGELU; open_clip's ``ViT-B-32`` config uses plain
GELU, so :attr:`OpenClipConfig.quick_gelu` defaults to True for the default OpenAI checkpoint
(LAION checkpoints such as ViT-H-14 ``laion2b_s32b_b79k`` need False).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from anyto3d.encoders.base import CLIP_MEAN, CLIP_STD, Encoder, clip_preprocess
from anyto3d.errors import InputError
from anyto3d.modality import TEXT_CONTEXT_TOKENS, Prompt

#: A ~1.8 M-parameter CLIP (mostly the 49408-token text embedding) for tests.
OPENCLIP_DUMMY_CFG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@dataclass(frozen=True)
class OpenClipConfig:
    model_name: str = "ViT-B-32"  # an open_clip architecture name
    model_id: str = "open_clip-ViT-B-32"  # key in anyto3d.priors.weights.PAPER_MODELS, or a Hub repo id
    checkpoint_files: tuple[str, ...] = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    local_dir: str | None = None
    quick_gelu: bool = True  # OpenAI weights; False for LAION-trained checkpoints
    model_cfg: dict[str, Any] | None = field(default=None, hash=False)  # inline overrides of the named config
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD


def _create(cfg: OpenClipConfig, checkpoint: str | None = None) -> torch.nn.Module:
    """``create_model`` with no pretrained tag (so nothing can download); ``checkpoint`` is a local
    file, which open_clip loads strictly with ``torch.load(weights_only=True)`` or safetensors."""
    import open_clip

    overrides = dict(cfg.model_cfg or {})
    return open_clip.create_model(
        cfg.model_name, pretrained=checkpoint, force_quick_gelu=cfg.quick_gelu, weights_only=True, **overrides
    )


class OpenClipEncoder(Encoder):
    """An OpenCLIP model's image and text towers behind the :class:`Encoder` interface."""

    modalities = ("text", "image")

    def __init__(self, model: torch.nn.Module, cfg: OpenClipConfig = OpenClipConfig()):
        super().__init__()
        self.model = model
        self.cfg = cfg
        size = model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.context_length = int(getattr(model, "context_length", TEXT_CONTEXT_TOKENS))
        self.freeze()

    @classmethod
    def from_pretrained(cls, cfg: OpenClipConfig = OpenClipConfig()) -> "OpenClipEncoder":
        """Build the architecture and load the local checkpoint (``MissingWeightsError`` if absent)."""
        from anyto3d.priors.weights import resolve_weights

        directory = resolve_weights(cfg.model_id, ["|".join(cfg.checkpoint_files)], local_dir=cfg.local_dir)
        path = next(directory / f for f in cfg.checkpoint_files if (directory / f).is_file())
        return cls(_create(cfg, str(path)), cfg)

    @classmethod
    def build_dummy(cls, seed: int = 0) -> "OpenClipEncoder":
        """A randomly initialised tiny CLIP (same code paths) for tests."""
        cfg = OpenClipConfig(quick_gelu=False, model_cfg=OPENCLIP_DUMMY_CFG)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = _create(cfg)
        return cls(model, cfg)

    @property
    def dim(self) -> int:
        out = getattr(self.model.visual, "output_dim", None)
        return int(out) if out is not None else int(self.model.text_projection.shape[1])

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids [B, context] with open_clip's bundled BPE; over-long text is an InputError."""
        tok = _tokenizer(self.context_length)
        for text in texts:
            n = len(tok.encode(text))
            if n > self.context_length - 2:
                limit = self.context_length - 2
                raise InputError(f"text prompt is too long: {n} tokens, the context holds {limit}: {text[:60]!r}...")
        return tok(texts)

    def embed_prompts(self, modality: str, prompts: list[Prompt]) -> torch.Tensor:
        if modality == "text":
            tokens = self.tokenize([p.text for p in prompts]).to(self.device)  # type: ignore[union-attr]
            return self.model.encode_text(tokens)
        return torch.cat([self.embed_image(p.rgb[None].to(self.device)) for p in prompts])  # type: ignore[union-attr]

    def embed_image(self, rgb: torch.Tensor) -> torch.Tensor:
        """Unit image embeddings [B, D] of [B, H, W, 3] in [0, 1]: resize, crop, CLIP-normalise; differentiable."""
        x = clip_preprocess(rgb.to(self.device), self.image_size, self.cfg.mean, self.cfg.std)
        return F.normalize(self.model.encode_image(x.to(self.dtype)), dim=-1).to(rgb.dtype)


@functools.lru_cache(maxsize=4)
def _tokenizer(context_length: int):
    """open_clip's BPE tokenizer with its bundled vocabulary (offline)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


__all__ = ["OPENCLIP_DUMMY_CFG", "OpenClipConfig", "OpenClipEncoder"]
