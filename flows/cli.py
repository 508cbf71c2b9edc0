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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anyto3d", description="Any-modality prompt to 3D/4D assets.")
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser("bench", help="measure renderer/rasteriser throughput and memory")
    bench.add_argument("what", choices=["render", "raster", "all"], help="volume renderer, mesh rasteriser, or both")
    bench.add_argument("--resolution", type=int, nargs="+", default=None, help="image sizes (default: 64 128)")
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--device", default="cpu")
    bench.add_argument("--json", action="store_true", help="print machine-readable JSON")
    bench.set_defaults(func=_bench)
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
