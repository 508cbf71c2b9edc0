"""Prompt loading: text, image and audio inputs, validated, as typed data (DESIGN §3 "Encoder").

Loading is separate from embedding: this module turns a string or a file into a
:class:`TextPrompt`, :class:`ImagePrompt` or :class:`AudioPrompt` and owns *all* input
validation, so every encoder can assume well-formed data. Each bad input raises one
:class:`~anyto3d.errors.InputError` whose message names the file (or text) and what is wrong.

Decisions (all configurable in the ``*LoadConfig`` dataclasses):

* **Text.** Whitespace runs are collapsed; tab/newline/carriage return count as whitespace.
  Any other control character (Unicode category Cc, e.g. NUL or ESC) is rejected. The CLIP/ImageBind
  BPE tokenizer has a 77-token context of which 2 are the start/end markers, so a prompt of
  more than 75 BPE tokens is rejected instead of being silently truncated.
* **Images.** Any size from 8×8 px up to Pillow's decompression-bomb limit; RGB, RGBA, grey,
  grey+alpha, palette (with or without transparency), 1-bit, 16-bit and 32-bit grey, CMYK/YCbCr;
  EXIF orientation applied; animated files use their first frame. The foreground mask comes
  from the alpha channel when the image has any transparency; otherwise the background colour
  is estimated from the border (median of a 2 % frame), and the background is every pixel
  within ``background_tolerance`` of it that is connected to the border (so object pixels of
  the background colour inside the silhouette stay foreground). Foreground specks smaller than
  1 % of the largest foreground component (JPEG noise) are dropped. ``ImagePrompt.rgb`` is
  composited onto white where the mask is below 1, so it is defined everywhere.
* **Audio.** Formats libsndfile reads (wav, flac, ogg/vorbis/opus, mp3, aiff), chosen by the
  file extension. Channels are averaged to mono; the sample rate is converted to 16 kHz with a
  windowed-sinc anti-aliased resampler (``torchaudio.functional.resample``, the one ImageBind's
  own loader uses). **Too short:** under 0.5 s — ImageBind embeds 2-s clips, so a shorter input
  would be more than 75 % zero padding. **Silent:** no 100-ms window reaches −60 dBFS RMS (a
  real recording, even a quiet one, does; 16-bit dither sits near −96 dBFS). **Too long:** over
  10 min (ImageBind looks at three 2-s clips; hours of audio would only cost memory).
"""

from __future__ import annotations

import math
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Literal, Union

import numpy as np
import torch

from anyto3d.errors import InputError

TARGET_SAMPLE_RATE = 16_000
#: CLIP/ImageBind BPE context: 77 tokens including the start and end markers.
TEXT_CONTEXT_TOKENS = 77

PromptKind = Literal["text", "image", "audio", "auto"]


# ---------------------------------------------------------------------------------------------
# Prompt data types
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextPrompt:
    """A validated text prompt (whitespace collapsed)."""

    text: str
    modality: ClassVar[str] = "text"


@dataclass
class ImagePrompt:
    """A validated image prompt.

    ``rgb`` is ``[H, W, 3]`` float32 in [0, 1], composited onto white where ``mask`` < 1;
    ``mask`` is ``[H, W, 1]`` float32 in [0, 1] (soft when it comes from an alpha channel).
    """

    rgb: torch.Tensor
    mask: torch.Tensor
    modality: ClassVar[str] = "image"

    def __post_init__(self):
        if self.rgb.dim() != 3 or self.rgb.shape[-1] != 3:
            raise InputError(f"ImagePrompt.rgb must be [H, W, 3], got {tuple(self.rgb.shape)}")
        if self.mask.shape != (*self.rgb.shape[:2], 1):
            raise InputError(f"ImagePrompt.mask must be [H, W, 1] matching rgb, got {tuple(self.mask.shape)}")

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[0], self.rgb.shape[1]


@dataclass
class AudioPrompt:
    """A validated audio prompt: mono ``waveform`` [N] float32 at ``sample_rate`` (16 kHz)."""

    waveform: torch.Tensor
    sample_rate: int = TARGET_SAMPLE_RATE
    modality: ClassVar[str] = "audio"

    def __post_init__(self):
        if self.waveform.dim() != 1:
            raise InputError(f"AudioPrompt.waveform must be mono [N], got {tuple(self.waveform.shape)}")

    @property
    def duration(self) -> float:
        return self.waveform.shape[0] / self.sample_rate


Prompt = Union[TextPrompt, ImagePrompt, AudioPrompt]


# ---------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextLoadConfig:
    max_tokens: int = TEXT_CONTEXT_TOKENS  # including the start/end markers


_ALLOWED_CONTROL = {"\t", "\n", "\r"}


def default_token_counter(text: str) -> int:
    """Number of BPE tokens of ``text`` with ImageBind's (= CLIP's) tokenizer, markers excluded."""
    from anyto3d.encoders.imagebind import bpe_tokenizer  # lazy: the tokenizer import is slow

    return len(bpe_tokenizer().encode(text))


def validate_text(
    text: str, cfg: TextLoadConfig = TextLoadConfig(), token_counter: Callable[[str], int] | None = None
) -> TextPrompt:
    """Check a text prompt and return it as a :class:`TextPrompt` (see module docstring)."""
    if not isinstance(text, str):
        raise InputError(f"a text prompt must be a string, got {type(text).__name__}")
    for position, char in enumerate(text):
        if unicodedata.category(char) == "Cc" and char not in _ALLOWED_CONTROL:
            raise InputError(
                f"text prompt contains the control character U+{ord(char):04X} at position {position}; "
                "remove it (only tab and newline are accepted, as spaces)"
            )
    cleaned = " ".join(text.split())
    if not cleaned:
        raise InputError("text prompt is empty (or only whitespace)")
    counter = token_counter or default_token_counter
    n_tokens = counter(cleaned)
    budget = cfg.max_tokens - 2
    if n_tokens > budget:
        raise InputError(
            f"text prompt is too long: {n_tokens} tokens, but the tokenizer's context is "
            f"{cfg.max_tokens} tokens ({budget} after the start/end markers); shorten it"
        )
    return TextPrompt(cleaned)


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageLoadConfig:
    """How an image becomes an :class:`ImagePrompt` (module docstring)."""

    min_side: int = 8
    border_fraction: float = 0.02  # width of the frame the background colour is estimated from
    background_tolerance: float = 0.1  # max per-channel distance (in [0,1]) to count as background
    plain_border_fraction: float = 0.9  # share of border pixels that must match the background
    min_foreground_fraction: float = 1e-3  # fewer foreground pixels than this means "no object"
    speck_fraction: float = 0.01  # drop foreground components below this share of the largest
    busy_background: Literal["error", "full_frame"] = "error"  # border not plain and no alpha


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise InputError(f"{what} file not found: {path}")
    if not path.is_file():
        raise InputError(f"{what} path is not a file: {path}")
    if path.stat().st_size == 0:
        raise InputError(f"{what} file is empty (0 bytes): {path}")


def _pil_to_arrays(image) -> tuple[np.ndarray, np.ndarray | None]:
    """A Pillow image of any mode -> (rgb [H,W,3] float in [0,1], alpha [H,W] or None)."""
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        grey = np.asarray(image, dtype=np.float64)
        # 16-bit files arrive as I;16 or I (values up to 65535); float images are taken as [0,1].
        grey = grey / 65535.0 if mode != "F" else grey
        grey = np.clip(grey, 0.0, 1.0)
        return np.repeat(grey[..., None], 3, axis=-1), None
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    elif mode in ("1", "L"):
        image = image.convert("RGB")
    elif mode in ("LA", "La", "RGBa"):
        image = image.convert("RGBA")
    elif mode not in ("RGB", "RGBA"):
        image = image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...
    data = np.asarray(image, dtype=np.float64) / 255.0
    if data.shape[-1] == 4:
        return data[..., :3], data[..., 3]
    return data, None


def _read_image(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()  # decode now: truncated data fails here, not later
                image = ImageOps.exif_transpose(image)
                return _pil_to_arrays(image)
    except UnidentifiedImageError:
        raise InputError(f"not a readable image (format not recognised): {path}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise InputError(f"image is too large to load safely: {path} ({err})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise InputError(f"image file is truncated or corrupt: {path} ({err})") from None


def estimate_background_color(rgb: np.ndarray, border_fraction: float = 0.02, tolerance: float = 0.1):
    """Background colour from the image border: (median colour [3], share of border pixels within
    ``tolerance`` of it). A share near 1 means the background is plain."""
    h, w = rgb.shape[:2]
    b = max(1, int(round(border_fraction * min(h, w))))
    frame = np.concatenate(
        [rgb[:b].reshape(-1, 3), rgb[-b:].reshape(-1, 3), rgb[:, :b].reshape(-1, 3), rgb[:, -b:].reshape(-1, 3)]
    )
    color = np.median(frame, axis=0)
    plain = float((np.abs(frame - color).max(axis=-1) <= tolerance).mean())
    return color, plain


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    from scipy import ndimage

    return ndimage.label(mask)  # 4-connectivity


def foreground_from_background(rgb: np.ndarray, background: np.ndarray, tolerance: float = 0.1) -> np.ndarray:
    """Boolean foreground [H, W]: everything except background-coloured pixels connected to the border."""
    similar = np.abs(rgb - np.asarray(background)[None, None]).max(axis=-1) <= tolerance
    labels, _ = _components(similar)
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    border_ids = np.unique(edge[edge > 0])
    return ~np.isin(labels, border_ids) if border_ids.size else np.ones_like(similar)


def drop_small_components(mask: np.ndarray, min_fraction_of_largest: float) -> np.ndarray:
    """Remove foreground components smaller than a share of the largest one."""
    labels, n = _components(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(sizes >= min_fraction_of_largest * sizes.max()) + 1
    return np.isin(labels, keep)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep only the largest foreground component (holes inside it filled)."""
    from scipy import ndimage

    labels, n = _components(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return ndimage.binary_fill_holes(labels == (int(np.argmax(sizes)) + 1))


def _as_array(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)


def image_prompt_from_arrays(
    rgb: np.ndarray | torch.Tensor,
    alpha: np.ndarray | torch.Tensor | None = None,
    cfg: ImageLoadConfig = ImageLoadConfig(),
    source: str = "image",
) -> ImagePrompt:
    """Validate an in-memory image (``rgb`` [H,W,3] in [0,1], optional ``alpha`` [H,W]) and mask it."""
    rgb = _as_array(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise InputError(f"{source}: expected an [H, W, 3] image, got shape {rgb.shape}")
    h, w = rgb.shape[:2]
    if min(h, w) < cfg.min_side:
        raise InputError(f"{source}: image is {w}x{h} px; at least {cfg.min_side}x{cfg.min_side} is needed")
    if not np.isfinite(rgb).all():
        raise InputError(f"{source}: image contains NaN or infinite values")
    rgb = np.clip(rgb, 0.0, 1.0)
    if alpha is not None:
        alpha = np.clip(_as_array(alpha), 0.0, 1.0)
        if alpha.shape != (h, w):
            raise InputError(f"{source}: alpha has shape {alpha.shape}, expected {(h, w)}")
    if alpha is not None and alpha.min() < 1.0 - 1e-6:
        mask = alpha
    else:
        background, plain = estimate_background_color(rgb, cfg.border_fraction, cfg.background_tolerance)
        if plain < cfg.plain_border_fraction:
            if cfg.busy_background == "error":
                raise InputError(
                    f"{source}: the image has no transparency and its border is not a plain colour "
                    f"({plain:.0%} of border pixels match), so the object cannot be separated from the "
                    "background; give an RGBA image with a transparent background, or an object on a plain one"
                )
            mask = np.ones((h, w))
        else:
            fg = foreground_from_background(rgb, background, cfg.background_tolerance)
            mask = drop_small_components(fg, cfg.speck_fraction).astype(np.float64)
    if (mask > 0.5).sum() < max(1.0, cfg.min_foreground_fraction * h * w):
        raise InputError(
            f"{source}: no foreground found (the image is entirely transparent or a single plain colour)"
        )
    composited = rgb * mask[..., None] + (1.0 - mask[..., None])
    return ImagePrompt(
        torch.from_numpy(composited).float(), torch.from_numpy(mask[..., None]).float().contiguous()
    )


def load_image(path: str | Path, cfg: ImageLoadConfig = ImageLoadConfig()) -> ImagePrompt:
    """Read an image file and return it with its foreground mask (module docstring)."""
    path = Path(path)
    _check_file(path, "image")
    rgb, alpha = _read_image(path)
    return image_prompt_from_arrays(rgb, alpha, cfg, source=str(path))


# ---------------------------------------------------------------------------------------------
# Audio
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioLoadConfig:
    """How an audio file becomes an :class:`AudioPrompt` (module docstring)."""

    sample_rate: int = TARGET_SAMPLE_RATE
    min_duration_s: float = 0.5
    max_duration_s: float = 600.0
    silence_dbfs: float = -60.0
    silence_window_s: float = 0.1
    extensions: tuple[str, ...] = field(
        default=(".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff")
    )


def resample(waveform: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Anti-aliased (windowed-sinc) sample-rate conversion of a [..., N] float waveform."""
    if orig_rate == new_rate:
        return waveform
    import torchaudio.functional as AF

    g = math.gcd(int(orig_rate), int(new_rate))
    return AF.resample(waveform, int(orig_rate) // g, int(new_rate) // g)


def loudest_window_dbfs(waveform: torch.Tensor, sample_rate: int, window_s: float = 0.1) -> float:
    """RMS level (dBFS, full scale = 1.0) of the loudest non-overlapping ``window_s`` window."""
    n = max(1, int(round(window_s * sample_rate)))
    x = waveform.double()
    if x.shape[0] < n:
        rms = x.pow(2).mean().sqrt()
    else:
        usable = (x.shape[0] // n) * n
        rms = x[:usable].view(-1, n).pow(2).mean(dim=1).sqrt().max()
    return float(20.0 * torch.log10(rms.clamp_min(1e-12)))


def audio_prompt_from_waveform(
    waveform: np.ndarray | torch.Tensor,
    sample_rate: int,
    cfg: AudioLoadConfig = AudioLoadConfig(),
    source: str = "audio",
) -> AudioPrompt:
    """Validate an in-memory waveform, mix to mono and resample.

    ``waveform`` is [N], [N, channels] (soundfile's layout) or [channels, N] (torchaudio's): the
    shorter axis, if it has at most 8 entries, is taken as the channels.
    """
    x = torch.as_tensor(np.asarray(waveform) if not isinstance(waveform, torch.Tensor) else waveform)
    x = x.detach().to(torch.float32).cpu()
    if x.dim() == 2:
        channel_axis = 1 if x.shape[1] <= x.shape[0] else 0
        if x.shape[channel_axis] > 8:
            raise InputError(f"{source}: cannot tell samples from channels in audio of shape {tuple(x.shape)}")
        x = x.mean(dim=channel_axis)
    if x.dim() != 1:
        raise InputError(f"{source}: expected audio of shape [N] or [N, channels], got {tuple(x.shape)}")
    if sample_rate <= 0:
        raise InputError(f"{source}: invalid sample rate {sample_rate}")
    if not torch.isfinite(x).all():
        raise InputError(f"{source}: audio contains NaN or infinite samples")
    duration = x.shape[0] / sample_rate
    if duration < cfg.min_duration_s:
        raise InputError(
            f"{source}: audio is too short ({duration:.2f} s); at least {cfg.min_duration_s} s is needed "
            "(ImageBind embeds 2-s clips)"
        )
    if duration > cfg.max_duration_s:
        raise InputError(f"{source}: audio is too long ({duration:.0f} s); at most {cfg.max_duration_s:.0f} s")
    x = resample(x, sample_rate, cfg.sample_rate).contiguous()
    level = loudest_window_dbfs(x, cfg.sample_rate, cfg.silence_window_s)
    if level < cfg.silence_dbfs:
        raise InputError(
            f"{source}: audio is silent (loudest {cfg.silence_window_s:g}-s window is {level:.0f} dBFS, "
            f"below the {cfg.silence_dbfs:.0f} dBFS threshold)"
        )
    return AudioPrompt(x, cfg.sample_rate)


def load_audio(path: str | Path, cfg: AudioLoadConfig = AudioLoadConfig()) -> AudioPrompt:
    """Read an audio file (wav/flac/ogg/...) and return 16-kHz mono float32 (module docstring)."""
    import soundfile as sf

    path = Path(path)
    ext = path.suffix.lower()
    if ext not in cfg.extensions:
        raise InputError(
            f"unknown audio format {ext or '(no extension)'!r} for {path}; supported: {', '.join(cfg.extensions)}"
        )
    _check_file(path, "audio")
    try:
        data, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise InputError(f"audio file is corrupt or not a {ext[1:]} file: {path} ({err})") from None
    if data.shape[0] == 0:
        raise InputError(f"audio file contains no samples: {path}")
    return audio_prompt_from_waveform(data, int(sample_rate), cfg, source=str(path))


# ---------------------------------------------------------------------------------------------
# Dispatcher
# ---------------------------------------------------------------------------------------------

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def load_prompt(
    path_or_text: str | Path,
    kind: PromptKind,
    *,
    text_cfg: TextLoadConfig = TextLoadConfig(),
    image_cfg: ImageLoadConfig = ImageLoadConfig(),
    audio_cfg: AudioLoadConfig = AudioLoadConfig(),
) -> Prompt:
    """Load one prompt. ``kind="text"`` takes the string itself; ``"image"``/``"audio"`` take a path;
    ``"auto"`` picks image or audio by file extension and text for anything that is not a file."""
    if kind == "auto":
        candidate = Path(path_or_text)
        is_file = isinstance(path_or_text, Path) or (len(str(path_or_text)) < 4096 and candidate.is_file())
        if not is_file:
            kind = "text"
        elif candidate.suffix.lower() in IMAGE_EXTENSIONS:
            kind = "image"
        elif candidate.suffix.lower() in audio_cfg.extensions:
            kind = "audio"
        else:
            raise InputError(f"cannot tell whether {candidate} is an image or audio from its extension; give the kind")
    if kind == "text":
        return validate_text(str(path_or_text), text_cfg)
    if kind == "image":
        return load_image(path_or_text, image_cfg)
    if kind == "audio":
        return load_audio(path_or_text, audio_cfg)
    raise InputError(f"unknown prompt kind {kind!r}; choose text, image, audio or auto")


__all__ = [
    "AudioLoadConfig",
    "AudioPrompt",
    "ImageLoadConfig",
    "ImagePrompt",
    "Prompt",
    "TARGET_SAMPLE_RATE",
    "TEXT_CONTEXT_TOKENS",
    "TextLoadConfig",
    "TextPrompt",
    "audio_prompt_from_waveform",
    "drop_small_components",
    "estimate_background_color",
    "foreground_from_background",
    "image_prompt_from_arrays",
    "largest_component",
    "load_audio",
    "load_image",
    "load_prompt",
    "loudest_window_dbfs",
    "resample",
    "validate_text",
]
