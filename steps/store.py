"""The content-addressed step store: ``<root>/<step>/<key>/`` with ``manifest.json`` written last.

``key = sha256(canonical JSON of {store format, step name, step version, code hash, config subset,
content digest of every input})``. Paths never enter the key, only file contents, so a moved or
re-created input with the same bytes is a hit and a changed file is a miss.

Layout under the root::

    <step>/<key>/            committed outputs + manifest.json  (a directory without it does not exist)
    .tmp/<step>/<key>-<id>/  an output being built; renamed into place when complete
    .work/<step>/<key>/      checkpoints of a long phase; survives a crash, deleted on commit
    .locks/<step>/<key>.lock one builder per key across threads and processes (flock)

Anything in ``.tmp`` for a key whose lock we hold belongs to a builder that died, so it is removed.
This module never imports Prefect or MLflow (and torch only lazily, for checkpoints).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from anyto3d.errors import InputError
from steps.contract import Step, config_subset, deterministic_kernels, seed_everything

try:
    import fcntl
except ImportError:  # Windows: in-process locking only
    fcntl = None

STORE_FORMAT = 1
MANIFEST = "manifest.json"
DEFAULT_ROOT = Path("data/store")

# --------------------------------------------------------------------------- hashing


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, non-finite floats rejected."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


_digest_memo: dict[tuple, str] = {}
_digest_lock = threading.Lock()


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, memoised on (path, inode, size, mtime) within the process."""
    st = path.stat()
    memo_key = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _digest_lock:
        hit = _digest_memo.get(memo_key)
    if hit is not None:
        return hit
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    with _digest_lock:
        _digest_memo[memo_key] = digest
    return digest


def _dir_files(root: Path) -> list[str]:
    """Sorted POSIX relative paths of the regular files below ``root`` (symlinks followed)."""
    found = []
    for dirpath, _, filenames in os.walk(root, followlinks=True):
        for name in filenames:
            full = Path(dirpath, name)
            if full.is_file():
                found.append(full.relative_to(root).as_posix())
    return sorted(found)


def path_digest(path: Path) -> str:
    """Content digest of an input: a file's sha256, or for a directory the sha256 over its sorted
    (relative path, file sha256) pairs. A store output's top-level ``manifest.json`` is skipped:
    it holds timings, not content, so a deterministic rebuild upstream keeps downstream keys."""
    path = Path(path)
    if path.is_file():
        return "file:" + file_sha256(path)
    if path.is_dir():
        return _files_digest(path, [rel for rel in _dir_files(path) if rel != MANIFEST])
    raise InputError(f"input {path} does not exist")


def _files_digest(root: Path, rels: list[str]) -> str:
    h = hashlib.sha256()
    for rel in rels:
        h.update(rel.encode() + b"\0" + file_sha256(root / rel).encode() + b"\n")
    return "dir:" + h.hexdigest()


_MODELS_DIGESTS: dict[tuple, str] = {}


def models_digest(model_cfg: Mapping | None, roles: Iterable[str] | None = None) -> str | None:
    """The content digest of the tiny models a step loads (``model.name == "tiny"``), so that
    retrained weights — same code, same config — never hit a result built with the old ones.
    ``roles`` (:data:`anyto3d.models.ROLES`): the digest covers those roles' model directories
    only; ``None``: every tiny model but the evaluation-only judge. Memoised on the files' (path,
    size, mtime). ``None`` for paper weights (they live outside the project: ``weights_dir`` or
    the HF cache, pinned by their repo ids in the config) and for a step that loads no model."""
    if not model_cfg or model_cfg.get("name", "tiny") != "tiny":
        return None
    from anyto3d.models import EVALUATION_ONLY_TINY, ROLES, TINY_DIRS, tiny_models_root

    root = tiny_models_root(model_cfg).resolve()
    if not root.is_dir():
        return None  # the step's own loading reports the missing models
    if roles is None:
        wanted = {rel.split("/", 1)[0] for rel in _dir_files(root)} - set(EVALUATION_ONLY_TINY)
    else:
        unknown = sorted(set(roles) - set(ROLES))
        if unknown:
            raise InputError(f"unknown model role(s) {unknown}; roles: {list(ROLES)}")
        wanted = {TINY_DIRS[r] for r in roles if r in TINY_DIRS}  # "lora" has no tiny model
    if not wanted:
        return None
    rels = [rel for rel in _dir_files(root) if rel.split("/", 1)[0] in wanted]
    stats = [(rel, (root / rel).stat()) for rel in rels]
    stamp = (str(root), *((rel, st.st_size, st.st_mtime_ns) for rel, st in stats))
    if stamp not in _MODELS_DIGESTS:
        _MODELS_DIGESTS[stamp] = _files_digest(root, rels)
    return _MODELS_DIGESTS[stamp]


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class Manifest:
    """What a committed step output holds; JSON-able (``to_dict``/``from_dict``).

    ``files`` maps each relative path to ``{"sha256": ..., "bytes": ...}``. ``dir`` is where the
    output lives now (reset from the actual location whenever a manifest is read from disk).
    """

    step: str
    version: str
    key: str
    code_hash: str
    config: dict
    inputs: dict[str, str]
    files: dict[str, dict]
    metrics: dict
    device: str
    timings: dict
    dir: str
    store_format: int = STORE_FORMAT
    #: How the floats were computed: ``{"deterministic": bool, "torch_threads": int}``. Results are
    #: bit-identical run to run only with deterministic kernels, and only at the same thread count
    #: (a reduction split across more threads adds in another order). Empty in older manifests.
    kernels: dict = field(default_factory=dict)

    def path(self, relative: str = "") -> Path:
        """Absolute path of a file of this output (the directory itself for ``""``)."""
        return Path(self.dir) / relative if relative else Path(self.dir)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> Manifest:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        data = json.loads((Path(directory) / MANIFEST).read_text())
        data["dir"] = str(Path(directory).absolute())
        return cls.from_dict(data)

    def is_intact(self, verify_hashes: bool = False) -> bool:
        """Manifest present and every listed file present with its size (and sha256 if asked)."""
        base = self.path()
        if not (base / MANIFEST).is_file():
            return False
        for rel, entry in self.files.items():
            p = base / rel
            if not p.is_file() or p.stat().st_size != entry["bytes"]:
                return False
            if verify_hashes and file_sha256(p) != entry["sha256"]:
                return False
        return True


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _clean_metrics(step: Step, metrics: Mapping) -> dict:
    out = {}
    for name, value in metrics.items():
        if hasattr(value, "item") and callable(value.item):  # a 0-d tensor or numpy scalar
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            value = None  # JSON has no NaN; the tracker skips None
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise TypeError(f"step {step.name!r} returned metric {name!r} of type {type(value).__name__}")
        out[str(name)] = value
    return out


# --------------------------------------------------------------------------- directories


def ensure_writable_dir(path: Path | str, what: str = "output directory") -> Path:
    """Create ``path`` if needed and prove it writable by creating and removing a probe file.

    Any failure is one :class:`InputError` line naming the directory; nothing is left behind.
    """
    path = Path(path).expanduser()
    try:
        if path.exists() and not path.is_dir():
            raise InputError(f"{what} {path} is not a directory")
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except InputError:
        raise
    except OSError as err:
        raise InputError(f"{what} {path} is not writable: {err.strerror or err}") from None
    return path.resolve()


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _key_lock(path: Path) -> Iterator[None]:
    """Exclusive lock on ``path``: blocks other threads and other processes building the same key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        with _fallback_locks.setdefault(str(path), threading.Lock()):
            yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_fallback_locks: dict[str, threading.Lock] = {}


# --------------------------------------------------------------------------- the store


@dataclass
class Store:
    """A content-addressed directory of step outputs (default ``data/store``)."""

    root: Path = field(default=DEFAULT_ROOT)

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser().absolute()
        self._checked = False

    # ----- addressing

    def key(self, step: Step, inputs: Mapping[str, Any], cfg: Mapping) -> str:
        """The content key of running ``step`` on ``inputs`` under ``cfg`` (only its subset counts)."""
        return self._key_parts(step, inputs, cfg)[0]

    def _key_parts(self, step: Step, inputs: Mapping[str, Any], cfg: Mapping) -> tuple[str, dict, dict, dict, str]:
        paths = resolve_inputs(step, inputs)
        subset = config_subset(cfg, step.config_keys)
        digests = {name: path_digest(p) for name, p in sorted(paths.items())}
        code = step.code_hash()
        parts = {
            "format": STORE_FORMAT,
            "step": step.name,
            "version": step.version,
            "code": code,
            "config": subset,
            "inputs": digests,
        }
        roles = None if step.roles is None else set(step.roles(cfg))
        if "model" in step.config_keys and (models := models_digest(cfg.get("model"), roles)) is not None:
            parts["models"] = models  # the weights are inputs too
        blob = canonical_json(parts)
        return hashlib.sha256(blob.encode()).hexdigest(), paths, subset, digests, code

    def entry_dir(self, step: Step | str, key: str) -> Path:
        return self.root / _step_name(step) / key

    def work_dir(self, step: Step | str, key: str) -> Path:
        return self.root / ".work" / _step_name(step) / key

    def lookup(self, step: Step | str, key: str) -> Manifest | None:
        """The committed, intact manifest for ``key``, or ``None``."""
        directory = self.entry_dir(step, key)
        try:
            manifest = Manifest.load(directory)
        except (OSError, ValueError, TypeError, KeyError):
            return None
        return manifest if manifest.key == key and manifest.is_intact() else None

    # ----- running

    def run(self, step: Step, inputs: Mapping[str, Any], cfg: Mapping, device: str = "cpu") -> Manifest:
        """Return the output of ``step``: from the store on a hit, else built and committed atomically."""
        return self.run_with_status(step, inputs, cfg, device)[0]

    def run_with_status(
        self, step: Step, inputs: Mapping[str, Any], cfg: Mapping, device: str = "cpu", *, force: bool = False
    ) -> tuple[Manifest, bool]:
        """Like :meth:`run`; also says whether the body executed (``False`` on a store hit)."""
        self.check()
        key, paths, subset, digests, code = self._key_parts(step, inputs, cfg)
        if not force and (hit := self.lookup(step, key)) is not None:
            return hit, False
        with self._locked(step, key):
            if not force and (hit := self.lookup(step, key)) is not None:  # built while we waited
                return hit, False
            return self._build(step, paths, subset, digests, code, key, device), True

    @contextlib.contextmanager
    def _locked(self, step: Step, key: str) -> Iterator[None]:
        try:
            lock = _key_lock(self.root / ".locks" / step.name / f"{key}.lock")
            lock.__enter__()
        except OSError as err:
            raise InputError(f"store directory {self.root} is not writable: {err.strerror or err}") from None
        try:
            yield
        finally:
            lock.__exit__(None, None, None)

    def _build(self, step: Step, paths, subset, digests, code, key, device) -> Manifest:
        final = self.entry_dir(step, key)
        tmp_parent = self.root / ".tmp" / step.name
        for stale in tmp_parent.glob(f"{key}-*"):  # we hold the key lock: their builders are dead
            _rmtree(stale)
        if final.exists():  # a directory without a (valid) manifest does not exist
            _rmtree(final)
        work = self.work_dir(step, key)
        tmp = tmp_parent / f"{key}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir(parents=True)
            work.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            _rmtree(tmp)
            raise InputError(f"store directory {self.root} is not writable: {err.strerror or err}") from None

        started, t0 = _utc_now(), time.perf_counter()
        try:
            with deterministic_kernels() as deterministic:
                seed_everything(_seed_of(subset))
                metrics = _clean_metrics(step, step.run(dict(paths), subset, tmp, device, work))
            seconds = time.perf_counter() - t0
            files = {
                rel: {"sha256": file_sha256(tmp / rel), "bytes": (tmp / rel).stat().st_size} for rel in _dir_files(tmp)
            }
            if MANIFEST in files:
                raise RuntimeError(f"step {step.name!r} wrote {MANIFEST} itself; that name belongs to the store")
            manifest = Manifest(
                step=step.name,
                version=step.version,
                key=key,
                code_hash=code,
                config=subset,
                inputs=digests,
                files=files,
                metrics=metrics,
                device=device,
                timings={"started": started, "finished": _utc_now(), "seconds": round(seconds, 6)},
                dir=str(final),
                kernels=_kernels(deterministic),
            )
            _write_json_durably(tmp / MANIFEST, manifest.to_dict())  # last file of the output
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
        except BaseException:
            _rmtree(tmp)  # the work dir stays: a re-run resumes from its checkpoints
            raise
        _rmtree(work)
        return manifest

    def check(self) -> None:
        """Create the root if needed and prove it writable (once per instance); else InputError."""
        if not self._checked:
            ensure_writable_dir(self.root, "store directory")
            self._checked = True

    # ----- exporting

    def materialize(self, manifest: Manifest, dest: Path | str, files: list[str] | None = None) -> Path:
        """Put (hard links, else copies of) a committed output's files into ``dest``, atomically.

        The destination is assembled beside itself and renamed into place, so a failure leaves
        either the previous ``dest`` or nothing. An unwritable destination is an :class:`InputError`.
        """
        dest = Path(dest).expanduser().absolute()
        ensure_writable_dir(dest.parent, "output directory")
        wanted = sorted(manifest.files) if files is None else list(files)
        unknown = [f for f in wanted if f not in manifest.files]
        if unknown:
            raise InputError(f"{manifest.step} output has no file(s) {unknown}; it has {sorted(manifest.files)}")
        tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
        old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
        try:
            for rel in wanted:
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(manifest.path(rel), target)
                except OSError:
                    shutil.copy2(manifest.path(rel), target)
            if dest.exists():
                os.replace(dest, old)
            os.replace(tmp, dest)
        except OSError as err:
            _rmtree(tmp)
            if old.exists() and not dest.exists():
                os.replace(old, dest)
            raise InputError(f"output directory {dest} is not writable: {err.strerror or err}") from None
        _rmtree(old)
        return dest


def _kernels(deterministic: bool) -> dict:
    import torch

    return {"deterministic": bool(deterministic), "torch_threads": torch.get_num_threads()}


def _seed_of(subset: Mapping) -> int:
    """The subset's top-level ``seed`` (0 when the step does not read one: still deterministic)."""
    seed = subset.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"config value seed={seed!r} must be an integer")
    return seed


def _step_name(step: Step | str) -> str:
    return step if isinstance(step, str) else step.name


def resolve_inputs(step: Step, inputs: Mapping[str, Any]) -> dict[str, Path]:
    """Check the input names against the step's declaration and turn manifests into directories."""
    given = {k: v for k, v in inputs.items() if v is not None}
    missing = [n for n in step.inputs if n not in given]
    extra = [n for n in given if n not in step.inputs and n not in step.optional_inputs]
    if missing or extra:
        raise InputError(
            f"step {step.name!r} needs inputs {list(step.inputs)} (optional {list(step.optional_inputs)}); "
            + (f"missing {missing}" if missing else "")
            + ("; " if missing and extra else "")
            + (f"unexpected {extra}" if extra else "")
        )
    paths = {}
    for name, value in given.items():
        path = value.path() if isinstance(value, Manifest) else Path(value)
        if not path.exists():
            raise InputError(f"input {name!r} of step {step.name!r} does not exist: {path}")
        paths[name] = path.absolute()
    return paths


def _write_json_durably(path: Path, data: Mapping) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
