"""The Stable-Diffusion-family base: VAE codec, schedule from the scheduler, text conditioning, save/load.

:class:`LatentDiffusionPrior` holds diffusers/transformers components by name (``vae``, ``unet``,
``scheduler`` and optionally ``text_encoder`` + ``tokenizer``; subclasses add their own) and
provides what every SD-style adapter shares:

* **Latent codec.** ``encode`` resizes images ``[B,3,H,W]`` in [-1,1] to ``image_size`` and
  returns ``posterior · scaling_factor`` where the posterior is ``latent_dist.sample()`` by
  default (threestudio's SDS guidance encodes renders this way; the extra noise is the VAE's own,
  tiny, posterior std) or ``latent_dist.mode()`` with ``posterior="mode"`` (deterministic).
  ``decode`` is the inverse (no clamping, so it stays differentiable). Both keep gradients.
* **Schedule and prediction type** from the scheduler (``NoiseSchedule.from_scheduler`` and
  ``scheduler.config.prediction_type``); :meth:`Prior.predict_noise` converts v-prediction.
* **Text conditioning**: tokenizer + CLIPTextModel → last hidden states ``[B, L, D]`` (SD 2.x
  checkpoints already drop the final text layer in their saved config); the empty-prompt
  embedding is the unconditional branch and is cached, as are prompt embeddings.
* **Save/load** in the diffusers directory layout (one sub-directory per component plus a
  ``model_index.json``), loading only through :func:`anyto3d.priors.weights.resolve_weights`.
* **Dummies**: :meth:`build_dummy` builds real classes at reduced size with random weights
  (diffusers' ``get_dummy_components()`` idea) for tests and CPU smoke runs.

The base is usable as is for a plain text-to-image SD model: its conditioning is
``{"encoder_hidden_states": [B, L, D]}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

from anyto3d.errors import InputError, MissingWeightsError
from anyto3d.priors.base import Condition, NoiseSchedule, Prior
from anyto3d.priors.weights import PAPER_MODELS, layout_files, resolve_weights

# Component kinds for the weights layout; a subclass extends ``component_kinds``.
_DIFFUSERS, _TRANSFORMERS, _SCHEDULER, _TOKENIZER = "diffusers_model", "transformers_model", "scheduler", "tokenizer"


def _import_class(library: str, name: str):
    import importlib

    return getattr(importlib.import_module(library), name)


def dummy_scheduler(prediction_type: str = "epsilon", num_train_timesteps: int = 1000, cls_name: str = "DDIMScheduler"):
    """SD's schedule (scaled-linear β from 0.00085 to 0.012) with the given prediction type."""
    cls = _import_class("diffusers", cls_name)
    return cls(
        num_train_timesteps=num_train_timesteps,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction_type,
        clip_sample=False,
        set_alpha_to_one=False,
    )


def dummy_vae(block_out_channels: tuple[int, ...] = (8, 16), latent_channels: int = 4, scaling_factor: float = 0.18215):
    """A real AutoencoderKL with random weights; downsamples by 2**(len(block_out_channels)-1)."""
    from diffusers import AutoencoderKL

    n = len(block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=min(block_out_channels),
        sample_size=32,
        scaling_factor=scaling_factor,
    )


def dummy_unet(
    sample_size: int = 8,
    in_channels: int = 4,
    out_channels: int = 4,
    block_out_channels: tuple[int, ...] = (16, 32),
    cross_attention_dim: int = 16,
    **extra,
):
    """A real UNet2DConditionModel with random weights (one cross-attention down/up block pair)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=out_channels,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=tuple(block_out_channels),
        layers_per_block=1,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,
        norm_num_groups=min(block_out_channels) // 2,
        **extra,
    )


def dummy_text_encoder(hidden_size: int = 16, vocab_size: int = 49408, projection_dim: int | None = None):
    """A real CLIPTextModel (2 layers) with random weights over the full CLIP vocabulary."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=projection_dim or hidden_size,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModel(cfg)


def cpu_parts(prediction_type: str) -> dict[str, object]:
    """SD's scheduler and the CLIP tokenizer, built on the CPU whatever the default device (the
    networks of :meth:`LatentDiffusionPrior.build_full_size` are built on the GPU; the schedule's
    tables stay where the loaded ones live)."""
    from anyto3d.encoders.clip_tokenizer import clip_tokenizer

    with torch.device("cpu"):
        return {"scheduler": dummy_scheduler(prediction_type), "tokenizer": clip_tokenizer()}


def resize_images(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of [B,C,H,W] to ``size`` (identity when already that size; antialiased when shrinking)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    shrink = images.shape[-2] > size[0] or images.shape[-1] > size[1]
    # antialias when shrinking: a 512² render → 256² without it aliases high frequencies into the latent
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=shrink)


class LatentDiffusionPrior(Prior):
    """Base class of the SD-family adapters (unCLIP, Zero123, SD+LoRA, MVDream, Zeroscope)."""

    #: PAPER_MODELS key used by :meth:`from_pretrained` when no path resolves.
    model_key: ClassVar[str | None] = None
    #: Component name → (library, class name, weights-layout kind). Optional ones may be None.
    component_classes: ClassVar[dict[str, tuple[str, str, str]]] = {
        "vae": ("diffusers", "AutoencoderKL", _DIFFUSERS),
        "unet": ("diffusers", "UNet2DConditionModel", _DIFFUSERS),
        "scheduler": ("diffusers", "DDIMScheduler", _SCHEDULER),
        "text_encoder": ("transformers", "CLIPTextModel", _TRANSFORMERS),
        "tokenizer": ("transformers", "CLIPTokenizer", _TOKENIZER),
    }
    #: Components that may be absent (None).
    optional_components: ClassVar[tuple[str, ...]] = ("text_encoder", "tokenizer")
    #: ``_class_name`` written to model_index.json (the diffusers pipeline this layout matches).
    pipeline_class_name: ClassVar[str] = "StableDiffusionPipeline"
    #: Constructor settings (not components) that save_pretrained records and from_pretrained restores.
    constructor_options: ClassVar[tuple[str, ...]] = ("image_size", "posterior")

    def __init__(
        self,
        vae,
        unet,
        scheduler,
        text_encoder=None,
        tokenizer=None,
        image_size: int | tuple[int, int] | None = None,
        posterior: str = "sample",
        **extra_components,
    ):
        super().__init__(NoiseSchedule.from_scheduler(scheduler))
        if posterior not in ("sample", "mode"):
            raise InputError(f"posterior must be 'sample' or 'mode', got {posterior!r}")
        self.vae, self.unet, self.scheduler = vae, unet, scheduler
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        for name, comp in extra_components.items():
            setattr(self, name, comp)
        self.posterior = posterior
        self.prediction_type = scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise InputError(f"unsupported prediction_type {self.prediction_type!r} in the scheduler config")
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        if image_size is None:
            sample = getattr(unet.config, "sample_size", None)
            if sample is None:
                raise InputError("image_size is required when the UNet config has no sample_size")
            sample = sample if isinstance(sample, (tuple, list)) else (sample, sample)
            image_size = (sample[0] * self.vae_scale_factor, sample[1] * self.vae_scale_factor)
        self.image_size = image_size if isinstance(image_size, (tuple, list)) else (image_size, image_size)
        self.image_size = tuple(int(s) for s in self.image_size)
        self._text_cache: dict[str, torch.Tensor] = {}
        # frozen: losses differentiate through encode/decode w.r.t. the *input*, never the weights
        for module in self.modules():
            if module is not self:
                module.requires_grad_(False)
        self.eval()

    # -- components ---------------------------------------------------------------------------
    def components(self) -> dict[str, object]:
        """Every component present, by its directory name."""
        return {n: getattr(self, n) for n in self.component_classes if getattr(self, n, None) is not None}

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    # -- latent codec -------------------------------------------------------------------------
    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def shift_factor(self) -> float:
        return float(getattr(self.vae.config, "shift_factor", None) or 0.0)

    def _check_images(self, images: torch.Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3:
            raise InputError(f"images must be [B, 3, H, W] in [-1, 1]; got shape {tuple(images.shape)}")

    def encode(
        self, images: torch.Tensor, generator: torch.Generator | None = None, posterior: str | None = None
    ) -> torch.Tensor:
        """[B,3,H,W] in [-1,1] → scaled latents [B,C,h,w] (resized to ``image_size`` first)."""
        self._check_images(images)
        x = resize_images(images, self.image_size).to(self.vae.dtype)
        dist = self.vae.encode(x).latent_dist
        mode = posterior or self.posterior
        z = dist.sample(generator=generator) if mode == "sample" else dist.mode()
        return ((z - self.shift_factor) * self.scaling_factor).to(images.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents → images [B,3,H,W] roughly in [-1,1] (not clamped, so differentiable)."""
        z = latents / self.scaling_factor + self.shift_factor
        return self.vae.decode(z.to(self.vae.dtype)).sample.to(latents.dtype)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one latent."""
        h, w = (s // self.vae_scale_factor for s in self.image_size)
        return (int(self.vae.config.latent_channels), h, w)

    # -- text conditioning --------------------------------------------------------------------
    def _require_text(self) -> None:
        if self.text_encoder is None or self.tokenizer is None:
            raise InputError(f"{type(self).__name__} was built without a text encoder/tokenizer; it takes no text")

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Text → CLIP hidden states [B, L, D], uncached and differentiable in nothing (frozen)."""
        self._require_text()
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise InputError(f"prompts must be a list of strings, got {prompts!r}")
        tok = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        device = next(self.text_encoder.parameters()).device
        return self.text_encoder(tok.input_ids.to(device))[0]

    @torch.no_grad()
    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """Cached :meth:`encode_text`: each distinct prompt is encoded once per prior."""
        self._require_text()
        todo = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if todo:
            for p, e in zip(todo, self.encode_text(todo)):
                self._text_cache[p] = e
        return torch.stack([self._text_cache[p] for p in prompts]).to(self.device, self.dtype)

    def empty_text_embedding(self, batch: int = 1) -> torch.Tensor:
        """The empty-prompt embedding [batch, L, D] (SD's unconditional branch), cached."""
        return self.text_embeddings([""]).expand(batch, -1, -1)

    def _apply(self, fn, *args, **kwargs):
        # moving/casting the module invalidates cached embeddings (they live on the old device)
        self._text_cache = {}
        return super()._apply(fn, *args, **kwargs)

    # -- Prior interface (plain text-to-image; subclasses override) ----------------------------
    def build_condition(self, text: list[str] | None = None, **unused) -> Condition:
        if unused:
            raise InputError(f"{type(self).__name__}.build_condition got unexpected inputs {sorted(unused)}")
        if text is None:
            raise InputError("a text prior needs text=[...]")
        return {"encoder_hidden_states": self.text_embeddings(list(text))}

    def unconditional(self, cond: Condition) -> Condition:
        b = cond["encoder_hidden_states"].shape[0]
        return {"encoder_hidden_states": self.empty_text_embedding(b)}

    def forward_model(self, z_t: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        out = self.unet(
            z_t.to(self.dtype),
            t,
            encoder_hidden_states=cond["encoder_hidden_states"].to(self.dtype),
        ).sample
        return out.to(z_t.dtype)

    # -- save / load ---------------------------------------------------------------------------
    @classmethod
    def required_files(cls, skip: set[str] | frozenset = frozenset()) -> list[str]:
        """Files a saved directory of this prior must hold (every component not in ``skip``)."""
        return layout_files({n: kind for n, (_, _, kind) in cls.component_classes.items() if n not in skip})

    def save_pretrained(self, path: str | Path) -> Path:
        """Write every component in the diffusers layout (safetensors) plus ``model_index.json``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        index = {"_class_name": self.pipeline_class_name, "_anyto3d_prior": type(self).__name__}
        for name, comp in self.components().items():
            comp.save_pretrained(path / name)
            library = self.component_classes[name][0]
            index[name] = [library, type(comp).__name__]
        index.update(self._extra_config())
        (path / "model_index.json").write_text(json.dumps(index, indent=2))
        return path

    def _extra_config(self) -> dict:
        """Adapter settings (``constructor_options``) saved in model_index.json as ``anyto3d_<option>``."""
        out = {}
        for option in self.constructor_options:
            value = getattr(self, option)
            out[f"anyto3d_{option}"] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def _load_component(cls, directory: Path, name: str, torch_dtype: torch.dtype | None):
        library, cls_name, kind = cls.component_classes[name]
        sub = directory / name
        if kind == _SCHEDULER:
            cfg = json.loads((sub / "scheduler_config.json").read_text())
            import diffusers

            sched_cls = getattr(diffusers, cfg.get("_class_name", ""), None) or _import_class(library, cls_name)
            return sched_cls.from_pretrained(sub)
        klass = _import_class(library, cls_name)
        if kind == _TOKENIZER:
            tok = klass.from_pretrained(sub, local_files_only=True)
            if len(tok) < 1000:  # the silent 2-token fallback (research/install.md §3)
                raise MissingWeightsError(
                    f"tokenizer in {sub} loaded with only {len(tok)} tokens; its vocabulary files are missing"
                )
            return tok
        kwargs = {"local_files_only": True}
        if torch_dtype is not None:
            kwargs["torch_dtype"] = torch_dtype
        return klass.from_pretrained(sub, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        local_dir: str | Path | None = None,
        *,
        model_id: str | None = None,
        torch_dtype: torch.dtype | None = None,
        **kwargs,
    ) -> "LatentDiffusionPrior":
        """Load from a diffusers-layout directory, found by :func:`resolve_weights`.

        ``local_dir`` is tried first, then ``$ANYTO3D_WEIGHTS/<repo id>``, then the local Hugging Face
        cache for ``model_id`` (default: this adapter's ``model_key``). Nothing is downloaded.
        ``kwargs`` go to the constructor (e.g. ``image_size``, ``posterior``).
        """
        key = model_id or cls.model_key
        if key is None and local_dir is None:
            raise InputError(f"{cls.__name__}.from_pretrained needs a local_dir or a model_id")
        if key in PAPER_MODELS:
            required = PAPER_MODELS[key].required
        else:  # an unregistered directory: optional components count only where present
            present = {n for n in cls.optional_components if local_dir is not None and (Path(local_dir) / n).is_dir()}
            required = cls.required_files(skip=set(cls.optional_components) - present)
        directory = resolve_weights(key or str(local_dir), required, local_dir=local_dir)
        comps = {}
        for name in cls.component_classes:
            if name in cls.optional_components and not (directory / name).is_dir():
                comps[name] = None
                continue
            comps[name] = cls._load_component(directory, name, torch_dtype)
        index_file = directory / "model_index.json"
        if index_file.is_file():  # adapter settings saved by save_pretrained (``anyto3d_<option>``)
            index = json.loads(index_file.read_text())
            for option in cls.constructor_options:
                if f"anyto3d_{option}" in index:
                    value = index[f"anyto3d_{option}"]
                    kwargs.setdefault(option, tuple(value) if isinstance(value, list) else value)
        return cls(**comps, **kwargs)

    # -- dummies -------------------------------------------------------------------------------
    @classmethod
    def dummy_components(
        cls,
        prediction_type: str = "epsilon",
        latent_size: int = 8,
        unet_channels: tuple[int, ...] = (16, 32),
        text_hidden_size: int = 16,
        with_text: bool = True,
    ) -> dict[str, object]:
        """Reduced-size real components with random weights (deterministic under a fixed seed)."""
        from anyto3d.encoders.clip_tokenizer import clip_tokenizer

        comps = {
            "vae": dummy_vae(),
            "unet": dummy_unet(sample_size=latent_size, block_out_channels=unet_channels, cross_attention_dim=text_hidden_size),
            "scheduler": dummy_scheduler(prediction_type),
            "text_encoder": dummy_text_encoder(text_hidden_size) if with_text else None,
            "tokenizer": clip_tokenizer() if with_text else None,
        }
        return comps

    #: Constructor settings of the release that :meth:`build_full_size` passes (Zeroscope's frame size).
    full_size_options: ClassVar[dict] = {}

    @classmethod
    def full_size_components(cls) -> dict[str, object]:
        """SD 2.1 base at full size with random weights (ε-prediction, 512² images, OpenCLIP-H text)."""
        from anyto3d.priors import architectures as arch

        return {"vae": arch.sd_vae(), "unet": arch.sd_unet(arch.SD2_UNET), "text_encoder": arch.sd2_text_encoder(),
                **cpu_parts("epsilon")}

    @classmethod
    def build_full_size(cls, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float16,
                        seed: int = 0) -> "LatentDiffusionPrior":
        """This adapter around the release's architecture at full size with random weights
        (:mod:`anyto3d.priors.architectures`), built on ``device`` directly; its networks are cast
        to ``dtype`` as ``from_pretrained(torch_dtype=...)`` would load them."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            with torch.device(device):
                comps = cls.full_size_components()
        for comp in comps.values():
            if isinstance(comp, torch.nn.Module):
                # nn.Module.to, not ModelMixin.to: the latter warns about modules to keep in fp32,
                # and these architectures have none
                torch.nn.Module.to(comp, dtype)
        return cls(**comps, **cls.full_size_options)

    @classmethod
    def build_dummy(cls, seed: int = 0, **sizes) -> "LatentDiffusionPrior":
        """A tiny random-weight instance of this adapter for tests (``sizes`` → :meth:`dummy_components`)."""
        ctor = {k: sizes.pop(k) for k in list(sizes) if k in cls.constructor_options}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            comps = cls.dummy_components(**sizes)
        return cls(**comps, **ctor)


__all__ = ["LatentDiffusionPrior", "cpu_parts", "dummy_scheduler", "dummy_text_encoder", "dummy_unet", "dummy_vae", "resize_images"]
