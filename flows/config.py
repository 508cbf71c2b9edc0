"""Hydra composition: once per flow run, in the caller's thread, under a lock, to a plain dict.

Hydra's compose API keeps a process-wide ``GlobalHydra`` singleton and is not thread-safe (three of
four concurrent threads failed, ../shared/research/pipeline.md §4), so :func:`compose` serialises
it and hands back ``OmegaConf.to_container(resolve=True)``: tasks never see an OmegaConf object.
Bad overrides become one :class:`InputError` line that names the key or value and lists the
valid choices, instead of Hydra's multi-line search-path report.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from anyto3d.errors import InputError
from steps.contract import config_subset

__all__ = ["compose", "config_subset", "config_hash", "flatten", "group_options", "project_root", "default_config_dir"]

_COMPOSE_LOCK = threading.RLock()  # re-entrant: an error message composes the defaults


def project_root() -> Path:
    """``$ANYTO3D_ROOT``, else the source checkout holding ``flows/`` (if it has ``conf/``), else the cwd."""
    env = os.environ.get("ANYTO3D_ROOT")
    if env:
        return Path(env).expanduser().resolve()
    checkout = Path(__file__).resolve().parents[1]
    return checkout if (checkout / "conf").is_dir() else Path.cwd().resolve()


def default_config_dir() -> Path:
    return project_root() / "conf"


def group_options(config_dir: Path | str, group: str) -> list[str]:
    """The option names of a config group: the ``*.yaml`` stems in ``<config_dir>/<group>/``."""
    directory = Path(config_dir) / group
    return sorted(p.stem for p in directory.glob("*.yaml")) if directory.is_dir() else []


def _root_groups(config_dir: Path, config_name: str) -> set[str]:
    """Groups named in the root defaults list plus every sub-directory of the config dir."""
    groups = {p.name for p in config_dir.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    try:
        from omegaconf import OmegaConf

        root = OmegaConf.to_container(OmegaConf.load(config_dir / f"{config_name}.yaml"))
    except Exception:  # a broken root file is reported by Hydra itself below
        return groups
    for entry in (root or {}).get("defaults", []) or []:
        if isinstance(entry, Mapping):
            for key in entry:
                groups.add(str(key).removeprefix("optional ").strip().lstrip("/"))
    return groups


def compose(
    overrides: Sequence[str] = (),
    *,
    config_dir: Path | str | None = None,
    config_name: str = "config",
) -> dict:
    """Compose ``<config_dir>/<config_name>.yaml`` with ``overrides`` into a resolved plain dict."""
    cdir = Path(config_dir).expanduser().resolve() if config_dir is not None else default_config_dir()
    if not (cdir / f"{config_name}.yaml").is_file():
        raise InputError(f"config {config_name}.yaml not found in {cdir}")
    overrides = [str(o) for o in overrides]
    _check_overrides(overrides, cdir, config_name)

    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    with _COMPOSE_LOCK:
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(cdir), version_base=None):
                cfg = hydra_compose(config_name=config_name, overrides=overrides)
            resolved = OmegaConf.to_container(cfg, resolve=True)
        except (HydraException, OmegaConfBaseException, ValueError) as err:
            raise InputError(_explain(err, overrides, cdir, config_name)) from None
        finally:
            GlobalHydra.instance().clear()
    return resolved


def _check_overrides(overrides: list[str], cdir: Path, config_name: str) -> None:
    """Catch the common mistakes before Hydra does, so the message can list the valid choices."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as err:
        raise InputError(f"cannot parse override: {str(err).splitlines()[0]}") from None
    groups = _root_groups(cdir, config_name)
    for override in parsed:
        text = override.input_line or override.key_or_group
        if override.is_sweep_override():
            raise InputError(f"override {text!r} is a sweep; a flow run takes one value per key (run a sweep instead)")
        key = override.key_or_group
        if override.is_delete() or key not in groups:
            continue
        value = override.value()
        choices = value if isinstance(value, list) else [value]
        valid = group_options(cdir, key)
        for choice in choices:
            if choice is None:  # deselecting an optional group (experiment=null): Hydra decides
                continue
            if not isinstance(choice, str) or choice not in valid:
                listed = ", ".join(valid) or "(none)"
                raise InputError(f"unknown {key} {choice!r} in override {text!r}; valid {key} options: {listed}")


def _explain(err: Exception, overrides: list[str], cdir: Path, config_name: str) -> str:
    """One line for a Hydra/OmegaConf failure; for an unknown key, the keys valid at its level."""
    message = str(err).strip()
    first = message.splitlines()[0] if message else type(err).__name__
    if first.startswith("Could not override '"):
        key = first.split("'")[1]
        parent, _, leaf = key.rpartition(".")
        valid = _keys_at(cdir, config_name, parent)
        where = f"under {parent!r}" if parent else "at the top level"
        return (
            f"unknown config key {key!r}; valid keys {where}: {', '.join(valid) or '(none)'} "
            f"(to add a new key use '+{key}=...')"
        )
    if "Could not find '" in first or "Could not load '" in first:
        missing = first.split("'")[-2]
        group, _, name = missing.rpartition("/")
        valid = ", ".join(group_options(cdir, group)) or "(none)"
        return f"unknown {group or 'config'} {name!r}; valid {group} options: {valid}"
    return f"bad configuration ({', '.join(overrides) or 'no overrides'}): {first}"


def _keys_at(cdir: Path, config_name: str, dotted: str) -> list[str]:
    """Keys of the default composition at ``dotted`` ('' = top level), for error messages."""
    try:
        node: Any = compose([], config_dir=cdir, config_name=config_name)
    except InputError:
        return []
    for part in [p for p in dotted.split(".") if p]:
        node = node.get(part) if isinstance(node, Mapping) else None
    return sorted(node) if isinstance(node, Mapping) else []


def flatten(cfg: Mapping, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [1, 2]} -> {"a.b": 1, "c": [1, 2]}`` (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name, sep))
        else:
            flat[name] = value
    return flat


def config_hash(cfg: Mapping, keys: Iterable[str] | None = None) -> str:
    """sha256 of the canonical JSON of ``cfg`` (or of its subset at ``keys``)."""
    data = config_subset(cfg, keys) if keys is not None else cfg
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
