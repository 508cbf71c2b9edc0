"""Step ``encode_modality``: the prompt (text / image / audio parts, weighted) → C_m.

Reads ``prompt.json`` (:func:`steps.pipeline.prompt_json`) and the optional ``image`` / ``audio``
files, loads and validates every part with :mod:`anyto3d.modality` **before** anything is
embedded or written (a bad input is one ``InputError`` and leaves nothing in the store), embeds
them with the aligned encoder (the tiny binder or ImageBind) and combines them
(:func:`anyto3d.encoders.combine.embed_combined`). Writes ``embedding.safetensors`` (key
``embedding``, float32 [D], unit norm), the normalised ``prompt.json`` and the prompt files
copied as ``image.png`` / ``audio.wav``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from anyto3d.errors import InputError
from anyto3d.modality import load_audio, load_image, validate_text
from anyto3d.models import load_models
from steps.contract import step

COPIED = {"image": "image.png", "audio": "audio.wav"}
PNG_MODES = ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA")


def load_parts(prompt: dict, files: dict[str, Path]) -> list[tuple[str, object, float, dict]]:
    """Validated ``(modality, loaded prompt, weight, normalised part)`` for every part of ``prompt``."""
    parts = prompt.get("parts") if isinstance(prompt, dict) else None
    if not parts or not isinstance(parts, list):
        raise InputError("prompt.json needs a non-empty 'parts' list")
    out = []
    for i, part in enumerate(parts):
        modality = part.get("modality") if isinstance(part, dict) else None
        try:
            weight = float(part.get("weight", 1.0))
        except (TypeError, ValueError):
            raise InputError(f"prompt part {i}: weight {part.get('weight')!r} is not a number") from None
        if modality == "text":
            loaded = validate_text(part.get("text", ""))
            normal = {"modality": "text", "weight": weight, "text": loaded.text}
        elif modality in COPIED:
            if modality not in files:
                raise InputError(f"prompt part {i} is an {modality} prompt but no {modality} file was given")
            loaded = load_image(files[modality]) if modality == "image" else load_audio(files[modality])
            normal = {"modality": modality, "weight": weight, "file": COPIED[modality]}
        else:
            raise InputError(f"prompt part {i}: unknown modality {modality!r}; choose text, image or audio")
        out.append((modality, loaded, weight, normal))
    unused = sorted(set(files) - {m for m, *_ in out})
    if unused:
        raise InputError(f"{unused} file(s) given but prompt.json has no such part")
    return out


ROLES = frozenset({"encoder"})  # the model roles this step loads (its store key holds their weights)


@step("encode_modality", 1, config_keys=("model", "seed"), inputs=("prompt",), optional_inputs=("image", "audio"),
      code_modules=("anyto3d.models",), roles=lambda cfg: ROLES)
def run(inputs: dict[str, Path], cfg: dict, out_dir: Path, device: str, work_dir: Path) -> dict:
    from safetensors.torch import save_file

    from anyto3d.encoders.combine import embed_combined

    try:
        prompt = json.loads(Path(inputs["prompt"]).read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"prompt.json is unreadable: {err}") from None
    files = {m: Path(inputs[m]) for m in COPIED if inputs.get(m) is not None}
    parts = load_parts(prompt, files)  # every input validated before anything is written

    encoder = load_models(cfg["model"], ROLES, device).encoder
    embedding = embed_combined(encoder, [(m, loaded, w) for m, loaded, w, _ in parts]).reshape(-1)
    embedding = torch.nn.functional.normalize(embedding.float().cpu(), dim=0).contiguous()

    save_file({"embedding": embedding}, str(out_dir / "embedding.safetensors"))
    for modality, name in COPIED.items():
        if modality in files:
            if modality == "image":  # PNG whatever the input format, EXIF orientation applied
                from PIL import Image, ImageOps

                with Image.open(files[modality]) as im:
                    im = ImageOps.exif_transpose(im)
                    if im.mode not in PNG_MODES:  # CMYK, YCbCr, 32-bit float: not storable in PNG
                        im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
                    im.save(out_dir / name)
            else:
                _copy_audio(files[modality], out_dir / name)
    label = str(prompt.get("label") or "prompt")
    normal = {"parts": [n for *_, n in parts], "label": label}
    (out_dir / "prompt.json").write_text(json.dumps(normal, indent=1))
    return {"dim": int(embedding.shape[0]), "parts": len(parts), "modalities": ",".join(m for m, *_ in parts)}


def _copy_audio(src: Path, dest: Path) -> None:
    """Audio as a wav file (copied when it is one, re-encoded otherwise)."""
    if src.suffix.lower() in (".wav", ".wave"):
        shutil.copyfile(src, dest)
        return
    import soundfile as sf

    data, rate = sf.read(str(src), dtype="float32", always_2d=True)
    sf.write(str(dest), data, rate)


STEP = run
