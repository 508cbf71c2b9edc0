"""Prompt files of a tiny-world evaluation suite: one object each as text, image and audio.

For every object of :func:`anyto3d.zoo.splits.suite` (held-out combinations only) this writes::

    <out>/objects/<id>/caption.txt     the canonical caption (anyto3d.zoo.captions)
    <out>/objects/<id>/reference.png   RGBA render of the true mesh from the reference camera
    <out>/objects/<id>/audio.wav       16-kHz mono 16-bit clip (anyto3d.zoo.audio.synthesize)
    <out>/ground_truth/<id>.ply        the true mesh + index.json (anyto3d.zoo.dataset.export_ground_truth)
    <out>/<modality>/suite.json        for text, image and audio (below)

``<modality>/suite.json`` is the contract's suite format without a chosen truth
(``"index": null``): ``prompts`` lists every object of the suite in order, each with ``label``
(the object id), ``text`` (its caption: the candidate CLIP-R retrieves among), ``image`` / ``audio``
(paths relative to ``<out>``, set only for that modality), ``object`` and ``ground_truth``. The
suite flow hands ``evaluate`` a copy per item with ``index`` set and absolute paths.

The reference image is what XBind's image prompts are: a single view of the object, from the
reference camera (elevation 0°, azimuth 0° — every world object's front —, distance 2.5,
fovy 40°; :func:`anyto3d.reference_view.reference_camera`), headlight-shaded on transparency.
The audio clip is drawn from a generator seeded by (seed, object id), so each object's clip is
fixed whatever else the suite holds. Every file is byte-deterministic, so a DVC stage that writes
the same suite again produces the same digests.

``python -m anyto3d.zoo.suite_inputs --suite asymmetric --out data/suites/asymmetric``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

MODALITIES = ("text", "image", "audio")
FORMAT = "anyto3d.suite/1"
DEFAULT_RESOLUTION = 64


def _write_png(path: Path, rgba: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(rgba, mode="RGBA").save(path, format="PNG", optimize=False)


def render_reference(obj, resolution: int = DEFAULT_RESOLUTION) -> np.ndarray:
    """uint8 RGBA [H, W, 4] of the object's true mesh from the reference camera."""
    from anyto3d.reference_view import reference_camera
    from anyto3d.zoo.dataset import render_views

    rgba = render_views(obj, reference_camera(), resolution=resolution, lighting="headlight")[0]
    return (rgba.clamp(0, 1) * 255.0 + 0.5).byte().numpy()


def _json_bytes(data: dict) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def suite_prompts(objects, modality: str) -> list[dict]:
    """The ``prompts`` list of one modality's suite.json (paths relative to the suite dir)."""
    from anyto3d.zoo.captions import canonical_caption

    prompts = []
    for obj in objects:
        prompts.append(
            {
                "label": obj.id,
                "object": obj.id,
                "text": canonical_caption(obj),
                "image": f"objects/{obj.id}/reference.png" if modality == "image" else None,
                "audio": f"objects/{obj.id}/audio.wav" if modality == "audio" else None,
                "ground_truth": f"ground_truth/{obj.id}.ply",
            }
        )
    return prompts


def write_suite_inputs(
    suite_name: str, out_dir: str | os.PathLike, resolution: int = DEFAULT_RESOLUTION, seed: int = 0
) -> Path:
    """Write every prompt file of suite ``suite_name`` under ``out_dir`` (replaced atomically); returns it."""
    from anyto3d.errors import InputError
    from anyto3d.zoo.audio import save_clip, synthesize
    from anyto3d.zoo.captions import canonical_caption
    from anyto3d.zoo.dataset import export_ground_truth
    from anyto3d.zoo.splits import suite
    from anyto3d.zoo.world import stable_rank

    if resolution < 8:
        raise InputError(f"reference image resolution must be >= 8 (image prompts need 8x8), got {resolution}")
    objects = suite(suite_name)
    out = Path(out_dir).expanduser().absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for obj in objects:
            folder = tmp / "objects" / obj.id
            folder.mkdir(parents=True)
            (folder / "caption.txt").write_text(canonical_caption(obj) + "\n")
            _write_png(folder / "reference.png", render_reference(obj, resolution))
            rng = np.random.default_rng(stable_rank(obj.id, seed))
            save_clip(folder / "audio.wav", synthesize(obj, rng))
        export_ground_truth(objects, tmp / "ground_truth")
        for modality in MODALITIES:
            (tmp / modality).mkdir()
            data = {
                "format": FORMAT,
                "suite": suite_name,
                "modality": modality,
                "prompts": suite_prompts(objects, modality),
                "index": None,
            }
            (tmp / modality / "suite.json").write_text(_json_bytes(data))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    import anyto3d  # noqa: F401 - offline defaults
    from anyto3d.errors import InputError
    from anyto3d.zoo.splits import SUITE_NAMES

    parser = argparse.ArgumentParser(prog="python -m anyto3d.zoo.suite_inputs", description=__doc__.split("\n")[0])
    parser.add_argument("--suite", default="asymmetric", choices=SUITE_NAMES)
    parser.add_argument("--out", required=True)
    parser.add_argument("--resolution", type=int, default=DEFAULT_RESOLUTION)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        out = write_suite_inputs(args.suite, args.out, args.resolution, args.seed)
    except InputError as err:
        print(f"anyto3d: error: {err}", file=sys.stderr)
        return err.exit_code
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
