"""Numbered training checkpoints, written atomically and resumed from the newest readable one.

One manager serves every long loop: the pipeline's phases (``steps.phase_common``, under the step
store's work directory) and the tiny world's trainers (``anyto3d.zoo.train_priors``,
``anyto3d.zoo.train_encoders``). torch is imported only when a checkpoint is written or read, so
the step store stays light to import.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from anyto3d.errors import InputError


class CheckpointManager:
    """Numbered checkpoints of a long phase in a work directory, written atomically.

    ``save`` writes ``<prefix><step>.pt`` via a temporary file and a rename, then keeps the newest
    ``keep``; ``latest`` loads the newest readable one with ``torch.load(weights_only=True)``, so a
    state may hold only tensors and primitive containers (use ``capture_rng_state`` for generators).
    """

    SUFFIX = ".pt"

    def __init__(self, work_dir: Path | str, every: int, keep: int = 2, prefix: str = "ckpt-"):
        if every < 1 or keep < 1:
            raise InputError(f"checkpoint interval and count must be >= 1 (got every={every}, keep={keep})")
        if not prefix or "/" in prefix or any(c in prefix for c in "*?["):
            raise InputError(f"checkpoint prefix must be a plain file-name start, got {prefix!r}")
        self.dir = Path(work_dir)
        self.every = int(every)
        self.keep = int(keep)
        self.prefix = prefix

    def due(self, step_i: int) -> bool:
        """Whether iteration ``step_i`` (counted from 1 after it finishes) should be saved."""
        return step_i > 0 and step_i % self.every == 0

    def save(self, step_i: int, state: Any) -> Path:
        import torch

        check_weights_only(state, "state")
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.dir / f"{self.prefix}{int(step_i):010d}{self.SUFFIX}"
        tmp = self.dir / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with open(tmp, "wb") as f:
                torch.save({"step": int(step_i), "state": state}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        for old in self._files()[self.keep :]:
            old.unlink(missing_ok=True)
        return final

    def latest(self) -> tuple[int, Any] | None:
        import torch

        for path in self._files():
            try:
                payload = torch.load(path, map_location="cpu", weights_only=True)
                return int(payload["step"]), payload["state"]
            except Exception:  # unreadable (e.g. a disk-full write): fall back to the previous one
                continue
        return None

    def _files(self) -> list[Path]:
        """Checkpoint files, newest first."""
        if not self.dir.is_dir():
            return []
        name = re.compile(re.escape(self.prefix) + r"\d{10}" + re.escape(self.SUFFIX))
        # exactly <prefix><10 digits>.pt: another run's prefix that starts with this one
        # ("binder-" and "binder-audio-") is not ours
        return sorted((p for p in self.dir.glob(f"{self.prefix}*{self.SUFFIX}") if name.fullmatch(p.name)), reverse=True)


def check_weights_only(obj: Any, where: str) -> None:
    """Raise ``TypeError`` unless ``obj`` is made of what ``torch.load(weights_only=True)`` reads."""
    import torch

    leaves = (bool, int, float, str, bytes, torch.Tensor, torch.dtype, torch.device, torch.Size)
    if obj is None or isinstance(obj, leaves):
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            check_weights_only(k, f"{where} key")
            check_weights_only(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_weights_only(v, f"{where}[{i}]")
        return
    raise TypeError(
        f"checkpoint {where} has type {type(obj).__name__}; only tensors and primitive containers "
        "load with weights_only=True (convert arrays to tensors)"
    )
