"""MS loss (XBind Eq. 2) and its differentiable augmentations."""

import pytest
import torch
import torch.nn.functional as F

from anyto3d.errors import InputError
from anyto3d.losses.modality_similarity import (
    ModalitySimilarityConfig,
    global_augmentation,
    homography_from_points,
    local_augmentation,
    modality_similarity,
    random_perspective,
    warp,
)


def mean_colour(images):
    """An 'identity-like' encoder: the mean RGB of each image, [N, 3]."""
    return images.mean(dim=(1, 2))


def test_z_only_equals_one_minus_cosine_by_hand():
    images = torch.rand(3, 8, 8, 3, dtype=torch.float64)
    target = torch.tensor([0.9, 0.1, 0.2], dtype=torch.float64)
    cfg = ModalitySimilarityConfig(weight_global=0, weight_local=0, weight_normalised=0.7)
    loss = modality_similarity(images, target, mean_colour, cfg)
    m = images.mean(dim=(1, 2))
    cos = (m @ target) / (m.norm(dim=1) * target.norm())
    torch.testing.assert_close(loss, 0.7 * (1 - cos).mean())
    # per-view targets
    targets = torch.rand(3, 3, dtype=torch.float64)
    loss = modality_similarity(images, targets, mean_colour, cfg)
    cos = (m * targets).sum(1) / (m.norm(dim=1) * targets.norm(dim=1))
    torch.testing.assert_close(loss, 0.7 * (1 - cos).mean())


def test_zero_distortion_and_full_crop_are_the_identity():
    images = torch.rand(2, 6, 10, 3, dtype=torch.float64)
    cfg = ModalitySimilarityConfig(global_distortion=0.0, local_distortion=0.0, local_crop_scale=(1.0, 1.0))
    torch.testing.assert_close(global_augmentation(images, cfg), images)
    torch.testing.assert_close(local_augmentation(images, cfg), images)


def test_homography_maps_the_given_points():
    src = torch.tensor([[[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]])
    dst = torch.tensor([[[-0.8, -0.9], [0.7, -1.0], [0.9, 0.8], [-1.0, 0.6]]])
    Hm = homography_from_points(src, dst)
    p = torch.cat([src[0].double(), torch.ones(4, 1, dtype=torch.float64)], dim=1) @ Hm[0].T
    torch.testing.assert_close(p[:, :2] / p[:, 2:], dst[0].double())


def test_warp_by_a_known_zoom_out_fills_the_border():
    """Output p samples the input at 2p: the image shrinks to the centre half, fill outside."""
    images = torch.rand(1, 8, 8, 3, dtype=torch.float64)
    Hm = torch.diag(torch.tensor([2.0, 2.0, 1.0], dtype=torch.float64))[None]
    out = warp(images, Hm, fill=1.0)
    assert torch.allclose(out[0, 0], torch.ones(8, 3, dtype=torch.float64))  # top row: outside
    # centre pixel (row 4, col 4) sits at normalised (1/8, 1/8) → input (1/4, 1/4) = pixel centre (4.5, 4.5)
    expected = images[0, 4:6, 4:6].mean(dim=(0, 1))
    torch.testing.assert_close(out[0, 4, 4], expected)


def test_warp_is_differentiable_gradcheck():
    images = torch.rand(2, 5, 6, 3, dtype=torch.float64, requires_grad=True)
    Hm = random_perspective(2, 0.4, torch.Generator().manual_seed(0))
    centre = torch.tensor([[0.1, -0.2], [0.0, 0.3]], dtype=torch.float64)
    scale = torch.tensor([0.7, 0.6], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: warp(x, Hm, 0.5, centre, scale), (images,))


def test_augmentations_are_seeded_and_random():
    images = torch.rand(2, 8, 8, 3)
    cfg = ModalitySimilarityConfig()
    a = local_augmentation(images, cfg, torch.Generator().manual_seed(4))
    b = local_augmentation(images, cfg, torch.Generator().manual_seed(4))
    c = local_augmentation(images, cfg, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert not torch.allclose(global_augmentation(images, cfg, torch.Generator().manual_seed(4)), images)


def test_full_loss_gradient_reaches_the_renders_through_every_kind():
    images = torch.rand(2, 16, 16, 3, requires_grad=True)
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 16 * 3, 8))
    target = torch.randn(8)
    for kinds in ((1, 0, 0), (0, 1, 0), (0, 0, 1)):
        images.grad = None
        cfg = ModalitySimilarityConfig(weight_global=kinds[0], weight_local=kinds[1], weight_normalised=kinds[2])
        loss = modality_similarity(images, target, encoder, cfg, torch.Generator().manual_seed(0))
        loss.backward()
        assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_augmentation_weights_combine_linearly():
    images = torch.rand(2, 8, 8, 3, dtype=torch.float64)
    target = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)

    def loss(weights):
        cfg = ModalitySimilarityConfig(
            n_augmentations=2, augmentation_weights=weights, weight_global=1.0, weight_local=0.5, weight_normalised=0.0
        )
        return modality_similarity(images, target, mean_colour, cfg, torch.Generator().manual_seed(9))

    first, second = loss((1.0, 0.0)), loss((0.0, 1.0))
    assert not torch.allclose(first, second)
    torch.testing.assert_close(loss((0.25, 0.75)), 0.25 * first + 0.75 * second)


class CountingEncoder:
    def __init__(self):
        self.batches = []

    def embed_image(self, rgb):
        self.batches.append(rgb.shape[0])
        return F.normalize(rgb.mean(dim=(1, 2)), dim=-1)


def test_encoder_object_one_batch_and_zero_weights_skip_work():
    encoder = CountingEncoder()
    images = torch.rand(4, 8, 8, 3)
    modality_similarity(images, torch.ones(3), encoder, ModalitySimilarityConfig(n_augmentations=3))
    assert encoder.batches == [4 * (3 + 3 + 1)]  # G ×3, L ×3, Z once, in one encoder call
    modality_similarity(images, torch.ones(3), encoder, ModalitySimilarityConfig(weight_global=0, weight_local=0))
    assert encoder.batches[-1] == 4


def test_bad_ms_inputs():
    with pytest.raises(InputError, match="entries"):
        ModalitySimilarityConfig(n_augmentations=2, augmentation_weights=(1.0,))
    with pytest.raises(InputError, match="crop"):
        ModalitySimilarityConfig(local_crop_scale=(0.0, 0.5))
    images = torch.rand(2, 8, 8, 3)
    with pytest.raises(InputError, match="dim"):
        modality_similarity(images, torch.ones(5), mean_colour)
    with pytest.raises(InputError, match="zero"):
        modality_similarity(images, torch.ones(3), mean_colour,
                            ModalitySimilarityConfig(weight_global=0, weight_local=0, weight_normalised=0))
