"""Captions and synthetic audio of the tiny world (anyto3d/zoo/captions.py, audio.py)."""

import itertools
from dataclasses import replace

import numpy as np
import pytest

from anyto3d.errors import InputError
from anyto3d.zoo import audio
from anyto3d.zoo.captions import (
    COLOR_WORDS,
    PREFIXES,
    SHAPE_WORDS,
    SUFFIXES,
    canonical_caption,
    caption_bank,
    captions,
    mentions,
    view_caption,
)
from anyto3d.zoo.world import COLOR_NAMES, SHAPES, Item, WorldObject, composition_objects, single_objects

# --- captions --------------------------------------------------------------------------------


def test_canonical_captions():
    assert canonical_caption(WorldObject.single("cube", "red")) == "a red cube"
    assert canonical_caption(WorldObject.single("sphere", "orange")) == "an orange sphere"
    assert canonical_caption(WorldObject.single("lblock", "blue")) == "a blue L-shaped block"
    assert canonical_caption(WorldObject.single("torus", "blue", "tilted")) == "a tilted blue torus"
    assert canonical_caption(WorldObject.single("house", "red")) == "a red house with a blue roof"
    assert canonical_caption(WorldObject.single("marked_cube", "green")) == "a green cube with a pink front face"
    assert canonical_caption(WorldObject.single("marked_cube", "blue")) == "a blue cube with an orange front face"
    texts = [t for obj in (WorldObject.single("chair", "orange"), WorldObject.single("house", "blue"))
             for t in captions(obj, 30, 0)]
    for text in texts:
        assert " a orange" not in text and " a L" not in text and not text.startswith("a orange"), text
    on = WorldObject.composition(Item("cone", "red"), "on", Item("cube", "blue"))
    assert canonical_caption(on) == "a red cone on a blue cube"
    left = WorldObject.composition(Item("sphere", "green"), "left_of", Item("cube", "yellow"))
    assert canonical_caption(left) == "a green sphere left of a yellow cube"
    front = WorldObject.composition(Item("cube", "red"), "in_front_of", Item("cylinder", "pink"))
    assert canonical_caption(front) == "a red cube in front of a pink cylinder"


def test_every_caption_names_shape_and_colour_and_captions_vary():
    objects = single_objects()[::5] + composition_objects(2)
    for obj in objects:
        texts = captions(obj, 20, np.random.default_rng(0))
        assert len(texts) == 20 and len(set(texts)) >= 15, obj.id
        for text in texts:
            for item in obj.items:
                assert mentions(text, SHAPE_WORDS[item.shape]), (obj.id, text)
                assert mentions(text, COLOR_WORDS[item.color]), (obj.id, text)
            if obj.items[0].secondary:
                assert mentions(text, COLOR_WORDS[obj.items[0].secondary]), (obj.id, text)
            if obj.orientation == "tilted":
                assert mentions(text, ("tilted", "slanted", "leaning")), text


def test_synonyms_distractors_and_relation_paraphrases_all_occur():
    cube = WorldObject.single("cube", "purple")
    texts = captions(cube, 200, 1)
    for word in ("cube", "box", "block", "purple", "violet"):
        assert any(f" {word}" in t for t in texts), word
    assert any(t.startswith(p) for t in texts for p in PREFIXES)
    assert any(t.endswith(s) for t in texts for s in SUFFIXES)
    assert any(t in ("a purple cube", "a violet cube", "a purple box") for t in texts)  # no wrapping at all
    on = WorldObject.composition(Item("cone", "red"), "on", Item("cube", "blue"))
    texts = captions(on, 200, 2)
    assert any(" under " in t or " beneath " in t for t in texts)  # the reference named first
    assert any(" on " in t for t in texts)
    left = WorldObject.composition(Item("sphere", "green"), "left_of", Item("cube", "yellow"))
    swapped = [t for t in captions(left, 200, 3) if "right of" in t]
    assert swapped and all(t.index("yellow") < t.index("green") for t in swapped)  # B named first


def test_captions_are_seeded():
    obj = WorldObject.single("chair", "cyan")
    assert captions(obj, 8, 5) == captions(obj, 8, 5)
    assert captions(obj, 8, 5) != captions(obj, 8, 6)
    bank = caption_bank(obj, 6, seed=0)
    assert bank[0] == canonical_caption(obj) and len(bank) == 6 and len(set(bank)) == 6
    assert bank == caption_bank(obj, 6, seed=0)
    assert view_caption("a red cube", "back") == "a red cube, back view"
    with pytest.raises(InputError):
        view_caption("a red cube", "top")


# --- audio -----------------------------------------------------------------------------------


def test_clips_are_16khz_in_length_audible_and_finite():
    rng = np.random.default_rng(0)
    for obj in single_objects()[::9] + composition_objects(1):
        clip = audio.synthesize(obj, rng)
        assert clip.dtype == np.float32 and clip.ndim == 1
        assert 2.0 * audio.SAMPLE_RATE <= clip.size <= 4.0 * audio.SAMPLE_RATE
        assert np.isfinite(clip).all() and np.abs(clip).max() <= 1.0
        assert np.sqrt(np.mean(clip**2)) > 0.03, obj.id
    assert audio.SAMPLE_RATE == 16_000


def test_dominant_frequency_is_the_colour_note_within_the_jitter():
    rng = np.random.default_rng(1)
    cfg = audio.AudioConfig()
    for shape, color in itertools.product(("sphere", "cube", "cone", "arrow", "house", "mug"), COLOR_NAMES):
        clip = audio.synthesize(WorldObject.single(shape, color), rng)
        note = audio.NOTE_HZ[color]
        assert abs(audio.dominant_frequency(clip) - note) <= note * cfg.pitch_jitter + 1.0, (shape, color)
    # Tilted items add a ±0.6 % vibrato on top of the jitter.
    clip = audio.synthesize(WorldObject.single("torus", "cyan", "tilted"), rng)
    assert abs(audio.dominant_frequency(clip) - 440.0) <= 440.0 * (cfg.pitch_jitter + audio.VIBRATO_DEPTH) + 1.0


def test_clean_clip_has_exactly_the_note():
    clip = audio.synthesize(WorldObject.single("sphere", "cyan"), 0, audio.CLEAN)
    assert audio.dominant_frequency(clip) == pytest.approx(440.0, abs=0.3)


def test_shapes_have_different_spectral_envelopes_and_colours_do_not_change_them():
    rng = np.random.default_rng(2)
    envelopes = {}
    for shape in SHAPES:
        for color in ("red", "cyan"):
            clip = audio.synthesize(WorldObject.single(shape, color), rng)
            envelopes[shape, color] = audio.harmonic_envelope(clip, audio.dominant_frequency(clip))
    within = max(np.linalg.norm(envelopes[s, "red"] - envelopes[s, "cyan"]) for s in SHAPES)
    pairs = itertools.permutations(SHAPES, 2)
    between = min(np.linalg.norm(envelopes[a, "red"] - envelopes[b, "cyan"]) for a, b in pairs)
    assert within < 0.12 and between > 0.25, (within, between)
    # The measured envelope is the documented harmonic profile.
    for shape in SHAPES:
        expected = np.zeros(8)
        expected[: len(audio.HARMONICS[shape])] = audio.HARMONICS[shape]
        expected /= np.linalg.norm(expected)
        assert np.linalg.norm(envelopes[shape, "red"] - expected) < 0.12, shape


def test_rhythm_follows_the_relation():
    # No jitter and no lead silence: beat k of the pattern is samples [k·4000, (k+1)·4000).
    cfg = replace(audio.CLEAN, lead_silence_s=(0.0, 0.0), duration_s=(2.0, 2.0))
    beat = int(cfg.beat_s * cfg.sample_rate)
    expected = {"on": "AABR", "left_of": "ARBR"}
    for relation, pattern in expected.items():
        obj = WorldObject.composition(Item("sphere", "red"), relation, Item("cube", "cyan"))
        clip = audio.synthesize(obj, 0, cfg)
        for k in range(8):
            segment = clip[k * beat + 200 : (k + 1) * beat - 600]
            rms = np.sqrt(np.mean(segment**2))
            symbol = pattern[k % 4]
            if symbol == "R":
                assert rms < 1e-3, (relation, k)
            else:
                assert rms > 0.05, (relation, k)
                f = audio.dominant_frequency(segment)
                assert f == pytest.approx(audio.NOTE_HZ["red" if symbol == "A" else "cyan"], rel=0.02), (relation, k)
    # in_front_of: two short subject notes, then a long reference note.
    obj = WorldObject.composition(Item("sphere", "red"), "in_front_of", Item("cube", "cyan"))
    clip = audio.synthesize(obj, 0, cfg)
    half = beat // 2
    loud = [np.sqrt(np.mean(clip[k * half + 100 : (k + 1) * half - 300] ** 2)) > 0.05 for k in range(8)]
    assert loud == [True, False, True, False, True, True, True, True]
    assert audio.dominant_frequency(clip[4 * half : 8 * half]) == pytest.approx(audio.NOTE_HZ["cyan"], rel=0.02)


def test_two_colour_objects_carry_a_drone_at_half_the_second_note():
    clip = audio.synthesize(WorldObject.single("house", "red"), 0, audio.CLEAN)  # roof: blue
    freqs, mags = audio.spectrum(clip)
    drone = audio.NOTE_HZ["blue"] / 2
    near = np.abs(freqs - drone) < 2.0
    far = (np.abs(freqs - drone) > 20) & (freqs < 240)
    assert mags[near].max() > 20 * mags[far].max()
    plain = audio.synthesize(WorldObject.single("cube", "red"), 0, audio.CLEAN)
    f2, m2 = audio.spectrum(plain)
    assert m2[np.abs(f2 - drone) < 2.0].max() < 0.01 * mags[near].max()


def test_audio_is_seeded_and_varies():
    obj = WorldObject.single("mug", "pink")
    a, b = audio.synthesize(obj, 7), audio.synthesize(obj, 7)
    np.testing.assert_array_equal(a, b)
    c = audio.synthesize(obj, 8)
    assert a.size != c.size or not np.allclose(a, c)


def test_wav_round_trip(tmp_path):
    import soundfile

    clip = audio.synthesize(WorldObject.single("cone", "green"), 3)
    path = audio.save_clip(tmp_path / "cone.wav", clip)
    data, rate = soundfile.read(str(path), dtype="float32")
    assert rate == 16_000 and data.shape == clip.shape
    assert np.abs(data - clip).max() < 1e-3
