"""MVDream (Shi et al.) as a Prior: four views of one object denoised jointly, with camera embeddings.

MVDream is not in diffusers; it is SD 2.1 base with two changes, both rebuilt here from diffusers
parts:

* **Multi-view self-attention.** In every transformer block the self-attention (``attn1``) runs
  over the tokens of all N views of one object together — hidden states ``[B·N, HW, C]`` are
  reshaped to ``[B, N·HW, C]`` before attention and back after — so views exchange information
  while cross-attention to the text and the feed-forward stay per view (MVDream's
  ``BasicTransformerBlock3D``). :class:`MultiViewAttnProcessor` does this as a diffusers attention
  processor; no weights change, so an SD UNet checkpoint maps key for key.
* **Camera embedding.** The flattened 4×4 camera (16 values) goes through a 2-layer MLP
  ``Linear(16, 4C) → SiLU → Linear(4C, 4C)`` that is added to the time embedding: exactly a
  diffusers ``TimestepEmbedding`` used as the UNet's class embedding
  (``class_embed_type="projection"``, ``projection_class_embeddings_input_dim=16``).

Batch layout: a batch is ``B`` objects × ``N = num_views`` views, **object-major** (rows
``k·N … k·N+N−1`` are the views of object ``k``), for latents, text and cameras alike. The
unconditional branch keeps the cameras and drops the text (as the release does), so
:meth:`Prior.guided_noise` — which stacks ``[cond; uncond]`` along the batch — keeps every group of N
views intact. CFG is ``ε_u + s(ε_c − ε_u)``; threestudio's MVDream guidance uses this form with
s = 50 (its SDS guidance's ``s + 1`` quirk does not apply here).

Camera input: threestudio's ``normalize_camera`` — the c2w with its translation scaled to unit
length, flattened row-major. Our world convention (z-up, OpenGL camera axes, azimuth from +x toward
+y) is threestudio's, whose c2w MVDream receives unchanged; MVDream's own "front" (azimuth 0 in its
``get_camera``) sits on the −y axis of this world.

Weights. The release is an ldm checkpoint (``sd-v2.1-base-4view.pt``: ``model.diffusion_model.*``
UNet keys + ``camera_embed.{0,2}``, plus VAE and OpenCLIP text encoder). Three ways in:

1. :meth:`MVDreamPrior.from_pretrained` on our own save format (diffusers layout with a
   ``UNet2DConditionModel`` UNet; what :meth:`save_pretrained` writes);
2. the same call on ``ashawkey/mvdream-sd2.1-diffusers`` (the registry's ``"mvdream"``): its UNet
   directory holds a custom ``MultiViewUNetModel`` with ldm key names, converted on load by
   :func:`convert_mvdream_unet_state_dict`;
3. :meth:`MVDreamPrior.from_ldm_checkpoint` on the original ``.pt`` (or a ``.safetensors`` of it;
   found in ``$ANYTO3D_WEIGHTS/MVDream/MVDream/`` or the local HF cache when no path is given): the
   UNet and camera MLP come from the checkpoint; VAE, text encoder, tokenizer and scheduler from a
   local SD 2.1 base directory (MVDream trains the UNet only, so these are SD's).

The ldm → diffusers key mapping uses diffusers' own ``convert_ldm_unet_checkpoint`` plus the camera
MLP rename; it is tested by a round trip through an independently written inverse mapping on a
reduced-size UNet, not against the real checkpoint (not available here).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import torch

from anyto3d.cameras import CameraBatch
from anyto3d.errors import InputError, MissingWeightsError
from anyto3d.priors.base import Condition
from anyto3d.priors.latent import LatentDiffusionPrior, cpu_parts, dummy_unet
from anyto3d.priors.weights import PAPER_MODELS, resolve_weights

CAMERA_DIM = 16
LDM_UNET_PREFIX = "model.diffusion_model."
#: The original release: an ldm state dict in this Hugging Face repo.
MVDREAM_LDM_REPO, MVDREAM_LDM_FILE = "MVDream/MVDream", "sd-v2.1-base-4view.pt"

#: MVDream's ``sd-v2-base.yaml`` UNet parameters (MultiViewUNetModel), the release's architecture.
MVDREAM_SD21_UNET_PARAMS: dict = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "attention_resolutions": [4, 2, 1],
    "num_res_blocks": 2,
    "channel_mult": [1, 2, 4, 4],
    "num_head_channels": 64,
    "transformer_depth": 1,
    "context_dim": 1024,
    "camera_dim": 16,
}


# ---------------------------------------------------------------------------------------------
# Multi-view attention
# ---------------------------------------------------------------------------------------------


class MultiViewAttnProcessor:
    """A diffusers attention processor whose self-attention spans the N views of each object.

    ``joint_views=True`` (self-attention layers): ``[B·N, L, C] → [B, N·L, C]``, attend, reshape
    back. ``joint_views=False`` (cross-attention layers): plain attention. ``num_views`` arrives
    through the UNet's ``cross_attention_kwargs``; both kinds accept it so diffusers passes it
    without warnings.
    """

    def __init__(self, joint_views: bool):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.joint_views = joint_views
        self._attention = AttnProcessor2_0()

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        num_views: int = 1,
    ) -> torch.Tensor:
        if not self.joint_views or num_views == 1 or encoder_hidden_states is not None:
            return self._attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if hidden_states.dim() != 3 or attention_mask is not None:
            raise InputError("multi-view attention expects token sequences [B·N, L, C] and no attention mask")
        batch_views, length, channels = hidden_states.shape
        if batch_views % num_views:
            raise InputError(f"batch of {batch_views} views is not a multiple of num_views={num_views}")
        joint = hidden_states.reshape(batch_views // num_views, num_views * length, channels)
        out = self._attention(attn, joint, None, None, temb)
        return out.reshape(batch_views, length, channels)


def install_multiview_attention(unet) -> None:
    """Give every self-attention (``attn1``) of ``unet`` multi-view attention; cross-attention stays."""
    processors = {
        name: MultiViewAttnProcessor(joint_views=name.endswith("attn1.processor")) for name in unet.attn_processors
    }
    unet.set_attn_processor(processors)


def normalize_camera(c2w: torch.Tensor) -> torch.Tensor:
    """MVDream's camera input: c2w ``[B,4,4]`` with the camera position scaled to unit length → ``[B,16]``."""
    if c2w.dim() != 3 or c2w.shape[-2:] != (4, 4):
        raise InputError(f"camera c2w must be [B, 4, 4]; got {tuple(c2w.shape)}")
    position = c2w[:, :3, 3]
    unit = position / (position.norm(dim=-1, keepdim=True) + 1e-8)
    normalized = torch.cat([c2w[:, :3, :3], unit[:, :, None]], dim=2)
    normalized = torch.cat([normalized, c2w[:, 3:, :]], dim=1)
    return normalized.reshape(c2w.shape[0], CAMERA_DIM)


# ---------------------------------------------------------------------------------------------
# ldm checkpoint → diffusers
# ---------------------------------------------------------------------------------------------


def unet_config_from_ldm(params: dict, norm_num_groups: int = 32) -> dict:
    """``UNet2DConditionModel`` config for MVDream's ``MultiViewUNetModel`` parameters.

    ldm's GroupNorms have 32 groups; ``norm_num_groups`` exists only for reduced-size tests.
    """
    try:
        channels = [params["model_channels"] * m for m in params["channel_mult"]]
        attention_at = set(params["attention_resolutions"])
        head_channels = params["num_head_channels"]
        context_dim = params["context_dim"]
    except KeyError as err:
        raise InputError(f"MVDream UNet parameters lack {err}") from None
    if head_channels in (None, -1):
        raise InputError("only num_head_channels-style MVDream configs (SD 2.x, as released) are supported")
    has_attention = [2**level in attention_at for level in range(len(channels))]
    return {
        "sample_size": params.get("image_size", 32),
        "in_channels": params.get("in_channels", 4),
        "out_channels": params.get("out_channels", 4),
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in has_attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attention)],
        "block_out_channels": channels,
        "layers_per_block": params["num_res_blocks"],
        "cross_attention_dim": context_dim,
        # diffusers' "attention_head_dim" of SD UNets is the number of heads (a naming quirk)
        "attention_head_dim": [c // head_channels for c in channels],
        "use_linear_projection": True,
        "transformer_layers_per_block": params.get("transformer_depth", 1),
        "class_embed_type": "projection",
        "projection_class_embeddings_input_dim": params.get("camera_dim", CAMERA_DIM),
        "norm_num_groups": norm_num_groups,
    }


def convert_mvdream_unet_state_dict(ldm_state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """MVDream UNet weights with ldm key names (with or without ``model.diffusion_model.``) → diffusers names.

    The UNet body goes through diffusers' ``convert_ldm_unet_checkpoint``; the camera MLP
    ``camera_embed.{0,2}`` becomes ``class_embedding.linear_{1,2}``.
    """
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    prefixed = {(k if k.startswith(LDM_UNET_PREFIX) else LDM_UNET_PREFIX + k): v for k, v in ldm_state.items()}
    body_config = {k: v for k, v in config.items() if k not in ("class_embed_type",)}
    converted = convert_ldm_unet_checkpoint(prefixed, body_config)
    for ldm_index, linear in (("0", "linear_1"), ("2", "linear_2")):
        for kind in ("weight", "bias"):
            key = f"{LDM_UNET_PREFIX}camera_embed.{ldm_index}.{kind}"
            if key not in prefixed:
                raise InputError(f"the MVDream checkpoint has no camera MLP ({key[len(LDM_UNET_PREFIX):]})")
            converted[f"class_embedding.{linear}.{kind}"] = prefixed[key]
    return converted


def mvdream_unet_from_ldm(ldm_state: dict[str, torch.Tensor], params: dict, norm_num_groups: int = 32):
    """A diffusers ``UNet2DConditionModel`` holding MVDream's UNet + camera MLP (strict key check)."""
    from diffusers import UNet2DConditionModel

    config = unet_config_from_ldm(params, norm_num_groups)
    unet = UNet2DConditionModel(**config)
    converted = convert_mvdream_unet_state_dict(ldm_state, config)
    result = unet.load_state_dict(converted, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise InputError(
            "MVDream UNet weights do not match the architecture: "
            f"missing {result.missing_keys[:4]}, unexpected {result.unexpected_keys[:4]}"
        )
    return unet


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a pickle loaded with ``weights_only=True``."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


# ---------------------------------------------------------------------------------------------
# The prior
# ---------------------------------------------------------------------------------------------


class MVDreamPrior(LatentDiffusionPrior):
    """MVDream sd-v2.1-base-4view: text + per-view cameras → ε for N views denoised jointly.

    ``from_pretrained(local_dir=None, ...)`` (inherited) loads our save format or
    ``ashawkey/mvdream-sd2.1-diffusers`` (its ldm-named UNet converted in :meth:`_load_component`);
    ``from_ldm_checkpoint`` loads the original release. ``num_views`` is saved and restored.
    """

    model_key: ClassVar[str | None] = "mvdream"
    constructor_options: ClassVar[tuple[str, ...]] = (*LatentDiffusionPrior.constructor_options, "num_views")

    def __init__(
        self,
        vae,
        unet,
        scheduler,
        text_encoder=None,
        tokenizer=None,
        image_size: int | tuple[int, int] | None = None,
        posterior: str = "sample",
        num_views: int = 4,
    ):
        super().__init__(vae, unet, scheduler, text_encoder, tokenizer, image_size=image_size, posterior=posterior)
        cfg = unet.config
        if cfg.class_embed_type != "projection" or cfg.projection_class_embeddings_input_dim != CAMERA_DIM:
            raise InputError(
                "an MVDream UNet has a 16-d camera MLP as its class embedding "
                "(class_embed_type='projection', projection_class_embeddings_input_dim=16)"
            )
        if num_views < 1:
            raise InputError(f"num_views must be >= 1, got {num_views}")
        self.num_views = int(num_views)
        install_multiview_attention(unet)

    # -- conditioning ---------------------------------------------------------------------------
    def build_condition(
        self,
        text: list[str] | None = None,
        cameras: CameraBatch | None = None,
        negative_text: list[str] | None = None,
        **unused,
    ) -> Condition:
        """Text + cameras (``len(cameras)`` a multiple of ``num_views``, object-major) → conditioning.

        ``text``: one prompt for everything, one per object, or one per view.
        ``negative_text`` (same rule) replaces the empty prompt in the unconditional branch
        (threestudio's MVDream config uses a long negative prompt).
        Returns ``{"encoder_hidden_states": [B·N, L, D], "camera": [B·N, 16]}`` plus
        ``"negative_encoder_hidden_states"`` when a negative prompt is given.
        """
        if unused:
            raise InputError(f"{type(self).__name__}.build_condition got unexpected inputs {sorted(unused)}")
        if text is None or cameras is None:
            raise InputError("MVDream needs text=[...] and cameras=CameraBatch")
        if not isinstance(cameras, CameraBatch):
            raise InputError(f"cameras must be a CameraBatch, got {type(cameras).__name__}")
        n_views = len(cameras)
        if n_views == 0 or n_views % self.num_views:
            raise InputError(f"{n_views} cameras is not a positive multiple of num_views={self.num_views}")
        cond = {
            "encoder_hidden_states": self.text_embeddings(self._per_view(list(text), n_views, "text")),
            "camera": normalize_camera(cameras.c2w).to(self.device, self.dtype),
        }
        if negative_text is not None:
            negative = self._per_view(list(negative_text), n_views, "negative_text")
            cond["negative_encoder_hidden_states"] = self.text_embeddings(negative)
        return cond

    def _per_view(self, prompts: list[str], n_views: int, name: str) -> list[str]:
        if len(prompts) == 1:
            return prompts * n_views
        if len(prompts) == n_views // self.num_views:
            return [p for p in prompts for _ in range(self.num_views)]
        if len(prompts) == n_views:
            return prompts
        raise InputError(
            f"{len(prompts)} {name} prompts for {n_views // self.num_views} objects × {self.num_views} views "
            "(give one, one per object, or one per view)"
        )

    def unconditional(self, cond: Condition) -> Condition:
        """Same cameras, text dropped (empty prompt, or the negative prompt when given)."""
        out = dict(cond)
        if "negative_encoder_hidden_states" in cond:
            out["encoder_hidden_states"] = cond["negative_encoder_hidden_states"]
        else:
            out["encoder_hidden_states"] = self.empty_text_embedding(cond["encoder_hidden_states"].shape[0])
        return out

    # -- denoiser -------------------------------------------------------------------------------
    def forward_model(self, z_t: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        """ε for ``[B·N, C, h, w]`` latents; the N views of each object attend to one another."""
        if z_t.shape[0] % self.num_views:
            raise InputError(f"batch of {z_t.shape[0]} latents is not a multiple of num_views={self.num_views}")
        out = self.unet(
            z_t.to(self.dtype),
            t,
            encoder_hidden_states=cond["encoder_hidden_states"].to(self.dtype),
            class_labels=cond["camera"].to(self.dtype),
            cross_attention_kwargs={"num_views": self.num_views},
        ).sample
        return out.to(z_t.dtype)

    # -- save / load ----------------------------------------------------------------------------
    @classmethod
    def _load_component(cls, directory: Path, name: str, torch_dtype: torch.dtype | None):
        if name != "unet":
            return super()._load_component(directory, name, torch_dtype)
        sub = directory / "unet"
        config = json.loads((sub / "config.json").read_text())
        if config.get("_class_name") == "MultiViewUNetModel":  # ashawkey/mvdream-sd2.1-diffusers
            names = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
            weights = next((sub / f for f in names if (sub / f).is_file()), None)
            if weights is None:
                raise MissingWeightsError(f"{sub} has no diffusion_pytorch_model.safetensors or .bin")
            params = {k: v for k, v in config.items() if not k.startswith("_")}
            unet = mvdream_unet_from_ldm(load_state_dict_file(weights), params)
            return unet.to(torch_dtype) if torch_dtype is not None else unet
        return super()._load_component(directory, name, torch_dtype)

    @classmethod
    def from_ldm_checkpoint(
        cls,
        checkpoint: str | Path | None = None,
        sd_base_dir: str | Path | None = None,
        unet_params: dict | None = None,
        torch_dtype: torch.dtype | None = None,
        **kwargs,
    ) -> "MVDreamPrior":
        """The original release (``sd-v2.1-base-4view.pt``, or a ``.safetensors`` of it) → prior.

        ``checkpoint`` is the file or a directory holding ``*4view*.pt|.safetensors``; when None,
        ``sd-v2.1-base-4view.pt`` is looked up like every weight (``$ANYTO3D_WEIGHTS/MVDream/MVDream/``,
        then the local HF cache of ``MVDream/MVDream``). UNet + camera MLP come from the checkpoint;
        VAE, text encoder, tokenizer and scheduler from a local SD 2.1 base directory (``sd_base_dir``,
        else ``$ANYTO3D_WEIGHTS`` / the HF cache for ``stabilityai/stable-diffusion-2-1-base``). Save the
        result with :meth:`save_pretrained` to skip the conversion next time.
        """
        if checkpoint is None:
            path = resolve_weights(MVDREAM_LDM_REPO, [MVDREAM_LDM_FILE]) / MVDREAM_LDM_FILE
        else:
            path = Path(checkpoint).expanduser()
        if path.is_dir():
            found = sorted([*path.glob("*4view*.pt"), *path.glob("*4view*.safetensors")])
            if not found:
                raise MissingWeightsError(
                    f"no MVDream checkpoint (*4view*.pt / *.safetensors, e.g. {MVDREAM_LDM_FILE} from the "
                    f"{MVDREAM_LDM_REPO} release) in {path}"
                )
            path = found[0]
        if not path.is_file():
            raise MissingWeightsError(
                f"MVDream checkpoint {path} not found. Expected the ldm release file {MVDREAM_LDM_FILE} "
                f"(Hugging Face repo {MVDREAM_LDM_REPO}); nothing is downloaded at run time."
            )
        state = load_state_dict_file(path)
        if not any(k.startswith(LDM_UNET_PREFIX) for k in state):
            raise InputError(f"{path} is not an ldm checkpoint (no '{LDM_UNET_PREFIX}*' keys)")
        unet = mvdream_unet_from_ldm(state, unet_params or MVDREAM_SD21_UNET_PARAMS)
        del state
        base = resolve_weights("sd-2-1-base", PAPER_MODELS["sd-2-1-base"].required, local_dir=sd_base_dir)
        shared = ("vae", "scheduler", "text_encoder", "tokenizer")
        comps = {n: LatentDiffusionPrior._load_component(base, n, torch_dtype) for n in shared}
        if torch_dtype is not None:
            unet = unet.to(torch_dtype)
        return cls(unet=unet, **comps, **kwargs)

    # -- dummies --------------------------------------------------------------------------------
    @classmethod
    def full_size_components(cls) -> dict[str, object]:
        """MVDream (sd-v2.1-base-4view) at full size, random weights: SD 2.1 base with the camera MLP, 256²."""
        from anyto3d.priors import architectures as arch

        return {"vae": arch.sd_vae(256), "unet": arch.sd_unet(unet_config_from_ldm(MVDREAM_SD21_UNET_PARAMS)),
                "text_encoder": arch.sd2_text_encoder(), **cpu_parts("epsilon")}

    @classmethod
    def dummy_components(
        cls,
        prediction_type: str = "epsilon",
        latent_size: int = 8,
        unet_channels: tuple[int, ...] = (16, 32),
        text_hidden_size: int = 16,
        with_text: bool = True,
    ) -> dict[str, object]:
        """SD dummies with MVDream's UNet: linear projections (SD 2.x) and the 16-d camera MLP."""
        comps = super().dummy_components(prediction_type, latent_size, unet_channels, text_hidden_size, with_text)
        comps["unet"] = dummy_unet(
            sample_size=latent_size,
            block_out_channels=unet_channels,
            cross_attention_dim=text_hidden_size,
            use_linear_projection=True,
            class_embed_type="projection",
            projection_class_embeddings_input_dim=CAMERA_DIM,
        )
        return comps


__all__ = [
    "MVDREAM_LDM_FILE",
    "MVDREAM_LDM_REPO",
    "MVDREAM_SD21_UNET_PARAMS",
    "MVDreamPrior",
    "MultiViewAttnProcessor",
    "convert_mvdream_unet_state_dict",
    "install_multiview_attention",
    "mvdream_unet_from_ldm",
    "normalize_camera",
    "unet_config_from_ldm",
]
