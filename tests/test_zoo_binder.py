"""The tiny binder: towers, the contrastive loss, differentiability, a real tiny training, weights."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anyto3d.checkpoints import CheckpointManager
from anyto3d.errors import InputError, MissingWeightsError
from anyto3d.modality import AudioPrompt, ImagePrompt, TextPrompt
from anyto3d.zoo.audio import synthesize
from anyto3d.zoo.binder import (
    TEST_BINDER,
    TinyBinder,
    contrastive_loss,
    split_words,
    world_vocabulary,
)
from anyto3d.zoo.captions import canonical_caption, caption
from anyto3d.zoo.dataset import TINY, render_dataset
from anyto3d.zoo.judge import look_alike
from anyto3d.zoo.splits import is_heldout
from anyto3d.zoo.train_encoders import (
    BinderTrainConfig,
    _distinct_batch,
    _top1,
    augment_images,
    concat_views,
    evaluate_binder,
    gaussian_blur,
    load_views,
    train_binder,
)
from anyto3d.zoo.world import WorldObject, catalogue

TRAIN_IDS = ("cube-red", "cube-blue", "house-orange", "mug-red", "cone-yellow", "arrow-blue")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def binder():
    torch.manual_seed(0)
    return TinyBinder(TEST_BINDER).freeze()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    objs = [WorldObject.from_id(i) for i in TRAIN_IDS]
    assert not any(is_heldout(o) for o in objs)
    root = tmp_path_factory.mktemp("binder_data")
    render_dataset(objs, 8, root / "train", cfg=TINY, seed=0)
    render_dataset(objs, 8, root / "eval", cfg=TINY, seed=7)  # other views of the same objects
    return root


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("binder_model")
    log = train_binder(data / "train", out, steps=150, audio_steps=100, seed=0, cfg=TEST_BINDER,
                       train=BinderTrainConfig(clips_per_object=4, checkpoint_every=50), progress=False)
    return out, log


def test_embeddings_have_the_right_shape_and_unit_norm(binder):
    img = binder.embed("image", [ImagePrompt(torch.rand(40, 24, 3), torch.ones(40, 24, 1)), ImagePrompt(torch.rand(32, 32, 3), torch.ones(32, 32, 1))])
    txt = binder.embed("text", [TextPrompt("a red cube"), TextPrompt("a photo of a blue ball on a green box, 4k")])
    aud = binder.embed("audio", [AudioPrompt(torch.randn(16000)), AudioPrompt(torch.randn(80000))])
    for e in (img, txt, aud):
        assert e.shape == (2, TEST_BINDER.dim)
        assert torch.allclose(e.norm(dim=-1), torch.ones(2), atol=1e-5)
    rendered = binder.embed_image(torch.rand(3, 64, 64, 3))
    assert rendered.shape == (3, TEST_BINDER.dim)
    assert torch.allclose(rendered.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_embed_image_gradient_matches_finite_differences():
    torch.manual_seed(0)
    model = TinyBinder(TEST_BINDER).double()
    x = torch.rand(1, 8, 8, 3, dtype=torch.float64, requires_grad=True)
    direction = torch.randn(TEST_BINDER.dim, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda img: model.embed_image(img) @ direction, (x,), eps=1e-6, atol=1e-5)
    # And at 32², the gradient reaches every pixel region of a render.
    y = torch.rand(2, 32, 32, 3, requires_grad=True)
    model.float().embed_image(y).sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0


def test_contrastive_loss_matches_a_hand_computation_on_2x2():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # unit rows e1, e2
    b = torch.tensor([[3.0, 4.0], [0.0, -1.0]])  # unit rows (.6,.8), (0,-1)
    s = 2.0
    # logits s·â b̂ᵀ = 2·[[.6, 0], [.8, -1]]
    row = 0.5 * ((-1.2 + math.log(math.exp(1.2) + 1)) + (2.0 + math.log(math.exp(1.6) + math.exp(-2.0))))
    col = 0.5 * ((-1.2 + math.log(math.exp(1.2) + math.exp(1.6))) + (2.0 + math.log(1 + math.exp(-2.0))))
    expected = 0.5 * (row + col)
    assert contrastive_loss(a, b, s).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(InputError):
        contrastive_loss(a, b[:1], s)


def test_vocabulary_covers_every_caption_word_and_long_prompts_are_refused(binder):
    vocab = set(world_vocabulary())
    rng = np.random.default_rng(0)
    objs = catalogue()
    for k in range(300):
        words = split_words(caption(objs[k % len(objs)], rng) + ", back view")
        assert set(words) <= vocab, set(words) - vocab
    assert binder.tokenizer.encode(["a zebra cube"])[0, 1].item() == 1  # unknown word -> <unk>
    with pytest.raises(InputError, match="at most"):
        binder.embed("text", TextPrompt(" ".join(["red"] * 60)))


def test_augmentations_keep_range_and_never_mirror():
    g = torch.Generator().manual_seed(0)
    img = torch.ones(8, 32, 32, 3)
    img[:, 10:20, 2:8] = torch.tensor([1.0, 0.0, 0.0])  # a red patch on the left
    out = augment_images(img, g)
    assert out.shape == img.shape and out.min() >= 0 and out.max() <= 1
    redness = (out[..., 1] < 0.6).float().sum(dim=1)  # [B, W] red pixels per column
    left, right = redness[:, :16].sum(), redness[:, 16:].sum()
    assert left > 5 * right  # no flips: the patch stays on the left
    blurred = gaussian_blur(img, torch.full((8,), 1.0))
    assert torch.allclose(blurred.sum(dim=(1, 2)), img.sum(dim=(1, 2)), rtol=2e-2)
    assert torch.equal(gaussian_blur(img, torch.zeros(8)), img)


def test_retrieval_counts_a_look_alike_from_that_camera_as_right():
    objs = [WorldObject.from_id(i) for i in ("marked_cube-green", "cube-green", "cone-red")]
    names = look_alike(objs, [0.0, 180.0])
    assert len(set(names[0].tolist())) == 3  # from the front the mark shows
    assert names[1, 0] == names[1, 1] != names[1, 2]  # from behind it is a plain green cube
    scores = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])  # both views pick the plain cube
    target = torch.tensor([0, 0])  # both are views of the marked cube
    assert _top1(scores, target, names) == 0.5
    assert _top1(scores, torch.tensor([1, 2]), names) == 0.5


def test_tiny_training_retrieves_text_and_audio_well_above_chance(trained, data):
    out, log = trained
    assert np.mean(log["loss_text"][-20:]) < 0.5 * log["loss_text"][0]
    assert np.mean(log["loss_audio"][-20:]) < 0.5 * log["loss_audio"][0]
    metrics = evaluate_binder(TinyBinder.from_pretrained(out), data / "eval", split="all")
    assert metrics["chance"] == pytest.approx(1 / 6)
    assert metrics["text_to_image"] >= 0.6, metrics  # chance 0.17
    assert metrics["audio_to_image"] >= 0.6, metrics
    # the same over the renders that show the whole object, by hand
    views = load_views(data / "eval", "all")
    binder = TinyBinder.from_pretrained(out)
    keep = views.framed
    assert metrics["framed"]["n_views"] == int(keep.sum()) > 0
    txt = binder.embed_texts([canonical_caption(o) for o in views.objects])
    best = (binder.embed_image(views.rgb[keep]) @ txt.T).argmax(-1).numpy()
    names = look_alike(views.objects, views.azimuth_deg[keep])
    rows = np.arange(len(best))
    right = names[rows, best] == names[rows, views.object_index[keep]]
    assert metrics["framed"]["text_to_image"] == pytest.approx(float(right.float().mean()))
    # every object here is single: that subset is the whole split, and there is no composition one
    assert metrics["singles"]["n_views"] == len(views) and "compositions" not in metrics
    assert metrics["singles"]["text_to_image"] == metrics["text_to_image"]
    assert metrics["singles"]["audio_to_image"] == metrics["audio_to_image"]


def test_audio_tower_tells_two_colours_notes_apart(trained, data):
    out, _ = trained
    model = TinyBinder.from_pretrained(out)
    views = load_views(data / "eval", "all")
    ids = [o.id for o in views.objects]
    protos = {}
    for name in ("cube-red", "cube-blue"):  # same shape, timbre and rhythm; only the pitch differs
        rows = np.flatnonzero(views.object_index == ids.index(name))
        protos[name] = F.normalize(model.embed_image(views.rgb[rows]).mean(0), dim=0)
    correct = 0
    for name, other in (("cube-red", "cube-blue"), ("cube-blue", "cube-red")):
        clips = [synthesize(WorldObject.from_id(name), np.random.default_rng([99, k])) for k in range(16)]
        e = model.embed_waveforms(clips)
        correct += int(((e @ protos[name]) > (e @ protos[other])).sum())
    # Chance is 16 of 32; this test-size binder (100 audio steps) gets 26 (measured).
    assert correct >= 24


def test_save_and_load_round_trip_gives_identical_outputs(trained, tmp_path):
    out, _ = trained
    a = TinyBinder.from_pretrained(out)
    a.save_pretrained(tmp_path / "copy")
    b = TinyBinder.from_pretrained(tmp_path / "copy")
    img = torch.rand(2, 32, 32, 3)
    wave = [synthesize(WorldObject.from_id("cube-red"), 3)]
    assert torch.equal(a.embed_image(img), b.embed_image(img))
    assert torch.equal(a.embed_texts(["a red cube"]), b.embed_texts(["a red cube"]))
    assert torch.equal(a.embed_waveforms(wave), b.embed_waveforms(wave))
    assert not any(p.requires_grad for p in b.parameters())
    with pytest.raises(MissingWeightsError, match="model.safetensors"):
        TinyBinder.from_pretrained(tmp_path / "nothing")


EXTRA_IDS = ("cone-red.on.cube-blue", "cube-blue.on.cylinder-red", "sphere-green.left_of.cube-yellow",
             "cube-orange.in_front_of.cylinder-green")


def test_extra_datasets_fill_their_share_of_the_image_text_batches_only(data, tmp_path, monkeypatch):
    import anyto3d.zoo.train_encoders as te

    render_dataset([WorldObject.from_id(i) for i in EXTRA_IDS], 8, tmp_path / "extra" / "train", cfg=TINY, seed=3)
    joined = concat_views([load_views(data / "train", "train"), load_views(tmp_path / "extra" / "train", "train")])
    per_object = joined.rows_per_object()
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        objs, rows = _distinct_batch(joined, per_object, 6, g, extra_from=len(TRAIN_IDS), extra_share=0.5)
        assert len(set(objs)) == 6 and sum(o >= len(TRAIN_IDS) for o in objs) == 3
        assert all(joined.object_index[r] == o for o, r in zip(objs, rows))
    drawn, banked = [], []
    real_captions, real_bank = te._captions_for, te.audio_bank
    monkeypatch.setattr(te, "_captions_for", lambda v, objs, *a: drawn.extend(v.objects[o].id for o in objs) or real_captions(v, objs, *a))
    monkeypatch.setattr(te, "audio_bank", lambda objects, *a: banked.extend(o.id for o in objects) or real_bank(objects, *a))
    train = BinderTrainConfig(batch_size=4, clips_per_object=2, extra_share=0.5)
    log = train_binder(data / "train", tmp_path / "b", steps=3, audio_steps=1, seed=0, cfg=TEST_BINDER, train=train,
                       progress=False, extra_data=(tmp_path / "extra" / "train",))
    assert log["n_extra_objects"] == 4 and log["n_extra_views"] == 32
    assert sum(i in EXTRA_IDS for i in drawn) == len(drawn) // 2 == 6  # 3 batches of 2 + 2
    assert sorted(banked) == sorted(TRAIN_IDS)  # the audio tower learns the split's own objects


def test_training_resumes_from_a_checkpoint_to_the_same_weights(data, tmp_path):
    train = BinderTrainConfig(batch_size=4, clips_per_object=2, checkpoint_every=3)
    kw = dict(seed=3, cfg=TEST_BINDER, train=train, progress=False)
    train_binder(data / "train", tmp_path / "straight", steps=6, audio_steps=4, **kw)
    # An interrupted run: the checkpoint after 3 image-text steps, then a rerun to the end.
    train_binder(data / "train", tmp_path / "resumed", steps=3, audio_steps=0, **kw)
    order, state = CheckpointManager(tmp_path / "resumed" / "checkpoints", 1, prefix="binder-").latest()
    assert (order, state["phase"], state["step"]) == (3, "text", 3)
    train_binder(data / "train", tmp_path / "resumed", steps=6, audio_steps=4, **kw)
    a = TinyBinder.from_pretrained(tmp_path / "straight").state_dict()
    b = TinyBinder.from_pretrained(tmp_path / "resumed").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_log_frequency_front_moves_a_harmonic_series_by_its_pitch_interval(binder):
    """On the log axis a timbre is one pattern at every pitch: a note a fifth up is the same
    spectrum moved by 7 semitones' worth of bins (the premise of the harmonic-stack tower)."""
    front = binder.cfg.audio
    t = torch.arange(2 * front.sample_rate) / front.sample_rate

    def note(f0):
        return sum(a * torch.sin(2 * math.pi * k * f0 * t) for k, a in ((1, 1.0), (2, 0.5), (3, 0.6), (5, 0.4)))

    low, high = (binder.logmel(note(f)[None])[0].mean(-1) for f in (220.0, 220.0 * 2 ** (7 / 12)))
    shift = round(front.bins_per_octave * 7 / 12)
    n = front.bins - 40

    def match(s):  # correlation of the low note's spectrum with the high one's, moved by s bins
        a, b = low[:n] - low[:n].mean(), high[s : s + n] - high[s : s + n].mean()
        return float(a @ b / (a.norm() * b.norm()))

    scores = [match(s) for s in range(40)]
    assert max(range(40), key=scores.__getitem__) == shift and scores[shift] > 0.95, scores
    stack = binder.audio_tower.harmonic_stack(binder.logmel(note(220.0)[None]))
    assert stack.shape[1:3] == (front.harmonics, front.fundamental_bins)


def test_audio_only_retraining_keeps_the_towers_and_matches_a_full_run(trained, data, tmp_path):
    """Retraining only the audio tower of a binder keeps its image and text towers bit for bit,
    and with the same seed lands on the audio tower a from-scratch ``train_binder`` run made."""
    from anyto3d.zoo.train_encoders import retrain_audio

    out, first = trained
    source = tmp_path / "source"
    TinyBinder.from_pretrained(out).save_pretrained(source)
    (source / "train_log.json").write_text((out / "train_log.json").read_text())
    log = retrain_audio(source, data / "train", tmp_path / "new", audio_steps=100, seed=0, cfg=TEST_BINDER,
                        train=BinderTrainConfig(clips_per_object=4, checkpoint_every=50), progress=False)
    a = TinyBinder.from_pretrained(out).state_dict()
    b = TinyBinder.from_pretrained(tmp_path / "new").state_dict()
    towers = [k for k in a if not k.startswith(("audio_tower", "log_scale_audio"))]
    assert towers and all(torch.equal(a[k], b[k]) for k in towers)
    audio = [k for k in a if k.startswith("audio_tower")]
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in audio)
    assert log["text_seconds"] == first["text_seconds"] and log["loss_audio"] == first["loss_audio"]
