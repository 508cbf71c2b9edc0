"""Planar / stereo / hybrid supervision as weighted configuration (XBind Eq. 9, 12, 13)."""

import pytest
import torch

from anyto3d.errors import InputError
from anyto3d.losses.hybrid import LossTerms, hybrid, planar_c, planar_s, stereo


class Term:
    """A term returning a fixed value times the context's scalar; counts its calls."""

    def __init__(self, value, info=None):
        self.value, self.info, self.calls = value, info, 0

    def __call__(self, context):
        self.calls += 1
        out = self.value * context["x"]
        return (out, self.info) if self.info is not None else out


def context():
    return {"x": torch.tensor(2.0, requires_grad=True)}


def test_total_is_the_weighted_sum_and_zero_weights_are_not_evaluated():
    ms, sds, nz = Term(1.0), Term(3.0, {"t": 500}), Term(5.0)
    terms = planar_s(ms, sds, nz, w_ms=0.5, w_sds_star=2.0, w_nz=0.0)
    ctx = context()
    out = terms(ctx, step=0)
    assert nz.calls == 0 and ms.calls == 1 and sds.calls == 1
    assert float(out.total.detach()) == pytest.approx(0.5 * 2 + 2.0 * 6)
    assert set(out.values) == {"ms", "sds_star"} and out.weights == {"ms": 0.5, "sds_star": 2.0}
    assert out.diagnostics == {"sds_star": {"t": 500}}
    out.total.backward()
    assert float(ctx["x"].grad) == pytest.approx(0.5 * 1 + 2.0 * 3)
    assert out.log_dict()["loss/total"] == pytest.approx(13.0)


def test_weights_are_schedules_over_the_phase_step():
    a, b = Term(1.0), Term(1.0)
    terms = LossTerms({"a": (a, [0, 1.0, 0.0, 100]), "b": (b, {"type": "piecewise_linear", "knots": [[50, 0], [60, 1]]})})
    assert terms.weights_at(0) == {"a": 1.0, "b": 0.0}
    out = terms(context(), step=25)
    assert b.calls == 0 and out.weights == {"a": 0.75}
    out = terms(context(), step=100)
    assert a.calls == 1 and out.weights == {"b": 1.0}


def test_presets_have_the_papers_terms_and_hybrid_is_their_sum():
    pc = planar_c(Term(1.0), Term(1.0), w_ms=0.1, w_cds=1.0)
    st = stereo(Term(1.0), Term(1.0), w_3d=40.0)
    assert pc.names() == ["ms", "cds"] and st.names() == ["sds_3d", "reference"]
    hy = hybrid(pc, st)
    assert hy.names() == ["ms", "cds", "sds_3d", "reference"]
    assert hy.weights_at(0) == {"ms": 0.1, "cds": 1.0, "sds_3d": 40.0, "reference": 1.0}
    with pytest.raises(InputError, match="both"):
        hybrid(pc, planar_s(Term(1.0), Term(1.0), w_ms=1.0))


def test_from_config_and_ablation_overrides():
    registry = {"ms": Term(1.0), "sds_star": Term(2.0), "cds": Term(4.0)}
    terms = LossTerms.from_config({"ms": 1.0, "sds_star": [0, 0.0, 1.0, 10]}, registry)
    assert terms.weights_at(5) == {"ms": 1.0, "sds_star": 0.5}
    ablated = terms.with_weights(ms=0)
    out = ablated(context(), step=10)
    assert set(out.values) == {"sds_star"} and registry["ms"].calls == 0
    with pytest.raises(InputError, match="unknown"):
        LossTerms.from_config({"vsd": 1.0}, registry)
    with pytest.raises(InputError, match="nothing to optimise"):
        LossTerms({"ms": (Term(1.0), 0.0)})(context(), step=0)
    with pytest.raises(InputError, match="scalar"):
        LossTerms({"bad": (lambda c: torch.ones(3), 1.0)})(context(), step=0)
