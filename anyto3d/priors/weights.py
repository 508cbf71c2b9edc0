"""Where paper-model weights come from: a local directory or the local Hugging Face cache, never the network.

DESIGN §3 "Weights": nothing is downloaded at run time. :func:`resolve_weights` looks, in order,
in an explicit local directory, in ``$ANYTO3D_WEIGHTS/<repo id>``, and in the local Hugging Face
cache (``huggingface_hub.try_to_load_from_cache``, which only reads files on disk). When the
weights are not there it raises one :class:`MissingWeightsError` that names the model, the files
expected, every place looked and the setting that points at them.

:data:`PAPER_MODELS` lists every paper model the project can use, with the files its adapter
loads, so that a ``models check`` command can report what is present.

A required file may have alternatives, written ``"a|b"`` (e.g. a ``.safetensors`` or a ``.bin``
weight file — real repositories ship either); the entry is satisfied when any one exists.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from anyto3d.errors import MissingWeightsError

ENV_VAR = "ANYTO3D_WEIGHTS"

# What each kind of component directory must hold (diffusers / transformers save layouts).
_COMPONENT_FILES: dict[str, tuple[str, ...]] = {
    "diffusers_model": (
        "config.json",
        "diffusion_pytorch_model.safetensors|diffusion_pytorch_model.bin|diffusion_pytorch_model.safetensors.index.json",
    ),
    "transformers_model": ("config.json", "model.safetensors|pytorch_model.bin|model.safetensors.index.json"),
    "scheduler": ("scheduler_config.json",),
    "tokenizer": ("vocab.json|tokenizer.json", "merges.txt|tokenizer.json"),
}


def component_files(name: str, kind: str) -> list[str]:
    """The files a component directory ``name/`` of the given kind must hold (relative paths)."""
    if kind not in _COMPONENT_FILES:
        raise ValueError(f"unknown component kind {kind!r}; choose from {sorted(_COMPONENT_FILES)}")
    return ["|".join(f"{name}/{alt}" for alt in entry.split("|")) for entry in _COMPONENT_FILES[kind]]


def layout_files(components: dict[str, str]) -> list[str]:
    """Required files of a diffusers-layout directory given ``{component name: kind}``."""
    return [f for name, kind in components.items() for f in component_files(name, kind)]


@dataclass(frozen=True)
class ModelSpec:
    """A paper model: its Hugging Face repo id (None when it is not on the Hub) and the files loaded."""

    repo_id: str | None
    required: list[str] = field(default_factory=list)
    description: str = ""
    license: str = ""


_SD_TEXT = {"vae": "diffusers_model", "unet": "diffusers_model", "scheduler": "scheduler",
            "text_encoder": "transformers_model", "tokenizer": "tokenizer"}  # fmt: skip

PAPER_MODELS: dict[str, ModelSpec] = {
    "sd-2-1-unclip": ModelSpec(
        "stabilityai/stable-diffusion-2-1-unclip",
        layout_files({**_SD_TEXT, "image_normalizer": "diffusers_model", "image_noising_scheduler": "scheduler"}),
        "XBind's 2D prior: SD 2.1 unCLIP (OpenCLIP ViT-H image embedding → class_labels), v-prediction, 768²",
        "openrail++",
    ),
    "zero123": ModelSpec(
        "bennyguo/zero123-xl-diffusers",
        layout_files({"vae": "diffusers_model", "unet": "diffusers_model", "scheduler": "scheduler",
                      "image_encoder": "transformers_model", "clip_camera_projection": "diffusers_model"}),  # fmt: skip
        "XBind's 3D-aware prior: Zero-1-to-3 XL in diffusers layout, 256²",
        "mit (Zero-1-to-3 code) / Objaverse-derived weights",
    ),
    "sd-2-1-base": ModelSpec(
        "stabilityai/stable-diffusion-2-1-base",
        layout_files(_SD_TEXT),
        "SD 2.1 base (ε-prediction, 512²): VSD's pretrained score",
        "openrail++",
    ),
    "sd-2-1": ModelSpec(
        "stabilityai/stable-diffusion-2-1",
        layout_files(_SD_TEXT),
        "SD 2.1 (v-prediction, 768²): the LoRA base of VSD in the 4D-fy/ProlificDreamer releases",
        "openrail++",
    ),
    "mvdream": ModelSpec(
        "ashawkey/mvdream-sd2.1-diffusers",
        layout_files(_SD_TEXT),
        "MVDream sd-v2.1-base-4view in diffusers layout (4D-fy's 3D-aware text-to-image prior)",
        "openrail++",
    ),
    "zeroscope_v2_576w": ModelSpec(
        "cerspense/zeroscope_v2_576w",
        layout_files(_SD_TEXT),
        "Zeroscope v2 576w text-to-video (UNet3DConditionModel), 4D-fy's video prior",
        "cc-by-nc-4.0",
    ),
    "imagebind_huge": ModelSpec(
        None,
        ["imagebind_huge.pth"],
        "ImageBind huge (1024-d aligned space); published on dl.fbaipublicfiles.com, not the Hub: "
        "put imagebind_huge.pth under $ANYTO3D_WEIGHTS/imagebind_huge/",
        "cc-by-nc-4.0",
    ),
    "open_clip-ViT-H-14": ModelSpec(
        "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        ["open_clip_model.safetensors|open_clip_pytorch_model.bin"],
        "OpenCLIP ViT-H/14 laion2b_s32b_b79k (the image tower unCLIP and ImageBind share)",
        "mit",
    ),
    "open_clip-ViT-B-32": ModelSpec(
        "timm/vit_base_patch32_clip_224.openai",
        ["open_clip_model.safetensors|open_clip_pytorch_model.bin"],
        "OpenAI CLIP ViT-B/32 through open_clip: CLIP-R precision and the 4D-fy CLIP score",
        "mit",
    ),
}


def _alternatives(entry: str) -> list[str]:
    return entry.split("|")


def _missing_in(directory: Path, required: list[str]) -> list[str]:
    return [e for e in required if not any((directory / alt).is_file() for alt in _alternatives(e))]


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache directory, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def _find_in_hf_cache(repo_id: str, required: list[str], cache_dir: Path) -> Path | None:
    """The cached snapshot directory holding every required file, or None. Reads the disk only."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers/diffusers
        return None
    snapshot: Path | None = None
    for entry in required:
        for alt in _alternatives(entry):
            found = try_to_load_from_cache(repo_id, alt, cache_dir=str(cache_dir))
            if isinstance(found, str):
                root = Path(found)
                for _ in Path(alt).parts:
                    root = root.parent
                if snapshot is None:
                    snapshot = root
                if root == snapshot:
                    break
        else:
            return None
    return snapshot


def _describe(entry: str) -> str:
    alts = _alternatives(entry)
    return alts[0] if len(alts) == 1 else f"{alts[0]} (or {', '.join(alts[1:])})"


def resolve_weights(
    model_id: str,
    required: list[str] | None = None,
    local_dir: str | os.PathLike | None = None,
    env_var: str = ENV_VAR,
) -> Path:
    """The local directory holding ``model_id``'s ``required`` files; never touches the network.

    ``model_id`` is a :data:`PAPER_MODELS` key or a Hugging Face repo id. ``required`` defaults to
    the registry's list. Looks in ``local_dir`` (the model directory itself), then
    ``$<env_var>/<repo id>`` (and ``$<env_var>/<key>`` for a registry key), then the local
    Hugging Face cache. Raises :class:`MissingWeightsError` naming everything tried.
    """
    spec = PAPER_MODELS.get(model_id)
    repo_id = spec.repo_id if spec is not None else model_id
    if required is None:
        if spec is None:
            raise MissingWeightsError(
                f"unknown model {model_id!r}: pass the files it needs, or use one of {sorted(PAPER_MODELS)}"
            )
        required = spec.required
    required = list(required)

    looked: list[str] = []
    candidates: list[Path] = []
    if local_dir is not None:
        candidates.append(Path(local_dir).expanduser())
    root = os.environ.get(env_var)
    names = [n for n in dict.fromkeys([repo_id, model_id]) if n]
    if root:
        candidates += [Path(root).expanduser() / n for n in names]
    for directory in candidates:
        if directory.is_dir():
            missing = _missing_in(directory, required)
            if not missing:
                return directory
            looked.append(f"{directory} (missing {', '.join(_describe(m) for m in missing)})")
        else:
            looked.append(f"{directory} (no such directory)")
    if not root:
        looked.append(f"${env_var} (not set)")

    cache = hf_cache_dir()
    if repo_id:
        found = _find_in_hf_cache(repo_id, required, cache)
        if found is not None:
            return found
        looked.append(f"Hugging Face cache {cache} (repo {repo_id}: not cached or incomplete)")

    files = "\n  ".join(_describe(r) for r in required)
    where = "\n  ".join(looked)
    hub_hint = (
        f" or download {repo_id!r} into the Hugging Face cache on a machine with network access "
        f"(e.g. `huggingface-cli download {repo_id}`)"
        if repo_id
        else ""
    )
    raise MissingWeightsError(
        f"weights for {model_id!r} not found (nothing is downloaded at run time).\n"
        f"Files expected:\n  {files}\nLooked in:\n  {where}\n"
        f"Point at them with ${env_var}=<dir> (holding {names[0]}/...), or a local_dir/model path setting,"
        f"{hub_hint}."
    )
