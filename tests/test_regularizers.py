"""Regularisers against hand-computed values, their ideal cases, and float64 gradients."""

import math

import pytest
import torch
import trimesh

from anyto3d.errors import InputError
from anyto3d.losses.regularizers import (
    laplacian_smoothness,
    mesh_normal_consistency,
    normal_smoothness_2d,
    opacity_entropy_loss,
    orientation_loss,
    sparsity_loss,
    z_variance_loss,
)
from anyto3d.mesh import Mesh

# --------------------------------------------------------------------------------------------- orientation


def test_orientation_single_sample_hand_value():
    d = torch.tensor([[1.0, 0.0, 0.0]])
    n = torch.tensor([[[1.0, 1.0, 0.0]]]) / math.sqrt(2)  # n·d = 1/√2, facing away
    w = torch.tensor([[0.7]])
    assert orientation_loss(w, n, d).item() == pytest.approx(0.7 * 0.5)


def test_orientation_penalises_only_normals_facing_away():
    d = torch.tensor([[0.0, 0.0, -1.0]])  # camera above, looking down
    toward_camera = torch.tensor([[[0.0, 0.0, 1.0]]])
    away = torch.tensor([[[0.0, 0.0, -1.0]]])
    w = torch.tensor([[1.0]])
    assert orientation_loss(w, toward_camera, d).item() == 0.0
    assert orientation_loss(w, away, d).item() == pytest.approx(1.0)


def test_orientation_averages_over_rays_that_hit():
    # Ray 0: two samples, weights 0.2/0.5, normals with n·d = 0.6 and -0.3 -> 0.2·0.36 = 0.072.
    # Ray 1: empty (zero weights) -> excluded from the average. Ray 2: n·d = 1, w = 0.4 -> 0.4.
    d = torch.tensor([[1.0, 0.0, 0.0]] * 3)
    n = torch.tensor(
        [
            [[0.6, 0.8, 0.0], [-0.3, math.sqrt(1 - 0.09), 0.0]],
            [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]],
            [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
        ]
    )
    w = torch.tensor([[0.2, 0.5], [0.0, 0.0], [0.4, 0.0]])
    assert orientation_loss(w, n, d).item() == pytest.approx((0.072 + 0.4) / 2)


def test_orientation_no_hit_is_zero_and_backpropagates():
    n = torch.randn(4, 3, 3, requires_grad=True)
    loss = orientation_loss(torch.zeros(4, 3), n, torch.randn(4, 3))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(n.grad).all()


def test_orientation_gradcheck_and_weight_detach():
    g = torch.Generator().manual_seed(1)
    w = torch.rand(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    n = torch.nn.functional.normalize(torch.randn(5, 4, 3, generator=g, dtype=torch.float64), dim=-1)
    n.requires_grad_(True)
    d = torch.nn.functional.normalize(torch.randn(5, 3, generator=g, dtype=torch.float64), dim=-1)
    assert torch.autograd.gradcheck(lambda n_: orientation_loss(w, n_, d), (n,))
    assert torch.autograd.gradcheck(lambda w_: orientation_loss(w_, n, d, detach_weights=False), (w,))
    orientation_loss(w, n, d).backward()
    assert w.grad is None  # DreamFusion's stop-gradient on the weights


def test_orientation_rejects_mismatched_shapes():
    with pytest.raises(InputError):
        orientation_loss(torch.rand(4, 3), torch.rand(4, 2, 3), torch.rand(4, 3))


# --------------------------------------------------------------------------------------------- opacity terms


def test_sparsity_hand_value_and_l1_limit():
    o = torch.tensor([0.3, 0.0])
    assert sparsity_loss(o).item() == pytest.approx((math.sqrt(0.1) + 0.1) / 2)
    assert sparsity_loss(o, eps=0.0).item() == pytest.approx(0.15)


def test_opacity_entropy_hand_values_and_direction():
    assert opacity_entropy_loss(torch.tensor([0.5])).item() == pytest.approx(math.log(2))
    # 0 and 1 are the minima (up to the clamp).
    assert opacity_entropy_loss(torch.tensor([0.0, 1.0])).item() < 0.01
    o = torch.tensor([0.3, 0.8], requires_grad=True)
    opacity_entropy_loss(o).backward()
    # d/do = log((1-o)/o) / N: descent pushes 0.3 down to 0 and 0.8 up to 1.
    expected = torch.log((1 - o.detach()) / o.detach()) / 2
    assert torch.allclose(o.grad, expected, atol=1e-6)
    assert o.grad[0] > 0 and o.grad[1] < 0


def test_opacity_terms_gradcheck():
    o = torch.rand(3, 4, 4, dtype=torch.float64).mul(0.9).add(0.05).requires_grad_(True)
    assert torch.autograd.gradcheck(sparsity_loss, (o,))
    assert torch.autograd.gradcheck(opacity_entropy_loss, (o,))


# --------------------------------------------------------------------------------------------- HiFA L_nz


def test_z_variance_averages_over_opaque_rays():
    z_var = torch.tensor([0.2, 0.4, 0.0])
    opacity = torch.tensor([0.9, 0.6, 0.3])
    assert z_variance_loss(z_var, opacity).item() == pytest.approx(0.3)
    # An input the renderer forgot to mask gives the same value: δ is applied again.
    assert z_variance_loss(torch.tensor([0.2, 0.4, 5.0]), opacity).item() == pytest.approx(0.3)


def test_z_variance_image_shapes_and_empty_case():
    z_var = torch.full((2, 3, 3, 1), 0.25, requires_grad=True)
    opacity = torch.ones(2, 3, 3)
    assert z_variance_loss(z_var, opacity).item() == pytest.approx(0.25)
    empty = z_variance_loss(z_var, torch.zeros(2, 3, 3))
    empty.backward()
    assert empty.item() == 0.0 and torch.isfinite(z_var.grad).all()


def test_z_variance_gradcheck():
    z_var = torch.rand(8, dtype=torch.float64, requires_grad=True)
    opacity = torch.linspace(0, 1, 8, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: z_variance_loss(z, opacity), (z_var,))


# --------------------------------------------------------------------------------------------- L_nv


def test_normal_smoothness_hand_value():
    img = torch.tensor([[[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]]])  # [1, 1, 2, 3]: one horizontal pair
    assert normal_smoothness_2d(img).item() == pytest.approx(2.0)


def test_normal_smoothness_mask_excludes_background_pairs():
    # 2x2 image: three pixels share a normal, the fourth (background) differs.
    img = torch.tensor([[0.0, 0.0, 1.0]]).repeat(1, 2, 2, 1)
    img[0, 1, 1] = torch.tensor([1.0, 1.0, 1.0])
    mask = torch.tensor([[[1.0, 1.0], [1.0, 0.0]]])
    assert normal_smoothness_2d(img, mask).item() == 0.0
    # Unmasked: 4 pairs, 2 of them touch the odd pixel with ‖Δ‖² = 1 + 1 + 0 = 2 -> 4/4.
    assert normal_smoothness_2d(img).item() == pytest.approx(1.0)
    assert normal_smoothness_2d(img, mask[..., None]).item() == 0.0


def test_normal_smoothness_constant_map_is_zero_and_gradcheck():
    const = torch.nn.functional.normalize(torch.tensor([0.3, -0.2, 0.9]), dim=0).expand(2, 5, 6, 3)
    assert normal_smoothness_2d(const).item() == 0.0
    img = torch.rand(1, 3, 4, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(1, 3, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: normal_smoothness_2d(x, mask), (img,))


def test_normal_smoothness_rejects_wrong_layout():
    with pytest.raises(InputError):
        normal_smoothness_2d(torch.rand(1, 3, 4, 4))  # [B, 3, H, W] is the prior layout


# --------------------------------------------------------------------------------------------- mesh terms


def _folded_pair(theta: float, dtype=torch.float32) -> Mesh:
    """Two triangles sharing the edge v0-v1 (the x-axis); the second is turned by θ about it."""
    c, s = math.cos(theta), math.sin(theta)
    vertices = torch.tensor(
        [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.5, -c, -s]], dtype=dtype
    )
    faces = torch.tensor([[0, 1, 2], [1, 0, 3]])
    return Mesh(vertices, faces)


def test_normal_consistency_folded_pair_is_one_minus_cos():
    assert mesh_normal_consistency(_folded_pair(0.0)).item() == pytest.approx(0.0, abs=1e-7)
    theta = math.radians(60)
    assert mesh_normal_consistency(_folded_pair(theta)).item() == pytest.approx(1 - math.cos(theta), abs=1e-6)


def test_normal_consistency_cube_hand_value():
    # 18 edges, each shared by two faces: 6 face diagonals (flat, 0) and 12 cube edges (90°, 1).
    cube = Mesh.from_trimesh(trimesh.creation.box())
    assert mesh_normal_consistency(cube).item() == pytest.approx(12 / 18, abs=1e-6)


def _flat_grid(n: int = 4) -> Mesh:
    """An n x n grid of squares in the plane z = 0, each split into two triangles."""
    xs = torch.linspace(0, 1, n + 1)
    yy, xx = torch.meshgrid(xs, xs, indexing="ij")
    vertices = torch.stack([xx.flatten(), yy.flatten(), torch.zeros((n + 1) ** 2)], dim=-1)
    faces = []
    for i in range(n):
        for j in range(n):
            a, b, c, d = i * (n + 1) + j, i * (n + 1) + j + 1, (i + 1) * (n + 1) + j + 1, (i + 1) * (n + 1) + j
            faces += [[a, b, c], [a, c, d]]
    return Mesh(vertices, torch.tensor(faces))


def test_normal_consistency_flat_grid_is_zero():
    assert mesh_normal_consistency(_flat_grid()).item() == pytest.approx(0.0, abs=1e-7)


def test_normal_consistency_gradcheck():
    mesh = _folded_pair(0.7, dtype=torch.float64)
    v = mesh.vertices.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: mesh_normal_consistency(Mesh(x, mesh.faces)), (v,))


def test_laplacian_square_hand_value():
    # Square split along 0-2: vertex 0 and 2 have three neighbours, 1 and 3 two.
    # 0: v − mean(1,2,3) = (−2/3, −2/3) -> 8/9; 1: (1,0) − (0.5,0.5) -> 1/2; 2: 8/9; 3: 1/2.
    vertices = torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    assert laplacian_smoothness(Mesh(vertices, faces)).item() == pytest.approx(25 / 36)


def test_laplacian_invariances_and_isolated_vertices():
    mesh = Mesh.from_trimesh(trimesh.creation.icosphere(subdivisions=1))
    base = laplacian_smoothness(mesh).item()
    moved = Mesh(mesh.vertices + torch.tensor([3.0, -1.0, 2.0]), mesh.faces)
    scaled = Mesh(mesh.vertices * 2.0, mesh.faces)
    assert laplacian_smoothness(moved).item() == pytest.approx(base, rel=1e-4)
    assert laplacian_smoothness(scaled).item() == pytest.approx(4 * base, rel=1e-5)
    # A vertex no face uses has no neighbours and is left out of the mean.
    extra = Mesh(torch.cat([mesh.vertices, torch.tensor([[9.0, 9.0, 9.0]])]), mesh.faces)
    assert laplacian_smoothness(extra).item() == pytest.approx(base, rel=1e-6)


def test_laplacian_centre_of_symmetric_fan_contributes_zero():
    # Hexagon fan: the centre is the mean of its six neighbours, so moving it off centre must
    # raise the loss and the gradient at the centre must vanish.
    ring = [[math.cos(k * math.pi / 3), math.sin(k * math.pi / 3), 0.0] for k in range(6)]
    vertices = torch.tensor([[0.0, 0.0, 0.0]] + ring, dtype=torch.float64, requires_grad=True)
    faces = torch.tensor([[0, 1 + k, 1 + (k + 1) % 6] for k in range(6)])
    laplacian_smoothness(Mesh(vertices, faces)).backward()
    assert vertices.grad[0].abs().max().item() < 1e-12


def test_laplacian_gradcheck_and_descent_smooths_noise():
    g = torch.Generator().manual_seed(0)
    tm = trimesh.creation.icosphere(subdivisions=1)
    v0 = torch.as_tensor(tm.vertices, dtype=torch.float64)
    faces = torch.as_tensor(tm.faces)
    v = (v0 + 0.05 * torch.randn(v0.shape, generator=g, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: laplacian_smoothness(Mesh(x, faces)), (v,))
    before = mesh_normal_consistency(Mesh(v.detach(), faces)).item()
    opt = torch.optim.SGD([v], lr=0.2)
    for _ in range(20):
        opt.zero_grad()
        laplacian_smoothness(Mesh(v, faces)).backward()
        opt.step()
    after = mesh_normal_consistency(Mesh(v.detach(), faces)).item()
    assert after < before


def test_mesh_terms_with_no_shared_edges_are_zero():
    single = Mesh(torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]], requires_grad=True), torch.tensor([[0, 1, 2]]))
    loss = mesh_normal_consistency(single)
    loss.backward()
    assert loss.item() == 0.0
