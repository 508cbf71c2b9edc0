"""Load what a method needs, at the tiny or the paper scale, behind one :class:`ModelSet`.

``model=tiny`` reads the tiny world's zoo (:func:`anyto3d.zoo.build.model_dir`: the packaged
``anyto3d/zoo/models/`` or ``$ANYTO3D_TINY_MODELS``, or ``model.models_dir``); ``model=paper``
reads the paper weights through :func:`anyto3d.priors.weights.resolve_weights` (``model.weights_dir``
plays the role of ``$ANYTO3D_WEIGHTS``; the local Hugging Face cache is the last place looked).
A missing model is one :class:`~anyto3d.errors.MissingWeightsError` (an ``InputError``: exit 2)
naming what is missing and where it was looked for. Nothing is downloaded.

Roles (the names ``needs`` takes):

============  =====================================  ==========================================
role          tiny                                   paper
============  =====================================  ==========================================
encoder       TinyBinder (text/image/audio)           ImageBind huge
ms_encoder    the binder (its ``embed_image``)        ImageBind huge (its vision tower)
prior2d       TinyImagePrior                          SD 2.1 unCLIP (SD 2.1 base with VSD)
novel_view    TinyNovelViewPrior                      Zero-1-to-3 XL
multiview     TinyMultiViewPrior                      MVDream
video         TinyVideoPrior                          Zeroscope v2 576w
lora          (none: no tiny VSD model)               SD 2.1 base + LoRA branch (VSD)
judge         TinyJudge (evaluation only)             (none: the paper metrics use CLIP)
============  =====================================  ==========================================

Loaded models are cached per (scale, directory, device, role) in this process, so a suite
that generates many prompts loads each model once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from anyto3d.errors import InputError, MissingWeightsError
from anyto3d.methods import MethodConfig

#: Every role :func:`load_models` understands.
ROLES = ("encoder", "ms_encoder", "prior2d", "novel_view", "multiview", "video", "lora", "judge")
#: Tiny-zoo directory name of each role.
TINY_DIRS = {
    "encoder": "binder",
    "ms_encoder": "binder",
    "prior2d": "prior2d",
    "novel_view": "novelview",
    "multiview": "multiview",
    "video": "video",
    "judge": "judge",
}
#: Tiny models only evaluation loads (never a loss): a retrained judge re-scores, not re-optimises.
EVALUATION_ONLY_TINY = ("judge",)
#: Loss-term supervision name (``methods.LOSS_TERMS``) → the role that provides it.
_SUPERVISION_ROLE = {
    "prior2d": "prior2d",
    "novel_view": "novel_view",
    "binder": "ms_encoder",
    "multiview": "multiview",
    "video": "video",
    "lora": "lora",
}


@dataclass
class ModelSet:
    """The models one generation uses; a role not asked for is ``None``."""

    scale: str
    encoder: Any = None
    ms_encoder: Any = None
    prior2d: Any = None
    novel_view: Any = None
    multiview: Any = None
    video: Any = None
    lora: Any = None
    judge: Any = None

    def require(self, role: str, why: str = ""):
        value = getattr(self, role)
        if value is None:
            raise InputError(f"model role {role!r} was not loaded{' (' + why + ')' if why else ''}; pass it in needs")
        return value


# ---------------------------------------------------------------------------------------------
# What a method needs
# ---------------------------------------------------------------------------------------------


def needs_for(method: MethodConfig, scale: str | None = None) -> set[str]:
    """The roles the enabled loss terms of the method's enabled phases use.

    sds / augmented_sds / cds → prior2d; sds_3d / cds_3d → novel_view; modality_similarity →
    ms_encoder; multiview_sds → multiview; video_sds → video; vsd → prior2d + lora. At the tiny
    scale the novel-view prior also takes the reference's binder image embedding, so
    ``novel_view`` brings ``ms_encoder`` with it.
    """
    roles = {_SUPERVISION_ROLE[n] for n in method.needs if n in _SUPERVISION_ROLE}
    if scale == "tiny" and "novel_view" in roles:
        roles.add("ms_encoder")
    return roles


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

_CACHE: dict[tuple, Any] = {}
_CACHE_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forget every cached model (tests; freeing memory between suites)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _scale(model_cfg: Mapping) -> str:
    name = (model_cfg or {}).get("name")
    if name not in ("tiny", "paper"):
        raise InputError(f"model.name must be 'tiny' or 'paper', got {name!r}")
    return name


def load_models(model_cfg: Mapping, needs: Iterable[str], device: str | torch.device = "cpu") -> ModelSet:
    """A :class:`ModelSet` holding the roles in ``needs`` (:data:`ROLES`), loaded once per process."""
    scale = _scale(model_cfg)
    needs = set(needs)
    unknown = sorted(needs - set(ROLES))
    if unknown:
        raise InputError(f"unknown model role(s) {unknown}; roles: {list(ROLES)}")
    device = str(device)
    loader = _load_tiny if scale == "tiny" else _load_paper
    models = ModelSet(scale=scale)
    for role in ROLES:  # a fixed order, so errors and loading are deterministic
        if role in needs:
            setattr(models, role, loader(role, model_cfg, device))
    return models


def _cached(key: tuple, build):
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
    # Building a model draws its initial weights before loading the trained ones. Without the
    # fork, the first step in a process to load a model would continue from other random draws
    # than a step that found it cached, and a suite's results would depend on its order.
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):
        value = build()
    with _CACHE_LOCK:
        return _CACHE.setdefault(key, value)


def tiny_models_root(model_cfg: Mapping) -> Path:
    """The zoo root ``model.models_dir`` (else ``$ANYTO3D_TINY_MODELS``, else the packaged models)."""
    from anyto3d.zoo.build import model_dir

    return model_dir("", (model_cfg or {}).get("models_dir"))


def _load_tiny(role: str, model_cfg: Mapping, device: str):
    from anyto3d.zoo.build import model_dir

    if role == "lora":
        raise InputError("the tiny world has no VSD/LoRA model: methods using 'vsd' run only with model=paper")
    directory = model_dir(TINY_DIRS[role], (model_cfg or {}).get("models_dir")).resolve()
    if not directory.is_dir():
        raise MissingWeightsError(
            f"tiny model {TINY_DIRS[role]!r} (for {role}) not found: no directory {directory} "
            "(build the zoo with `dvc repro zoo`, or point model.models_dir / $ANYTO3D_TINY_MODELS at one)"
        )

    def build():
        if TINY_DIRS[role] == "binder":
            from anyto3d.zoo.binder import TinyBinder

            return TinyBinder.from_pretrained(directory).to(device)
        if role == "judge":
            from anyto3d.zoo.judge import TinyJudge

            return TinyJudge.from_pretrained(directory).to(device)
        from anyto3d.zoo.priors import load_tiny_prior

        prior = load_tiny_prior(directory, device)
        prior.requires_grad_(False)
        return prior

    # encoder and ms_encoder are the same binder: one cache entry per directory.
    return _cached(("tiny", str(directory), device), build)


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def paper_dtype(model_cfg: Mapping | None, device: str | torch.device) -> torch.dtype:
    """The frozen paper priors' dtype, ``model.dtype``: "auto" is float16 on CUDA (half the
    weights' memory; threestudio's SDS guidance and 4D-fy's Zeroscope load half precision too)
    and float32 on the CPU, where half precision is slow; or "float32", "float16", "bfloat16"."""
    name = str((model_cfg or {}).get("dtype") or "auto")
    if name == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    if name not in DTYPES:
        raise InputError(f"model.dtype must be 'auto' or one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def _paper_dir(model_cfg: Mapping, key: str) -> Path | None:
    """``weights_dir/<repo id>`` or ``weights_dir/<key>`` when the config names a weights root."""
    from anyto3d.priors.weights import PAPER_MODELS

    root = (model_cfg or {}).get("weights_dir")
    if not root:
        return None
    root = Path(root).expanduser()
    spec = PAPER_MODELS.get(key)
    names = [n for n in ((spec.repo_id if spec else None), key) if n]
    for name in names:
        if (root / name).is_dir():
            return root / name
    return root / names[-1]


def _load_paper(role: str, model_cfg: Mapping, device: str):
    if role == "judge":
        raise InputError("the judge is a tiny-world model; paper-scale evaluation uses CLIP (anyto3d.encoders)")
    root = (model_cfg or {}).get("weights_dir")
    dtype = paper_dtype(model_cfg, device)  # the frozen priors'; ImageBind and VSD's model stay float32

    def build():
        if role in ("encoder", "ms_encoder"):
            from anyto3d.encoders.imagebind import ImageBindConfig, ImageBindEncoder

            local = _paper_dir(model_cfg, "imagebind_huge")
            return ImageBindEncoder.from_pretrained(ImageBindConfig(local_dir=str(local) if local else None)).to(device)
        if role == "prior2d":
            from anyto3d.priors.sd_unclip import StableUnCLIPPrior

            prior = StableUnCLIPPrior.from_pretrained(_paper_dir(model_cfg, "sd-2-1-unclip"), torch_dtype=dtype)
        elif role == "novel_view":
            from anyto3d.priors.zero123 import Zero123Prior

            prior = Zero123Prior.from_pretrained(_paper_dir(model_cfg, "zero123"), torch_dtype=dtype)
        elif role == "multiview":
            from anyto3d.priors.mvdream import MVDreamPrior

            prior = MVDreamPrior.from_pretrained(_paper_dir(model_cfg, "mvdream"), torch_dtype=dtype)
        elif role == "video":
            from anyto3d.priors.zeroscope import ZeroscopePrior

            prior = ZeroscopePrior.from_pretrained(_paper_dir(model_cfg, "zeroscope_v2_576w"), torch_dtype=dtype)
        else:  # lora: SD 2.1 base with its LoRA branch (VSD)
            from anyto3d.priors.sd_vsd import StableDiffusionVSDPrior, VSDLoRABranch

            # float32: its LoRA and camera MLP are trained (4D-fy Eq. 5); half-precision training is unchecked
            return VSDLoRABranch(StableDiffusionVSDPrior.from_pretrained(_paper_dir(model_cfg, "sd-2-1-base")).to(device))
        prior = prior.to(device)
        prior.requires_grad_(False)
        return prior

    key_role = "encoder" if role == "ms_encoder" else role
    return _cached(("paper", str(root), device, str(dtype), key_role), build)


# ---------------------------------------------------------------------------------------------
# Supervision
# ---------------------------------------------------------------------------------------------


def build_supervision(models: ModelSet, embedding: torch.Tensor, reference=None, phase=None,
                      prompt_text: list[str] | None = None, seed: int = 0):
    """The :class:`~anyto3d.optimize.Supervision` of a phase from the loaded models.

    ``embedding`` is C_m ([D] or [1, D], unit norm); ``reference`` the
    :class:`~anyto3d.reference_view.ReferenceView`; ``phase`` (a ``PhaseConfig``) limits the
    conditions built to the terms it uses (all loaded models otherwise). Each prior's condition is
    built by its own ``build_condition``: the tiny 2D prior takes the binder embedding, unCLIP
    takes it as its image embedding (ImageBind shares unCLIP's OpenCLIP ViT-H space, BindDiffusion).
    """
    from anyto3d.losses.cds import FixedNoise
    from anyto3d.optimize import Supervision

    emb = torch.as_tensor(embedding, dtype=torch.float32).reshape(1, -1)
    used = None
    if phase is not None:
        used = {_SUPERVISION_ROLE[n] for t in phase.losses.values() if not t.is_off() for n in t.needs
                if n in _SUPERVISION_ROLE}

    def wanted(role: str) -> bool:
        return getattr(models, role) is not None and (used is None or role in used)

    sup = Supervision(embedding=emb, reference=reference, prompt_text=prompt_text, cds_noise=FixedNoise(seed=seed))
    if wanted("prior2d"):
        sup.prior2d = models.prior2d
        sup.prior2d_condition = prior2d_condition(models.prior2d, emb)
    if wanted("ms_encoder"):
        sup.binder = models.ms_encoder
    if wanted("novel_view"):
        sup.novel_view = models.novel_view
        sup.novel_view_inputs = _novel_view_inputs(models, reference)
    if wanted("multiview"):
        sup.multiview = models.multiview
        sup.multiview_inputs = prompt_inputs(models.multiview, emb, prompt_text)
    if wanted("video"):
        sup.video = models.video
        sup.video_condition = models.video.build_condition(**prompt_inputs(models.video, emb, prompt_text))
    if wanted("lora"):
        sup.lora = models.lora
    return sup


def prior2d_condition(prior, embedding: torch.Tensor):
    """The 2D prior's condition on C_m ``[1, D]`` (its own ``build_condition``)."""
    names = set(_condition_parameters(prior))
    if "image_embedding" in names:  # SD 2.1 unCLIP
        return prior.build_condition(image_embedding=embedding.to(_device_of(prior)))
    if "embedding" in names:  # the tiny 2D prior
        return prior.build_condition(embedding=embedding)
    raise InputError(f"{type(prior).__name__} cannot be conditioned on an embedding (text-only prior)")


def _novel_view_inputs(models: ModelSet, reference) -> dict:
    """Extra ``build_condition`` inputs of the novel-view prior: the reference's image embedding
    when the prior takes one (the tiny prior was trained on the binder's embedding of x_r)."""
    prior = models.novel_view
    dim = int(getattr(getattr(prior, "config", None), "embedding_dim", 0) or 0)
    if dim <= 0:
        return {}
    if reference is None:
        raise InputError("the novel-view prior needs the reference view")
    encoder = models.require("ms_encoder", "the novel-view prior conditions on the reference's image embedding")
    with torch.no_grad():
        return {"embedding": encoder.embed_image(reference.rgb[None].float())}


def prompt_inputs(prior, embedding: torch.Tensor, prompt_text) -> dict:
    """The prompt's ``build_condition`` inputs for a prior that takes either C_m (the tiny
    multi-view and video priors) or the prompt's text (MVDream, Zeroscope)."""
    if "embedding" in set(_condition_parameters(prior)):
        return {"embedding": embedding}
    if prompt_text is None:
        raise InputError(f"{type(prior).__name__} is text-conditioned: give the prompt text")
    return {"text": prompt_text}


def _condition_parameters(prior) -> list[str]:
    import inspect

    return [p for p in inspect.signature(prior.build_condition).parameters if p not in ("self", "unused")]


def _device_of(module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


__all__ = [
    "ROLES",
    "ModelSet",
    "build_supervision",
    "clear_cache",
    "load_models",
    "needs_for",
    "prior2d_condition",
    "prompt_inputs",
    "tiny_models_root",
]

