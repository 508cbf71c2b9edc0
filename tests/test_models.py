"""Model loading per scale, the roles a method needs, and the supervision built from them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from anyto3d import models as models_mod
from anyto3d.errors import InputError, MissingWeightsError
from anyto3d.methods import method_from_config, phase_from_dict
from anyto3d.models import build_supervision, load_models, needs_for
from anyto3d.reference_view import ReferenceView, reference_camera
from anyto3d.zoo.binder import TinyBinder
from anyto3d.zoo.judge import TinyJudge
from anyto3d.zoo.priors import (
    TinyImagePrior,
    TinyMultiViewPrior,
    TinyNovelViewPrior,
    TinyVideoPrior,
)

torch.set_num_threads(1)
CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(scope="module")
def zoo(test_zoo):
    return test_zoo


def tiny(zoo: Path) -> dict:
    return {"name": "tiny", "models_dir": str(zoo), "weights_dir": None}


def method(name: str, scale: str = "tiny"):
    return method_from_config({"method": yaml.safe_load((CONF / "method" / f"{name}.yaml").read_text()),
                               "model": {"name": scale}})


def test_load_models_returns_the_classes_asked_for_and_caches_them(zoo):
    needs = {"encoder", "ms_encoder", "prior2d", "novel_view", "multiview", "video", "judge"}
    ms = load_models(tiny(zoo), needs)
    assert isinstance(ms.encoder, TinyBinder) and ms.ms_encoder is ms.encoder  # one binder, both roles
    assert isinstance(ms.prior2d, TinyImagePrior) and isinstance(ms.novel_view, TinyNovelViewPrior)
    assert isinstance(ms.multiview, TinyMultiViewPrior) and isinstance(ms.video, TinyVideoPrior)
    assert isinstance(ms.judge, TinyJudge)
    only = load_models(tiny(zoo), {"prior2d"})
    assert only.prior2d is ms.prior2d  # loaded once per process
    assert only.encoder is None and only.novel_view is None and only.judge is None


def test_loading_a_model_leaves_the_random_stream_alone(zoo):
    """A model's first load draws initial weights; a step that loads it cold must continue from the
    same random state as one that finds it cached, or a suite's results depend on its order."""
    models_mod.clear_cache()
    torch.manual_seed(0)
    cold_state = torch.get_rng_state()
    needs = {"encoder", "prior2d", "novel_view", "multiview", "video", "judge"}
    load_models(tiny(zoo), needs)
    assert torch.equal(torch.get_rng_state(), cold_state)
    after_cold = torch.rand(4)
    torch.manual_seed(0)
    load_models(tiny(zoo), needs)  # cached now
    assert torch.equal(torch.rand(4), after_cold)


def test_missing_tiny_model_dir_is_one_error_naming_it(tmp_path):
    (tmp_path / "binder").mkdir()  # present but the 2D prior is not
    with pytest.raises(MissingWeightsError) as info:
        load_models({"name": "tiny", "models_dir": str(tmp_path)}, {"prior2d"})
    assert "prior2d" in str(info.value) and str(tmp_path / "prior2d") in str(info.value)
    assert isinstance(info.value, InputError)
    with pytest.raises(MissingWeightsError, match="tiny binder weights not found"):  # a dir without weights
        load_models({"name": "tiny", "models_dir": str(tmp_path)}, {"encoder"})


def test_missing_paper_weight_is_one_error_naming_the_model(tmp_path, monkeypatch):
    monkeypatch.delenv("ANYTO3D_WEIGHTS", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(MissingWeightsError) as info:
        load_models({"name": "paper", "weights_dir": str(tmp_path / "weights")}, {"prior2d"})
    text = str(info.value)
    assert "sd-2-1-unclip" in text and "nothing is downloaded" in text and str(tmp_path / "weights") in text


def test_bad_scale_role_and_tiny_lora_are_input_errors(zoo):
    with pytest.raises(InputError, match="model.name"):
        load_models({"name": "huge"}, {"prior2d"})
    with pytest.raises(InputError, match="unknown model role"):
        load_models(tiny(zoo), {"clip"})
    with pytest.raises(InputError, match="no VSD/LoRA"):
        load_models(tiny(zoo), {"lora"})


def test_needs_for_follows_the_enabled_loss_terms():
    assert needs_for(method("xbind")) == {"prior2d", "novel_view", "ms_encoder"}
    assert needs_for(method("dreamfusion")) == {"prior2d"}
    # ZeroSDS-3D: only the novel-view prior; at the tiny scale it conditions on the binder's
    # embedding of the reference, so the binder comes along.
    assert needs_for(method("zero_sds_3d")) == {"novel_view"}
    assert needs_for(method("zero_sds_3d"), "tiny") == {"novel_view", "ms_encoder"}


def test_build_supervision_conditions_each_prior_with_its_own_builder(zoo):
    ms = load_models(tiny(zoo), {"ms_encoder", "prior2d", "novel_view"})
    emb = torch.nn.functional.normalize(torch.randn(ms.ms_encoder.dim), dim=0)
    rgb = torch.ones(16, 16, 3)
    rgb[4:12, 4:12] = torch.tensor([0.9, 0.1, 0.1])
    mask = torch.zeros(16, 16, 1)
    mask[4:12, 4:12] = 1.0
    ref = ReferenceView(rgb, mask, reference_camera())
    sup = build_supervision(ms, emb, ref)
    assert torch.equal(sup.prior2d_condition["embedding"], emb[None])
    assert torch.equal(sup.prior2d_condition["noise_level"], torch.zeros(1))
    assert torch.allclose(sup.novel_view_inputs["embedding"], ms.ms_encoder.embed_image(rgb[None]))
    assert sup.binder is ms.ms_encoder and torch.equal(sup.embedding, emb[None])
    # A phase limits what is built to the terms it uses.
    sds_only = phase_from_dict("p", {"losses": {"sds": 1.0}})
    limited = build_supervision(ms, emb, ref, sds_only)
    assert limited.prior2d is ms.prior2d and limited.novel_view is None and limited.binder is None


def test_4dfy_priors_get_the_prompt_input_their_builder_takes(zoo):
    """The tiny multi-view and video priors take C_m; MVDream and Zeroscope take the text."""
    from anyto3d.cameras import CameraSamplerConfig, sample_multiview_cameras
    from anyto3d.models import prompt_inputs

    ms = load_models(tiny(zoo), {"multiview", "video"})
    emb = torch.nn.functional.normalize(torch.randn(1, ms.multiview.config.embedding_dim), dim=-1)
    sup = build_supervision(ms, emb, prompt_text=["a red cube"])
    assert set(sup.multiview_inputs) == {"embedding"} and torch.equal(sup.multiview_inputs["embedding"], emb)
    cams = sample_multiview_cameras(CameraSamplerConfig(), ms.multiview.num_views, torch.Generator().manual_seed(0))
    cond = ms.multiview.build_condition(cameras=cams, **sup.multiview_inputs)
    assert cond["embedding"].shape == (ms.multiview.num_views, emb.shape[1])
    assert torch.equal(sup.video_condition["embedding"], emb)

    class TextOnly:
        def build_condition(self, text=None, cameras=None, **unused):
            return {"text": text}

    assert prompt_inputs(TextOnly(), emb, ["a red cube"]) == {"text": ["a red cube"]}
    with pytest.raises(InputError, match="text-conditioned"):
        prompt_inputs(TextOnly(), emb, None)


def test_clear_cache_forgets_models(zoo):
    first = load_models(tiny(zoo), {"prior2d"}).prior2d
    models_mod.clear_cache()
    assert load_models(tiny(zoo), {"prior2d"}).prior2d is not first


def test_paper_priors_load_in_the_configured_dtype(tmp_path, monkeypatch):
    """``model.dtype``: "auto" is float32 on the CPU (float16 on CUDA); an explicit dtype is
    honoured; anything else is one InputError. Each dtype is its own cache entry."""
    import torch

    from anyto3d.models import clear_cache, paper_dtype
    from anyto3d.priors.sd_unclip import StableUnCLIPPrior

    monkeypatch.delenv("ANYTO3D_WEIGHTS", raising=False)
    StableUnCLIPPrior.build_dummy().save_pretrained(tmp_path / "sd-2-1-unclip")
    cfg = {"name": "paper", "weights_dir": str(tmp_path)}
    clear_cache()
    try:
        assert load_models(cfg, {"prior2d"}).prior2d.dtype == torch.float32  # auto on the CPU
        half = load_models({**cfg, "dtype": "float16"}, {"prior2d"}).prior2d
        assert half.dtype == torch.float16 and half.vae.dtype == torch.float16
    finally:
        clear_cache()
    assert paper_dtype({"dtype": "auto"}, "cuda:0") == torch.float16
    assert paper_dtype({}, "cpu") == torch.float32 and paper_dtype({"dtype": "bfloat16"}, "cpu") == torch.bfloat16
    with pytest.raises(InputError, match="model.dtype"):
        paper_dtype({"dtype": "half"}, "cpu")
