"""The tiny world's binder: text, image and audio in one aligned space (ImageBind's role).

Its image tower also plays CLIP's role in the MS loss, so :meth:`TinyBinder.embed_image` is
differentiable with respect to the pixels. Training (``anyto3d.zoo.train_encoders``) follows
ImageBind: image–text contrastive first (symmetric InfoNCE, learnable temperature, CLIP-style),
then the audio tower alone, aligned to the **frozen** image tower.

Towers (sizes in :class:`BinderConfig`; ``TEST_BINDER`` is a smaller preset for tests)
---------------------------------------------------------------------------------------
* **Image:** a plain CNN (four 3×3 convs, stride 2 from the second, GroupNorm + GELU) on 32²
  RGB, flattened 4×4 features → linear. Flattening (not global pooling) keeps *where* things
  are, which the world's left/right relations and an object's facing need. GroupNorm rather than
  BatchNorm, so an embedding does not depend on the other images in the batch (the MS loss
  embeds 4 views at a time). Input: any ``[B, H, W, 3]`` in [0, 1], resized and centre-cropped
  to 32² with :func:`~anyto3d.encoders.base.clip_preprocess` (mean/std 0.5).
* **Text:** a word-level tokenizer over the world's vocabulary (:func:`world_vocabulary`) and a
  2-layer pre-norm transformer, mean-pooled over the words. *Why words, not CLIP's BPE:* every
  caption the world makes is built from a closed set of words (templates, synonyms, distractor
  wording, view suffixes), so a word tokenizer is exact; CLIP's 49 408-token embedding table
  alone would be 6 M parameters at width 128, 30× the rest of the tower. Unknown words map to
  ``<unk>`` (a prompt from outside the world still embeds, to whatever its known words say).
  A transformer, not a bag of words: "a red cone on a blue cube" and "a blue cone on a red
  cube" have the same words.
* **Audio:** a log-frequency spectrogram (STFT with a 256-ms Hann window and 20-ms hop; 24
  triangular filters per octave from 110 Hz, :func:`log_frequency_filterbank`; log, standardised
  per clip) of the first 4 s, then a harmonic stack and a salience-pooled note reader
  (:class:`AudioTower`). *Why log frequency:* the world's audio says colour by pitch and shape by
  timbre (:mod:`anyto3d.zoo.audio`); on a log axis a timbre is the same pattern at every pitch,
  so a shape heard at a colour it was never paired with in training is still recognised. The
  first tower (1-D convs over time with 128 mel bins as channels) learnt each training shape ×
  colour as its own pattern: held-out audio→image top-1 0.44, 0.30 on single objects. *Why not
  ImageBind's fbank* (:func:`anyto3d.encoders.imagebind.waveform_to_fbank`: 25-ms window, 128
  bins up to 8 kHz): its frequency resolution (≈ 40 Hz) is coarser than the world's closest
  notes (E4/F4, 19.6 Hz apart, ±1 % pitch jitter), which carry the colour. Per-clip
  standardisation removes the random loudness. The 4-s window holds every clip (2–4 s) and at
  least two periods of each composition rhythm (≤ 1.25 s).

Embeddings are unit vectors of ``dim`` (128). Weights: ``save_pretrained(dir)`` writes
``config.json`` (architecture + vocabulary) and ``model.safetensors``; ``from_pretrained(dir)``
reads them back frozen.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from anyto3d.encoders.base import Encoder, clip_preprocess
from anyto3d.errors import InputError
from anyto3d.modality import AudioPrompt, Prompt, TextPrompt
from anyto3d.module_io import CONFIG_NAME, WEIGHTS_NAME, load_module, save_module

FORMAT = "anyto3d.zoo.binder/1"
PAD, UNK = "<pad>", "<unk>"
_WORD = re.compile(r"[a-z0-9]+")


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioFrontConfig:
    """Log-frequency front end of the audio tower (module docstring)."""

    sample_rate: int = 16_000
    n_fft: int = 4096  # 256 ms: 3.9-Hz bins, finer than the lowest filters' spacing
    hop_length: int = 320  # 20 ms
    bins_per_octave: int = 24  # quarter tones: the closest notes (E4/F4) are two bins apart
    f_min: float = 110.0  # A2, below the lowest drone (half of C4, 131 Hz)
    fundamental_max: float = 600.0  # above the highest note (C5 + 1 % jitter)
    harmonics: int = 8  # the timbres use harmonics 1..8
    clip_seconds: float = 4.0

    @property
    def frames(self) -> int:
        return int(self.clip_seconds * self.sample_rate) // self.hop_length + 1

    @property
    def fundamental_bins(self) -> int:
        """Bins from ``f_min`` up to ``fundamental_max``: the positions a note's pitch can take."""
        return math.ceil(self.bins_per_octave * math.log2(self.fundamental_max / self.f_min))

    def harmonic_offsets(self) -> list[int]:
        """Bin offset of harmonic h = 1..harmonics above its fundamental."""
        return [round(self.bins_per_octave * math.log2(h)) for h in range(1, self.harmonics + 1)]

    @property
    def bins(self) -> int:
        """Spectrum bins: every harmonic of every fundamental position."""
        return self.fundamental_bins + self.harmonic_offsets()[-1]


@dataclass(frozen=True)
class BinderConfig:
    dim: int = 128
    image_size: int = 32
    image_channels: tuple[int, ...] = (32, 64, 128, 128)
    text_width: int = 128
    text_layers: int = 2
    text_heads: int = 4
    max_words: int = 48
    audio_channels: int = 128
    audio: AudioFrontConfig = field(default_factory=AudioFrontConfig)
    init_temperature: float = 0.07  # CLIP's initial τ; logit scale 1/τ, learnt, clipped at 100
    vocabulary: tuple[str, ...] = ()  # empty: world_vocabulary()


TEST_BINDER = BinderConfig(dim=64, image_channels=(16, 32, 64, 64), text_width=64, audio_channels=64)


def world_vocabulary() -> tuple[str, ...]:
    """Every word the world's captions use (templates, synonyms, wrappers, view suffixes), sorted,
    after ``<pad>`` and ``<unk>``."""
    from anyto3d.zoo import captions as C
    from anyto3d.zoo.world import FACINGS

    texts: list[str] = ["a an the view", *FACINGS]
    for table in (C.SHAPE_WORDS, C.COLOR_WORDS, C.DETAIL_PHRASES, C.RELATION_TEMPLATES):
        for options in table.values():
            texts.extend(options)
    texts += [*C.TILT_ADJECTIVES, *C.TILT_PHRASES, *C.PREFIXES, *C.SUFFIXES]
    words = sorted({w for t in texts for w in split_words(t.replace("{a}", " ").replace("{b}", " ").replace("{s}", " "))})
    return (PAD, UNK, *words)


def split_words(text: str) -> list[str]:
    """Lower-case alphanumeric runs: "An L-shaped block, 4k" -> [an, l, shaped, block, 4k]."""
    return _WORD.findall(text.lower())


class WordTokenizer:
    """Words -> ids over a fixed vocabulary; pads to the longest prompt of a batch."""

    def __init__(self, vocabulary: tuple[str, ...], max_words: int):
        if len(vocabulary) < 3 or vocabulary[0] != PAD or vocabulary[1] != UNK:
            raise InputError("a binder vocabulary starts with '<pad>', '<unk>' and has words after them")
        self.vocabulary = tuple(vocabulary)
        self.ids = {w: i for i, w in enumerate(self.vocabulary)}
        self.max_words = max_words

    def __len__(self) -> int:
        return len(self.vocabulary)

    def encode(self, texts: list[str]) -> torch.Tensor:
        """[B, L] int64 ids, 0 = padding. A text with no words or more than ``max_words`` is an error."""
        rows = []
        for text in texts:
            words = split_words(text)
            if not words:
                raise InputError(f"text prompt {text!r} has no words the binder can read")
            if len(words) > self.max_words:
                raise InputError(
                    f"text prompt has {len(words)} words; the tiny binder reads at most {self.max_words}: shorten it"
                )
            rows.append([self.ids.get(w, 1) for w in words])
        out = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r)
        return out


# ---------------------------------------------------------------------------------------------
# Towers
# ---------------------------------------------------------------------------------------------


def _groups(channels: int) -> int:
    return math.gcd(8, channels)


class ImageTower(nn.Module):
    """[B, 3, S, S] normalised -> [B, dim] (not normalised)."""

    def __init__(self, cfg: BinderConfig):
        super().__init__()
        layers, c_in = [], 3
        for k, c in enumerate(cfg.image_channels):
            layers += [nn.Conv2d(c_in, c, 3, stride=1 if k == 0 else 2, padding=1), nn.GroupNorm(_groups(c), c), nn.GELU()]
            c_in = c
        self.features = nn.Sequential(*layers)
        side = cfg.image_size // 2 ** (len(cfg.image_channels) - 1)
        self.project = nn.Linear(c_in * side * side, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.features(x).flatten(1))


class TextTower(nn.Module):
    """[B, L] word ids (0 = pad) -> [B, dim]."""

    def __init__(self, cfg: BinderConfig, vocab_size: int):
        super().__init__()
        w = cfg.text_width
        self.words = nn.Embedding(vocab_size, w, padding_idx=0)
        self.positions = nn.Parameter(torch.randn(cfg.max_words, w) * 0.02)
        layer = nn.TransformerEncoderLayer(w, cfg.text_heads, 2 * w, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)  # fmt: skip
        self.blocks = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(w)
        self.project = nn.Linear(w, cfg.dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == 0
        x = self.words(ids) + self.positions[: ids.shape[1]]
        x = self.norm(self.blocks(x, src_key_padding_mask=pad))
        keep = (~pad).unsqueeze(-1).to(x.dtype)
        return self.project((x * keep).sum(1) / keep.sum(1).clamp_min(1.0))


class AudioTower(nn.Module):
    """[B, bins, T] standardised log-frequency spectrogram -> [B, dim] (module docstring).

    1. **Harmonic stack** (Bittner et al.'s HCQT idea): channel h at bin f holds the energy at
       h × f, so a note's timbre is one vector at its fundamental's bin, the same at any pitch.
    2. 2-D convs over (bin, time), small in frequency (pitch jitter) and strided in time.
    3. Per time step, a softmax over bins (a learnt salience on top of harmonic summation)
       picks the note: the features there are its timbre, a learnt table read there is its
       pitch; a max over bins keeps quieter parts (the drone). So timbre and pitch arrive as separate inputs, and a shape's
       timbre heard at a colour's pitch never seen with it in training is still that timbre.
    4. 1-D convs over time (the rhythm of a composition), mean+max pooled, linear to ``dim``.
    """

    def __init__(self, cfg: BinderConfig):
        super().__init__()
        front, c = cfg.audio, cfg.audio_channels
        self.offsets = tuple(front.harmonic_offsets())
        self.n_fund = front.fundamental_bins
        h = front.harmonics
        self.notes = nn.Sequential(
            nn.Conv2d(h, c // 4, 3, stride=(1, 2), padding=1), nn.GroupNorm(_groups(c // 4), c // 4), nn.GELU(),
            nn.Conv2d(c // 4, c // 2, (3, 3), stride=(1, 2), padding=1), nn.GroupNorm(_groups(c // 2), c // 2), nn.GELU(),
            nn.Conv2d(c // 2, c // 2, (1, 3), stride=(1, 2), padding=(0, 1)), nn.GroupNorm(_groups(c // 2), c // 2), nn.GELU(),
        )  # fmt: skip  # 20 ms -> 160 ms per step
        self.salience = nn.Conv2d(c // 2, 1, 1)
        # Harmonic summation (the classic pitch detector) as the salience's starting point: the
        # bin whose harmonics are loud is the note, before any of the convs has learnt anything.
        self.summation_gain = nn.Parameter(torch.tensor(2.0))
        self.pitch = nn.Parameter(torch.randn(self.n_fund, c // 4) * 0.1)
        width = c // 2 + c // 4 + c // 2
        self.rhythm = nn.Sequential(
            nn.Conv1d(width, c, 5, padding=2), nn.GroupNorm(_groups(c), c), nn.GELU(),
            nn.Conv1d(c, c, 5, padding=2), nn.GroupNorm(_groups(c), c), nn.GELU(),
        )  # fmt: skip
        self.project = nn.Linear(2 * c, cfg.dim)

    def harmonic_stack(self, spec: torch.Tensor) -> torch.Tensor:
        """[B, bins, T] -> [B, harmonics, fundamental_bins, T]."""
        return torch.stack([spec[:, o : o + self.n_fund] for o in self.offsets], dim=1)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        stack = self.harmonic_stack(spec)
        x = self.notes(stack)  # [B, C, F, T']
        summed = F.adaptive_avg_pool1d(stack.mean(dim=1), x.shape[-1])  # [B, F, T']
        where = (self.salience(x).squeeze(1) + self.summation_gain * summed).softmax(dim=1)  # which bin holds the note
        timbre = torch.einsum("bcft,bft->bct", x, where)
        pitch = torch.einsum("fk,bft->bkt", self.pitch, where)
        h = self.rhythm(torch.cat([timbre, pitch, x.amax(dim=2)], dim=1))
        return self.project(torch.cat([h.mean(-1), h.amax(-1)], dim=-1))


class LogMel(nn.Module):
    """Waveforms [B, N] at 16 kHz -> standardised log power [B, bins, frames] of the first
    ``clip_seconds`` (zero-padded), on a log-frequency axis: ``bins_per_octave`` triangular
    filters per octave from ``f_min`` (a constant-Q filterbank over an STFT), so a harmonic
    series has the same shape at every pitch. (The name is historical: mel is what it was.)"""

    def __init__(self, cfg: AudioFrontConfig):
        super().__init__()
        import torchaudio

        self.cfg = cfg
        self.power = torchaudio.transforms.Spectrogram(n_fft=cfg.n_fft, hop_length=cfg.hop_length, power=2.0)
        self.register_buffer("fbank", log_frequency_filterbank(cfg), persistent=False)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        n = int(self.cfg.clip_seconds * self.cfg.sample_rate)
        waves = waves[:, :n]
        waves = F.pad(waves, (0, n - waves.shape[1]))
        spec = torch.einsum("kf,bft->bkt", self.fbank, self.power(waves.float()))
        logspec = torch.log(spec + 1e-6)
        mean = logspec.mean(dim=(1, 2), keepdim=True)
        std = logspec.std(dim=(1, 2), keepdim=True).clamp_min(1e-3)
        return (logspec - mean) / std


def log_frequency_filterbank(cfg: AudioFrontConfig) -> torch.Tensor:
    """[bins, n_fft // 2 + 1] triangular filters, centre k at ``f_min · 2^(k / bins_per_octave)``,
    each falling to zero at its neighbours' centres (in log frequency), normalised to unit sum."""
    freqs = torch.linspace(0, cfg.sample_rate / 2, cfg.n_fft // 2 + 1, dtype=torch.float64)
    centres = cfg.f_min * 2.0 ** (torch.arange(cfg.bins, dtype=torch.float64) / cfg.bins_per_octave)
    octaves = torch.log2(freqs.clamp_min(1e-3))[None, :] - torch.log2(centres)[:, None]
    weights = (1 - (octaves * cfg.bins_per_octave).abs()).clamp_min(0)
    if bool((weights.sum(1) == 0).any()):
        raise InputError(f"n_fft {cfg.n_fft} is too small for {cfg.bins_per_octave} bins per octave from {cfg.f_min} Hz")
    return (weights / weights.sum(1, keepdim=True)).float()


def waveforms_to_logmel(waves: list[torch.Tensor], front: LogMel) -> torch.Tensor:
    """A list of mono waveforms of any length -> [B, bins, frames]."""
    n = int(front.cfg.clip_seconds * front.cfg.sample_rate)
    batch = torch.zeros(len(waves), n)
    for i, w in enumerate(waves):
        w = w.reshape(-1)[:n]
        batch[i, : w.shape[0]] = w
    with torch.no_grad():
        return front(batch)


# ---------------------------------------------------------------------------------------------
# The binder
# ---------------------------------------------------------------------------------------------


class TinyBinder(Encoder):
    """Text, image and audio towers into one ``dim``-d space (module docstring)."""

    modalities = ("text", "image", "audio")

    def __init__(self, cfg: BinderConfig = BinderConfig()):
        super().__init__()
        vocabulary = cfg.vocabulary or world_vocabulary()
        self.cfg = BinderConfig(**{**asdict(cfg), "audio": cfg.audio, "vocabulary": tuple(vocabulary)})
        self.tokenizer = WordTokenizer(self.cfg.vocabulary, cfg.max_words)
        self.image_tower = ImageTower(cfg)
        self.text_tower = TextTower(cfg, len(self.tokenizer))
        self.audio_tower = AudioTower(cfg)
        self.logmel = LogMel(cfg.audio)
        init = math.log(1.0 / cfg.init_temperature)
        self.log_scale_text = nn.Parameter(torch.tensor(init))  # image–text temperature
        self.log_scale_audio = nn.Parameter(torch.tensor(init))  # audio–image temperature

    @property
    def dim(self) -> int:
        return self.cfg.dim

    # --- differentiable towers (training and the MS loss) ------------------------------------

    def image_features(self, rgb: torch.Tensor) -> torch.Tensor:
        """Unnormalised [B, dim] of images [B, H, W, 3] in [0, 1] (any size; resized to 32²)."""
        if rgb.dim() != 4 or rgb.shape[-1] != 3:
            raise InputError(f"images must be [B, H, W, 3] in [0, 1], got {tuple(rgb.shape)}")
        x = clip_preprocess(rgb.to(self.device, self.dtype), self.cfg.image_size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        return self.image_tower(x)

    def embed_image(self, rgb: torch.Tensor) -> torch.Tensor:
        """Unit [B, dim] of rendered images [B, H, W, 3] in [0, 1]; differentiable w.r.t. ``rgb``."""
        return F.normalize(self.image_features(rgb), dim=-1)

    def text_features(self, texts: list[str]) -> torch.Tensor:
        return self.text_tower(self.tokenizer.encode(texts).to(self.device))

    def audio_features(self, logmel: torch.Tensor) -> torch.Tensor:
        """Unnormalised [B, dim] of spectrogram batches from :class:`LogMel`."""
        return self.audio_tower(logmel.to(self.device, self.dtype))

    def logit_scale(self, which: str) -> torch.Tensor:
        """exp(learnt log scale) clipped at 100, as CLIP (``which``: "text" or "audio")."""
        raw = self.log_scale_text if which == "text" else self.log_scale_audio
        return raw.exp().clamp(max=100.0)

    # --- the Encoder interface -----------------------------------------------------------------

    def embed_prompts(self, modality: str, prompts: list[Prompt]) -> torch.Tensor:
        if modality == "text":
            return self.text_features([p.text for p in prompts])  # type: ignore[union-attr]
        if modality == "image":
            size = (self.cfg.image_size, self.cfg.image_size)
            rgb = [_resize(p.rgb, size) for p in prompts]  # type: ignore[union-attr]
            return self.image_features(torch.stack(rgb).to(self.device))
        sr = self.cfg.audio.sample_rate
        for p in prompts:
            if p.sample_rate != sr:  # type: ignore[union-attr]
                raise InputError(f"audio is at {p.sample_rate} Hz; the binder needs {sr} Hz (load it with anyto3d.modality.load_audio)")  # type: ignore[union-attr]
        return self.audio_features(waveforms_to_logmel([p.waveform for p in prompts], self.logmel))  # type: ignore[union-attr]

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Convenience: unit [B, dim] of raw strings (no prompt validation; training/evaluation)."""
        return self.embed("text", [TextPrompt(t) for t in texts])

    def embed_waveforms(self, waves: list) -> torch.Tensor:
        """Convenience: unit [B, dim] of 16 kHz mono waveforms (numpy or torch)."""
        return self.embed("audio", [AudioPrompt(torch.as_tensor(w, dtype=torch.float32)) for w in waves])

    # --- weights -------------------------------------------------------------------------------

    def save_pretrained(self, directory) -> Path:
        # The log-mel filterbank is derived from the config, so it is not saved.
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("logmel.")}
        return save_module(directory, {"format": FORMAT, "config": _config_to_json(self.cfg)}, state, indent=1)

    @classmethod
    def from_pretrained(cls, directory) -> TinyBinder:
        meta, state = load_module(
            directory, "tiny binder weights", "train them with `python -m anyto3d.zoo.train_encoders binder --data D --out O`"
        )
        if meta.get("format") != FORMAT:
            raise InputError(f"{directory}/{CONFIG_NAME} has format {meta.get('format')!r}, expected {FORMAT!r}")
        model = cls(_config_from_json(meta["config"]))
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("logmel.")]
        if missing or unexpected:
            raise InputError(f"{directory}/{WEIGHTS_NAME} does not match its config: missing {missing}, unexpected {unexpected}")
        return model.freeze()


def _resize(rgb: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    x = rgb.permute(2, 0, 1).unsqueeze(0).float()
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x[0].permute(1, 2, 0).clamp(0, 1)


def _config_to_json(cfg: BinderConfig) -> dict:
    d = asdict(cfg)
    d["image_channels"] = list(cfg.image_channels)
    d["vocabulary"] = list(cfg.vocabulary)
    return d


def _config_from_json(d: dict) -> BinderConfig:
    d = dict(d)
    known = {f.name for f in fields(AudioFrontConfig)}
    if set(d["audio"]) - known:  # the log-mel front of binders trained before the log-frequency one
        raise InputError(f"this binder's audio front end ({sorted(set(d['audio']) - known)}) is an older format; retrain it")
    d["audio"] = AudioFrontConfig(**d["audio"])
    d["image_channels"] = tuple(d["image_channels"])
    d["vocabulary"] = tuple(d["vocabulary"])
    return BinderConfig(**d)


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP; ImageBind's Eq. 1 in both directions): row i of ``a`` and row i
    of ``b`` are a positive pair, every other row a negative.

    L = ½ [CE(s·â b̂ᵀ, I) + CE(s·b̂ âᵀ, I)] with â, b̂ the unit rows and s the logit scale (1/τ).
    """
    if a.shape != b.shape or a.dim() != 2:
        raise InputError(f"contrastive_loss needs two [B, D] batches of one shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    logits = logit_scale * F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


__all__ = [
    "TEST_BINDER",
    "AudioFrontConfig",
    "BinderConfig",
    "LogMel",
    "TinyBinder",
    "WordTokenizer",
    "contrastive_loss",
    "split_words",
    "waveforms_to_logmel",
    "world_vocabulary",
]
