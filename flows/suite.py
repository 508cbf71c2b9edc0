"""The ``suite`` flow: a tiny-world prompt suite × methods × seeds, then XBind's Table I.

Every item (object × modality × method × seed) is the ``generate`` DAG
(:func:`flows.generate.plan_generation`); all items' nodes go into **one** pipeline run, so the
``DevicePool`` (``run.devices`` × ``run.per_device``) bounds how many steps run at once and the
store shares what items have in common (the same prompt's ``encode_modality`` and
``reference_view`` are computed once for all methods; a re-run recomputes nothing). Hydra is
composed once per (method, seed), in this thread, before anything runs.

Suite inputs come from :func:`anyto3d.zoo.suite_inputs.write_suite_inputs`
(``data/suites/<suite>/``; written here if absent). Each item's ``evaluate`` gets that
modality's ``suite.json`` with ``index`` set to the item (CLIP-R retrieves the true caption among
the suite's captions) and the object's ground-truth mesh (geometry IoU, Chamfer).

Results: one dict per item, in the format :func:`anyto3d.tables.table_rows` reads
(``method``, ``modality``, ``suite``, ``seed``, ``object``, ``metrics``), optionally written to a
results JSON (the DVC per-method stages write ``metrics/table1/<method>.json``), and rendered by
:func:`write_tables` into ``table1.md`` / ``.tex`` / ``.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from anyto3d.errors import InputError
from flows.config import project_root
from flows.generate import (
    EXECUTORS,
    PipelineSteps,
    compose_run_config,
    make_flow_tracker,
    materialize_products,
    plan_generation,
    run_config,
    validate_prompts,
)
from flows.tasks import run_pipeline
from steps.store import Store, ensure_writable_dir

MODALITIES = ("text", "image", "audio")
RESULTS_FORMAT = "anyto3d.suite-results/1"


def default_inputs_dir(suite_name: str) -> Path:
    return project_root() / "data" / "suites" / suite_name


def ensure_suite_inputs(suite_name: str, inputs: str | os.PathLike | None, modalities: Sequence[str]) -> Path:
    """The suite's input directory, written by ``write_suite_inputs`` when a modality file is missing."""
    directory = Path(inputs).expanduser().absolute() if inputs is not None else default_inputs_dir(suite_name)
    if not all((directory / m / "suite.json").is_file() for m in modalities):
        from anyto3d.zoo.suite_inputs import write_suite_inputs

        write_suite_inputs(suite_name, directory)
    return directory


def load_modality_suite(inputs: Path, modality: str) -> dict:
    path = inputs / modality / "suite.json"
    try:
        data = json.loads(path.read_text())
        prompts = data["prompts"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"suite file {path} is unreadable: {err}") from None
    if not isinstance(prompts, list) or len(prompts) < 2:
        raise InputError(f"suite file {path} must list at least two prompts")
    return data


def _unique(values: Iterable, what: str) -> list:
    values = list(values)
    if not values:
        raise InputError(f"no {what} given")
    duplicates = sorted({str(v) for v in values if values.count(v) > 1})
    if duplicates:
        raise InputError(f"{what} listed twice: {', '.join(duplicates)}")
    return values


def suite(
    suite_name: str = "asymmetric",
    methods: Sequence[str] = ("xbind",),
    seeds: Sequence[int] = (0,),
    modalities: Sequence[str] = MODALITIES,
    model: str = "tiny",
    experiment: str | None = None,
    overrides: Sequence[str] = (),
    inputs: str | os.PathLike | None = None,
    outputs: str | os.PathLike | None = None,
    results: str | os.PathLike | None = None,
    tables_out: str | os.PathLike | None = "metrics",
    executor: str = "prefect",
    *,
    objects: Sequence[str] | None = None,
    limit: int | None = None,
    store: Store | str | os.PathLike | None = None,
    tracker=None,
    steps: PipelineSteps | None = None,
) -> dict:
    """Run the suite; returns the per-item results and the files written (module docstring).

    ``objects`` restricts the suite to those object ids (smoke runs), ``limit`` to its first
    ``limit`` objects per modality (retrieval still ranks among all the suite's prompts); ``results`` is a JSON file
    for the per-item results; ``tables_out`` a directory for Table I (``None``: no table).
    """
    if executor not in EXECUTORS:
        raise InputError(f"unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
    methods = _unique(methods, "methods")
    seeds = _unique(seeds, "seeds")
    modalities = _unique(modalities, "modalities")
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown:
        raise InputError(f"unknown modality {unknown[0]!r}; choose from {', '.join(MODALITIES)}")
    configs = {(m, s): compose_run_config(m, model, s, experiment, overrides) for m in methods for s in seeds}
    base_cfg = next(iter(configs.values()))
    out_root = Path(outputs).expanduser() if outputs is not None else project_root() / "outputs" / f"suite-{suite_name}"
    ensure_writable_dir(out_root, "output directory")
    for target in (Path(results).expanduser().parent if results is not None else None, tables_out):
        if target is not None:
            ensure_writable_dir(target, "output directory")
    inputs_dir = ensure_suite_inputs(suite_name, inputs, modalities)

    staging = Path(tempfile.mkdtemp(prefix="anyto3d-suite-"))
    plans, items = [], []
    try:
        for modality in modalities:
            data = load_modality_suite(inputs_dir, modality)
            prompts = data["prompts"]
            chosen = [i for i, p in enumerate(prompts) if objects is None or p.get("object", p.get("label")) in objects]
            chosen = chosen[:limit] if limit else chosen
            for i in chosen:
                prompt = prompts[i]
                label = str(prompt.get("label") or i)
                item_suite = staging / f"{modality}-{i}.json"
                item_suite.write_text(json.dumps({**data, "index": i}, indent=2, sort_keys=True) + "\n")
                files = {k: inputs_dir / prompt[k] for k in ("image", "audio", "ground_truth") if prompt.get(k)}
                text = prompt.get("text") if modality == "text" else None
                image, audio = files.get("image") if modality == "image" else None, files.get("audio") if modality == "audio" else None
                validate_prompts(text, image, audio)  # once per prompt, not once per method and seed
                for (method, seed), cfg in configs.items():
                    plan = plan_generation(
                        text=text,
                        image=image,
                        audio=audio,
                        cfg=cfg,
                        out=out_root / modality / f"{label}-{method}-s{seed}",
                        suite=item_suite,
                        ground_truth=files.get("ground_truth"),
                        prefix=f"{modality}/{label}/{method}/s{seed}/",
                        steps=steps,
                        validate=False,
                    )
                    plans.append(plan)
                    items.append({"method": method, "modality": modality, "suite": suite_name, "seed": seed, "object": label})
        if not plans:
            raise InputError(f"suite {suite_name!r} has no objects among {list(objects or [])}")
        nodes = [node for plan in plans for node in plan.nodes]
        tags = {"flow": "suite", "suite": suite_name, "methods": ",".join(methods), "seeds": ",".join(map(str, seeds))}
        summary_cfg = {
            "suite": suite_name, "methods": methods, "seeds": seeds, "modalities": modalities, "model": model,
            "experiment": experiment, "overrides": list(overrides), "config": base_cfg,
        }  # fmt: skip
        name = f"suite-{suite_name}-{'+'.join(methods)}"
        with make_flow_tracker(base_cfg, tracker).flow_run(name, summary_cfg, tags) as run:
            result = run_pipeline(
                nodes, base_cfg, store=store, executor=executor, tracking=run, flow_name="suite", **run_config(base_cfg)
            )
            rows = []
            for plan, item in zip(plans, items):
                products = materialize_products(plan, result)
                metrics = json.loads(Path(products["metrics.json"]).read_text())
                rows.append({**item, "out": str(plan.out), "metrics": metrics})
            written = []
            if results is not None:
                written.append(write_results(rows, results, suite_name, methods, seeds, modalities))
            if tables_out is not None:
                written += write_tables(rows, tables_out)
                run.log_artifacts([p for p in written if p.suffix in (".md", ".tex", ".json")])
    finally:
        for plan in plans:
            plan.discard()  # staging, and an output dir left empty by a failure
        shutil.rmtree(staging, ignore_errors=True)
    return {
        "results": rows,
        "written": [str(p) for p in written],
        "n_items": len(rows),
        "n_executed_steps": sum(bool(v) for v in result.executed.values()),
        "seconds": round(result.seconds, 3),
    }


def write_results(rows: list[dict], path: str | os.PathLike, suite_name: str, methods, seeds, modalities) -> Path:
    """The per-item results JSON (atomic): ``{"format", "suite", "methods", "seeds", "modalities", "results"}``."""
    path = Path(path).expanduser()
    ensure_writable_dir(path.parent, "results directory")
    data = {
        "format": RESULTS_FORMAT,
        "suite": suite_name,
        "methods": list(methods),
        "seeds": list(seeds),
        "modalities": list(modalities),
        "results": [{k: v for k, v in r.items() if k != "out"} for r in rows],  # no machine paths: DVC-stable
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def read_results(source: str | os.PathLike) -> list[dict]:
    """Per-item results from a results JSON file, or from every ``*.json`` in a directory (sorted)."""
    source = Path(source).expanduser()
    files = sorted(source.glob("*.json")) if source.is_dir() else [source]
    if not files or not all(f.is_file() for f in files):
        raise InputError(f"no results JSON found at {source}")
    rows: list[dict] = []
    for f in files:
        try:
            data = json.loads(f.read_text())
            rows += list(data["results"] if isinstance(data, dict) else data)
        except (ValueError, KeyError, TypeError) as err:
            raise InputError(f"results file {f} is unreadable: {err}") from None
    if not rows:
        raise InputError(f"results at {source} hold no items")
    return rows


def write_tables(results: Iterable[dict] | str | os.PathLike, out_dir: str | os.PathLike = "metrics") -> list[Path]:
    """Table I (``table1.md``, ``.tex``, ``.json``) from results (rows, or a file / directory of them)."""
    from anyto3d import tables

    rows = read_results(results) if isinstance(results, (str, os.PathLike)) else list(results)
    ensure_writable_dir(out_dir, "output directory")
    paths = tables.write_tables(rows, out_dir, stem="table1")
    return [Path(paths[s]) for s in ("md", "tex", "json")]


__all__ = ["MODALITIES", "ensure_suite_inputs", "read_results", "suite", "write_results", "write_tables"]
