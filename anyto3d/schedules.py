"""Values that change over a phase: loss weights, t-ranges, learning rates, resolutions (DESIGN §4).

Every such value in a config is a :class:`Schedule` over the phase's *own* step counter (step 0
is the first step of the phase, whatever came before it). A config writes one as:

* a number — :class:`Constant`;
* ``{"type": "constant", "value": v}``;
* ``{"type": "piecewise_linear", "knots": [[step, value], ...]}`` or a list of ``[step, value]``
  pairs — :class:`PiecewiseLinear`, linear between knots and clamped outside them;
* ``{"type": "sqrt_anneal", "start": a, "end": b, "total_steps": n}`` — :class:`SqrtAnneal`,
  HiFA's square-root anneal;
* threestudio's flat lists, so released configs can be copied: ``[start_value, end_value,
  end_step]`` or ``[start_step, start_value, end_value, end_step]`` (linear, clamped). E.g.
  threestudio's Zero123 ``min_step_percent: [0, 0.4, 0.2, 200]``.

Timesteps: t-ranges are fractions of T (:class:`TimestepRange`); :func:`sample_timestep` draws
integers in [0, T). **One t is shared by the whole batch by default** (threestudio's unified
guidance and MVDream do this; its plain SD guidance draws one per item — ``per_sample=True``).
A deterministic range returns its upper bound, which is how HiFA anneals t.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from anyto3d.errors import InputError


class ScheduleError(InputError):
    """A schedule spec in a config is malformed or gives values outside their allowed range."""


class Schedule(ABC):
    """A value as a function of the phase's step counter."""

    @abstractmethod
    def __call__(self, step: int) -> float: ...

    @abstractmethod
    def spec(self) -> dict:
        """The config form of this schedule (``parse_schedule(s.spec())`` gives it back)."""


@dataclass(frozen=True)
class Constant(Schedule):
    value: float

    def __call__(self, step: int) -> float:
        return float(self.value)

    def spec(self) -> dict:
        return {"type": "constant", "value": self.value}


@dataclass(frozen=True)
class PiecewiseLinear(Schedule):
    """Linear interpolation between (step, value) knots; the end values hold outside them."""

    knots: tuple[tuple[int, float], ...]

    def __post_init__(self):
        if not self.knots:
            raise ScheduleError("piecewise_linear needs at least one [step, value] knot")
        steps = [s for s, _ in self.knots]
        if any(b < a for a, b in zip(steps, steps[1:])):
            raise ScheduleError(f"piecewise_linear knot steps must be non-decreasing, got {steps}")

    def __call__(self, step: int) -> float:
        knots = self.knots
        if step < knots[0][0]:
            return float(knots[0][1])
        # the last knot at or before `step` (so at a repeated step, a jump, the later value wins)
        i = max(k for k, (s, _) in enumerate(knots) if s <= step)
        if i == len(knots) - 1:
            return float(knots[-1][1])
        (s0, v0), (s1, v1) = knots[i], knots[i + 1]
        return float(v0 + (v1 - v0) * (step - s0) / (s1 - s0))

    def spec(self) -> dict:
        return {"type": "piecewise_linear", "knots": [list(k) for k in self.knots]}


@dataclass(frozen=True)
class SqrtAnneal(Schedule):
    """HiFA's anneal: v = (start − end)·(1 − √(step / total_steps)) + end, step clamped to [0, total].

    HiFA (official ``timestep_scheduling='sqrt'``): t = t_min + (t_max − t_min)(1 − √(step/iters))
    with t from 0.98 to 0.3; threestudio's ``sqrt_anneal`` is the same form with
    ``trainer_max_steps`` as the total (it must be set to the phase length).
    """

    start: float
    end: float
    total_steps: int

    def __post_init__(self):
        if not (isinstance(self.total_steps, int) and self.total_steps > 0):
            raise ScheduleError(f"sqrt_anneal total_steps must be a positive integer, got {self.total_steps!r}")

    def __call__(self, step: int) -> float:
        p = min(max(step, 0), self.total_steps) / self.total_steps
        return float((self.start - self.end) * (1.0 - math.sqrt(p)) + self.end)

    def spec(self) -> dict:
        return {"type": "sqrt_anneal", "start": self.start, "end": self.end, "total_steps": self.total_steps}


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _number(x, what: str) -> float:
    if not _is_number(x):
        raise ScheduleError(f"{what} must be a finite number, got {x!r}")
    return float(x)


def _step(x, what: str) -> int:
    if isinstance(x, float) and x.is_integer():
        x = int(x)
    if not isinstance(x, int) or isinstance(x, bool) or x < 0:
        raise ScheduleError(f"{what} must be a non-negative integer step, got {x!r}")
    return x


def _knots(pairs, what: str) -> tuple[tuple[int, float], ...]:
    out = []
    for pair in pairs:
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ScheduleError(f"{what}: each knot must be [step, value], got {pair!r}")
        out.append((_step(pair[0], f"{what} knot step"), _number(pair[1], f"{what} knot value")))
    return tuple(out)


_SPEC_HELP = (
    "a schedule is a number, {type: constant, value}, {type: piecewise_linear, knots: [[step, value], ...]}, "
    "{type: sqrt_anneal, start, end, total_steps}, a list of [step, value] pairs, or threestudio's "
    "[start_value, end_value, end_step] / [start_step, start_value, end_value, end_step]"
)


def parse_schedule(value) -> Schedule:
    """Turn a config value into a :class:`Schedule` (a Schedule passes through unchanged).

    Raises :class:`ScheduleError` (an :class:`InputError`) naming what is wrong.
    """
    if isinstance(value, Schedule):
        return value
    if _is_number(value):
        return Constant(float(value))
    if isinstance(value, Mapping):
        return _parse_mapping(dict(value))
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        items = list(value)
        if items and all(isinstance(i, Sequence) and not isinstance(i, (str, bytes)) for i in items):
            return PiecewiseLinear(_knots(items, "piecewise_linear"))
        if len(items) == 3 and all(_is_number(i) for i in items):
            v0, v1, s1 = items
            return PiecewiseLinear(((0, float(v0)), (_step(s1, "end_step"), float(v1))))
        if len(items) == 4 and all(_is_number(i) for i in items):
            s0, v0, v1, s1 = items
            return PiecewiseLinear(((_step(s0, "start_step"), float(v0)), (_step(s1, "end_step"), float(v1))))
    raise ScheduleError(f"cannot read schedule {value!r}: {_SPEC_HELP}")


def _parse_mapping(spec: dict) -> Schedule:
    kind = spec.pop("type", None)
    allowed = {"constant": {"value"}, "piecewise_linear": {"knots"}, "sqrt_anneal": {"start", "end", "total_steps"}}
    if kind not in allowed:
        raise ScheduleError(f"schedule type {kind!r} is not one of {sorted(allowed)}; {_SPEC_HELP}")
    if set(spec) != allowed[kind]:
        raise ScheduleError(f"{kind} schedule needs exactly the keys {sorted(allowed[kind])}, got {sorted(spec)}")
    if kind == "constant":
        return Constant(_number(spec["value"], "constant value"))
    if kind == "piecewise_linear":
        knots = spec["knots"]
        if isinstance(knots, (str, bytes)) or not isinstance(knots, Sequence):
            raise ScheduleError(f"piecewise_linear knots must be a list of [step, value], got {knots!r}")
        return PiecewiseLinear(_knots(knots, "piecewise_linear"))
    total = spec["total_steps"]
    return SqrtAnneal(
        _number(spec["start"], "sqrt_anneal start"),
        _number(spec["end"], "sqrt_anneal end"),
        _step(total, "sqrt_anneal total_steps") if _is_number(total) else total,
    )


# ---------------------------------------------------------------------------------------------
# Timesteps
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimestepRange:
    """A t-range as fractions of T, each bound a schedule; ``deterministic`` returns the upper bound.

    HiFA's deterministic anneal is ``TimestepRange(min=0.3, max=sqrt_anneal(0.98 → 0.3), deterministic=True)``.
    """

    min: Schedule
    max: Schedule
    deterministic: bool = False

    @classmethod
    def parse(cls, spec) -> "TimestepRange":
        """From ``{"min": ..., "max": ..., "deterministic": bool}`` or a ``[min, max]`` pair."""
        if isinstance(spec, TimestepRange):
            return spec
        if isinstance(spec, Mapping):
            extra = set(spec) - {"min", "max", "deterministic"}
            if extra or "min" not in spec or "max" not in spec:
                raise ScheduleError(f"a t-range needs keys min, max (and optionally deterministic), got {sorted(spec)}")
            det = spec.get("deterministic", False)
            if not isinstance(det, bool):
                raise ScheduleError(f"t-range 'deterministic' must be true or false, got {det!r}")
            return cls(parse_schedule(spec["min"]), parse_schedule(spec["max"]), det)
        if isinstance(spec, Sequence) and not isinstance(spec, (str, bytes)) and len(spec) == 2:
            return cls(parse_schedule(spec[0]), parse_schedule(spec[1]))
        raise ScheduleError(f"cannot read t-range {spec!r}: use [min, max] or {{min, max, deterministic}} (fractions of T)")

    def bounds(self, step: int, num_timesteps: int) -> tuple[int, int]:
        """Integer bounds [lo, hi] (inclusive) at ``step``; checks 0 ≤ min ≤ max ≤ 1."""
        lo_f, hi_f = self.min(step), self.max(step)
        if not (0.0 <= lo_f <= hi_f <= 1.0):
            raise ScheduleError(f"t-range at step {step} is [{lo_f}, {hi_f}]; need 0 <= min <= max <= 1 (fractions of T)")
        # floor with a small tolerance so that e.g. 0.58·100 = 57.999… counts as 58
        lo = min(int(math.floor(lo_f * num_timesteps + 1e-6)), num_timesteps - 1)
        hi = min(int(math.floor(hi_f * num_timesteps + 1e-6)), num_timesteps - 1)
        return lo, hi


def sample_timestep(
    t_range: TimestepRange,
    step: int,
    num_timesteps: int,
    batch: int = 1,
    generator: torch.Generator | None = None,
    per_sample: bool = False,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Integer timesteps ``[batch]`` (int64) for phase step ``step``.

    Uniform over the inclusive integer range [⌊min·T⌋, ⌊max·T⌋] (as threestudio). One t is drawn
    and shared by the whole batch unless ``per_sample``. A deterministic range gives ⌊max·T⌋.
    """
    lo, hi = t_range.bounds(step, num_timesteps)
    if t_range.deterministic:
        return torch.full((batch,), hi, dtype=torch.long, device=device)
    n = batch if per_sample else 1
    t = torch.randint(lo, hi + 1, (n,), generator=generator, dtype=torch.long)
    return t.expand(batch).clone().to(device)
