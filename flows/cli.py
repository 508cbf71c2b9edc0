"""The ``anyto3d`` command line.

Heavy imports (torch, Prefect, MLflow) happen inside the subcommands so ``--help`` is instant.
Errors the user can fix (:class:`anyto3d.errors.InputError`) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys


def _bench(args: argparse.Namespace) -> int:
    from anyto3d import bench

    results = bench.run(args.what, resolutions=args.resolution, repeats=args.repeats, device=args.device)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for row in results["rows"]:
            print("  ".join(f"{k}={v}" for k, v in row.items()))
    return 0


def _reconstruct(args: argparse.Namespace) -> int:
    from pathlib import Path

    from steps.store import ensure_writable_dir

    out = Path(args.out)
    ensure_writable_dir(out, "output directory")  # fail before minutes of work, leave nothing behind
    from tqdm import tqdm

    from anyto3d.reconstruct import ReconstructionConfig, reconstruct
    from anyto3d.zoo.shapes import reconstruction_scene

    cfg = ReconstructionConfig(nerf_steps=args.nerf_steps, dmtet_steps=args.dmtet_steps, seed=args.seed)
    bars: dict[str, tqdm] = {}

    def progress(phase: str, step: int, total: int) -> None:
        bar = bars.get(phase) or bars.setdefault(phase, tqdm(total=total, desc=f"{phase:6s}", unit="it"))
        bar.update(step - bar.n)
        if step == total:
            bar.close()

    metrics = reconstruct(reconstruction_scene(), cfg, out, progress)
    for key, value in metrics.items():
        if key not in ("timings", "config"):
            print(f"{key:26s} {value:.4f}" if isinstance(value, float) else f"{key:26s} {value}")
    print(f"mesh      {out / 'scene.glb'}\nturntable {out / 'turntable.mp4'}\nmetrics   {out / 'metrics.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anyto3d", description="Any-modality prompt to 3D/4D assets.")
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser("bench", help="measure renderer/rasteriser throughput and memory")
    bench.add_argument("what", choices=["render", "raster", "losses", "all"], help="volume renderer, mesh rasteriser, losses, or all")
    bench.add_argument("--resolution", type=int, nargs="+", default=None, help="image sizes (default: volume 64 128, raster 128 512, losses 64)")
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--device", default="cpu")
    bench.add_argument("--json", action="store_true", help="print machine-readable JSON")
    bench.set_defaults(func=_bench)

    rec = sub.add_parser(
        "reconstruct",
        help="3D core demo on the tiny world: fit NeRF -> DMTet -> textured GLB to 50 views of a known scene",
    )
    rec.add_argument("--out", default="outputs/reconstruct", help="output directory (scene.glb, turntable.mp4, metrics.json)")
    rec.add_argument("--nerf-steps", type=int, default=200)
    rec.add_argument("--dmtet-steps", type=int, default=80)
    rec.add_argument("--seed", type=int, default=0)
    rec.set_defaults(func=_reconstruct)
    return parser


def main(argv: list[str] | None = None) -> int:
    import anyto3d  # noqa: F401 - applies the offline/no-telemetry defaults first
    from anyto3d.errors import InputError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InputError as err:
        print(f"anyto3d: error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
