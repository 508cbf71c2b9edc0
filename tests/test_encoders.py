"""Encoders: ImageBind and OpenCLIP adapters at reduced size with random weights, combined prompts."""

import math

import pytest
import torch
import torch.nn.functional as F

from anyto3d.encoders.combine import combine_embeddings, embed_combined
from anyto3d.encoders.imagebind import (
    IMAGEBIND_DUMMY,
    AudioPreprocessConfig,
    ImageBindConfig,
    ImageBindEncoder,
    audio_clips,
    clip_starts,
    tokenize,
    waveform_to_fbank,
)
from anyto3d.encoders.openclip import OPENCLIP_DUMMY_CFG, OpenClipConfig, OpenClipEncoder
from anyto3d.errors import InputError, MissingWeightsError
from anyto3d.modality import AudioPrompt, ImagePrompt, TextPrompt, audio_prompt_from_waveform


@pytest.fixture(scope="module")
def imagebind():
    return ImageBindEncoder.build_dummy(seed=0)


@pytest.fixture(scope="module")
def openclip():
    return OpenClipEncoder.build_dummy(seed=0)


def tone(rate, seconds=5.0, extra_hz=None):
    t = torch.arange(int(seconds * rate), dtype=torch.float64) / rate
    x = 0.4 * torch.sin(2 * math.pi * 440 * t) + 0.2 * torch.sin(2 * math.pi * 3000 * t)
    if extra_hz:
        x = x + 0.3 * torch.sin(2 * math.pi * extra_hz * t)
    return x.float()


def image_prompt(seed=0, h=40, w=56):
    g = torch.Generator().manual_seed(seed)
    return ImagePrompt(torch.rand(h, w, 3, generator=g), torch.ones(h, w, 1))


# ------------------------------------------------------------------------------------------------
# ImageBind
# ------------------------------------------------------------------------------------------------


def test_imagebind_embeddings_are_unit_vectors_of_the_aligned_dim(imagebind):
    d = IMAGEBIND_DUMMY.out_embed_dim
    text = imagebind.embed("text", [TextPrompt("a red cube"), TextPrompt("a small dog")])
    image = imagebind.embed("image", [image_prompt(0), image_prompt(1, 64, 64)])
    audio = imagebind.embed("audio", AudioPrompt(tone(16000)))
    for emb, batch in ((text, 2), (image, 2), (audio, 1)):
        assert emb.shape == (batch, d)
        assert torch.allclose(emb.norm(dim=-1), torch.ones(batch), atol=1e-5)
    assert not torch.allclose(text[0], text[1])


def test_imagebind_batches_equal_single_embeddings(imagebind):
    prompts = [TextPrompt("a red cube"), TextPrompt("a small dog")]
    both = imagebind.embed("text", prompts)
    one = torch.cat([imagebind.embed("text", p) for p in prompts])
    assert torch.allclose(both, one, atol=1e-5)


def test_imagebind_per_modality_scales(imagebind):
    # ImageBind's post-processing: vision ×1, text × exp(log scale) (init 1/0.07), audio ×20.
    assert imagebind.logit_scale("image") == pytest.approx(1.0)
    assert imagebind.logit_scale("text") == pytest.approx(1 / 0.07, rel=1e-5)
    assert imagebind.logit_scale("audio") == pytest.approx(20.0)
    text = TextPrompt("a red cube")
    scaled = imagebind.embed("text", text, output="imagebind")
    assert scaled.norm().item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert torch.allclose(F.normalize(scaled, dim=-1), imagebind.embed("text", text), atol=1e-6)
    # Audio: clips are scaled ×20 then averaged, so the norm is at most 20; direction is the unit one.
    audio = AudioPrompt(tone(16000))
    a = imagebind.embed("audio", audio, output="imagebind")
    assert 0 < a.norm().item() <= 20.0 + 1e-4
    assert torch.allclose(F.normalize(a, dim=-1), imagebind.embed("audio", audio), atol=1e-6)
    # Raw head output (BindDiffusion's image conditioning) points the same way as the unit vector.
    raw = imagebind.embed("image", image_prompt(), output="raw")
    assert torch.allclose(F.normalize(raw, dim=-1), imagebind.embed("image", image_prompt()), atol=1e-5)


def test_tokenizer_is_clip_bpe_offline():
    ids = tokenize(["a red cube", "dog"])
    assert ids.shape == (2, 77)
    assert ids[0, 0] == 49406 and ids[0, 4] == 49407 and ids[0, 5:].eq(0).all()  # SOT a red cube EOT pad
    import open_clip

    assert torch.equal(ids, open_clip.tokenize(["a red cube", "dog"]))  # same vocabulary, same ids
    with pytest.raises(InputError, match="too long"):
        tokenize([" ".join(["cube"] * 76)])


def test_clip_starts_follow_constant_clips_per_video():
    assert clip_starts(5.0) == pytest.approx([0.0, 1.0, 2.0])  # k·(5−2)/3
    assert clip_starts(8.0) == pytest.approx([0.0, 2.0, 4.0])
    assert clip_starts(1.0) == [0.0, 0.0, 0.0]  # shorter than a clip: three identical padded clips


def test_audio_preprocessing_shape_and_padding():
    clips = audio_clips(AudioPrompt(tone(16000, 5.0)))
    assert clips.shape == (3, 1, 128, 204)
    cfg = AudioPreprocessConfig()
    # A 2-s clip has 1 + (32000 − 400) // 160 = 198 frames; the rest is zero-padded, then normalised.
    pad_value = (0.0 - cfg.mean) / cfg.std
    assert torch.allclose(clips[:, :, :, 198:], torch.full_like(clips[:, :, :, 198:], pad_value))
    assert not torch.allclose(clips[:, :, :, 197], torch.full_like(clips[:, :, :, 197], pad_value))
    # Clip k is the fbank of seconds [k, k + 2].
    wave = tone(16000, 5.0)
    assert torch.allclose(clips[1], waveform_to_fbank(wave[16000:48000], cfg))


def test_audio_resampled_from_44k_matches_native_16k():
    native = audio_clips(AudioPrompt(tone(16000)))
    # 44.1 kHz with an extra 12 kHz tone: above the 8 kHz Nyquist of 16 kHz, so a proper
    # resampler removes it; a naive one folds it down to 4 kHz.
    hi = tone(44100, extra_hz=12000)
    resampled = audio_clips(audio_prompt_from_waveform(hi, 44100))
    assert (native - resampled).abs().mean() < 0.05
    naive = hi[(torch.arange(5 * 16000) * 44100 / 16000).long()].contiguous()
    assert (native - audio_clips(AudioPrompt(naive))).abs().mean() > 0.5


def test_audio_at_the_wrong_rate_is_refused(imagebind):
    with pytest.raises(InputError, match="16000 Hz"):
        imagebind.embed("audio", AudioPrompt(tone(8000), sample_rate=8000))


def test_imagebind_embed_image_is_differentiable(imagebind):
    rgb = torch.rand(2, 32, 32, 3, requires_grad=True)
    emb = imagebind.embed_image(rgb)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    emb[:, 0].sum().backward()
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    assert all(p.grad is None for p in imagebind.parameters())  # the encoder itself is frozen


def test_imagebind_embed_image_gradient_matches_finite_differences():
    enc = ImageBindEncoder.build_dummy(seed=1).double()
    rgb = (0.2 + 0.6 * torch.rand(1, 8, 8, 3, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: enc.embed_image(x)[:, :4], (rgb,), fast_mode=True, atol=1e-5)


def test_image_prompt_and_render_paths_agree(imagebind):
    prompt = image_prompt(h=48, w=48)
    assert torch.allclose(imagebind.embed("image", prompt), imagebind.embed_image(prompt.rgb[None]), atol=1e-5)


def test_wrong_data_for_a_modality(imagebind):
    with pytest.raises(TypeError, match="load_prompt"):
        imagebind.embed("text", image_prompt())
    with pytest.raises(TypeError):
        imagebind.embed("text", "a plain string")  # raw strings bypass validation: refused
    with pytest.raises(InputError, match="does not embed 'depth'"):
        imagebind.embed("depth", TextPrompt("x"))
    with pytest.raises(InputError, match="no text prompts"):
        imagebind.embed("text", [])


def test_imagebind_loads_a_local_checkpoint_and_reports_missing_ones(imagebind, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("ANYTO3D_WEIGHTS", raising=False)
    cfg = ImageBindConfig(architecture=IMAGEBIND_DUMMY, local_dir=str(tmp_path))
    with pytest.raises(MissingWeightsError, match="imagebind_huge.pth"):
        ImageBindEncoder.from_pretrained(cfg)
    torch.save(imagebind.model.state_dict(), tmp_path / "imagebind_huge.pth")
    loaded = ImageBindEncoder.from_pretrained(cfg)
    text = TextPrompt("a red cube")
    assert torch.allclose(loaded.embed("text", text), imagebind.embed("text", text), atol=1e-6)


# ------------------------------------------------------------------------------------------------
# OpenCLIP
# ------------------------------------------------------------------------------------------------


def test_openclip_dummy_embeds_text_and_images(openclip):
    assert openclip.dim == OPENCLIP_DUMMY_CFG["embed_dim"] and openclip.image_size == 32
    text = openclip.embed("text", [TextPrompt("a red cube"), TextPrompt("a dog")])
    image = openclip.embed("image", image_prompt())
    assert text.shape == (2, 32) and image.shape == (1, 32)
    assert torch.allclose(text.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(image, openclip.embed_image(image_prompt().rgb[None]), atol=1e-5)


def test_openclip_embed_image_is_differentiable():
    enc = OpenClipEncoder.build_dummy(seed=1).double()
    rgb = (0.2 + 0.6 * torch.rand(2, 20, 24, 3, dtype=torch.float64)).requires_grad_(True)
    emb = enc.embed_image(rgb)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda x: enc.embed_image(x)[:, :4], (rgb,), fast_mode=True, atol=1e-5)


def test_openclip_loads_a_local_safetensors_checkpoint(openclip, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("ANYTO3D_WEIGHTS", raising=False)
    cfg = OpenClipConfig(quick_gelu=False, model_cfg=OPENCLIP_DUMMY_CFG, local_dir=str(tmp_path))
    with pytest.raises(MissingWeightsError, match="open_clip_model.safetensors"):
        OpenClipEncoder.from_pretrained(cfg)
    state = {k: v.contiguous() for k, v in openclip.model.state_dict().items()}
    save_file(state, tmp_path / "open_clip_model.safetensors")
    loaded = OpenClipEncoder.from_pretrained(cfg)
    rgb = torch.rand(1, 32, 32, 3)
    assert torch.allclose(loaded.embed_image(rgb), openclip.embed_image(rgb), atol=1e-6)


def test_openclip_refuses_audio(openclip):
    with pytest.raises(InputError, match="does not embed 'audio'"):
        openclip.embed("audio", AudioPrompt(tone(16000)))


# ------------------------------------------------------------------------------------------------
# Combined prompts
# ------------------------------------------------------------------------------------------------


def test_pure_text_combination_is_the_normalised_text_embedding():
    e = torch.tensor([3.0, 4.0, 0.0])
    assert torch.allclose(combine_embeddings([(e, 1.0)]), torch.tensor([0.6, 0.8, 0.0]))
    # A zero-weight second part changes nothing.
    ignored = torch.tensor([0.0, 0.0, 5.0])
    assert torch.allclose(combine_embeddings([(e, 1.0), (ignored, 0.0)]), torch.tensor([0.6, 0.8, 0.0]))


def test_weights_are_honoured_and_part_scales_are_not():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    c = combine_embeddings([(a, 3.0), (b, 1.0)])
    assert torch.allclose(c, torch.tensor([3.0, 1.0]) / math.sqrt(10.0))
    # Relative weights: (3, 1) == (0.75, 0.25); a part's own scale (ImageBind audio ×20) does not matter.
    assert torch.allclose(combine_embeddings([(20 * a, 0.75), (b, 0.25)]), c)
    # Batched [B, D] parts combine row by row.
    batch = combine_embeddings([(torch.stack([a, b]), 1.0), (torch.stack([b, b]), 1.0)])
    assert torch.allclose(batch, torch.tensor([[1.0, 1.0], [0.0, 1.0]]) / torch.tensor([[math.sqrt(2.0)], [1.0]]))


def test_combine_errors():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    with pytest.raises(InputError, match="at least one part"):
        combine_embeddings([])
    with pytest.raises(InputError, match="all weights .* are zero"):
        combine_embeddings([(a, 0.0), (b, 0.0)])
    with pytest.raises(InputError, match="negative"):
        combine_embeddings([(a, 1.0), (b, -0.5)])
    with pytest.raises(InputError, match="does not match"):
        combine_embeddings([(a, 1.0), (torch.ones(3), 1.0)])
    with pytest.raises(InputError, match="cancel out"):
        combine_embeddings([(a, 1.0), (-a, 1.0)])
    with pytest.raises(InputError, match="not a finite"):
        combine_embeddings([(a, float("nan"))])
    with pytest.raises(InputError, match="zero or not finite"):
        combine_embeddings([(torch.zeros(2), 1.0)])


def test_embed_combined_mixes_modalities(imagebind):
    text, audio = TextPrompt("a red cube"), AudioPrompt(tone(16000))
    mixed = embed_combined(imagebind, [("text", text, 0.7), ("audio", audio, 0.3)])
    expected = F.normalize(0.7 * imagebind.embed("text", text) + 0.3 * imagebind.embed("audio", audio), dim=-1)
    assert torch.allclose(mixed, expected, atol=1e-6)
    assert torch.allclose(embed_combined(imagebind, [("text", text, 1.0)]), imagebind.embed("text", text), atol=1e-6)
