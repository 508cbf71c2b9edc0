import math

import pytest
import torch

from anyto3d.errors import InputError
from anyto3d.schedules import (
    Constant,
    PiecewiseLinear,
    ScheduleError,
    SqrtAnneal,
    TimestepRange,
    parse_schedule,
    sample_timestep,
)


def test_constant_from_number():
    s = parse_schedule(0.25)
    assert isinstance(s, Constant)
    assert s(0) == s(10**6) == 0.25
    assert parse_schedule(3)(7) == 3.0


def test_piecewise_linear_values_at_and_between_knots_and_clamped_outside():
    s = parse_schedule({"type": "piecewise_linear", "knots": [[100, 1.0], [300, 0.0], [500, 2.0]]})
    assert s(100) == 1.0 and s(300) == 0.0 and s(500) == 2.0
    assert s(200) == pytest.approx(0.5)
    assert s(400) == pytest.approx(1.0)
    assert s(0) == 1.0  # clamped before the first knot
    assert s(10_000) == 2.0  # and after the last


def test_piecewise_jump_takes_later_value_from_its_step():
    s = PiecewiseLinear(((0, 1.0), (10, 1.0), (10, 5.0)))
    assert s(9) == 1.0 and s(10) == 5.0 and s(11) == 5.0


def test_list_of_pairs_is_piecewise():
    s = parse_schedule([[0, 0.0], [10, 1.0]])
    assert s(5) == pytest.approx(0.5)


def test_threestudio_flat_lists():
    # threestudio zero123.yaml: min_step_percent [0, 0.4, 0.2, 200]
    s = parse_schedule([0, 0.4, 0.2, 200])
    assert s(0) == pytest.approx(0.4) and s(100) == pytest.approx(0.3) and s(200) == pytest.approx(0.2) and s(999) == pytest.approx(0.2)
    # MVDream/ProlificDreamer style with a late start: [5000, 0.98, 0.5, 5001]
    s = parse_schedule([5000, 0.98, 0.5, 5001])
    assert s(4999) == pytest.approx(0.98) and s(5001) == pytest.approx(0.5)
    # 3 values: start_step = 0
    s = parse_schedule([1.0, 0.0, 10])
    assert s(5) == pytest.approx(0.5)


def test_sqrt_anneal_end_points_and_midpoint():
    s = parse_schedule({"type": "sqrt_anneal", "start": 0.98, "end": 0.3, "total_steps": 10000})
    assert isinstance(s, SqrtAnneal)
    assert s(0) == pytest.approx(0.98)
    assert s(10000) == pytest.approx(0.3)
    assert s(20000) == pytest.approx(0.3)  # clamped after the phase
    # a quarter of the way: √(1/4) = 1/2, so halfway between start and end
    assert s(2500) == pytest.approx(0.3 + 0.5 * 0.68)
    # the midpoint step: 1 − √0.5
    assert s(5000) == pytest.approx(0.3 + 0.68 * (1 - math.sqrt(0.5)))


def test_spec_round_trip():
    for spec in (1.5, [[0, 1.0], [5, 2.0]], {"type": "sqrt_anneal", "start": 1.0, "end": 0.0, "total_steps": 7}):
        s = parse_schedule(spec)
        again = parse_schedule(s.spec())
        assert all(again(k) == s(k) for k in range(0, 12))
    s = parse_schedule(2.0)
    assert parse_schedule(s) is s


@pytest.mark.parametrize(
    "bad",
    [
        "0.5",
        True,
        None,
        float("nan"),
        {"type": "cosine", "value": 1},
        {"value": 1},
        {"type": "constant"},
        {"type": "constant", "value": 1, "extra": 2},
        {"type": "piecewise_linear", "knots": [[10, 1.0], [5, 0.0]]},
        {"type": "piecewise_linear", "knots": []},
        {"type": "piecewise_linear", "knots": [[0, 1.0, 2.0]]},
        {"type": "piecewise_linear", "knots": [[-1, 1.0]]},
        {"type": "sqrt_anneal", "start": 1.0, "end": 0.0, "total_steps": 0},
        {"type": "sqrt_anneal", "start": 1.0, "end": 0.0, "total_steps": 2.5},
        {"type": "sqrt_anneal", "start": "a", "end": 0.0, "total_steps": 10},
        [1.0, 2.0],
        [1.0, 2.0, 3.0, 4.0, 5.0],
    ],
)
def test_bad_specs_raise_input_error(bad):
    with pytest.raises(ScheduleError) as err:
        parse_schedule(bad)
    assert isinstance(err.value, InputError)


def test_timestep_range_parse_and_bounds():
    r = TimestepRange.parse([0.02, 0.98])
    assert r.bounds(0, 1000) == (20, 980)
    r = TimestepRange.parse({"min": 0.2, "max": [0, 0.6, 0.4, 100], "deterministic": False})
    assert r.bounds(100, 1000) == (200, 400)
    assert TimestepRange.parse([0.0, 1.0]).bounds(0, 1000) == (0, 999)  # t < T
    # 0.58·100 is 57.999… in floating point; it must still count as 58
    assert TimestepRange.parse([0.58, 0.58]).bounds(0, 100) == (58, 58)
    for bad in ({"min": 0.1}, {"min": 0.1, "max": 0.2, "deterministic": "yes"}, "0.1-0.2", [0.1, 0.2, 0.3]):
        with pytest.raises(ScheduleError):
            TimestepRange.parse(bad)


def test_out_of_range_fractions_fail_when_sampled():
    r = TimestepRange.parse({"min": [0, 0.2, 0.8, 100], "max": 0.5})  # min crosses max at step 50
    sample_timestep(r, 0, 1000)
    with pytest.raises(ScheduleError, match="min <= max"):
        sample_timestep(r, 100, 1000)
    with pytest.raises(ScheduleError):
        sample_timestep(TimestepRange.parse([0.1, 1.2]), 0, 1000)


def test_random_t_within_range_and_covers_both_ends():
    r = TimestepRange.parse([0.02, 0.05])
    g = torch.Generator().manual_seed(0)
    draws = torch.cat([sample_timestep(r, 0, 100, generator=g) for _ in range(400)])
    assert draws.dtype == torch.long
    assert draws.min().item() == 2 and draws.max().item() == 5  # inclusive upper bound, as threestudio


def test_one_t_shared_per_batch_by_default_and_per_sample_option():
    r = TimestepRange.parse([0.0, 1.0])
    shared = sample_timestep(r, 0, 1000, batch=16, generator=torch.Generator().manual_seed(1))
    assert shared.shape == (16,) and torch.all(shared == shared[0])
    per = sample_timestep(r, 0, 1000, batch=16, generator=torch.Generator().manual_seed(1), per_sample=True)
    assert per.shape == (16,) and len(set(per.tolist())) > 1


def test_sampling_is_reproducible_with_a_generator():
    r = TimestepRange.parse([0.02, 0.98])
    a = sample_timestep(r, 3, 1000, batch=4, generator=torch.Generator().manual_seed(7), per_sample=True)
    b = sample_timestep(r, 3, 1000, batch=4, generator=torch.Generator().manual_seed(7), per_sample=True)
    assert torch.equal(a, b)


def test_deterministic_hifa_anneal():
    r = TimestepRange.parse(
        {"min": 0.3, "max": {"type": "sqrt_anneal", "start": 0.98, "end": 0.3, "total_steps": 10000}, "deterministic": True}
    )
    assert sample_timestep(r, 0, 1000, batch=3).tolist() == [980, 980, 980]
    assert sample_timestep(r, 2500, 1000).item() == math.floor((0.3 + 0.5 * 0.68) * 1000 + 1e-6)
    assert sample_timestep(r, 10000, 1000).item() == 300
    # no randomness: the global RNG is untouched
    state = torch.get_rng_state()
    sample_timestep(r, 123, 1000)
    assert torch.equal(state, torch.get_rng_state())
