"""ImageBind adapter: text, image and audio into one aligned space (XBind's C_m encoder).

Model code comes from the ``imagebind-unofficial`` package; weights only from a local directory
or the local Hugging Face cache (:func:`anyto3d.priors.weights.resolve_weights`), never the network.

**Preprocessing, as ImageBind's own loaders** (``imagebind/data.py``; the values below are its defaults):

* text: the CLIP BPE tokenizer with the vocabulary the package ships (offline), 77-token context;
* image: short side resized to 224 (bicubic), centre crop 224, CLIP mean/std. We resize with
  torch (antialiased bicubic) instead of PIL so prompt images and rendered views go through the
  very same differentiable code (:func:`anyto3d.encoders.base.clip_preprocess`);
* audio: 16 kHz mono; 3 clips of 2 s whose starts are ``k · max(duration − 2, 0) / 3`` for
  k = 0, 1, 2 (pytorchvideo's ``ConstantClipsPerVideoSampler``); per clip the mean is removed, a
  Kaldi log-mel filterbank is taken (128 bins, 25-ms Hanning window, 10-ms shift, HTK mel, no
  dither, no energy), zero-padded or cut to 204 frames, then normalised with mean −4.268 and
  std 9.138. A 2-s clip gives 198 frames. The clip embeddings are averaged. (ImageBind removes
  each clip's mean in place, which leaks into overlapping clips; we work on copies.)

**Per-modality post-processing of ImageBind heads** (``_create_modality_postprocessors``): every
head output is L2-normalised, then multiplied by a per-modality logit scale — vision 1 (none),
text exp(learnt log scale) clipped at 100 (initialised at 1/0.07), audio 20 (fixed), depth 5,
thermal 10, IMU 5. The scale is a contrastive temperature. :meth:`ImageBindEncoder.embed` returns
unit vectors (the aligned space); ``output="imagebind"`` returns ImageBind's exact output
(unit × scale, clips averaged after scaling), ``output="raw"`` the head output before
normalisation — BindDiffusion conditions unCLIP on raw image embeddings (the frozen OpenCLIP
ViT-H projection that unCLIP was trained on) and on normalised ×20 audio embeddings.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from anyto3d.encoders.base import CLIP_MEAN, CLIP_STD, Encoder, as_prompt_list, clip_preprocess
from anyto3d.errors import InputError
from anyto3d.modality import TEXT_CONTEXT_TOKENS, AudioPrompt, Prompt

EmbeddingOutput = Literal["unit", "imagebind", "raw"]

# Our modality names -> ImageBind's ModalityType values.
_IMAGEBIND_KEY = {"text": "text", "image": "vision", "audio": "audio"}


# ---------------------------------------------------------------------------------------------
# Importing the model code
# ---------------------------------------------------------------------------------------------


def _imagebind_package_dir() -> Path:
    loaded = sys.modules.get("imagebind")
    if loaded is not None and getattr(loaded, "__path__", None):
        return Path(list(loaded.__path__)[0])
    spec = importlib.util.find_spec("imagebind")  # locating a package does not execute it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the 'imagebind' package (imagebind-unofficial) is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def import_imagebind_module(name: str = "models.imagebind_model") -> types.ModuleType:
    """Import ``imagebind.<name>`` without running ``imagebind/__init__.py``.

    Why: the package's ``__init__`` imports ``imagebind.data``, which needs ``pkg_resources``
    (gone from current setuptools), pytorchvideo (broken on current torchvision) and torchaudio
    file IO — none of which the model code uses. Registering a bare package object named
    ``imagebind`` whose ``__path__`` is the installed directory lets the submodules import
    normally while the broken ``__init__`` never runs.
    """
    if "imagebind" not in sys.modules:
        stub = types.ModuleType("imagebind")
        stub.__path__ = [str(_imagebind_package_dir())]
        sys.modules["imagebind"] = stub
    return importlib.import_module(f"imagebind.{name}")


@functools.lru_cache(maxsize=1)
def bpe_tokenizer():
    """ImageBind's CLIP BPE tokenizer with the vocabulary bundled in the package (offline)."""
    module = import_imagebind_module("models.multimodal_preprocessors")
    vocab = _imagebind_package_dir() / "bpe" / "bpe_simple_vocab_16e6.txt.gz"
    if not vocab.is_file():
        raise ImportError(f"ImageBind's BPE vocabulary is missing: {vocab}")
    return module.SimpleTokenizer(bpe_path=str(vocab), context_length=TEXT_CONTEXT_TOKENS)


def tokenize(texts: list[str]) -> torch.Tensor:
    """Token ids [B, 77] (start marker, BPE tokens, end marker, zero padding).

    Raises :class:`InputError` for a text longer than the context rather than truncating it.
    """
    tok = bpe_tokenizer()
    for text in texts:
        n = len(tok.encode(text))
        if n > TEXT_CONTEXT_TOKENS - 2:
            raise InputError(
                f"text prompt is too long: {n} tokens, the context holds {TEXT_CONTEXT_TOKENS - 2}: {text[:60]!r}..."
            )
    ids = tok(texts)
    return ids.view(len(texts), -1)


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageBindArchitecture:
    """Constructor arguments of ``ImageBindModel``; the defaults are ``imagebind_huge``."""

    out_embed_dim: int = 1024
    vision_embed_dim: int = 1280
    vision_num_blocks: int = 32
    vision_num_heads: int = 16
    text_embed_dim: int = 1024
    text_num_blocks: int = 24
    text_num_heads: int = 16
    audio_embed_dim: int = 768
    audio_num_blocks: int = 12
    audio_num_heads: int = 12
    audio_drop_path: float = 0.1
    depth_embed_dim: int = 384
    depth_num_blocks: int = 12
    depth_num_heads: int = 8
    thermal_embed_dim: int = 768
    thermal_num_blocks: int = 12
    thermal_num_heads: int = 12
    imu_embed_dim: int = 512
    imu_num_blocks: int = 6
    imu_num_heads: int = 8
    imu_drop_path: float = 0.7


IMAGEBIND_HUGE = ImageBindArchitecture()
#: A few-million-parameter configuration for tests (most of it the 49408-token text embedding).
IMAGEBIND_DUMMY = ImageBindArchitecture(
    out_embed_dim=32,
    vision_embed_dim=32, vision_num_blocks=1, vision_num_heads=2,
    text_embed_dim=32, text_num_blocks=1, text_num_heads=2,
    audio_embed_dim=32, audio_num_blocks=1, audio_num_heads=2,
    depth_embed_dim=16, depth_num_blocks=1, depth_num_heads=1,
    thermal_embed_dim=16, thermal_num_blocks=1, thermal_num_heads=1,
    imu_embed_dim=16, imu_num_blocks=1, imu_num_heads=1,
)  # fmt: skip


@dataclass(frozen=True)
class AudioPreprocessConfig:
    """ImageBind's audio front end (``load_and_transform_audio_data`` defaults)."""

    sample_rate: int = 16_000
    num_mel_bins: int = 128
    target_length: int = 204  # frames per clip after padding/cutting
    clip_duration_s: float = 2.0
    clips_per_prompt: int = 3
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    mean: float = -4.268
    std: float = 9.138


@dataclass(frozen=True)
class ImageBindConfig:
    architecture: ImageBindArchitecture = IMAGEBIND_HUGE
    model_id: str = "imagebind_huge"  # key in anyto3d.priors.weights.PAPER_MODELS
    checkpoint_file: str = "imagebind_huge.pth"
    local_dir: str | None = None  # a directory holding checkpoint_file; else $ANYTO3D_WEIGHTS/<model_id>
    image_size: int = 224
    audio: AudioPreprocessConfig = field(default_factory=AudioPreprocessConfig)


# ---------------------------------------------------------------------------------------------
# Audio front end
# ---------------------------------------------------------------------------------------------


def clip_starts(duration_s: float, clip_duration_s: float = 2.0, clips: int = 3) -> list[float]:
    """Clip start times (s): ``k · max(duration − clip, 0) / clips`` for k < clips
    (pytorchvideo ``ConstantClipsPerVideoSampler`` as ImageBind uses it: always ``clips`` clips)."""
    step = max(duration_s - clip_duration_s, 0.0) / clips
    return [k * step for k in range(clips)]


def waveform_to_fbank(clip: torch.Tensor, cfg: AudioPreprocessConfig = AudioPreprocessConfig()) -> torch.Tensor:
    """One clip [N] at ``cfg.sample_rate`` -> normalised log-mel filterbank [1, mel bins, target frames]."""
    from torchaudio.compliance import kaldi

    x = clip.float().reshape(1, -1)
    x = x - x.mean()
    fbank = kaldi.fbank(
        x,
        htk_compat=True,
        sample_frequency=cfg.sample_rate,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=cfg.num_mel_bins,
        dither=0.0,
        frame_length=cfg.frame_length_ms,
        frame_shift=cfg.frame_shift_ms,
    ).transpose(0, 1)  # [mel, frames]
    pad = cfg.target_length - fbank.shape[1]
    fbank = F.pad(fbank, (0, pad)) if pad > 0 else fbank[:, : cfg.target_length]
    return ((fbank - cfg.mean) / cfg.std).unsqueeze(0)


def audio_clips(prompt: AudioPrompt, cfg: AudioPreprocessConfig = AudioPreprocessConfig()) -> torch.Tensor:
    """An audio prompt -> ImageBind's input for it: [clips, 1, mel bins, target frames]."""
    if prompt.sample_rate != cfg.sample_rate:
        raise InputError(
            f"audio is at {prompt.sample_rate} Hz; ImageBind needs {cfg.sample_rate} Hz "
            "(load it with anyto3d.modality.load_audio, which resamples)"
        )
    sr, wave = cfg.sample_rate, prompt.waveform
    starts = clip_starts(wave.shape[0] / sr, cfg.clip_duration_s, cfg.clips_per_prompt)
    clips = [waveform_to_fbank(wave[int(s * sr) : int((s + cfg.clip_duration_s) * sr)], cfg) for s in starts]
    return torch.stack(clips)


# ---------------------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------------------


class ImageBindEncoder(Encoder):
    """ImageBind's text, vision and audio towers behind the :class:`Encoder` interface."""

    modalities = ("text", "image", "audio")

    def __init__(self, model: torch.nn.Module, cfg: ImageBindConfig = ImageBindConfig()):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.freeze()

    # -- construction -------------------------------------------------------------------------
    @staticmethod
    def build_model(architecture: ImageBindArchitecture) -> torch.nn.Module:
        module = import_imagebind_module("models.imagebind_model")
        return module.ImageBindModel(**asdict(architecture))

    @classmethod
    def from_pretrained(cls, cfg: ImageBindConfig = ImageBindConfig()) -> "ImageBindEncoder":
        """Build the architecture and load the local checkpoint (``MissingWeightsError`` if absent)."""
        from anyto3d.priors.weights import resolve_weights

        directory = resolve_weights(cfg.model_id, [cfg.checkpoint_file], local_dir=cfg.local_dir)
        path = directory / cfg.checkpoint_file
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            try:  # memory-map: the huge checkpoint is 4.5 GB and need not be read twice
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
                state = torch.load(path, map_location="cpu", weights_only=True)
        model = cls.build_model(cfg.architecture)
        model.load_state_dict(state, strict=True)
        return cls(model, cfg)

    @classmethod
    def build_dummy(cls, seed: int = 0) -> "ImageBindEncoder":
        """A randomly initialised tiny ImageBind (same code paths, 32-d space) for tests."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = cls.build_model(IMAGEBIND_DUMMY)
        return cls(model, ImageBindConfig(architecture=IMAGEBIND_DUMMY))

    @classmethod
    def build_full_size(cls, device: str | torch.device = "cpu", seed: int = 0) -> "ImageBindEncoder":
        """``imagebind_huge`` with random weights, built on ``device`` directly (GPU figures of the
        paper-scale losses; :mod:`anyto3d.priors.architectures`)."""
        with torch.random.fork_rng(devices=[]), torch.device(device):
            torch.manual_seed(seed)
            model = cls.build_model(IMAGEBIND_HUGE)
        return cls(model, ImageBindConfig(architecture=IMAGEBIND_HUGE))

    # -- properties ---------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.cfg.architecture.out_embed_dim

    def logit_scale(self, modality: str) -> float:
        """The factor ImageBind multiplies a unit embedding of ``modality`` by (module docstring)."""
        post = self.model.modality_postprocessors[_IMAGEBIND_KEY[modality]]
        probe = torch.zeros(1, self.dim, device=self.device)
        probe[0, 0] = 1.0
        with torch.no_grad():
            return float(post(probe).norm())

    # -- towers -------------------------------------------------------------------------------
    def _head(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """Preprocessor -> trunk -> head of one ImageBind modality (its forward, minus post-processing)."""
        m = self.model
        out = m.modality_preprocessors[key](**{key: x})
        feats = m.modality_trunks[key](**out["trunk"])
        return m.modality_heads[key](feats, **out["head"])

    def _finish(self, key: str, head: torch.Tensor, groups: int, output: EmbeddingOutput) -> torch.Tensor:
        """Post-process ``head`` [B·groups, D] and average over groups (audio clips) -> [B, D]."""
        if output == "raw":
            z = head
        else:
            z = self.model.modality_postprocessors[key](head)
        z = z.view(-1, groups, z.shape[-1]).mean(dim=1)
        return F.normalize(z, dim=-1) if output == "unit" else z

    def _vision_input(self, rgb: torch.Tensor) -> torch.Tensor:
        x = clip_preprocess(rgb.to(self.device), self.cfg.image_size, CLIP_MEAN, CLIP_STD)
        return x.to(self.dtype)

    def embed_prompts(self, modality: str, prompts: list[Prompt], output: EmbeddingOutput = "unit") -> torch.Tensor:
        key = _IMAGEBIND_KEY[modality]
        if modality == "text":
            tokens = tokenize([p.text for p in prompts]).to(self.device)  # type: ignore[union-attr]
            return self._finish(key, self._head(key, tokens), 1, output)
        if modality == "image":
            # Images may differ in size: preprocess one by one to 224², then run as a batch.
            x = torch.cat([self._vision_input(p.rgb[None]) for p in prompts])  # type: ignore[union-attr]
            return self._finish(key, self._head(key, x), 1, output)
        clips = torch.stack([audio_clips(p, self.cfg.audio) for p in prompts])  # type: ignore[arg-type]
        clips = clips.to(self.device, self.dtype)
        s = clips.shape[1]
        return self._finish(key, self._head(key, clips.flatten(0, 1)), s, output)

    def embed(self, modality: str, data, output: EmbeddingOutput = "unit") -> torch.Tensor:  # type: ignore[override]
        """Embeddings [B, D]: unit vectors by default; ``output`` as in the module docstring."""
        if output == "unit":
            return super().embed(modality, data)
        if output not in ("imagebind", "raw"):
            raise ValueError(f"output must be 'unit', 'imagebind' or 'raw', got {output!r}")
        prompts = as_prompt_list(modality, data)
        with torch.no_grad():
            return self.embed_prompts(modality, prompts, output)

    def embed_image(self, rgb: torch.Tensor) -> torch.Tensor:
        """Unit vision embeddings [B, D] of renders [B, H, W, 3] in [0, 1]; differentiable."""
        z = self._finish("vision", self._head("vision", self._vision_input(rgb)), 1, "unit")
        return z.to(rgb.dtype)


__all__ = [
    "AudioPreprocessConfig",
    "IMAGEBIND_DUMMY",
    "IMAGEBIND_HUGE",
    "ImageBindArchitecture",
    "ImageBindConfig",
    "ImageBindEncoder",
    "audio_clips",
    "bpe_tokenizer",
    "clip_starts",
    "import_imagebind_module",
    "tokenize",
    "waveform_to_fbank",
]
