"""MLflow tracking: a parent run per flow run, a child run per step, or nothing at all.

Only ``flows/`` touches MLflow. Everything goes through an explicit ``MlflowClient`` and explicit
run ids: MLflow's active-run stack is thread-local (a Prefect task thread sees no active run,
../shared/research/pipeline.md §3), so a child run is created with the ``mlflow.parentRunId`` tag
set to the parent's id — what ``start_run(parent_run_id=...)`` does, minus the thread-local state.

The backend is an absolute sqlite URI inside the project (``<root>/mlflow.db``; the file store is
deprecated and raises) and the experiment's artifact location is set explicitly
(``<root>/mlartifacts``), so neither depends on the working directory. MLflow is imported lazily
(about 2 s) with telemetry off. ``ANYTO3D_TRACKING=0`` or ``enabled=False`` gives a no-op tracker.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from flows.config import config_hash, flatten, project_root

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# MLflow's limits (mlflow.utils.validation, 3.17): checked there, restated here to avoid the import.
MAX_PARAM_VALUE = 6000
MAX_KEY = 250
MAX_TAG_VALUE = 8000
PARAMS_PER_BATCH = 100
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


def default_tracking_uri(root: Path | None = None) -> str:
    """``sqlite:////abs/path/mlflow.db`` inside the project."""
    return f"sqlite:///{(Path(root or project_root()) / 'mlflow.db').resolve()}"


def default_artifact_root(root: Path | None = None) -> Path:
    return (Path(root or project_root()) / "mlartifacts").resolve()


def tracking_enabled(default: bool = True) -> bool:
    """``ANYTO3D_TRACKING`` (``0``/``false``/``off`` disables), else ``default``."""
    value = os.environ.get("ANYTO3D_TRACKING")
    return default if value is None else value.strip().lower() not in {"0", "false", "off", "no"}


def param_items(cfg: Mapping, prefix: str = "") -> dict[str, str]:
    """Flattened config as MLflow params: safe keys of <= 250 characters, values of <= 6000."""
    items = {}
    for key, value in flatten(cfg, prefix).items():
        items[_key(key)] = _truncate(value if isinstance(value, str) else _json(value), MAX_PARAM_VALUE)
    return items


def _json(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True, default=str)


def _key(key: str) -> str:
    key = _BAD_KEY_CHARS.sub("_", key)
    if len(key) <= MAX_KEY:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return f"{key[: MAX_KEY - 9]}~{digest}"


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers among ``metrics`` (bools as 0/1); strings and None are skipped."""
    out = {}
    for name, value in metrics.items():
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[_key(str(name))] = float(value)
    return out


def _git_sha(root: Path) -> str | None:
    """HEAD's commit from ``.git`` files (no subprocess); None outside a checkout."""
    git = root / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head
        ref = head.split(None, 1)[1]
        if (git / ref).is_file():
            return (git / ref).read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        return None
    return None


def _run_tags() -> dict[str, str]:
    """Where this run comes from: git commit, DVC stage/experiment, Prefect flow run."""
    tags = {}
    sha = _git_sha(project_root())
    if sha:
        tags["git_sha"] = sha
    for env, tag in (("DVC_STAGE", "dvc_stage"), ("DVC_EXP_NAME", "dvc_exp")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    import sys

    if "prefect" in sys.modules:  # never import Prefect just to ask
        with contextlib.suppress(Exception):
            from prefect.runtime import flow_run

            if flow_run.id:
                tags["prefect_flow_run"] = str(flow_run.id)
    return tags


class FlowRun:
    """A parent MLflow run; ``log_step`` makes a finished child run for one step."""

    def __init__(self, client, experiment_id: str, run_id: str):
        self.client = client
        self.experiment_id = experiment_id
        self.run_id = run_id
        self.step_runs: dict[str, str] = {}

    def log_step(self, name: str, manifest, *, executed: bool = True, artifacts: Iterable[str] = ()) -> str:
        """Child run for a step's manifest: config subset as params, metrics, store key, chosen files."""
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        seconds = float(manifest.timings.get("seconds", 0.0)) if executed else 0.0
        start = now - int(seconds * 1000)
        tags = {
            "mlflow.parentRunId": self.run_id,
            "anyto3d.step": manifest.step,
            "anyto3d.step_version": manifest.version,
            "anyto3d.key": manifest.key,
            "anyto3d.code_hash": manifest.code_hash,
            "anyto3d.store_dir": manifest.dir,
            "anyto3d.device": manifest.device,
            "anyto3d.executed": str(bool(executed)).lower(),
        }
        # bit-identical reruns need the same kernel mode and thread count (anyto3d.determinism)
        tags.update({f"anyto3d.kernels.{k}": str(v).lower() for k, v in (manifest.kernels or {}).items()})
        child = self.client.create_run(self.experiment_id, start_time=start, tags=tags, run_name=name).info.run_id
        params = [Param(k, v) for k, v in param_items(manifest.config).items()]
        metrics = numeric_metrics(manifest.metrics)
        metrics["step_seconds"] = float(manifest.timings.get("seconds", 0.0))
        metric_rows = [Metric(k, v, now, 0) for k, v in metrics.items()]
        for i in range(0, max(len(params), 1), PARAMS_PER_BATCH):
            self.client.log_batch(child, metrics=metric_rows if i == 0 else (), params=params[i : i + PARAMS_PER_BATCH])
        for rel in artifacts:
            path = manifest.path(rel)
            if path.is_dir():
                self.client.log_artifacts(child, str(path), artifact_path=rel)
            else:
                self.client.log_artifact(child, str(path), artifact_path=str(Path(rel).parent) if "/" in rel else None)
        self.client.set_terminated(child, "FINISHED", end_time=now)
        self.step_runs[name] = child
        return child

    def log_metrics(self, metrics: Mapping[str, Any], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [Metric(k, v, now, step) for k, v in numeric_metrics(metrics).items()]
        for i in range(0, len(rows), 1000):
            self.client.log_batch(self.run_id, metrics=rows[i : i + 1000])

    def log_artifacts(self, paths: Iterable[Path | str], artifact_path: str | None = None) -> None:
        """Final products only (mesh, video, contact sheet): the store keeps everything else."""
        for path in map(Path, paths):
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path=artifact_path or path.name)
            else:
                self.client.log_artifact(self.run_id, str(path), artifact_path=artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, _key(str(key)), _truncate(str(value), MAX_TAG_VALUE))


class Tracker:
    """MLflow on an absolute sqlite URI; ``flow_run`` opens the parent run of one flow run."""

    enabled = True

    def __init__(
        self,
        tracking_uri: str | None = None,
        artifact_root: Path | str | None = None,
        experiment: str = "anyto3d",
    ):
        self.tracking_uri = tracking_uri or default_tracking_uri()
        self.artifact_root = Path(artifact_root).resolve() if artifact_root else default_artifact_root()
        self.experiment = experiment
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def experiment_id(self) -> str:
        """The experiment's id, created with an explicit artifact location if it is new."""
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        location = (self.artifact_root / self.experiment).as_uri()
        try:
            return self.client.create_experiment(self.experiment, artifact_location=location)
        except MlflowException:  # created by a concurrent process in between
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    @contextlib.contextmanager
    def flow_run(self, name: str, cfg: Mapping, tags: Mapping[str, Any] | None = None) -> Iterator[FlowRun]:
        """Parent run: resolved config as params + ``config/resolved.yaml``; FAILED if the body raises."""
        from mlflow.entities import Param

        experiment_id = self.experiment_id()
        run_tags = {"cfg_hash": config_hash(cfg)[:12], **_run_tags(), **{k: str(v) for k, v in (tags or {}).items()}}
        run_tags = {_key(k): _truncate(v, MAX_TAG_VALUE) for k, v in run_tags.items()}
        run_id = self.client.create_run(experiment_id, tags=run_tags, run_name=name).info.run_id
        handle = FlowRun(self.client, experiment_id, run_id)
        params = [Param(k, v) for k, v in param_items(cfg).items()]
        for i in range(0, len(params), PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=params[i : i + PARAMS_PER_BATCH])
        self.client.log_dict(run_id, dict(cfg), "config/resolved.yaml")
        try:
            yield handle
        except BaseException as err:
            self.client.set_tag(run_id, "error", _truncate(f"{type(err).__name__}: {err}", MAX_TAG_VALUE))
            self.client.set_terminated(run_id, "FAILED")
            raise
        self.client.set_terminated(run_id, "FINISHED")


class NullFlowRun:
    """Stands in for :class:`FlowRun` when tracking is off: every call does nothing."""

    run_id = None

    def __init__(self) -> None:
        self.step_runs: dict[str, str] = {}

    def log_step(self, name: str, manifest, *, executed: bool = True, artifacts: Iterable[str] = ()) -> None:
        return None

    def log_metrics(self, metrics: Mapping[str, Any], step: int = 0) -> None:
        return None

    def log_artifacts(self, paths: Iterable[Path | str], artifact_path: str | None = None) -> None:
        return None

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        return None


class NullTracker:
    """Tracking disabled: same interface as :class:`Tracker`, touches no database and no MLflow."""

    enabled = False

    @contextlib.contextmanager
    def flow_run(self, name: str, cfg: Mapping, tags: Mapping[str, Any] | None = None) -> Iterator[NullFlowRun]:
        yield NullFlowRun()


def make_tracker(enabled: bool | None = None, **kwargs) -> Tracker | NullTracker:
    """A :class:`Tracker` unless disabled by argument or ``ANYTO3D_TRACKING=0``."""
    on = tracking_enabled() if enabled is None else (enabled and tracking_enabled())
    return Tracker(**kwargs) if on else NullTracker()
