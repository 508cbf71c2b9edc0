"""Planar, stereo and hybrid supervision (XBind Eq. 9, 12, 13) as weighted configuration.

There is no new mathematics here: a method's objective is a weighted sum of named terms, each a
callable that computes one loss from the step's context (renders, cameras, conditions, ...),
each weight a :class:`~anyto3d.schedules.Schedule` over the phase's own step counter.
:class:`LossTerms` evaluates only the terms whose weight is non-zero at the step and returns the
named values and the total (threestudio's ``loss_X``/``lambda_X`` pairs, without the string
contract between them).

XBind's equations, as term names and weights (the helpers below build exactly these):

* Eq. 9 / 8, planar-S (Phases I, III): ω_ms·``ms`` + ω*·``sds_star`` + ω_nz·``z_variance``
  (L_Aug-SDS = ω* L_SDS* + ω_nz L_nz; L_nz on the NeRF only, so ω_nz = 0 in Phase III).
* Eq. 9, planar-C (Phase II): ω_ms·``ms`` + ω_cds·``cds``.
* Eq. 12, stereo: ω_3d·``sds_3d`` + 1·``reference`` (ω_rgb, ω_mask live inside L_ref).
* Eq. 13, hybrid = planar + stereo (``LossTerms.__add__``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from anyto3d.errors import InputError
from anyto3d.schedules import Schedule, parse_schedule

#: A term: context → scalar loss, or (scalar loss, diagnostics dict).
Term = Callable[[Any], "torch.Tensor | tuple[torch.Tensor, dict]"]


@dataclass(frozen=True)
class WeightedTerm:
    fn: Term
    weight: Schedule


@dataclass
class LossResult:
    """``total`` (in the graph); per term: unweighted ``values``, ``weights`` used, ``diagnostics``."""

    total: torch.Tensor
    values: dict[str, torch.Tensor] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    diagnostics: dict[str, dict] = field(default_factory=dict)

    def log_dict(self, prefix: str = "loss/") -> dict[str, float]:
        """Flat floats for a tracker: the total and each unweighted term."""
        out = {f"{prefix}total": float(self.total.detach())}
        out.update({f"{prefix}{k}": float(v.detach()) for k, v in self.values.items()})
        return out


class LossTerms:
    """Names → (term, weight schedule). ``terms(context, step)`` → :class:`LossResult`.

    A weight may be anything :func:`anyto3d.schedules.parse_schedule` reads (a number, a
    threestudio list, a dict spec) or a Schedule. A term whose weight is 0 at ``step`` is not
    called.
    """

    def __init__(self, terms: Mapping[str, "tuple[Term, Any] | WeightedTerm"] | None = None):
        self.terms: dict[str, WeightedTerm] = {}
        for name, entry in (terms or {}).items():
            if isinstance(entry, WeightedTerm):
                self.terms[name] = entry
            else:
                fn, weight = entry
                if not callable(fn):
                    raise InputError(f"loss term {name!r} is not callable")
                self.terms[name] = WeightedTerm(fn, parse_schedule(weight))

    @classmethod
    def from_config(cls, weights: Mapping[str, Any], registry: Mapping[str, Term]) -> "LossTerms":
        """Terms named in a config (``{name: weight spec}``), taking the callables from ``registry``."""
        unknown = sorted(set(weights) - set(registry))
        if unknown:
            raise InputError(f"unknown loss terms {unknown}; available: {sorted(registry)}")
        return cls({name: (registry[name], spec) for name, spec in weights.items()})

    def __add__(self, other: "LossTerms") -> "LossTerms":
        clash = sorted(set(self.terms) & set(other.terms))
        if clash:
            raise InputError(f"loss terms {clash} appear in both summands")
        return LossTerms({**self.terms, **other.terms})

    def __contains__(self, name: str) -> bool:
        return name in self.terms

    def names(self) -> list[str]:
        return list(self.terms)

    def with_weights(self, **weights) -> "LossTerms":
        """A copy with some weights replaced (ablations: ``terms.with_weights(ms=0)``)."""
        unknown = sorted(set(weights) - set(self.terms))
        if unknown:
            raise InputError(f"unknown loss terms {unknown}")
        return LossTerms({
            name: (t.fn, weights[name]) if name in weights else t for name, t in self.terms.items()
        })

    def weights_at(self, step: int) -> dict[str, float]:
        return {name: t.weight(step) for name, t in self.terms.items()}

    def __call__(self, context: Any, step: int) -> LossResult:
        total, result = None, LossResult(total=torch.zeros(()))
        for name, term in self.terms.items():
            weight = term.weight(step)
            if weight == 0.0:
                continue
            out = term.fn(context)
            value, info = out if isinstance(out, tuple) else (out, {})
            if not torch.is_tensor(value) or value.dim() != 0:
                raise InputError(f"loss term {name!r} must return a scalar tensor, got {type(value).__name__}")
            result.values[name] = value.detach()
            result.weights[name] = weight
            if info:
                result.diagnostics[name] = info
            total = weight * value if total is None else total + weight * value
        if total is None:
            raise InputError(f"every loss weight is zero at step {step}: nothing to optimise")
        result.total = total
        return result


# ---------------------------------------------------------------------------------------------
# XBind's supervision as configurations
# ---------------------------------------------------------------------------------------------


def planar_s(ms: Term, sds_star: Term, z_variance: Term | None = None, *, w_ms, w_sds_star=1.0, w_nz=0.0) -> LossTerms:
    """L_planar-S = ω_ms L_MS + L_Aug-SDS, L_Aug-SDS = ω* L_SDS* + ω_nz L_nz (XBind Eq. 9 with Eq. 8)."""
    terms = {"ms": (ms, w_ms), "sds_star": (sds_star, w_sds_star)}
    if z_variance is not None:
        terms["z_variance"] = (z_variance, w_nz)
    return LossTerms(terms)


def planar_c(ms: Term, cds: Term, *, w_ms, w_cds) -> LossTerms:
    """L_planar-C = ω_ms L_MS + ω_cds L_CDS (XBind Eq. 9)."""
    return LossTerms({"ms": (ms, w_ms), "cds": (cds, w_cds)})


def stereo(sds_3d: Term, reference: Term, *, w_3d) -> LossTerms:
    """L_stereo = ω_3d L_3D-SDS + L_ref (XBind Eq. 12)."""
    return LossTerms({"sds_3d": (sds_3d, w_3d), "reference": (reference, 1.0)})


def hybrid(planar: LossTerms, stereo_terms: LossTerms) -> LossTerms:
    """L_hybrid = L_planar + L_stereo (XBind Eq. 13)."""
    return planar + stereo_terms


__all__ = ["LossResult", "LossTerms", "Term", "WeightedTerm", "hybrid", "planar_c", "planar_s", "stereo"]
