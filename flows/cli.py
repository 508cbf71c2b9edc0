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

    def show(row: dict) -> None:  # as each case ends: a sweep cut short keeps what it measured
        print("  ".join(f"{k}={v}" for k, v in row.items()), file=sys.stderr if args.json else sys.stdout, flush=True)

    results = bench.run(args.what, resolutions=args.resolution, repeats=args.repeats, device=args.device,
                        size=args.size, dtype=args.dtype, on_row=show)
    if args.json:
        print(json.dumps(results, indent=2))
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
    bench.add_argument("--size", choices=["reduced", "full"], default="reduced",
                       help="the loss cases' networks: reduced-size, or the papers' full size (a GPU)")
    bench.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto",
                       help="the full-size priors' dtype, as model.dtype (auto: float16 on CUDA, float32 on the CPU)")
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
    _build_flow_parsers(sub)
    return parser


# --------------------------------------------------------------------------- generate / evaluate / suite


def _generate(args: argparse.Namespace) -> int:
    from flows.generate import generate

    result = generate(
        text=args.text,
        image=args.image,
        audio=args.audio,
        weights=args.weights,
        method=args.method,
        model=args.model,
        seed=args.seed,
        experiment=args.experiment,
        out=args.out,
        overrides=args.overrides,
        executor="local" if args.local else "prefect",
        force=args.force,
    )
    _print_metrics(result["metrics"])
    print(
        f"mesh      {result['mesh']}\nturntable {result['video']}\ncontact   {result['contact_sheet']}\n"
        f"reference {result['reference']}\nmetrics   {result['metrics_file']}"
    )
    return 0


def _print_metrics(metrics: dict) -> None:
    for key, value in metrics.items():
        if isinstance(value, (int, float, str, bool)):
            print(f"{key:20s} {value:.4f}" if isinstance(value, float) else f"{key:20s} {value}")


def _evaluate(args: argparse.Namespace) -> int:
    from flows.generate import reevaluate

    metrics = reevaluate(args.dir, args.overrides, force=args.force)
    _print_metrics(metrics)
    print(f"metrics   {args.dir.rstrip('/')}/metrics.json")
    return 0


def _suite(args: argparse.Namespace) -> int:
    from flows.suite import suite

    result = suite(
        suite_name=args.suite,
        methods=args.methods,
        seeds=args.seeds,
        modalities=args.modalities,
        model=args.model,
        experiment=args.experiment,
        overrides=args.overrides,
        inputs=args.inputs,
        outputs=args.outputs,
        results=args.results,
        tables_out=None if args.no_tables else args.tables_out,
        executor="local" if args.local else "prefect",
        limit=args.limit or None,
    )
    print(f"{result['n_items']} generations ({result['n_executed_steps']} steps ran, the rest from the store)")
    for path in result["written"]:
        print(f"wrote     {path}")
    return 0


def _tables(args: argparse.Namespace) -> int:
    from flows.suite import write_tables

    for path in write_tables(args.results, args.out):
        print(f"wrote     {path}")
    return 0


# --------------------------------------------------------------------------- models / ui


def check_models(which: str = "all", tiny_root: str | None = None) -> tuple[list[str], bool]:
    """Report lines for ``anyto3d models check`` and whether everything asked about is present.

    Paper models: every :data:`~anyto3d.priors.weights.PAPER_MODELS` entry through
    ``resolve_weights`` (which never downloads); a missing one lists every place looked.
    Tiny models: each ``anyto3d.zoo.build.model_dir(name)`` must hold a weights file.
    """
    lines: list[str] = []
    ok = True
    if which in ("paper", "all"):
        import os

        from anyto3d.errors import MissingWeightsError
        from anyto3d.priors.weights import ENV_VAR, PAPER_MODELS, resolve_weights

        lines.append(f"paper models (${ENV_VAR}={os.environ.get(ENV_VAR) or '(not set)'}; Hugging Face cache, offline):")
        for key in PAPER_MODELS:
            try:
                found = resolve_weights(key)
                lines.append(f"  present  {key:22s} {found}")
            except MissingWeightsError as err:
                ok = False
                text = str(err)
                looked = text.split("Looked in:\n", 1)[1].split("\nPoint at them", 1)[0] if "Looked in:" in text else text
                lines.append(f"  missing  {key:22s} looked in:")
                lines += [f"           {place.strip()}" for place in looked.splitlines() if place.strip()]
    if which in ("tiny", "all"):
        from anyto3d.zoo.build import MODEL_NAMES, model_dir

        lines.append(f"tiny models ({model_dir('', tiny_root)}):")
        for name in MODEL_NAMES:
            directory = model_dir(name, tiny_root)
            weights = sorted(p.name for p in directory.glob("*.safetensors")) if directory.is_dir() else []
            weights += sorted(p.name for p in directory.glob("*/*.safetensors")) if directory.is_dir() else []
            if weights:
                lines.append(f"  present  {name:22s} {directory}")
            else:
                ok = False
                why = "no weights file" if directory.is_dir() else "no such directory"
                lines.append(f"  missing  {name:22s} {directory} ({why}; build it with `dvc repro zoo_{name}`)")
    return lines, ok


def _models_check(args: argparse.Namespace) -> int:
    lines, ok = check_models(args.model)
    print("\n".join(lines))
    return 0 if ok else 1


UI_COMMANDS = {
    "prefect": "prefect server start --host 127.0.0.1 --port {port}",
    "mlflow": "mlflow server --host 127.0.0.1 --port {port} --backend-store-uri {uri} --default-artifact-root {artifacts}",
}
UI_PORTS = {"prefect": 4200, "mlflow": 5000}


def ui_command(which: str, port: int | None = None) -> list[str]:
    """The exact command that serves the Prefect or MLflow UI on 127.0.0.1 (project paths filled in)."""
    from flows.tracking import default_artifact_root, default_tracking_uri

    text = UI_COMMANDS[which].format(
        port=port or UI_PORTS[which], uri=default_tracking_uri(), artifacts=default_artifact_root().as_uri()
    )
    return text.split()


def _ui(args: argparse.Namespace) -> int:
    import os
    import shlex
    import shutil

    command = ui_command(args.which, args.port)
    url = f"http://127.0.0.1:{args.port or UI_PORTS[args.which]}"
    hint = f"  (then: export PREFECT_API_URL={url}/api so flows report to it)" if args.which == "prefect" else ""
    if args.print_only or shutil.which(command[0]) is None:
        print(shlex.join(command) + hint)
        return 0
    print(f"serving the {args.which} UI at {url}{hint}", file=sys.stderr)
    os.execvp(command[0], command)  # replaces this process; Ctrl-C stops the server
    return 0


def _add_generation_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny", help="tiny (the embedded world, CPU) | paper (local weights)")
    p.add_argument("--experiment", default=None, help="an ablation from conf/experiment (e.g. wo_three_phase)")
    p.add_argument("--local", action="store_true", help="run the steps without Prefect (same store and caching)")
    p.add_argument("overrides", nargs="*", default=[], help="Hydra overrides, e.g. render.views=60 method.tiny.coarse.iterations=50")


def _build_flow_parsers(sub) -> None:
    gen = sub.add_parser("generate", help="prompt (text / image / audio, or a weighted mix) -> mesh, turntable, metrics")
    gen.add_argument("--text", default=None, help="a text prompt")
    gen.add_argument("--image", default=None, help="an image prompt (RGBA, or an object on a plain background)")
    gen.add_argument("--audio", default=None, help="an audio prompt (wav, flac, ogg, mp3, ...)")
    gen.add_argument("--weights", type=float, nargs="+", default=None, help="one weight per prompt, in the order text image audio")
    gen.add_argument("--method", default="xbind", help="a method from conf/method (xbind, stable_sds_3d, ...)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", default=None, help="output directory (default outputs/<label>-<method>-s<seed>/)")
    gen.add_argument("--force", action="store_true", help="recompute every step even if the store has it")
    _add_generation_options(gen)
    gen.set_defaults(func=_generate)

    ev = sub.add_parser("evaluate", help="score a generate output directory again (current evaluate step and config)")
    ev.add_argument("dir", help="an output directory written by `anyto3d generate`")
    ev.add_argument("--force", action="store_true", help="recompute even if the store has this evaluation")
    ev.add_argument("overrides", nargs="*", default=[], help="Hydra overrides, e.g. evaluate.views=60")
    ev.set_defaults(func=_evaluate)

    st = sub.add_parser("suite", help="a prompt suite x methods x seeds, then Table I (Markdown, LaTeX, JSON)")
    st.add_argument("--suite", default="asymmetric", help="a tiny-world suite (anyto3d.zoo.splits.SUITE_NAMES)")
    st.add_argument("--methods", nargs="+", default=["xbind"])
    st.add_argument("--seeds", type=int, nargs="+", default=[0])
    st.add_argument("--limit", type=int, default=0, help="only the first N objects of the suite per modality (0: all)")
    st.add_argument("--modalities", nargs="+", default=["text", "image", "audio"], choices=["text", "image", "audio"])
    st.add_argument("--inputs", default=None, help="suite inputs (default data/suites/<suite>, written if absent)")
    st.add_argument("--outputs", default=None, help="where each item's products go (default outputs/suite-<suite>/)")
    st.add_argument("--results", default=None, help="also write the per-item results JSON here (DVC: metrics/table1/<method>.json)")
    st.add_argument("--tables-out", default="metrics", help="directory for table1.md / .tex / .json")
    st.add_argument("--no-tables", action="store_true", help="only the results JSON (the DVC per-method stages)")
    _add_generation_options(st)
    st.set_defaults(func=_suite)

    tb = sub.add_parser("tables", help="Table I from per-method results JSON files")
    tb.add_argument("--results", default="metrics/table1", help="a results JSON file or a directory of them")
    tb.add_argument("--out", default="metrics", help="directory for table1.md / .tex / .json")
    tb.set_defaults(func=_tables)

    models = sub.add_parser("models", help="model weights")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    check = models_sub.add_parser("check", help="which paper weights and tiny models are present, and where each was looked for")
    check.add_argument("--model", choices=["paper", "tiny", "all"], default="all")
    check.set_defaults(func=_models_check)

    ui = sub.add_parser("ui", help="serve the Prefect or MLflow UI on 127.0.0.1 (or print the command)")
    ui.add_argument("which", choices=sorted(UI_COMMANDS))
    ui.add_argument("--port", type=int, default=None)
    ui.add_argument("--print", dest="print_only", action="store_true", help="only print the command")
    ui.set_defaults(func=_ui)


def one_line(message: str) -> str:
    """An error message on one line (multi-line explanations joined with '; ')."""
    parts = [p.strip() for p in str(message).splitlines() if p.strip()]
    return "; ".join(parts) if parts else "invalid input"


def main(argv: list[str] | None = None) -> int:
    import anyto3d  # noqa: F401 - applies the offline/no-telemetry defaults first
    from anyto3d.errors import InputError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # Hydra overrides may sit between options: `generate a=1 --local b=2`
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except InputError as err:
        print(f"anyto3d: error: {one_line(str(err))}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
