"""Stable Diffusion 2.1 base with a LoRA copy ε_φ and a camera embedding: the two scores of VSD.

4D-fy's image update (its Eq. 4) is ``w(t)(ε_φ(z_t; t, y) − ε'_φ(z_t; t, y, T))``: the pretrained
text-to-image score minus a LoRA-finetuned, camera-conditioned score, where the LoRA model is
trained on the renders with the standard diffusion loss (Eq. 5). This adapter provides both scores
from **one** UNet:

* **pretrained branch** — the conditioning has no ``"camera"`` key. LoRA is switched off
  (diffusers' peft integration, ``disable_adapters``) and no class embedding is used, so the output
  is exactly SD's. Its unconditional branch is the empty prompt; the VSD loss uses CFG 7.5 with
  view-dependent text (threestudio).
* **LoRA branch** — the conditioning carries ``"camera"`` ``[B, 16]`` (flattened c2w, see
  :meth:`StableDiffusionVSDPrior.camera_condition`). LoRA (rank 4 on every attention projection
  ``to_q/to_k/to_v/to_out.0``, the diffusers ``LoRAAttnProcessor`` default threestudio uses) is on,
  and a ``TimestepEmbedding(16, 4·C)`` of the camera is the UNet's class embedding (added to the
  time embedding). Its "unconditional" branch keeps the text and zeroes the camera — a zero camera
  means "no camera", the input the 10 % camera dropout of LoRA training teaches (the dropout is the
  loss's job; ``camera_condition(c2w, drop_mask)`` applies it). threestudio uses CFG 1.0 here.

Prediction types per branch: the pretrained branch predicts what the scheduler says (ε for SD 2.1
base). threestudio/4D-fy load a *second* UNet (SD 2.1, 768, v-prediction) as the LoRA base; here the
LoRA shares the pretrained UNet (threestudio's "single model" mode, which it uses whenever the two
paths agree), so the LoRA branch defaults to the same prediction type. ``lora_prediction_type=
"v_prediction"`` trains and reads the LoRA branch as a v-model instead (its output is converted to
ε by the schedule, and :meth:`lora_target` returns v). Starting a v-LoRA on an ε base is far from
the base's function, so it is offered for experiments, not as the default.

With :mod:`anyto3d.losses.vsd`, pass the prior as ``prior`` and ``prior.lora_branch`` (a
:class:`VSDLoRABranch`: a Prior view of the LoRA branch sharing every module, reporting the LoRA
prediction type) as ``lora_prior``; the optimiser of the fine-tuning step takes
``prior.lora_parameters()`` (LoRA + camera MLP; nothing else requires gradients).

The camera embedding's last layer starts at zero (``camera_embedding_init="zero"``) so that at
initialisation the LoRA branch equals the pretrained model with the same text — the VSD gradient
starts at the CFG difference instead of at a random camera offset. threestudio initialises it like
any ``TimestepEmbedding`` (``"default"``).

CFG everywhere is ``ε_u + s(ε_c − ε_u)`` (:func:`anyto3d.priors.base.classifier_free_guidance`);
threestudio's SDS guidance uses ``s + 1`` in this form, its VSD guidance uses this form directly.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from anyto3d.errors import InputError
from anyto3d.priors.base import Condition, Prior
from anyto3d.priors.latent import LatentDiffusionPrior

#: The attention projections LoRA adapts (diffusers' LoRAAttnProcessor covered exactly these).
LORA_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
ADAPTER_NAME = "vsd_lora"
CAMERA_DIM = 16
_LORA_WEIGHTS = "lora_weights.safetensors"
_LORA_CONFIG = "lora_config.json"


def _alpha_bar(schedule, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return schedule.alpha_bar(t.to(like.device).long().reshape(-1).expand(like.shape[0]), like)


class StableDiffusionVSDPrior(LatentDiffusionPrior):
    """SD 2.1 base as ε_pretrained plus its LoRA/camera copy ε_LoRA for VSD (module docstring)."""

    model_key: ClassVar[str | None] = "sd-2-1-base"
    constructor_options: ClassVar[tuple[str, ...]] = (
        *LatentDiffusionPrior.constructor_options,
        "lora_rank",
        "lora_alpha",
        "lora_prediction_type",
        "camera_embedding_init",
    )

    def __init__(
        self,
        vae,
        unet,
        scheduler,
        text_encoder=None,
        tokenizer=None,
        image_size: int | tuple[int, int] | None = None,
        posterior: str = "sample",
        lora_rank: int = 4,
        lora_alpha: float | None = None,
        lora_prediction_type: str | None = None,
        camera_embedding_init: str = "zero",
    ):
        super().__init__(vae, unet, scheduler, text_encoder, tokenizer, image_size=image_size, posterior=posterior)
        if getattr(unet, "class_embedding", None) is not None:
            raise InputError(
                "the VSD prior needs a UNet without a class embedding (the camera embedding takes that slot)"
            )
        if lora_rank < 1:
            raise InputError(f"lora_rank must be >= 1, got {lora_rank}")
        self.lora_prediction_type = lora_prediction_type or self.prediction_type
        if self.lora_prediction_type not in ("epsilon", "v_prediction"):
            raise InputError(f"lora_prediction_type must be 'epsilon' or 'v_prediction', got {lora_prediction_type!r}")
        if camera_embedding_init not in ("zero", "default"):
            raise InputError(f"camera_embedding_init must be 'zero' or 'default', got {camera_embedding_init!r}")
        self.lora_rank, self.lora_alpha = int(lora_rank), float(lora_alpha if lora_alpha is not None else lora_rank)
        self.camera_embedding_init = camera_embedding_init

        from diffusers.models.embeddings import TimestepEmbedding
        from peft import LoraConfig

        unet.add_adapter(
            LoraConfig(r=self.lora_rank, lora_alpha=self.lora_alpha, target_modules=list(LORA_TARGET_MODULES)),
            adapter_name=ADAPTER_NAME,
        )
        time_embed_dim = unet.time_embedding.linear_2.out_features
        self.camera_embedding = TimestepEmbedding(CAMERA_DIM, time_embed_dim)
        if camera_embedding_init == "zero":
            nn.init.zeros_(self.camera_embedding.linear_2.weight)
            nn.init.zeros_(self.camera_embedding.linear_2.bias)
        self.camera_embedding.to(device=self.device, dtype=self.dtype)
        for p in self.lora_parameters():
            p.requires_grad_(True)
        # not a registered submodule: it shares this prior's modules and must not duplicate its state
        object.__setattr__(self, "_lora_branch_view", VSDLoRABranch(self))

    @property
    def lora_branch(self) -> "VSDLoRABranch":
        """ε'_φ as a Prior of its own (the ``lora_prior`` of :mod:`anyto3d.losses.vsd`), sharing this UNet."""
        return self._lora_branch_view

    # -- trainable part -------------------------------------------------------------------------
    def lora_parameters(self) -> list[nn.Parameter]:
        """The parameters the LoRA fine-tuning step (4D-fy Eq. 5) optimises: LoRA + camera embedding."""
        lora = [p for n, p in self.unet.named_parameters() if ".lora_" in n]
        return lora + list(self.camera_embedding.parameters())

    # -- conditioning ---------------------------------------------------------------------------
    @staticmethod
    def camera_condition(c2w: torch.Tensor, drop_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Flattened camera-to-world matrices ``[B, 16]`` (row-major), zero where ``drop_mask`` is True.

        A zero vector is the "no camera" input of the LoRA branch (its unconditional branch, and
        the 10 % camera dropout of LoRA training).
        """
        if c2w.dim() != 3 or c2w.shape[-2:] != (4, 4):
            raise InputError(f"camera c2w must be [B, 4, 4]; got {tuple(c2w.shape)}")
        flat = c2w.reshape(c2w.shape[0], CAMERA_DIM)
        if drop_mask is None:
            return flat
        drop_mask = torch.as_tensor(drop_mask, device=flat.device).reshape(-1)
        if drop_mask.shape[0] != flat.shape[0]:
            raise InputError(f"drop_mask has {drop_mask.shape[0]} entries for {flat.shape[0]} cameras")
        return flat * (~drop_mask.bool()).to(flat.dtype)[:, None]

    def build_condition(
        self,
        text: list[str] | None = None,
        camera_c2w: torch.Tensor | None = None,
        drop_mask: torch.Tensor | None = None,
        **unused,
    ) -> Condition:
        """Conditioning of the pretrained branch (``camera_c2w=None``) or of the LoRA branch.

        Returns ``{"encoder_hidden_states": [B, L, D]}`` or, with cameras,
        ``{"encoder_hidden_states": [B, L, D], "camera": [B, 16]}``. One prompt is broadcast to
        every camera; otherwise there is one prompt per camera.
        """
        if unused:
            raise InputError(f"{type(self).__name__}.build_condition got unexpected inputs {sorted(unused)}")
        if text is None:
            raise InputError("the VSD prior needs text=[...]")
        text = list(text)
        if camera_c2w is None:
            if drop_mask is not None:
                raise InputError("drop_mask applies to cameras; no camera_c2w was given")
            return {"encoder_hidden_states": self.text_embeddings(text)}
        camera = self.camera_condition(camera_c2w, drop_mask).to(self.device, self.dtype)
        if len(text) == 1:
            text = text * camera.shape[0]
        if len(text) != camera.shape[0]:
            raise InputError(f"{len(text)} prompts for {camera.shape[0]} cameras (give one prompt, or one per camera)")
        return {"encoder_hidden_states": self.text_embeddings(text), "camera": camera}

    @staticmethod
    def is_lora_condition(cond: Condition) -> bool:
        return "camera" in cond

    def unconditional(self, cond: Condition) -> Condition:
        """Pretrained branch: the empty prompt. LoRA branch: same text, zero ("no") camera."""
        if self.is_lora_condition(cond):
            return {"encoder_hidden_states": cond["encoder_hidden_states"], "camera": torch.zeros_like(cond["camera"])}
        return super().unconditional(cond)

    # -- denoiser -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _pretrained_branch(self):
        self.unet.disable_adapters()
        try:
            yield
        finally:
            self.unet.enable_adapters()

    @contextlib.contextmanager
    def _lora_branch(self):
        # the camera MLP is the class embedding only for this call; the UNet itself stays SD's
        self.unet.class_embedding = self.camera_embedding
        try:
            yield
        finally:
            self.unet.class_embedding = None

    def forward_model(self, z_t: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        """Raw UNet output of the branch ``cond`` selects (ε or v per that branch's prediction type)."""
        text = cond["encoder_hidden_states"].to(self.dtype)
        if self.is_lora_condition(cond):
            with self._lora_branch():
                camera = cond["camera"].to(self.dtype)
                out = self.unet(z_t.to(self.dtype), t, encoder_hidden_states=text, class_labels=camera)
        else:
            with self._pretrained_branch():
                out = self.unet(z_t.to(self.dtype), t, encoder_hidden_states=text)
        return out.sample.to(z_t.dtype)

    def branch_prediction_type(self, cond: Condition) -> str:
        return self.lora_prediction_type if self.is_lora_condition(cond) else self.prediction_type

    def predict_noise(self, z_t: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        """ε̂ of the branch ``cond`` selects; a v-prediction branch is converted to ε."""
        t = t.to(z_t.device).long().reshape(-1).expand(z_t.shape[0])
        out = self.forward_model(z_t, t, cond)
        if self.branch_prediction_type(cond) == "v_prediction":
            return self.schedule.v_to_eps(z_t, out, t)
        return out

    def lora_target(self, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Regression target of the LoRA branch's raw output in Eq. 5: ε, or v = √ᾱ ε − √(1−ᾱ) z0."""
        if self.lora_prediction_type == "epsilon":
            return noise
        a = _alpha_bar(self.schedule, t, z0)
        return a.sqrt() * noise - (1 - a).sqrt() * z0

    # -- save / load ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _base_unet_state_dict(self):
        """While active, ``unet.state_dict()`` holds SD's own keys only (LoRA layers folded away)."""

        def strip_lora(module, state_dict, prefix, local_metadata):
            for key in list(state_dict):
                if ".lora_" in key:
                    del state_dict[key]
                elif ".base_layer." in key:
                    state_dict[key.replace(".base_layer.", ".")] = state_dict.pop(key)

        handle = self.unet.register_state_dict_post_hook(strip_lora)
        try:
            yield
        finally:
            handle.remove()

    def save_pretrained(self, path: str | Path) -> Path:
        """SD's components in the diffusers layout (UNet without LoRA) plus ``lora/`` (LoRA + camera)."""
        with self._base_unet_state_dict():
            path = super().save_pretrained(path)
        self.save_lora(path / "lora")
        return path

    def _lora_settings(self) -> dict:
        return {
            "lora_rank": self.lora_rank,
            "lora_alpha": self.lora_alpha,
            "lora_prediction_type": self.lora_prediction_type,
            "camera_embedding_init": self.camera_embedding_init,
            "target_modules": list(LORA_TARGET_MODULES),
        }

    def save_lora(self, path: str | Path) -> Path:
        """Write the trainable part only: ``lora_weights.safetensors`` + ``lora_config.json``."""
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {f"unet.{k}": v for k, v in get_peft_model_state_dict(self.unet, adapter_name=ADAPTER_NAME).items()}
        tensors.update({f"camera_embedding.{k}": v for k, v in self.camera_embedding.state_dict().items()})
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path / _LORA_WEIGHTS))
        (path / _LORA_CONFIG).write_text(json.dumps(self._lora_settings(), indent=2))
        return path

    def load_lora(self, path: str | Path) -> None:
        """Load what :meth:`save_lora` wrote (the rank must match this prior's)."""
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / _LORA_WEIGHTS).is_file():
            raise InputError(f"no LoRA weights at {path / _LORA_WEIGHTS}")
        settings = json.loads((path / _LORA_CONFIG).read_text()) if (path / _LORA_CONFIG).is_file() else {}
        if settings.get("lora_rank", self.lora_rank) != self.lora_rank:
            raise InputError(f"LoRA in {path} has rank {settings['lora_rank']}, this prior has rank {self.lora_rank}")
        tensors = load_file(str(path / _LORA_WEIGHTS))
        unet_part = {k.removeprefix("unet."): v for k, v in tensors.items() if k.startswith("unet.")}
        camera_part = {
            k.removeprefix("camera_embedding."): v for k, v in tensors.items() if k.startswith("camera_embedding.")
        }
        result = set_peft_model_state_dict(self.unet, unet_part, adapter_name=ADAPTER_NAME)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise InputError(f"LoRA weights in {path} do not fit this UNet: unexpected {unexpected[:3]}...")
        self.camera_embedding.load_state_dict(camera_part)

    @classmethod
    def from_pretrained(cls, local_dir: str | Path | None = None, *, lora_dir: str | Path | None = None, **kwargs):
        """SD 2.1 base from a local directory or the HF cache (never downloaded), plus an optional LoRA.

        ``lora_dir`` defaults to ``<local_dir>/lora`` when that exists (what :meth:`save_pretrained`
        writes). LoRA settings saved there (rank, α, prediction type) become constructor defaults.
        """
        if lora_dir is None and local_dir is not None and (Path(local_dir) / "lora").is_dir():
            lora_dir = Path(local_dir) / "lora"
        if lora_dir is not None and (Path(lora_dir) / _LORA_CONFIG).is_file():
            settings = json.loads((Path(lora_dir) / _LORA_CONFIG).read_text())
            for key in ("lora_rank", "lora_alpha", "lora_prediction_type", "camera_embedding_init"):
                if key in settings:
                    kwargs.setdefault(key, settings[key])
        prior = super().from_pretrained(local_dir, **kwargs)
        if lora_dir is not None:
            prior.load_lora(lora_dir)
        return prior

class VSDLoRABranch(Prior):
    """The LoRA branch ε'_φ of a :class:`StableDiffusionVSDPrior` seen as a separate Prior.

    It shares the parent's UNet (with its LoRA layers), camera embedding, VAE, text encoder and
    schedule — nothing is copied — and reports the LoRA branch's ``prediction_type``, so generic
    code (``losses.diffusion.diffusion_target``, ``Prior.predict_noise``) trains and reads it
    correctly even when the LoRA branch is a v-model on an ε base. Its conditionings must carry a
    camera; ``parameters()`` yields the shared UNet and camera MLP, of which only the LoRA and camera
    weights require gradients (:meth:`lora_parameters`).
    """

    def __init__(self, parent: StableDiffusionVSDPrior):
        super().__init__(parent.schedule)
        object.__setattr__(self, "_parent", parent)  # a plain reference: the parent owns the state
        self.unet, self.camera_embedding = parent.unet, parent.camera_embedding

    @property
    def prediction_type(self) -> str:  # type: ignore[override]
        return self._parent.lora_prediction_type

    @property
    def image_size(self):  # type: ignore[override]
        return self._parent.image_size

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self._parent.latent_shape

    def encode(self, images: torch.Tensor, **kwargs) -> torch.Tensor:
        return self._parent.encode(images, **kwargs)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self._parent.decode(latents)

    def lora_parameters(self) -> list[nn.Parameter]:
        return self._parent.lora_parameters()

    def _require_camera(self, cond: Condition) -> None:
        if not self._parent.is_lora_condition(cond):
            raise InputError("the LoRA branch needs a camera conditioning (build_condition(..., camera_c2w=...))")

    def build_condition(self, text=None, camera_c2w=None, drop_mask=None, **unused) -> Condition:
        if camera_c2w is None:
            raise InputError("the LoRA branch needs camera_c2w (zero rows, or drop_mask, mean 'no camera')")
        return self._parent.build_condition(text=text, camera_c2w=camera_c2w, drop_mask=drop_mask, **unused)

    def unconditional(self, cond: Condition) -> Condition:
        self._require_camera(cond)
        return self._parent.unconditional(cond)

    def forward_model(self, z_t: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        self._require_camera(cond)
        return self._parent.forward_model(z_t, t, cond)

    def lora_target(self, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self._parent.lora_target(z0, noise, t)


__all__ = ["LORA_TARGET_MODULES", "StableDiffusionVSDPrior", "VSDLoRABranch"]
