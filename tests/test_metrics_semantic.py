"""CLIP-R / CLIP-I / ARCC (XBind §V-A4, Eq. 14) on hand-computed embeddings."""

import math

import pytest
import torch

from anyto3d.errors import InputError
from anyto3d.metrics.semantic import (
    arcc,
    clip_i,
    clip_r_precision,
    cosine_matrix,
    r_precision_from_scores,
)

torch.set_num_threads(1)

E = torch.eye(3)  # three orthonormal "prompt" embeddings


def test_perfect_ranking_scores_one():
    views = E[1].repeat(4, 1) + 0.1 * torch.tensor([[1.0, 0, 0], [0, 0, 1], [0, 0, -1], [-1, 0, 0]])
    assert clip_r_precision(views, E, true_index=1) == 1.0


def test_wrong_ranking_scores_zero():
    views = 5.0 * E[0].repeat(3, 1)  # every view looks like prompt 0; scale must not matter
    assert clip_r_precision(views, E, true_index=2) == 0.0


def test_per_view_average_and_mean_view():
    # 3 views retrieve prompt 1, one view retrieves prompt 0: per-view R-Precision = 3/4.
    views = torch.stack([E[1], E[1], E[1], E[0]])
    assert clip_r_precision(views, E, true_index=1) == pytest.approx(0.75)
    # The mean view (0, .75, 0)/norm... retrieves prompt 1 once: 1.0; for the minority prompt 0: 0.
    assert clip_r_precision(views, E, true_index=1, per_view=False) == 1.0
    assert clip_r_precision(views, E, true_index=0, per_view=False) == 0.0


def test_tie_is_a_miss():
    scores = torch.tensor([[2.0, 2.0, 1.0], [3.0, 1.0, 0.0]])
    assert r_precision_from_scores(scores, 0) == 0.5  # view 0 ties with candidate 1


def test_a_look_alike_is_no_rival_but_a_distinct_tie_still_misses():
    scores = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.6, 1.0, 0.5]])
    alike = torch.tensor([[True, True, False], [True, False, False], [True, True, False]])
    # view 0: ties only a look-alike (hit); view 1: the tie is a distinct candidate (miss);
    # view 2: loses to a look-alike but beats the one distinct rival (hit)
    assert r_precision_from_scores(scores, 0, alike=alike) == pytest.approx(2 / 3)
    assert r_precision_from_scores(scores, 0) == 0.0
    with pytest.raises(InputError, match="alike"):
        r_precision_from_scores(scores, 0, alike=alike[:2])


def test_scores_not_cosines_work_too():
    log_likelihood = torch.tensor([[-0.1, -3.0], [-2.0, -0.5], [-0.2, -0.4]])
    assert r_precision_from_scores(log_likelihood, 0) == pytest.approx(2 / 3)


def test_clip_i_hand_computed():
    views = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    reference = torch.tensor([3.0, 3.0])
    assert clip_i(views, reference) == pytest.approx(1 / math.sqrt(2))
    assert clip_i(views[:1], torch.tensor([1.0, 0.0])) == pytest.approx(1.0)


def test_arcc_hand_computed():
    # Eq. 14 per view: cos((3,4), (4,3)) = 24/25; cos((-4,-3), (4,3)) = -1; mean = -0.02.
    views = torch.tensor([[3.0, 4.0], [-4.0, -3.0]])
    assert arcc(views, torch.tensor([4.0, 3.0])) == pytest.approx((24 / 25 - 1) / 2)


def test_cosine_matrix_shape_and_values():
    c = cosine_matrix(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[2.0, 0.0]]))
    assert c.shape == (2, 1)
    assert torch.allclose(c, torch.tensor([[1.0], [1 / math.sqrt(2)]]))


@pytest.mark.parametrize(
    "call",
    [
        lambda: clip_r_precision(E, E, true_index=3),  # index out of range
        lambda: clip_r_precision(E, E[:1], true_index=0),  # no distractor
        lambda: clip_r_precision(torch.zeros(2, 4), E, true_index=0),  # widths differ
        lambda: clip_i(E, E),  # two references
        lambda: arcc(torch.empty(0, 3), E[0]),  # no views
        lambda: arcc(torch.tensor([[float("nan"), 0.0, 0.0]]), E[0]),
    ],
)
def test_bad_input_is_an_input_error(call):
    with pytest.raises(InputError):
        call()
