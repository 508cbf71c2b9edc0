"""The ``generate`` flow: one prompt (text, image, audio or a weighted mix) → mesh, turntable, metrics.

Everything the user can get wrong is checked before any step runs, so bad input costs seconds
and writes nothing: Hydra composes once in the calling thread (unknown method / model /
experiment / key → :class:`InputError`), the prompt files are loaded and validated
(:mod:`anyto3d.modality`), paper weights are looked up on disk (``model=paper``), and only then
is the output directory proven writable (``ensure_writable_dir``).

The DAG (``flows.tasks.Node``)::

    encode_modality → reference_view → <the method's phase steps, chained by ``previous``>
                    → render_views → evaluate

``prompt.json`` (``steps.pipeline.prompt_json``) is written into a private staging directory
outside the store and handed to ``encode_modality`` as a file input; the store keys on its
*contents*, so the staging path never matters. The final products are hard-linked (else copied)
from the store into ``out`` in one atomic rename, beside ``run.json`` (what produced them, and the
store directories ``anyto3d evaluate <out>`` re-scores from).

:func:`plan_generation` builds a validated :class:`GenerationPlan` without running it, so the
suite flow can put many plans into one bounded-concurrency DAG.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anyto3d.errors import InputError
from flows.config import compose, project_root
from flows.tasks import Node, PipelineResult, Ref, run_pipeline
from steps.contract import Step
from steps.store import Manifest, Store, ensure_writable_dir

EXECUTORS = ("prefect", "local")

#: Files of the output directory: name -> (DAG role, file inside that step's store output).
PRODUCTS: dict[str, tuple[str, str]] = {
    "mesh.glb": ("render", "mesh.glb"),
    "turntable.mp4": ("render", "turntable.mp4"),
    "contact_sheet.png": ("render", "contact_sheet.png"),
    "metrics.json": ("evaluate", "metrics.json"),
    "reference.png": ("reference", "reference.png"),
}
RUN_FILE = "run.json"

#: Which paper checkpoints each supervision need loads at ``model=paper`` (``anyto3d.methods.NEEDS``).
#: The prompt encoder (ImageBind) is always needed. Used only to fail before any work starts.
PAPER_MODELS_FOR_NEED: dict[str, tuple[str, ...]] = {
    "encoder": ("imagebind_huge",),
    "prior2d": ("sd-2-1-unclip",),
    "novel_view": ("zero123",),
    "multiview": ("mvdream",),
    "video": ("zeroscope_v2_576w",),
    "lora": ("sd-2-1",),
}


# --------------------------------------------------------------------------- the steps used


@dataclass(frozen=True)
class PipelineSteps:
    """The steps a generation DAG is made of (the real ones by default; tests may substitute)."""

    encode_modality: Step
    reference_view: Step
    render_views: Step
    evaluate: Step
    stages_for: Callable[[Any], list[Step]]
    prompt_json: Callable[..., Mapping]


def default_steps() -> PipelineSteps:
    """The project's steps (imported here: ``flows`` must import without torch-heavy step modules)."""
    import importlib

    from steps.pipeline import prompt_json, stages_for

    encode_modality, reference_view, render_views, evaluate = (
        importlib.import_module(f"steps.{name}").STEP
        for name in ("encode_modality", "reference_view", "render_views", "evaluate")
    )
    return PipelineSteps(encode_modality, reference_view, render_views, evaluate, stages_for, prompt_json)


# --------------------------------------------------------------------------- validation


def compose_run_config(
    method: str = "xbind", model: str = "tiny", seed: int = 0, experiment: str | None = None, overrides: Sequence[str] = ()
) -> dict:
    """The resolved config of one run: the named choices first, user overrides last (they win)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed must be an integer, got {seed!r}")
    choices = [f"method={method}", f"model={model}", f"seed={seed}"]
    if experiment:
        choices.append(f"experiment={experiment}")
    return compose([*choices, *[str(o) for o in overrides]])


def prompt_parts(text: str | None, image: str | os.PathLike | None, audio: str | os.PathLike | None) -> list[str]:
    """The modalities given, in the fixed order text, image, audio; at least one is required."""
    given = [m for m, v in (("text", text), ("image", image), ("audio", audio)) if v is not None]
    if not given:
        raise InputError("no prompt given: pass a text, an image or an audio file (or several)")
    return given


def check_weights(weights: Sequence[float] | None, modalities: Sequence[str]) -> list[float] | None:
    """One finite, non-negative weight per given modality, not all zero (``None``: equal weights)."""
    if weights is None:
        return None
    weights = list(weights)
    if len(weights) != len(modalities):
        raise InputError(
            f"{len(weights)} weight(s) for {len(modalities)} prompt(s) ({', '.join(modalities)}); give one weight per prompt"
        )
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise InputError(f"prompt weights must be finite and >= 0, got {weights}")
    if sum(weights) <= 0:
        raise InputError(f"prompt weights must not all be zero, got {weights}")
    return [float(w) for w in weights]


def validate_prompts(text: str | None, image: str | os.PathLike | None, audio: str | os.PathLike | None) -> None:
    """Load every given prompt exactly as the encoder will (bad input → one InputError line)."""
    from anyto3d.modality import load_audio, load_image, validate_text

    if text is not None:
        validate_text(text)
    if image is not None:
        load_image(Path(image))
    if audio is not None:
        load_audio(Path(audio))


def paper_models_needed(method_cfg) -> list[str]:
    """The :data:`~anyto3d.priors.weights.PAPER_MODELS` keys a method loads at paper scale."""
    keys: list[str] = list(PAPER_MODELS_FOR_NEED["encoder"])
    for need in method_cfg.needs:
        keys += [k for k in PAPER_MODELS_FOR_NEED.get(need, ()) if k not in keys]
    return keys


def check_paper_weights(cfg: Mapping, method_cfg) -> None:
    """At ``model=paper``, every checkpoint the run will load must be on disk (nothing is downloaded)."""
    model = cfg.get("model") or {}
    if model.get("name") != "paper":
        return
    from anyto3d.priors.weights import resolve_weights

    weights_dir = model.get("weights_dir")
    for key in paper_models_needed(method_cfg):
        local = Path(str(weights_dir)).expanduser() / key if weights_dir else None
        resolve_weights(key, local_dir=local if local is not None and local.is_dir() else None)


# --------------------------------------------------------------------------- the plan


@dataclass
class GenerationPlan:
    """A validated generation: its resolved config, DAG nodes and where its products go."""

    cfg: dict
    method: Any  # anyto3d.methods.MethodConfig
    label: str
    out: Path
    out_created: bool
    prompt: dict
    nodes: list[Node]
    roles: dict[str, str]  # DAG role (encode, reference, <phase step>, render, evaluate) -> node id
    staging: Path
    request: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.label}-{self.cfg['method']['name']}-s{self.cfg['seed']}"

    def discard(self) -> None:
        """Remove what planning created: the staging directory and an output dir left empty."""
        shutil.rmtree(self.staging, ignore_errors=True)
        if self.out_created:
            try:
                self.out.rmdir()  # only if still empty
            except OSError:
                pass


_SLUG = re.compile(r"[^a-z0-9]+")


def slugify(text: str, limit: int = 48) -> str:
    """``"A red house, blue roof!"`` → ``"a-red-house-blue-roof"`` (``"prompt"`` if nothing is left)."""
    slug = _SLUG.sub("-", text.lower()).strip("-")[:limit].strip("-")
    return slug or "prompt"


def prompt_label(prompt: Mapping, text: str | None, image, audio) -> str:
    """The prompt's label as a directory-safe slug: its own ``label``, else the text or file stem."""
    label = prompt.get("label") if isinstance(prompt, Mapping) else None
    if not label:
        label = text if text is not None else Path(image if image is not None else audio).stem
    return slugify(str(label))


def default_output_dir(cfg: Mapping, label: str) -> Path:
    root = Path(str((cfg.get("run") or {}).get("outputs", "outputs"))).expanduser()
    root = root if root.is_absolute() else project_root() / root
    return root / f"{label}-{cfg['method']['name']}-s{cfg['seed']}"


def plan_generation(
    text: str | None = None,
    image: str | os.PathLike | None = None,
    audio: str | os.PathLike | None = None,
    weights: Sequence[float] | None = None,
    method: str = "xbind",
    model: str = "tiny",
    seed: int = 0,
    experiment: str | None = None,
    out: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    *,
    cfg: Mapping | None = None,
    suite: str | os.PathLike | None = None,
    ground_truth: str | os.PathLike | None = None,
    prefix: str = "",
    steps: PipelineSteps | None = None,
    validate: bool = True,
) -> GenerationPlan:
    """Validate everything, then build the DAG; nothing runs and only the output dir is created.

    ``cfg`` (an already composed config) skips composing; ``prefix`` names this plan's nodes
    distinctly inside a larger DAG; ``suite`` / ``ground_truth`` are optional inputs of
    ``evaluate`` (the suite flow passes them); ``validate=False`` skips re-loading prompt files
    a caller has already validated.
    """
    from anyto3d.methods import method_from_config

    modalities = prompt_parts(text, image, audio)
    weights = check_weights(weights, modalities)
    if cfg is None:
        cfg = compose_run_config(method, model, seed, experiment, overrides)
    cfg = dict(cfg)
    method_cfg = method_from_config(cfg)
    image = Path(image).expanduser().absolute() if image is not None else None
    audio = Path(audio).expanduser().absolute() if audio is not None else None
    if validate:
        validate_prompts(text, image, audio)
    check_paper_weights(cfg, method_cfg)
    for extra, what in ((suite, "suite file"), (ground_truth, "ground-truth mesh")):
        if extra is not None and not Path(extra).is_file():
            raise InputError(f"{what} not found: {extra}")
    out_path = Path(out).expanduser() if out is not None else None
    out_created = out_path is not None and not out_path.exists()
    if out_path is not None:  # an explicit destination is checked before any step module is even imported
        out_path = ensure_writable_dir(out_path, "output directory")
    try:
        steps = steps or default_steps()
        phase_steps = list(steps.stages_for(method_cfg))
        if not phase_steps:
            raise InputError(f"method {method_cfg.name!r} has no enabled phase to run")

        prompt = dict(
            steps.prompt_json(
                text=text,
                image=str(image) if image is not None else None,
                audio=str(audio) if audio is not None else None,
                weights=weights,
            )
        )
        label = prompt_label(prompt, text, image, audio)
        if out_path is None:  # last check: bad input has written nothing
            out_path = default_output_dir(cfg, label)
            out_created = not out_path.exists()
            out_path = ensure_writable_dir(out_path, "output directory")

        staging = Path(tempfile.mkdtemp(prefix="anyto3d-prompt-"))
        (staging / "prompt.json").write_text(json.dumps(prompt, indent=2, sort_keys=True) + "\n")

        def nid(step: Step) -> str:
            return f"{prefix}{step.name}"

        encode = Node(
            steps.encode_modality,
            {"prompt": staging / "prompt.json", "image": image, "audio": audio},
            name=nid(steps.encode_modality),
            cfg=cfg,
        )
        reference = Node(steps.reference_view, {"encoded": Ref(encode.id)}, name=nid(steps.reference_view), cfg=cfg)
        nodes, roles = [encode, reference], {"encode": encode.id, "reference": reference.id}
        previous: str | None = None
        for phase in phase_steps:
            inputs: dict[str, Any] = {"encoded": Ref(encode.id), "reference": Ref(reference.id)}
            if previous is not None:
                inputs["previous"] = Ref(previous)
            node = Node(phase, inputs, name=nid(phase), cfg=cfg)
            nodes.append(node)
            roles[phase.name] = previous = node.id
        render = Node(steps.render_views, {"state": Ref(previous)}, name=nid(steps.render_views), cfg=cfg)
        evaluate_inputs: dict[str, Any] = {"views": Ref(render.id), "encoded": Ref(encode.id)}
        if suite is not None:
            evaluate_inputs["suite"] = Path(suite).absolute()
        if ground_truth is not None:
            evaluate_inputs["ground_truth"] = Path(ground_truth).absolute()
        evaluate = Node(steps.evaluate, evaluate_inputs, name=nid(steps.evaluate), cfg=cfg)
        nodes += [render, evaluate]
        roles.update(render=render.id, evaluate=evaluate.id)
        request = {
            "text": text,
            "image": str(image) if image is not None else None,
            "audio": str(audio) if audio is not None else None,
            "weights": weights,
            "method": cfg["method"]["name"],
            "model": (cfg.get("model") or {}).get("name"),
            "seed": cfg["seed"],
            "experiment": experiment,
            "overrides": [str(o) for o in overrides],
        }
        return GenerationPlan(cfg, method_cfg, label, out_path, out_created, prompt, nodes, roles, staging, request)
    except BaseException:
        if out_created and out_path is not None:
            with contextlib.suppress(OSError):
                out_path.rmdir()  # only if still empty
        raise


# --------------------------------------------------------------------------- products


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def materialize_products(plan: GenerationPlan, result: PipelineResult) -> dict[str, Path]:
    """Put the final products and ``run.json`` into ``plan.out`` in one atomic rename."""
    dest = plan.out
    sources = {name: result[plan.roles[role]].path(rel) for name, (role, rel) in PRODUCTS.items()}
    missing = [f"{name} ({src})" for name, src in sources.items() if not src.is_file()]
    if missing:
        raise RuntimeError(f"step outputs lack the final products: {', '.join(missing)}")
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
        for name, src in sources.items():
            _link_or_copy(src, tmp / name)
        (tmp / RUN_FILE).write_text(json.dumps(run_record(plan, result), indent=2, sort_keys=True) + "\n")
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not dest.exists():
            os.replace(old, dest)
        raise InputError(f"output directory {dest} is not writable: {err.strerror or err}") from None
    shutil.rmtree(old, ignore_errors=True)
    return {name: dest / name for name in [*PRODUCTS, RUN_FILE]}


def run_record(plan: GenerationPlan, result: PipelineResult) -> dict:
    """What ``run.json`` holds: the request, the resolved config and every step's store output."""
    evaluate_node = next(n for n in plan.nodes if n.id == plan.roles["evaluate"])
    extra = {k: str(v) for k, v in evaluate_node.inputs.items() if k in ("suite", "ground_truth") and v is not None}
    return {
        "label": plan.label,
        "request": plan.request,
        "evaluate_inputs": extra,
        "prompt": plan.prompt,
        "config": plan.cfg,
        "steps": {
            role: {"step": result[nid].step, "key": result[nid].key, "dir": result[nid].dir}
            for role, nid in plan.roles.items()
        },
    }


def summarize(plan: GenerationPlan, result: PipelineResult, products: Mapping[str, Path]) -> dict:
    """The dict ``generate`` returns: where everything is, the metrics, what ran."""
    metrics = json.loads(Path(products["metrics.json"]).read_text())
    return {
        "out": str(plan.out),
        "label": plan.label,
        "method": plan.cfg["method"]["name"],
        "seed": plan.cfg["seed"],
        "mesh": str(products["mesh.glb"]),
        "video": str(products["turntable.mp4"]),
        "contact_sheet": str(products["contact_sheet.png"]),
        "reference": str(products["reference.png"]),
        "metrics_file": str(products["metrics.json"]),
        "metrics": metrics,
        "steps": {role: result[nid].dir for role, nid in plan.roles.items()},
        "executed": {role: result.executed[nid] for role, nid in plan.roles.items()},
        "seconds": round(result.seconds, 3),
    }


# --------------------------------------------------------------------------- running


def run_config(cfg: Mapping) -> dict:
    """Device slots, concurrency and retries from ``cfg["run"]`` (defaults: one CPU slot, one retry)."""
    run = dict(cfg.get("run") or {})
    devices = run.get("devices") or [cfg.get("device", "cpu")]
    return {
        "devices": [str(d) for d in devices],
        "per_device": int(run.get("per_device", 1)),
        "retries": int(run.get("retries", 1)),
    }


def make_flow_tracker(cfg: Mapping, tracker=None):
    """The tracker given, else MLflow per ``cfg["tracking"]`` (``ANYTO3D_TRACKING=0`` turns it off)."""
    if tracker is not None:
        return tracker
    from flows.tracking import make_tracker

    tracking = cfg.get("tracking") or {}
    return make_tracker(enabled=bool(tracking.get("enabled", True)), experiment=str(tracking.get("experiment", "anyto3d")))


def generate(
    text: str | None = None,
    image: str | os.PathLike | None = None,
    audio: str | os.PathLike | None = None,
    weights: Sequence[float] | None = None,
    method: str = "xbind",
    model: str = "tiny",
    seed: int = 0,
    experiment: str | None = None,
    out: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    executor: str = "prefect",
    *,
    store: Store | str | os.PathLike | None = None,
    tracker=None,
    steps: PipelineSteps | None = None,
    force: bool = False,
) -> dict:
    """Generate one asset; returns paths of mesh / video / contact sheet / metrics and the metrics.

    ``executor="prefect"`` runs the DAG as Prefect tasks in a flow run named ``generate``
    (ephemeral server unless ``PREFECT_API_URL`` is set); ``"local"`` runs the same steps with
    the same store, retries and tracking, without Prefect.
    """
    if executor not in EXECUTORS:
        raise InputError(f"unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
    plan = plan_generation(text, image, audio, weights, method, model, seed, experiment, out, overrides, steps=steps)
    try:
        tags = {"flow": "generate", "label": plan.label, "method": plan.cfg["method"]["name"], "seed": plan.cfg["seed"]}
        with make_flow_tracker(plan.cfg, tracker).flow_run(plan.name, plan.cfg, tags) as run:
            result = run_pipeline(
                plan.nodes,
                plan.cfg,
                store=store,
                executor=executor,
                tracking=run,
                flow_name="generate",
                force=force,
                **run_config(plan.cfg),
            )
            products = materialize_products(plan, result)
            summary = summarize(plan, result, products)
            run.log_metrics(summary["metrics"])
            run.set_tags({"out": plan.out})
            run.log_artifacts([products[name] for name in PRODUCTS])
    except BaseException:
        plan.discard()
        raise
    shutil.rmtree(plan.staging, ignore_errors=True)
    return summary


# --------------------------------------------------------------------------- re-evaluation


def reevaluate(
    out: str | os.PathLike,
    overrides: Sequence[str] = (),
    *,
    store: Store | str | os.PathLike | None = None,
    steps: PipelineSteps | None = None,
    force: bool = False,
) -> dict:
    """Score an output directory again (``anyto3d evaluate <dir>``) from the store outputs its
    ``run.json`` names, under the current ``evaluate`` step and config (+ ``overrides``);
    rewrites ``metrics.json`` there and returns the metrics."""
    out = Path(out).expanduser()
    record_file = out / RUN_FILE
    if not record_file.is_file():
        raise InputError(f"{out} is not a generate output directory (no {RUN_FILE})")
    try:
        record = json.loads(record_file.read_text())
        request, stored = record["request"], record["steps"]
        views, encoded = Path(stored["render"]["dir"]), Path(stored["encode"]["dir"])
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{record_file} is unreadable: {err}") from None
    for what, path in (("render_views", views), ("encode_modality", encoded)):
        if not (path / "manifest.json").is_file():
            raise InputError(f"the {what} output this run used is gone from the store ({path}); run generate again")
    cfg = compose_run_config(
        request["method"], request["model"], request["seed"], request.get("experiment"), [*request["overrides"], *overrides]
    )
    steps = steps or default_steps()
    inputs = {"views": views, "encoded": encoded}
    previous = record.get("evaluate_inputs") or {}
    for name in ("suite", "ground_truth"):
        if previous.get(name) and Path(previous[name]).is_file():
            inputs[name] = Path(previous[name])
    store = store if isinstance(store, Store) else Store(Path(store)) if store is not None else None
    result = run_pipeline([Node(steps.evaluate, inputs)], cfg, store=store, executor="local", force=force)
    manifest: Manifest = result[steps.evaluate.name]
    ensure_writable_dir(out, "output directory")
    tmp = out / f".metrics.json.tmp-{uuid.uuid4().hex[:8]}"
    shutil.copy2(manifest.path("metrics.json"), tmp)
    os.replace(tmp, out / "metrics.json")
    return json.loads((out / "metrics.json").read_text())


__all__ = [
    "EXECUTORS",
    "PAPER_MODELS_FOR_NEED",
    "PRODUCTS",
    "GenerationPlan",
    "PipelineSteps",
    "check_paper_weights",
    "check_weights",
    "compose_run_config",
    "default_output_dir",
    "default_steps",
    "generate",
    "materialize_products",
    "paper_models_needed",
    "plan_generation",
    "prompt_parts",
    "reevaluate",
    "slugify",
    "validate_prompts",
]
