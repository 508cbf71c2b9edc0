"""Reference-view loss (XBind Eq. 11) by hand."""

import pytest
import torch

from anyto3d.errors import InputError
from anyto3d.losses.reference import reference_view_loss
from anyto3d.render.output import RenderOutput


def small_case():
    rgb = torch.tensor([[[[0.2, 0.4, 0.6], [1.0, 1.0, 1.0]]]], requires_grad=True)  # [1, 1, 2, 3]
    opacity = torch.tensor([[[[0.9], [0.2]]]], requires_grad=True)
    ref_rgb = torch.tensor([[[[0.0, 0.5, 1.0], [0.3, 0.3, 0.3]]]])
    mask = torch.tensor([[[[1.0], [0.0]]]])
    return RenderOutput(rgb=rgb, opacity=opacity), ref_rgb, mask


def test_reference_loss_by_hand():
    render, ref_rgb, mask = small_case()
    loss, parts = reference_view_loss(render, ref_rgb, mask, w_rgb=10.0, w_mask=2.0, return_diagnostics=True)
    # rgb: only the masked pixel counts; mean over 1·1·2·3 = 6 elements
    rgb_term = ((0.0 - 0.2) ** 2 + (0.5 - 0.4) ** 2 + (1.0 - 0.6) ** 2) / 6
    mask_term = ((1 - 0.9) ** 2 + (0 - 0.2) ** 2) / 2
    assert parts["rgb"] == pytest.approx(rgb_term)
    assert parts["mask"] == pytest.approx(mask_term)
    assert float(loss.detach()) == pytest.approx(10 * rgb_term + 2 * mask_term)
    loss.backward()
    # d/dx̂ of ω‖m(x − x̂)‖²/N = −2ω m²(x − x̂)/N; zero on the unmasked pixel
    expected = -2 * 10.0 * (ref_rgb - render.rgb.detach()) * mask / 6
    torch.testing.assert_close(render.rgb.grad, expected)
    torch.testing.assert_close(render.opacity.grad, -2 * 2.0 * (mask - render.opacity.detach()) / 2)


def test_bce_mask_option_as_magic123():
    render, ref_rgb, mask = small_case()
    _, parts = reference_view_loss(render, ref_rgb, mask, 1.0, 1.0, mask_loss="bce", return_diagnostics=True)
    bce = -(torch.log(torch.tensor(0.9)) + torch.log(torch.tensor(1 - 0.2))) / 2
    assert parts["mask"] == pytest.approx(float(bce), rel=1e-5)


def test_shape_mismatch_is_an_input_error():
    render, ref_rgb, mask = small_case()
    with pytest.raises(InputError, match="resolution"):
        reference_view_loss(render, torch.zeros(1, 2, 2, 3), mask, 1.0, 1.0)
    with pytest.raises(InputError, match="mask"):
        reference_view_loss(render, ref_rgb, torch.zeros(1, 1, 2, 3), 1.0, 1.0)
    with pytest.raises(InputError, match="mask_loss"):
        reference_view_loss(render, ref_rgb, mask, 1.0, 1.0, mask_loss="l1")
