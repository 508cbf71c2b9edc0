"""Prompt loading and validation: every bad input gives one specific InputError."""

import math

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from anyto3d.errors import InputError
from anyto3d.images import mask_iou
from anyto3d.modality import (
    AudioPrompt,
    ImagePrompt,
    TextPrompt,
    audio_prompt_from_waveform,
    image_prompt_from_arrays,
    load_audio,
    load_image,
    load_prompt,
    loudest_window_dbfs,
    validate_text,
)

SIZE = 64


def disc(size=SIZE, radius=0.3, center=(0.5, 0.5)):
    yy, xx = np.mgrid[0:size, 0:size]
    return ((xx + 0.5 - center[0] * size) ** 2 + (yy + 0.5 - center[1] * size) ** 2) <= (radius * size) ** 2


def red_disc_on_white(size=SIZE):
    m = disc(size)
    rgb = np.ones((size, size, 3))
    rgb[m] = (0.9, 0.1, 0.1)
    return rgb, m


def save_rgb(path, rgb, **kw):
    Image.fromarray((rgb * 255).round().astype(np.uint8)).save(path, **kw)
    return path


# ------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------


def test_zero_byte_png(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty \(0 bytes\)"):
        load_image(p)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_image(tmp_path / "nope.png")


def test_truncated_png(tmp_path):
    rgb, _ = red_disc_on_white()
    noise = np.random.default_rng(0).random((SIZE, SIZE, 3))  # incompressible, so the PNG has many bytes
    full = save_rgb(tmp_path / "full.png", np.clip(rgb * 0.5 + noise * 0.5, 0, 1))
    data = full.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_image(cut)


def test_garbage_bytes_are_not_an_image(tmp_path):
    p = tmp_path / "junk.png"
    p.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(InputError, match="format not recognised"):
        load_image(p)


def test_jpeg_with_plain_white_background_gives_the_object_mask(tmp_path):
    rgb, truth = red_disc_on_white()
    p = save_rgb(tmp_path / "disc.jpg", rgb, quality=85)
    prompt = load_image(p)
    assert isinstance(prompt, ImagePrompt)
    assert prompt.rgb.shape == (SIZE, SIZE, 3) and prompt.mask.shape == (SIZE, SIZE, 1)
    assert mask_iou(prompt.mask[..., 0], torch.from_numpy(truth).float()) >= 0.93
    # Colour inside the object survives compression approximately.
    inside = prompt.rgb[torch.from_numpy(truth)]
    assert torch.allclose(inside.mean(0), torch.tensor([0.9, 0.1, 0.1]), atol=0.05)


def test_background_coloured_pixels_inside_the_object_stay_foreground(tmp_path):
    rgb, truth = red_disc_on_white()
    rgb[disc(radius=0.08)] = 1.0  # a white spot in the middle of the red disc
    prompt = load_image(save_rgb(tmp_path / "spot.png", rgb))
    assert mask_iou(prompt.mask[..., 0], torch.from_numpy(truth).float()) > 0.99


def test_rgba_mask_comes_from_alpha(tmp_path):
    rgb, truth = red_disc_on_white()
    alpha = truth.astype(np.float64)
    alpha[0, 0] = 0.5  # a soft value survives
    rgba = np.concatenate([rgb * 0.0 + 0.2, alpha[..., None]], axis=-1)  # colour under alpha is arbitrary
    p = tmp_path / "rgba.png"
    Image.fromarray((rgba * 255).round().astype(np.uint8), mode="RGBA").save(p)
    prompt = load_image(p)
    assert torch.allclose(prompt.mask[..., 0], torch.from_numpy(np.round(alpha * 255) / 255).float(), atol=1e-6)
    # Composited onto white outside the object.
    assert torch.allclose(prompt.rgb[~torch.from_numpy(truth)][1:], torch.ones(1, 3), atol=1e-6)


def test_opaque_rgba_falls_back_to_the_border_colour(tmp_path):
    rgb, truth = red_disc_on_white()
    rgba = np.concatenate([rgb, np.ones((SIZE, SIZE, 1))], axis=-1)
    p = tmp_path / "opaque.png"
    Image.fromarray((rgba * 255).round().astype(np.uint8), mode="RGBA").save(p)
    assert mask_iou(load_image(p).mask[..., 0], torch.from_numpy(truth).float()) > 0.99


def test_palette_and_greyscale_images_load(tmp_path):
    rgb, truth = red_disc_on_white()
    img = Image.fromarray((rgb * 255).round().astype(np.uint8))
    pal = tmp_path / "pal.png"
    img.convert("P", palette=Image.Palette.ADAPTIVE, colors=8).save(pal)
    grey = tmp_path / "grey.png"
    img.convert("L").save(grey)
    for path in (pal, grey):
        prompt = load_image(path)
        assert mask_iou(prompt.mask[..., 0], torch.from_numpy(truth).float()) > 0.99
    g = load_image(grey).rgb
    assert torch.equal(g[..., 0], g[..., 1]) and torch.equal(g[..., 1], g[..., 2])


def test_palette_with_transparency_uses_it(tmp_path):
    idx = disc().astype(np.uint8)  # palette index 1 inside, 0 outside
    img = Image.fromarray(idx, mode="P")
    img.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    p = tmp_path / "ptrans.png"
    img.save(p, transparency=0)
    prompt = load_image(p)
    assert torch.equal(prompt.mask[..., 0] > 0.5, torch.from_numpy(disc()))
    assert torch.allclose(prompt.rgb[torch.from_numpy(disc())][0], torch.tensor([0.0, 200 / 255, 0.0]))


def test_sixteen_bit_greyscale_keeps_its_precision(tmp_path):
    values = np.full((SIZE, SIZE), 65535, dtype=np.uint16)
    values[disc()] = 1000  # dark disc on white; 1000/65535 is not representable in 8 bits
    p = tmp_path / "g16.png"
    Image.fromarray(values).save(p)
    prompt = load_image(p)
    inside = prompt.rgb[torch.from_numpy(disc())]
    assert torch.allclose(inside, torch.full_like(inside, 1000 / 65535), atol=1e-6)
    assert torch.equal(prompt.mask[..., 0] > 0.5, torch.from_numpy(disc()))


def test_no_foreground(tmp_path):
    white = save_rgb(tmp_path / "white.png", np.ones((SIZE, SIZE, 3)))
    with pytest.raises(InputError, match="no foreground"):
        load_image(white)
    clear = tmp_path / "clear.png"
    Image.fromarray(np.zeros((SIZE, SIZE, 4), np.uint8), mode="RGBA").save(clear)
    with pytest.raises(InputError, match="no foreground"):
        load_image(clear)


def test_busy_background_without_alpha_is_an_error(tmp_path):
    noise = np.random.default_rng(1).random((SIZE, SIZE, 3))
    with pytest.raises(InputError, match="border is not a plain colour"):
        load_image(save_rgb(tmp_path / "noise.png", noise))


def test_busy_background_can_be_taken_as_full_frame():
    from anyto3d.modality import ImageLoadConfig

    noise = np.random.default_rng(1).random((SIZE, SIZE, 3))
    prompt = image_prompt_from_arrays(noise, cfg=ImageLoadConfig(busy_background="full_frame"))
    assert torch.equal(prompt.mask, torch.ones(SIZE, SIZE, 1))
    assert torch.allclose(prompt.rgb, torch.from_numpy(noise).float())


def test_tiny_image_is_rejected():
    with pytest.raises(InputError, match="at least 8x8"):
        image_prompt_from_arrays(np.ones((4, 4, 3)))


def test_any_size_non_square_image_loads(tmp_path):
    rgb = np.ones((37, 101, 3))
    rgb[10:25, 40:60] = (0.0, 0.0, 1.0)
    prompt = load_image(save_rgb(tmp_path / "wide.png", rgb))
    assert prompt.rgb.shape == (37, 101, 3)
    assert int(prompt.mask.sum()) == 15 * 20


# ------------------------------------------------------------------------------------------------
# Audio
# ------------------------------------------------------------------------------------------------


def sine(freq, seconds, rate, amp=0.5):
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * math.pi * freq * t)).astype(np.float32)


def test_silent_wav(tmp_path):
    p = tmp_path / "silence.wav"
    sf.write(p, np.zeros(16000 * 2, np.float32), 16000)
    with pytest.raises(InputError, match="silent"):
        load_audio(p)


def test_quiet_but_audible_wav_loads(tmp_path):
    p = tmp_path / "quiet.wav"
    sf.write(p, sine(440, 2.0, 16000, amp=0.005), 16000)  # about -49 dBFS RMS
    prompt = load_audio(p)
    assert -50 < loudest_window_dbfs(prompt.waveform, 16000) < -48


def test_short_wav(tmp_path):
    p = tmp_path / "short.wav"
    sf.write(p, sine(440, 0.1, 16000), 16000)
    with pytest.raises(InputError, match=r"too short \(0.10 s\)"):
        load_audio(p)


def test_corrupt_wav_bytes(tmp_path):
    p = tmp_path / "corrupt.wav"
    p.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(200)))
    with pytest.raises(InputError, match="corrupt"):
        load_audio(p)


def test_zero_byte_wav(tmp_path):
    p = tmp_path / "empty.wav"
    p.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty \(0 bytes\)"):
        load_audio(p)


def test_unknown_audio_format(tmp_path):
    p = tmp_path / "sound.xyz"
    sf.write(p, sine(440, 1.0, 16000), 16000, format="WAV")  # valid content, unknown extension
    with pytest.raises(InputError, match=r"unknown audio format '\.xyz'"):
        load_audio(p)


def test_stereo_44k_flac_becomes_mono_16k(tmp_path):
    left = sine(440, 1.5, 44100)
    right = sine(440, 1.5, 44100, amp=0.25)
    p = tmp_path / "stereo.flac"
    sf.write(p, np.stack([left, right], axis=1), 44100)
    prompt = load_audio(p)
    assert isinstance(prompt, AudioPrompt) and prompt.sample_rate == 16000
    assert prompt.waveform.dim() == 1 and prompt.waveform.dtype == torch.float32
    assert abs(prompt.waveform.shape[0] - 24000) <= 1
    # Mono = channel mean = a 440 Hz sine of amplitude 0.375 (16-bit FLAC quantisation aside).
    expected = torch.from_numpy(sine(440, 1.5, 16000, amp=0.375))
    n = min(expected.shape[0], prompt.waveform.shape[0])
    middle = slice(800, n - 800)  # resampler edge effects at the ends
    assert torch.allclose(prompt.waveform[middle], expected[middle], atol=2e-3)


def test_ogg_vorbis_loads(tmp_path):
    p = tmp_path / "tone.ogg"
    sf.write(p, sine(440, 1.0, 22050), 22050, format="OGG", subtype="VORBIS")
    prompt = load_audio(p)
    assert abs(prompt.waveform.shape[0] - 16000) <= 1


def test_in_memory_waveform_layouts():
    x = sine(440, 1.0, 16000)
    stereo = np.stack([x, x])  # [channels, N], torchaudio's layout
    for data in (x, stereo, stereo.T, torch.from_numpy(stereo)):
        prompt = audio_prompt_from_waveform(data, 16000)
        assert torch.allclose(prompt.waveform, torch.from_numpy(x))


def test_waveform_with_nan_is_rejected():
    x = sine(440, 1.0, 16000)
    x[100] = np.nan
    with pytest.raises(InputError, match="NaN"):
        audio_prompt_from_waveform(x, 16000)


# ------------------------------------------------------------------------------------------------
# Text
# ------------------------------------------------------------------------------------------------


def count_words(text):  # a stand-in token counter: the real one is tested once below
    return len(text.split())


@pytest.mark.parametrize("text", ["", "   ", "\n\t  "])
def test_empty_text(text):
    with pytest.raises(InputError, match="empty"):
        validate_text(text, token_counter=count_words)


def test_control_characters_are_rejected():
    with pytest.raises(InputError, match=r"control character U\+001B at position 5"):
        validate_text("a red\x1b[31m cube", token_counter=count_words)
    with pytest.raises(InputError, match=r"U\+0000"):
        validate_text("cube\x00", token_counter=count_words)


def test_whitespace_is_collapsed():
    assert validate_text("  a  red\n\tcube ", token_counter=count_words) == TextPrompt("a red cube")


def test_over_long_text_names_the_token_limit():
    ok = " ".join(["cube"] * 75)
    assert validate_text(ok).text == ok  # exactly fills the 77-token context with the markers
    with pytest.raises(InputError, match=r"too long: 76 tokens.*context is 77 tokens"):
        validate_text(ok + " cube")


def test_load_prompt_dispatch(tmp_path):
    rgb, _ = red_disc_on_white()
    img = save_rgb(tmp_path / "x.png", rgb)
    wav = tmp_path / "x.wav"
    sf.write(wav, sine(440, 1.0, 16000), 16000)
    assert isinstance(load_prompt(str(img), "auto"), ImagePrompt)
    assert isinstance(load_prompt(wav, "audio"), AudioPrompt)
    assert load_prompt("a chair", "text") == TextPrompt("a chair")
    assert load_prompt("a chair", "auto") == TextPrompt("a chair")
    with pytest.raises(InputError, match="unknown prompt kind"):
        load_prompt("a chair", "smell")
