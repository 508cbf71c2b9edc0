"""The step contract: a pure function from input files and a config subset to an output directory.

A :class:`Step` knows nothing of Prefect, MLflow or DVC. It reads only its named inputs and the
config keys it declares (it is *given* only that subset, so an undeclared read fails loudly instead
of silently escaping the cache key), writes only under ``out_dir``, keeps resumable state under
``work_dir`` and returns a small dict of metrics.

The code hash that enters the store key is the sha256 of the source file of the module that defines
the step function, plus the sources of any modules the step lists in ``code_modules`` (a package
name hashes every ``.py`` file under it). Library code is deliberately *not* hashed wholesale: an
edit anywhere in ``anyto3d/`` would invalidate every cached NeRF. A step that depends on library
behaviour either names those modules or bumps ``version``. The store's own layout is versioned by
``steps.store.STORE_FORMAT`` rather than by hashing ``store.py``, for the same reason.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import math
import random
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anyto3d.determinism import deterministic_kernels  # noqa: F401  (re-exported by steps)
from anyto3d.errors import InputError

# run(inputs, cfg_subset, out_dir, device, work_dir) -> metrics
RunFn = Callable[[dict[str, Path], dict, Path, str, Path], Mapping[str, Any] | None]

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


@dataclass(frozen=True)
class Step:
    """One stage of the DAG.

    ``name`` is also a directory name in the store; ``version`` is bumped by hand whenever the
    step's output would change for reasons the code hash cannot see. ``config_keys`` are dotted
    paths (``"seed"``, ``"model.nerf"``) into the resolved config; ``inputs`` are the names of
    required input files/directories, ``optional_inputs`` the ones that may be absent.
    ``roles``: ``roles(cfg)`` names the model roles (:data:`anyto3d.models.ROLES`) the step loads
    under a resolved config, and only those tiny models' weights enter its store key, so a
    retrained prior re-runs the steps that load it and no others (the step body loads exactly
    what it declares: it calls the same function). ``None``, for a step that does not say: every
    tiny model but the evaluation-only judge.
    """

    name: str
    version: str
    run_fn: RunFn = field(repr=False, compare=False)
    config_keys: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    optional_inputs: tuple[str, ...] = ()
    code_modules: tuple[str, ...] = ()
    roles: Callable[[Mapping], Iterable[str]] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise InputError(f"step name {self.name!r} must match {_NAME.pattern} (it is a directory name)")
        object.__setattr__(self, "version", str(self.version))
        for attr in ("config_keys", "inputs", "optional_inputs", "code_modules"):
            object.__setattr__(self, attr, tuple(getattr(self, attr)))
        both = set(self.inputs) & set(self.optional_inputs)
        if both:
            raise InputError(f"step {self.name!r}: inputs {sorted(both)} are both required and optional")

    def run(self, inputs: dict[str, Path], cfg: dict, out_dir: Path, device: str, work_dir: Path) -> dict:
        """Run the step body; returns its metrics (``{}`` when the body returns ``None``)."""
        metrics = self.run_fn(inputs, cfg, out_dir, device, work_dir)
        return dict(metrics or {})

    def code_hash(self) -> str:
        """sha256 over the defining module's source and every module named in ``code_modules``."""
        return _code_hash(self.run_fn, self.code_modules)


def step(
    name: str,
    version: str | int,
    *,
    config_keys: Iterable[str] = (),
    inputs: Iterable[str] = (),
    optional_inputs: Iterable[str] = (),
    code_modules: Iterable[str] = (),
    roles: Callable[[Mapping], Iterable[str]] | None = None,
) -> Callable[[RunFn], Step]:
    """Decorator: turn ``def run(inputs, cfg, out_dir, device, work_dir) -> metrics`` into a :class:`Step`."""

    def wrap(fn: RunFn) -> Step:
        return Step(
            name=name,
            version=str(version),
            run_fn=fn,
            config_keys=tuple(config_keys),
            inputs=tuple(inputs),
            optional_inputs=tuple(optional_inputs),
            code_modules=tuple(code_modules),
            roles=roles,
        )

    return wrap


# --------------------------------------------------------------------------- config subsets

_MISSING = object()


def _lookup(cfg: Mapping, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def config_subset(cfg: Mapping, keys: Iterable[str]) -> dict:
    """The nested sub-dict of ``cfg`` holding exactly the dotted ``keys``.

    ``config_subset({"a": {"b": 1, "c": 2}, "d": 3}, ["a.b"]) == {"a": {"b": 1}}``. A key that is
    absent raises :class:`InputError` naming it; overlapping keys (``"a"`` and ``"a.b"``) are fine.
    """
    out: dict = {}
    for dotted in sorted(set(keys), key=lambda k: k.count(".")):
        value = _lookup(cfg, dotted)
        if value is _MISSING:
            raise InputError(f"config key {dotted!r} is missing from the resolved config")
        parts = dotted.split(".")
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):  # an enclosing key already copied the whole subtree
                break
            node = child
        else:
            if parts[-1] not in node:
                node[parts[-1]] = _plain(value, dotted)
    return out


def _plain(value: Any, where: str) -> Any:
    """A deep copy made of JSON types only (tuples become lists); anything else is an InputError."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"config value {where}={value} is not finite")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise InputError(f"config value {where} has type {type(value).__name__}; only JSON types are allowed")


# --------------------------------------------------------------------------- code hashing


def _module_sources(module_name: str) -> list[tuple[str, bytes]]:
    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None:
        raise InputError(f"code module {module_name!r} cannot be found")
    origin = Path(spec.origin)
    if spec.submodule_search_locations:  # a package: every .py file below it
        base = origin.parent
        return [(str(p.relative_to(base)), p.read_bytes()) for p in sorted(base.rglob("*.py"))]
    return [(origin.name, origin.read_bytes())]


def _function_source(fn: Callable) -> tuple[str, bytes]:
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    path = getattr(module, "__file__", None)
    if path and Path(path).is_file():
        return Path(path).name, Path(path).read_bytes()
    try:  # defined interactively: its own source, else its bytecode
        return getattr(fn, "__qualname__", "fn"), inspect.getsource(fn).encode()
    except (OSError, TypeError):
        return getattr(fn, "__qualname__", "fn"), fn.__code__.co_code


def _code_hash(fn: Callable, code_modules: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    parts = [_function_source(fn)]
    for name in code_modules:
        parts.extend((f"{name}:{rel}", data) for rel, data in _module_sources(name))
    for label, data in parts:
        h.update(label.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


# --------------------------------------------------------------------------- seeding


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (CPU and every CUDA device)."""
    seed = int(seed)
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # numpy is a torch dependency, but the contract does not need it
        pass
    import torch

    torch.manual_seed(seed)


def capture_rng_state() -> dict:
    """All generator states as tensors and primitive containers, so ``torch.load(weights_only=True)`` accepts them."""
    import numpy as np
    import torch

    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], [int(x) for x in np_state[1]], int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping) -> None:
    """Inverse of :func:`capture_rng_state`."""
    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
