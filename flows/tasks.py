"""Run a DAG of steps over the store: as Prefect tasks (the default) or plainly, one after another.

Prefect's cache key for a step is the store key itself, computed from file *contents*
(``cache_key_fn``): Prefect's INPUTS policy hashes a path string and answered ``Cached`` for
outputs DVC had deleted (measured, ../shared/research/pipeline.md §1). Before each submission the
scheduler, in the calling thread, asks the store whether that key's output is still intact; if not,
the task runs with ``refresh_cache=True`` so the stale record is overwritten. Tasks return a
:class:`StepOutcome` (a JSON-serialised manifest), never tensors.

Concurrency is bounded twice: a ``ThreadPoolTaskRunner`` with as many workers as device slots (the
default pool is unbounded), and a :class:`DevicePool` that hands each running body its own device
string (threads share one CUDA context, so a device is chosen per call, not via the environment).
A failed step is retried (``retries``, default 1); the retry resumes from the checkpoints the step
left in its work directory. An :class:`InputError` is never retried.

Without Prefect (``executor="local"``) the same store semantics hold: one step at a time, the same
retries, the same tracking.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anyto3d.errors import InputError
from steps.contract import Step, config_subset
from steps.store import Manifest, Store

EXECUTORS = ("prefect", "local")

# Prefect reads its settings when first imported (lazily, below); values the user set win. The
# ephemeral server's 20 s start-up limit is too short on a loaded 2-core machine (measured 24-40 s).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


@dataclass(frozen=True)
class Ref:
    """An input produced by another node of the same pipeline: its directory, or a file in it."""

    node: str
    path: str = ""


@dataclass(frozen=True)
class Node:
    """One step invocation in a pipeline.

    ``inputs`` values are paths, :class:`Manifest` objects or :class:`Ref` to earlier nodes.
    ``name`` defaults to the step name (give distinct names to run a step several times, e.g.
    once per prompt). ``cfg`` replaces the pipeline config for this node (e.g. a sweep point).
    ``artifacts`` are files of its output that the tracker logs (final products only).
    """

    step: Step
    inputs: Mapping[str, Any] = field(default_factory=dict)
    name: str = ""
    cfg: Mapping | None = None
    artifacts: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return self.name or self.step.name


@dataclass(frozen=True)
class StepOutcome:
    """What a task returns (and Prefect caches as JSON): the manifest and whether the body ran."""

    manifest: Manifest
    executed: bool


@dataclass
class PipelineResult:
    manifests: dict[str, Manifest]
    executed: dict[str, bool]
    seconds: float

    def __getitem__(self, node: str) -> Manifest:
        return self.manifests[node]


class DevicePool:
    """Device slots (``per_device`` each); ``acquire()`` blocks until one is free."""

    def __init__(self, devices: Sequence[str] = ("cpu",), per_device: int = 1):
        if not devices or per_device < 1:
            raise InputError(f"need at least one device slot (devices={list(devices)}, per_device={per_device})")
        self._free: queue.Queue[str] = queue.Queue()
        for _ in range(per_device):
            for device in devices:
                self._free.put(str(device))
        self.size = len(devices) * per_device

    @contextlib.contextmanager
    def acquire(self) -> Iterator[str]:
        device = self._free.get()
        try:
            yield device
        finally:
            self._free.put(device)


class _InputErrorsInOneLine(logging.Filter):
    """Drop the traceback Prefect attaches when a run fails with an InputError: the user gets one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], InputError):
            record.exc_info, record.exc_text = None, None
        return True


def _quiet_input_errors() -> None:
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _InputErrorsInOneLine) for f in logger.filters):
            logger.addFilter(_InputErrorsInOneLine())


# --------------------------------------------------------------------------- one step


def _prefect_key(store: Store, step: Step, inputs: Mapping, cfg: Mapping) -> str:
    """The store key, tagged with the step and the store it lives in (records are shared per PREFECT_HOME)."""
    root = hashlib.sha256(str(store.root).encode()).hexdigest()[:8]
    return f"{step.name}-{store.key(step, inputs, cfg)}-{root}"


def _retry_unless_input_error(task, task_run, state) -> bool:
    """Bad input stays bad: only other failures are retried (a retry resumes from checkpoints)."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:
        return True
    return not isinstance(exc, InputError)


def make_task(step: Step, store: Store, pool: DevicePool, *, retries: int = 1):
    """A Prefect task running ``step`` through ``store``, cached on the step's content key.

    Parameters: ``inputs`` (name -> absolute path string), ``cfg`` (the step's config subset) and
    ``force`` (rebuild even on a store hit; not part of the key).
    """
    from prefect import task

    def run_step(inputs: dict[str, str], cfg: dict, force: bool = False) -> StepOutcome:
        with pool.acquire() as device:
            manifest, executed = store.run_with_status(step, inputs, cfg, device, force=force)
        return StepOutcome(manifest, executed)

    def cache_key(context, parameters) -> str:
        return _prefect_key(store, step, parameters["inputs"], parameters["cfg"])

    return task(
        run_step,
        name=step.name,
        cache_key_fn=cache_key,
        persist_result=True,
        result_serializer="json",
        cache_result_in_memory=False,
        retries=retries,
        retry_delay_seconds=0,
        retry_condition_fn=_retry_unless_input_error,
        tags=["anyto3d-step"],
    )


# --------------------------------------------------------------------------- the pipeline


def run_pipeline(
    nodes: Sequence[Node | tuple[Step, Mapping[str, Any]]],
    cfg: Mapping,
    *,
    store: Store | str | Path | None = None,
    executor: str = "prefect",
    devices: Sequence[str] = ("cpu",),
    per_device: int = 1,
    retries: int = 1,
    force: bool = False,
    tracking=None,
    flow_name: str = "anyto3d-pipeline",
) -> PipelineResult:
    """Run ``nodes`` (in dependency order, independent ones concurrently under Prefect).

    ``store`` defaults to ``cfg["paths"]["store"]`` under the project root. ``tracking`` is a
    flow-run handle from :mod:`flows.tracking` (``log_step`` is called in this thread after each
    node). With ``executor="prefect"`` outside a flow run, an ad-hoc flow named ``flow_name`` wraps
    the run; inside one (the lead's flows), tasks join the current flow run.
    """
    if executor not in EXECUTORS:
        raise InputError(f"unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
    plan = _plan(nodes)
    store = _as_store(store, cfg)
    store.check()  # an unusable store fails here, before anything runs or is written
    pool = DevicePool(devices, per_device)
    t0 = time.perf_counter()
    if executor == "local":
        outcomes = _run_local(plan, cfg, store, pool, retries, force, tracking)
    else:
        outcomes = _run_prefect_maybe_in_flow(plan, cfg, store, pool, retries, force, tracking, flow_name)
    return PipelineResult(
        manifests={n: o.manifest for n, o in outcomes.items()},
        executed={n: o.executed for n, o in outcomes.items()},
        seconds=time.perf_counter() - t0,
    )


def _as_store(store: Store | str | Path | None, cfg: Mapping) -> Store:
    if isinstance(store, Store):
        return store
    if store is None:
        from flows.config import project_root

        configured = Path(str((cfg.get("paths") or {}).get("store", "data/store")))
        store = configured if configured.is_absolute() else project_root() / configured
    return Store(Path(store))


def _plan(nodes: Sequence[Node | tuple]) -> list[Node]:
    """Nodes in a valid execution order; unknown references, duplicates and cycles are InputErrors."""
    given = [n if isinstance(n, Node) else Node(step=n[0], inputs=dict(n[1])) for n in nodes]
    by_id: dict[str, Node] = {}
    for node in given:
        if node.id in by_id:
            raise InputError(f"two pipeline nodes are named {node.id!r}; give one a distinct name")
        by_id[node.id] = node
    deps = {n.id: _deps(n) for n in given}
    for node_id, needed in deps.items():
        unknown = sorted(needed - set(by_id))
        if unknown:
            raise InputError(f"node {node_id!r} refers to unknown node(s) {unknown}; known: {sorted(by_id)}")
    order: list[Node] = []
    placed: set[str] = set()
    while len(order) < len(given):
        ready = [n for n in given if n.id not in placed and deps[n.id] <= placed]
        if not ready:
            raise InputError(f"the pipeline has a dependency cycle among {sorted(set(by_id) - placed)}")
        for node in ready:
            order.append(node)
            placed.add(node.id)
    return order


def _deps(node: Node) -> set[str]:
    return {v.node for v in node.inputs.values() if isinstance(v, Ref)}


def _resolve(node: Node, done: Mapping[str, StepOutcome]) -> dict[str, str]:
    """Input name -> absolute path string, with references replaced by upstream outputs."""
    paths = {}
    for name, value in node.inputs.items():
        if value is None:
            continue
        if isinstance(value, Ref):
            path = done[value.node].manifest.path(value.path)
        elif isinstance(value, Manifest):
            path = value.path()
        else:
            path = Path(value)
        paths[name] = str(path.absolute())
    return paths


def _node_cfg(node: Node, cfg: Mapping) -> dict:
    return config_subset(node.cfg if node.cfg is not None else cfg, node.step.config_keys)


def _track(tracking, node: Node, outcome: StepOutcome) -> None:
    if tracking is not None:
        tracking.log_step(node.id, outcome.manifest, executed=outcome.executed, artifacts=node.artifacts)


def _run_local(plan, cfg, store, pool, retries, force, tracking) -> dict[str, StepOutcome]:
    done: dict[str, StepOutcome] = {}
    for node in plan:
        inputs, subset = _resolve(node, done), _node_cfg(node, cfg)
        for attempt in range(retries + 1):
            try:
                with pool.acquire() as device:
                    manifest, executed = store.run_with_status(node.step, inputs, subset, device, force=force)
                break
            except InputError:
                raise
            except Exception:
                if attempt == retries:
                    raise
        done[node.id] = StepOutcome(manifest, executed)
        _track(tracking, node, done[node.id])
    return done


def _run_prefect_maybe_in_flow(plan, cfg, store, pool, retries, force, tracking, flow_name):
    from prefect import flow
    from prefect.context import FlowRunContext

    _quiet_input_errors()

    def body() -> dict[str, StepOutcome]:
        return _run_prefect(plan, cfg, store, pool, retries, force, tracking)

    if FlowRunContext.get() is not None:
        return body()
    return flow(body, name=flow_name, persist_result=False, validate_parameters=False)()


def _run_prefect(plan, cfg, store, pool, retries, force, tracking) -> dict[str, StepOutcome]:
    from prefect.task_runners import ThreadPoolTaskRunner

    tasks = {node.id: make_task(node.step, store, pool, retries=retries) for node in plan}
    finished: queue.Queue = queue.Queue()
    done: dict[str, StepOutcome] = {}
    running: dict[Any, Node] = {}
    pending = list(plan)
    refreshed: set[str] = set()
    failure: BaseException | None = None

    def submit(runner, node: Node, refresh: bool) -> None:
        inputs, subset = _resolve(node, done), _node_cfg(node, cfg)
        stale = force or refresh or store.lookup(node.step, store.key(node.step, inputs, subset)) is None
        task = tasks[node.id].with_options(refresh_cache=True) if stale else tasks[node.id]
        future = runner.submit(task, parameters={"inputs": inputs, "cfg": subset, "force": force})
        running[future] = node
        future.add_done_callback(finished.put)

    with ThreadPoolTaskRunner(max_workers=pool.size) as runner:
        while True:
            if failure is None:
                for node in [n for n in pending if _deps(n) <= set(done)]:
                    pending.remove(node)
                    submit(runner, node, refresh=False)
            if not running:
                break
            future = finished.get()
            node = running.pop(future)
            try:
                outcome: StepOutcome = future.result()
            except BaseException as err:  # after Prefect's retries; let running siblings finish
                failure = failure or err
                continue
            if future.state.name == "Cached":
                outcome = StepOutcome(outcome.manifest, executed=False)
            if not outcome.manifest.is_intact() and node.id not in refreshed:  # deleted since the check
                refreshed.add(node.id)
                submit(runner, node, refresh=True)
                continue
            done[node.id] = outcome
            _track(tracking, node, outcome)
    if failure is not None:
        raise failure
    return done
