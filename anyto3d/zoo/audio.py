"""Synthetic audio prompts for the tiny world: 16 kHz clips whose content is a function of the object.

The mapping (what an audio encoder can learn to hear)
-----------------------------------------------------
* **Pitch ↔ colour.** Each colour has a fixed note (equal temperament, A4 = 440 Hz); every
  note of an item is played at its colour's fundamental:

  ======  ====  ========
  colour  note  Hz
  ======  ====  ========
  red     C4    261.63
  green   D4    293.66
  blue    E4    329.63
  yellow  F4    349.23
  orange  G4    392.00
  cyan    A4    440.00
  purple  B4    493.88
  pink    C5    523.25
  ======  ====  ========

* **Timbre ↔ shape.** Each shape has a harmonic profile, the amplitudes of harmonics 1..8
  (the fundamental is always the strongest, every other harmonic at most 0.7 of it, so the
  spectrum's peak is the colour's note):

  ===========  ======================================
  shape        harmonics 1..8
  ===========  ======================================
  sphere       1 (pure tone)
  cube         1, 0, .6, 0, .4 (odd, square-like)
  cone         1, 1/2, 1/3, ..., 1/8 (sawtooth-like)
  cylinder     1, .7
  torus        1, 0, 0, .7, 0, 0, 0, .45
  capsule      1, .5, 0, 0, .6
  pyramid      1, 0, .7, 0, 0, .5
  house        1, .4, 0, 0, 0, .7
  mug          1, 0, 0, 0, 0, 0, .7, .6
  arrow        1, .7, .6, .5
  lblock       1, 0, 0, 0, .7, .55
  chair        1, 0, 0, .5, 0, 0, .7
  marked_cube  1, 0, .6, 0, .4, 0, .7
  ===========  ======================================

* **Orientation.** A tilted item's notes carry a vibrato: 5.5 Hz, ±0.6 % in frequency.
* **Second colour.** A two-colour object (house, chair, marked cube) adds a soft drone, a pure
  tone at half its second colour's note (an octave below, amplitude 0.3), under the whole clip.
* **Rhythm ↔ composition.** A single object is one sustained note. A composition
  ``A <relation> B`` repeats a pattern on a beat of 0.25 s, A's notes in A's pitch and timbre,
  B's in B's: ``on``: A 2 beats, B 1, rest 1 ("long-short"); ``left_of``: A 1, rest 1, B 1,
  rest 1 (even alternation); ``in_front_of``: A ½, rest ½, A ½, rest ½, B 2 ("double, long").

Variation (:class:`AudioConfig`): duration U(2, 4) s; leading silence U(0, 0.15) s; pitch
jitter ×U(0.99, 1.01) per clip; tempo jitter ×U(0.95, 1.05); a random phase per harmonic and
note; per-note loudness ×U(0.8, 1); white noise at an SNR of U(15, 30) dB; peak level
U(0.3, 0.9). Each clip is float32 mono at 16 kHz.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anyto3d.errors import InputError
from anyto3d.zoo.world import Item, WorldObject

SAMPLE_RATE = 16_000

NOTE_HZ: dict[str, float] = {
    "red": 261.63,
    "green": 293.66,
    "blue": 329.63,
    "yellow": 349.23,
    "orange": 392.00,
    "cyan": 440.00,
    "purple": 493.88,
    "pink": 523.25,
}

HARMONICS: dict[str, tuple[float, ...]] = {
    "sphere": (1.0,),
    "cube": (1.0, 0.0, 0.6, 0.0, 0.4),
    "cone": tuple(1.0 / k for k in range(1, 9)),
    "cylinder": (1.0, 0.7),
    "torus": (1.0, 0.0, 0.0, 0.7, 0.0, 0.0, 0.0, 0.45),
    "capsule": (1.0, 0.5, 0.0, 0.0, 0.6),
    "pyramid": (1.0, 0.0, 0.7, 0.0, 0.0, 0.5),
    "house": (1.0, 0.4, 0.0, 0.0, 0.0, 0.7),
    "mug": (1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.7, 0.6),
    "arrow": (1.0, 0.7, 0.6, 0.5),
    "lblock": (1.0, 0.0, 0.0, 0.0, 0.7, 0.55),
    "chair": (1.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.7),
    "marked_cube": (1.0, 0.0, 0.6, 0.0, 0.4, 0.0, 0.7),
}

# (item index or None for a rest, length in beats), repeated to fill the clip.
RHYTHMS: dict[str, tuple[tuple[int | None, float], ...]] = {
    "on": ((0, 2.0), (1, 1.0), (None, 1.0)),
    "left_of": ((0, 1.0), (None, 1.0), (1, 1.0), (None, 1.0)),
    "in_front_of": ((0, 0.5), (None, 0.5), (0, 0.5), (None, 0.5), (1, 2.0)),
}

VIBRATO_HZ = 5.5
VIBRATO_DEPTH = 0.006
DRONE_LEVEL = 0.3


@dataclass(frozen=True)
class AudioConfig:
    """Ranges of the random variation (module docstring); zero-width ranges make clips clean."""

    sample_rate: int = SAMPLE_RATE
    duration_s: tuple[float, float] = (2.0, 4.0)
    lead_silence_s: tuple[float, float] = (0.0, 0.15)
    pitch_jitter: float = 0.01  # fundamental × U(1 - j, 1 + j)
    tempo_jitter: float = 0.05
    beat_s: float = 0.25
    note_gain: tuple[float, float] = (0.8, 1.0)
    snr_db: tuple[float, float] | None = (15.0, 30.0)  # None: no noise
    peak: tuple[float, float] = (0.3, 0.9)


CLEAN = AudioConfig(pitch_jitter=0.0, tempo_jitter=0.0, note_gain=(1.0, 1.0), snr_db=None, peak=(0.9, 0.9))


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _envelope(n: int, sr: int, attack_s: float, release_s: float) -> np.ndarray:
    env = np.ones(n)
    a, r = min(int(attack_s * sr), n // 2), min(int(release_s * sr), n // 2)
    if a > 0:
        env[:a] = np.linspace(0.0, 1.0, a, endpoint=False)
    if r > 0:
        env[n - r :] = np.linspace(1.0, 0.0, r)
    return env


def tone(item: Item, n_samples: int, pitch_scale: float, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """One note of ``item`` (no envelope): its colour's pitch, its shape's harmonics, vibrato
    if tilted, random harmonic phases. Harmonics above 0.45·sr are left out (no aliasing)."""
    f0 = NOTE_HZ[item.color] * pitch_scale
    t = np.arange(n_samples) / sr
    if item.orientation == "tilted":  # phase of f0 (1 + d sin(2π v t)) integrated in closed form
        v = VIBRATO_HZ
        phase0 = 2 * np.pi * f0 * (t + VIBRATO_DEPTH * (1 - np.cos(2 * np.pi * v * t)) / (2 * np.pi * v))
    else:
        phase0 = 2 * np.pi * f0 * t
    out = np.zeros(n_samples)
    for k, amp in enumerate(HARMONICS[item.shape], start=1):
        if amp > 0 and k * f0 < 0.45 * sr:
            out += amp * np.sin(k * phase0 + rng.uniform(0, 2 * np.pi))
    return out


def _sequence(obj: WorldObject, n: int, start: int, pitch: float, tempo: float, cfg: AudioConfig, rng) -> np.ndarray:
    sr = cfg.sample_rate
    out = np.zeros(n)
    if obj.relation is None:
        length = n - start
        note = tone(obj.items[0], length, pitch, rng, sr) * _envelope(length, sr, 0.05, 0.2)
        out[start:] = note * rng.uniform(*cfg.note_gain)
        return out
    beat = int(round(cfg.beat_s * tempo * sr))
    pos, step = start, 0
    pattern = RHYTHMS[obj.relation]
    while pos < n:
        who, beats = pattern[step % len(pattern)]
        length = min(int(round(beats * beat)), n - pos)
        if who is not None and length > 0:
            note = tone(obj.items[who], length, pitch, rng, sr) * _envelope(length, sr, 0.01, 0.03)
            out[pos : pos + length] = note * rng.uniform(*cfg.note_gain)
        pos += int(round(beats * beat))
        step += 1
    return out


def synthesize(obj: WorldObject, rng, cfg: AudioConfig = AudioConfig()) -> np.ndarray:
    """A float32 mono clip at ``cfg.sample_rate`` describing ``obj`` (module docstring)."""
    rng = _rng(rng)
    sr = cfg.sample_rate
    n = int(round(rng.uniform(*cfg.duration_s) * sr))
    start = int(round(rng.uniform(*cfg.lead_silence_s) * sr))
    pitch = 1.0 + rng.uniform(-cfg.pitch_jitter, cfg.pitch_jitter)
    tempo = 1.0 + rng.uniform(-cfg.tempo_jitter, cfg.tempo_jitter)
    signal = _sequence(obj, n, start, pitch, tempo, cfg, rng)
    second = obj.items[0].secondary if obj.relation is None else None
    if second is not None:  # the two-colour drone, an octave below the second colour's note
        t = np.arange(n) / sr
        drone = np.sin(2 * np.pi * NOTE_HZ[second] * pitch / 2 * t + rng.uniform(0, 2 * np.pi))
        signal += DRONE_LEVEL * drone * _envelope(n, sr, 0.05, 0.2)
    if cfg.snr_db is not None:
        rms = np.sqrt(np.mean(signal**2)) + 1e-12
        snr = rng.uniform(*cfg.snr_db)
        signal = signal + rng.normal(0.0, rms / 10 ** (snr / 20), n)
    signal *= rng.uniform(*cfg.peak) / (np.abs(signal).max() + 1e-12)
    return signal.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Analysis helpers (tests, documentation, sanity checks of generated clips)
# ---------------------------------------------------------------------------------------------


def spectrum(clip: np.ndarray, sr: int = SAMPLE_RATE, pad_to: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(frequencies, magnitudes) of a Hann-windowed clip."""
    clip = np.asarray(clip, dtype=np.float64)
    if clip.ndim != 1 or clip.size < 16:
        raise InputError(f"expected a mono clip of at least 16 samples, got shape {clip.shape}")
    n = max(pad_to or 0, clip.size)
    mags = np.abs(np.fft.rfft(clip * np.hanning(clip.size), n=n))
    return np.fft.rfftfreq(n, 1.0 / sr), mags


def dominant_frequency(clip: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    """The frequency (Hz) of the spectrum's peak, refined by parabolic interpolation."""
    freqs, mags = spectrum(clip, sr, pad_to=4 * sr)
    i = int(np.argmax(mags[1:-1])) + 1
    a, b, c = np.log(mags[i - 1 : i + 2] + 1e-12)
    shift = 0.5 * (a - c) / (a - 2 * b + c) if (a - 2 * b + c) != 0 else 0.0
    return float(freqs[i] + shift * (freqs[1] - freqs[0]))


def harmonic_envelope(clip: np.ndarray, f0: float, n_harmonics: int = 8, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Peak magnitudes near k·f0 (k = 1..n, ±1.5 %), normalised to unit length."""
    freqs, mags = spectrum(clip, sr)
    out = np.zeros(n_harmonics)
    for k in range(1, n_harmonics + 1):
        band = np.abs(freqs - k * f0) <= 0.015 * k * f0
        out[k - 1] = mags[band].max() if band.any() else 0.0
    return out / (np.linalg.norm(out) + 1e-12)


def save_clip(path, clip: np.ndarray, sr: int = SAMPLE_RATE):
    """Write a clip as a 16-bit PCM WAV file (the format audio prompts are loaded from)."""
    import soundfile

    soundfile.write(str(path), np.asarray(clip, dtype=np.float32), sr, subtype="PCM_16")
    return path


__all__ = [
    "AudioConfig",
    "CLEAN",
    "HARMONICS",
    "NOTE_HZ",
    "RHYTHMS",
    "SAMPLE_RATE",
    "dominant_frequency",
    "harmonic_envelope",
    "save_clip",
    "spectrum",
    "synthesize",
    "tone",
]
