"""The PyTorch rasteriser against analytic cases, a brute-force ray caster and finite differences."""

import math

import pytest
import torch

from anyto3d.cameras import CameraBatch
from anyto3d.errors import InputError, NonFiniteError
from anyto3d.images import mask_iou
from anyto3d.render.rasterize import (
    Rasterization,
    antialias,
    interpolate,
    edge_topology,
    pixel_centers_ndc,
    rasterize,
)


def front_camera(distance: float, fovy_deg: float, dtype=torch.float32) -> CameraBatch:
    """Camera on the +x axis looking at the origin: screen right = world +y, screen up = world +z."""
    cams = CameraBatch.from_spherical(0.0, 0.0, distance, math.radians(fovy_deg))
    return cams.to(dtype=dtype)


def to_clip(vertices: torch.Tensor, cams: CameraBatch, height: int, width: int, near=0.1, far=100.0) -> torch.Tensor:
    mvp = cams.mvp(height, width, near, far).to(vertices.dtype)
    homo = torch.cat([vertices, torch.ones_like(vertices[:, :1])], dim=-1)
    return torch.einsum("bij,vj->bvi", mvp, homo)


def square(half: float, x: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A square in the plane ``x`` facing +x, counter-clockwise seen from +x."""
    v = torch.tensor([[x, -half, -half], [x, half, -half], [x, half, half], [x, -half, half]])
    return v, torch.tensor([[0, 1, 2], [0, 2, 3]])


# ---------------------------------------------------------------------------------------------
# Coverage and depth
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("height,width", [(32, 32), (24, 40)])
def test_square_covers_exactly_the_pixel_centres_inside_its_projection(height, width):
    distance, fovy, half = 3.0, 40.0, 0.7
    cams = front_camera(distance, fovy)
    verts, faces = square(half)
    rast = rasterize(to_clip(verts, cams, height, width), faces, (height, width))

    # By hand: a point at lateral offset s and depth d lands at NDC y = s / (d tan(fovy/2)) and
    # NDC x = that divided by the aspect ratio.
    extent_y = half / (distance * math.tan(math.radians(fovy) / 2))
    extent_x = extent_y * height / width
    xs = 2 * (torch.arange(width) + 0.5) / width - 1
    ys = 1 - 2 * (torch.arange(height) + 0.5) / height
    assert (xs.abs() - extent_x).abs().min() > 1e-3 and (ys.abs() - extent_y).abs().min() > 1e-3  # no ties
    expected = (ys.abs() < extent_y)[:, None] & (xs.abs() < extent_x)[None, :]

    covered = rast.triangle_id[0] >= 0
    assert torch.equal(covered, expected)
    assert 0 < int(expected.sum()) < height * width
    # The plane is perpendicular to the view axis: view depth = distance everywhere on it.
    assert rast.depth[0, height // 2, width // 2].item() == pytest.approx(distance, rel=1e-5)
    assert torch.allclose(rast.depth[0][covered], torch.full_like(rast.depth[0][covered], distance), rtol=1e-5)
    assert (rast.depth[0][~covered] == 0).all() and (rast.barycentric[0][~covered] == 0).all()
    assert torch.allclose(rast.barycentric[0][covered].sum(-1), torch.ones(int(covered.sum())), atol=1e-5)


def test_row_zero_is_the_top_of_the_image():
    cams = front_camera(3.0, 40.0)
    # A triangle entirely above the horizon (world z > 0 is screen up).
    verts = torch.tensor([[0.0, -0.5, 0.2], [0.0, 0.5, 0.2], [0.0, 0.0, 0.9]])
    rast = rasterize(to_clip(verts, cams, 32, 32), torch.tensor([[0, 1, 2]]), (32, 32))
    rows = torch.nonzero(rast.triangle_id[0] >= 0)[:, 0]
    assert rows.numel() > 0 and rows.max() < 16


def test_pixel_centres_follow_the_camera_convention():
    xs, ys = pixel_centers_ndc(4, 8)
    assert torch.allclose(xs, torch.tensor([-0.875, -0.625, -0.375, -0.125, 0.125, 0.375, 0.625, 0.875]))
    assert torch.allclose(ys, torch.tensor([0.75, 0.25, -0.25, -0.75]))


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_nearer_triangle_wins_the_depth_test_whatever_the_face_order(order):
    cams = front_camera(4.0, 40.0)
    near_tri = torch.tensor([[0.5, -0.8, -0.6], [0.5, 0.6, -0.6], [0.5, -0.1, 0.8]])  # 3.5 from the eye
    far_tri = torch.tensor([[-0.5, -0.4, -0.9], [-0.5, 0.9, -0.2], [-0.5, 0.1, 0.9]])  # 4.5 from the eye
    verts = torch.cat([near_tri, far_tri])
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])[list(order)]
    near_id = order.index(0)
    rast = rasterize(to_clip(verts, cams, 48, 48), faces, (48, 48))
    only_near = rasterize(to_clip(near_tri, cams, 48, 48), torch.tensor([[0, 1, 2]]), (48, 48))
    only_far = rasterize(to_clip(far_tri, cams, 48, 48), torch.tensor([[0, 1, 2]]), (48, 48))
    overlap = (only_near.triangle_id >= 0) & (only_far.triangle_id >= 0)
    assert overlap.sum() > 50
    assert (rast.triangle_id[overlap] == near_id).all()
    assert torch.allclose(rast.depth[overlap], torch.full_like(rast.depth[overlap], 3.5), rtol=1e-5)
    far_only = (only_far.triangle_id >= 0) & ~overlap
    assert far_only.sum() > 0 and (rast.triangle_id[far_only] == 1 - near_id).all()


def ray_cast(verts: torch.Tensor, faces: torch.Tensor, cams: CameraBatch, height: int, width: int, near, far):
    """Brute force: nearest hit (face id, view depth) of every pixel ray against every triangle."""
    origins, dirs = cams.rays(height, width)
    o, d = origins[0].reshape(-1, 1, 3).double(), dirs[0].reshape(-1, 1, 3).double()
    tri = verts[faces].double()  # [F, 3, 3]
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    p = torch.cross(d.expand(-1, len(faces), 3), e2.expand(o.shape[0], -1, 3), dim=-1)
    det = (e1 * p).sum(-1)
    s = o - tri[:, 0]
    u = (s * p).sum(-1) / det
    q = torch.cross(s, e1.expand(o.shape[0], -1, 3), dim=-1)
    v = (d * q).sum(-1) / det
    t = (e2 * q).sum(-1) / det
    forward = -cams.c2w[0, :3, 2].double()
    view_depth = t * (d[..., :] * forward).sum(-1)
    hit = (u >= 0) & (v >= 0) & (u + v <= 1) & (view_depth > near) & (view_depth < far)
    view_depth = torch.where(hit, view_depth, torch.full_like(view_depth, math.inf))
    best, face = view_depth.min(dim=1)
    face = torch.where(torch.isfinite(best), face, torch.full_like(face, -1))
    return face.view(height, width), torch.where(torch.isfinite(best), best, torch.zeros_like(best)).view(height, width)


def test_random_soup_matches_a_brute_force_ray_caster():
    gen = torch.Generator().manual_seed(3)
    centres = torch.rand(40, 1, 3, generator=gen) * 1.6 - 0.8
    verts = (centres + 0.35 * torch.randn(40, 3, 3, generator=gen)).reshape(-1, 3)
    faces = torch.arange(120).view(40, 3)
    cams = CameraBatch.from_spherical(0.3, 0.7, 3.0, math.radians(45))
    height, width = 40, 48
    rast = rasterize(to_clip(verts, cams, height, width), faces, (height, width))
    face, depth = ray_cast(verts, faces, cams, height, width, 0.1, 100.0)
    agree = (rast.triangle_id[0] == face).float().mean().item()
    assert agree > 0.995  # a few pixel centres may sit within rounding of an edge
    same = (rast.triangle_id[0] == face) & (face >= 0)
    assert torch.allclose(rast.depth[0][same].double(), depth[same], rtol=1e-4)


def test_triangles_crossing_the_eye_plane_are_rasterised_without_clipping_artefacts():
    # A big floor-like triangle passing under and behind the camera: one vertex has w < 0.
    cams = front_camera(2.0, 60.0)
    verts = torch.tensor([[4.0, 0.0, -0.5], [-3.0, -3.0, -0.5], [-3.0, 3.0, 0.5]])
    faces = torch.tensor([[0, 1, 2]])
    clip = to_clip(verts, cams, 32, 32)
    assert (clip[0, :, 3] <= 0).any() and (clip[0, :, 3] > 0).any()
    rast = rasterize(clip, faces, (32, 32))
    face, depth = ray_cast(verts, faces, cams, 32, 32, 0.1, 100.0)
    assert torch.isfinite(rast.barycentric).all() and torch.isfinite(rast.depth).all()
    assert (face >= 0).sum() > 50
    assert (rast.triangle_id[0] == face).float().mean() > 0.99
    same = (rast.triangle_id[0] == face) & (face >= 0)
    assert torch.allclose(rast.depth[0][same].double(), depth[same], rtol=1e-4)

    # Entirely behind the camera: nothing.
    behind = rasterize(to_clip(verts + torch.tensor([5.0, 0, 0]), cams, 32, 32), faces, (32, 32))
    assert (behind.triangle_id < 0).all()


def test_fragments_outside_near_and_far_planes_are_discarded():
    cams = front_camera(3.0, 40.0)
    verts, faces = square(0.5)
    assert (rasterize(to_clip(verts, cams, 16, 16, near=3.5, far=10.0), faces, (16, 16)).triangle_id < 0).all()
    assert (rasterize(to_clip(verts, cams, 16, 16, near=0.1, far=2.5), faces, (16, 16)).triangle_id < 0).all()
    assert (rasterize(to_clip(verts, cams, 16, 16, near=0.1, far=3.5), faces, (16, 16)).triangle_id >= 0).any()


def test_backface_culling_is_optional_and_degenerate_triangles_are_skipped():
    cams = front_camera(3.0, 40.0)
    verts, faces = square(0.5)
    flipped = faces.flip(1)
    clip = to_clip(verts, cams, 16, 16)
    assert (rasterize(clip, flipped, (16, 16)).triangle_id >= 0).sum() > 0
    assert (rasterize(clip, flipped, (16, 16), cull_backfaces=True).triangle_id < 0).all()
    assert (rasterize(clip, faces, (16, 16), cull_backfaces=True).triangle_id >= 0).sum() > 0
    degenerate = torch.tensor([[0, 0, 1], [0, 1, 1]])
    assert (rasterize(clip, degenerate, (16, 16)).triangle_id < 0).all()


def test_batches_and_chunking_give_the_same_answer(monkeypatch):
    import anyto3d.render.rasterize as module

    gen = torch.Generator().manual_seed(1)
    verts = (torch.rand(30, 1, 3, generator=gen) - 0.5 + 0.3 * torch.randn(30, 3, 3, generator=gen)).reshape(-1, 3)
    faces = torch.arange(90).view(30, 3)
    cams = CameraBatch.from_spherical(torch.tensor([0.1, 0.5]), torch.tensor([0.0, 2.0]), 3.0, 0.8)
    clip = to_clip(verts, cams, 24, 24)
    whole = rasterize(clip, faces, (24, 24))
    single = rasterize(clip[1], faces, (24, 24))
    assert torch.equal(whole.triangle_id[1], single.triangle_id[0])
    monkeypatch.setattr(module, "PAIRS_PER_CHUNK", 37)
    chunked = rasterize(clip, faces, (24, 24))
    assert torch.equal(whole.triangle_id, chunked.triangle_id)
    assert torch.allclose(whole.barycentric, chunked.barycentric)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(InputError, match="clip_pos"):
        rasterize(torch.zeros(3, 3), torch.tensor([[0, 1, 2]]), (8, 8))
    with pytest.raises(InputError, match="faces"):
        rasterize(torch.zeros(3, 4), torch.tensor([[0.0, 1.0, 2.0]]), (8, 8))
    with pytest.raises(InputError, match="outside"):
        rasterize(torch.zeros(3, 4), torch.tensor([[0, 1, 3]]), (8, 8))
    with pytest.raises(InputError, match="resolution"):
        rasterize(torch.zeros(3, 4), torch.tensor([[0, 1, 2]]), (0, 8))
    with pytest.raises(NonFiniteError):
        rasterize(torch.tensor([[0.0, 0, 0, 1], [1, 0, 0, 1], [0, math.nan, 0, 1]]), torch.tensor([[0, 1, 2]]), (8, 8))


# ---------------------------------------------------------------------------------------------
# Interpolation and its gradients
# ---------------------------------------------------------------------------------------------


def tilted_scene(dtype=torch.float64):
    """Two triangles at different, non-constant depths so perspective correction matters."""
    verts = torch.tensor(
        [[0.4, -0.9, -0.7], [-0.6, 0.8, -0.5], [0.2, 0.1, 0.9], [0.9, 0.3, -0.2], [0.7, 0.9, 0.4], [0.5, 0.2, 0.1]],
        dtype=dtype,
    )
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    cams = front_camera(2.5, 50.0, dtype)
    return verts, faces, cams


def test_interpolated_positions_are_perspective_correct():
    verts, faces, cams = tilted_scene()
    rast = rasterize(to_clip(verts, cams, 20, 20), faces, (20, 20))
    points = interpolate(verts, rast, faces)[0]
    origins, dirs = cams.rays(20, 20)
    covered = rast.triangle_id[0] >= 0
    # The interpolated world point lies on the pixel's ray at the rendered view depth.
    forward = -cams.c2w[0, :3, 2]
    t = rast.depth[0] / (dirs[0] * forward).sum(-1)
    on_ray = origins[0] + t[..., None] * dirs[0]
    assert covered.sum() > 40
    assert torch.allclose(points[covered], on_ray[covered], atol=1e-9)
    assert (points[~covered] == 0).all()


def interior_pixels(rast: Rasterization, margin: float = 0.05) -> torch.Tensor:
    return (rast.triangle_id >= 0) & (rast.barycentric.min(-1).values > margin)


def test_gradcheck_interpolate_wrt_attributes():
    verts, faces, cams = tilted_scene()
    rast = rasterize(to_clip(verts, cams, 12, 12), faces, (12, 12))
    attr = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: interpolate(a, rast, faces), (attr,))
    batched = torch.randn(1, 6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: interpolate(a, rast, faces), (batched,))


def test_gradcheck_interpolate_wrt_clip_positions():
    verts, faces, cams = tilted_scene()
    clip = to_clip(verts, cams, 12, 12).detach().requires_grad_(True)
    attr = torch.randn(6, 3, dtype=torch.float64)
    keep = interior_pixels(rasterize(clip, faces, (12, 12)))
    assert keep.sum() > 10

    def render(c):
        rast = rasterize(c, faces, (12, 12))
        return interpolate(attr, rast, faces)[keep], rast.depth[keep]

    assert torch.autograd.gradcheck(render, (clip,), eps=1e-7, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Antialiasing: the differentiable silhouette
# ---------------------------------------------------------------------------------------------


def test_edge_topology_of_two_triangles_sharing_an_edge():
    faces = torch.tensor([[0, 1, 2], [0, 2, 3], [4, 4, 5]])
    topo = edge_topology(faces)
    # Face 0's edge opposite vertex 1 is (2, 0), shared with face 1 whose third vertex is 3.
    assert topo.opposite.tolist() == [[-1, 3, -1], [-1, -1, 1], [-1, -1, -1]]
    assert topo.neighbour.tolist() == [[-1, 1, -1], [-1, -1, 0], [-1, -1, -1]]


def coverage(clip, faces, size):
    rast = rasterize(clip, faces, (size, size))
    return antialias(rast.mask, rast, clip, faces)


def test_antialiased_coverage_is_exact_for_a_vertical_edge():
    # A square whose right edge sits 0.3 px right of a pixel centre column: that column is
    # covered and the next one gains 0.5 - 0.3 = 0.2... measured from the inner centre, the edge
    # is at 0.3 of the way to the outer centre, so the inner pixel loses 0.5 - 0.3 = 0.2.
    size = 16
    xs, _ = pixel_centers_ndc(size, size, torch.float64)
    pixel = 2.0 / size
    right = xs[11] + 0.3 * pixel
    clip = torch.tensor(
        [[-0.5, -0.5, 0.0, 1.0], [right, -0.5, 0.0, 1.0], [right, 0.5, 0.0, 1.0], [-0.5, 0.5, 0.0, 1.0]],
        dtype=torch.float64,
    )
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    cov = coverage(clip, faces, size)[0, :, :, 0]
    row = size // 2
    assert cov[row, 11].item() == pytest.approx(0.8, abs=1e-9)
    assert cov[row, 12].item() == pytest.approx(0.0, abs=1e-9)
    assert cov[row, 8].item() == 1.0  # interior and the diagonal shared edge are untouched
    # Edge beyond the midpoint: 0.7 of the way -> the outer pixel gains 0.2.
    clip[1:3, 0] = xs[11] + 0.7 * pixel
    cov = coverage(clip, faces, size)[0, :, :, 0]
    assert cov[row, 11].item() == 1.0
    assert cov[row, 12].item() == pytest.approx(0.2, abs=1e-9)


def test_silhouette_gradient_moves_edges_outward_to_grow_coverage():
    size = 24
    clip = torch.tensor(
        [[-0.43, -0.41, 0.0, 1.0], [0.47, -0.39, 0.0, 1.0], [0.44, 0.46, 0.0, 1.0], [-0.42, 0.45, 0.0, 1.0]],
        dtype=torch.float64,
        requires_grad=True,
    )
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    coverage(clip, faces, size).sum().backward()
    g = clip.grad
    # Right vertices want +x, left ones -x, top ones +y, bottom ones -y (outward = more coverage).
    assert g[1, 0] > 0 and g[2, 0] > 0 and g[0, 0] < 0 and g[3, 0] < 0
    assert g[2, 1] > 0 and g[3, 1] > 0 and g[0, 1] < 0 and g[1, 1] < 0
    # Total coverage grows like the area: d(area)/d(scale) at scale 1 is 2 * area.
    scale = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    scaled = torch.cat([clip.detach()[:, :2] * scale, clip.detach()[:, 2:]], dim=1)
    total = coverage(scaled, faces, size).sum()
    total.backward()
    area_px = total.item()
    assert scale.grad.item() == pytest.approx(2 * area_px, rel=0.15)


def test_internal_edges_of_a_closed_surface_do_not_blend():
    # A cube seen at an angle, each pixel coloured by its face's normal: colours change across
    # the visible edges between two front faces, but only the silhouette may be blended.
    import trimesh

    box = trimesh.creation.box()
    verts = torch.tensor(box.vertices.copy(), dtype=torch.float32)
    faces = torch.tensor(box.faces.copy())
    normals = torch.tensor(box.face_normals.copy(), dtype=torch.float32)
    cams = CameraBatch.from_spherical(0.5, 0.6, 3.0, 0.8)
    clip = to_clip(verts, cams, 32, 32)
    rast = rasterize(clip, faces, (32, 32))
    inside = rast.triangle_id[0] >= 0
    color = torch.where(inside[..., None], normals[rast.triangle_id[0].clamp(min=0)], torch.zeros(3))[None]
    out = antialias(color, rast, clip, faces)[0]
    # Pixels whose 4 neighbours are all covered keep their colour exactly, although three
    # differently coloured faces meet among them.
    padded = torch.nn.functional.pad(inside.float()[None, None], (1, 1, 1, 1))[0, 0]
    full = (padded[:-2, 1:-1] > 0) & (padded[2:, 1:-1] > 0) & (padded[1:-1, :-2] > 0) & (padded[1:-1, 2:] > 0)
    interior = inside & full
    assert interior.sum() > 100
    assert len(torch.unique(color[0][interior], dim=0)) == 3
    assert torch.equal(out[interior], color[0][interior])
    assert ((out - color[0]).abs().sum(-1) > 0).sum() > 10  # the silhouette is blended


def test_fitting_a_quad_to_a_target_mask_through_the_silhouette():
    size = 32
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    corners = torch.tensor([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    homog = torch.tensor([[0.0, 1.0]]).expand(4, 2)
    target_xy = corners * torch.tensor([0.8, 1.1]) + torch.tensor([0.18, -0.12])
    target = coverage(torch.cat([target_xy, homog], 1), faces, size).detach()

    xy = (corners * 0.9).clone().requires_grad_(True)
    start = mask_iou(coverage(torch.cat([xy, homog], 1), faces, size), target)
    optim = torch.optim.Adam([xy], lr=0.01)
    for _ in range(60):
        optim.zero_grad()
        loss = ((coverage(torch.cat([xy, homog], 1), faces, size) - target) ** 2).sum()
        loss.backward()
        optim.step()
    end = mask_iou(coverage(torch.cat([xy, homog], 1), faces, size).detach(), target)
    assert start < 0.75 and end > 0.9


def test_antialias_rejects_mismatched_colour():
    verts, faces = square(0.5)
    clip = to_clip(verts, front_camera(3.0, 40.0), 8, 8)
    rast = rasterize(clip, faces, (8, 8))
    with pytest.raises(InputError, match="color"):
        antialias(torch.zeros(1, 4, 8, 1), rast, clip, faces)


# ---------------------------------------------------------------------------------------------
# nvdiffrast backend against the reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_nvdiffrast_backend_matches_the_reference():
    from anyto3d import backends

    if not backends.available("nvdiffrast"):
        pytest.skip("nvdiffrast is not importable on this CUDA machine")
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=3)
    verts = torch.tensor(sphere.vertices.copy(), dtype=torch.float32, device="cuda")
    faces = torch.tensor(sphere.faces.copy(), device="cuda")
    cams = CameraBatch.from_spherical(torch.tensor([0.2, -0.3]), torch.tensor([0.0, 1.5]), 3.0, 0.7).to("cuda")
    clip = to_clip(verts, cams, 64, 64).requires_grad_(True)
    ref = rasterize(clip, faces, (64, 64), backend="torch")
    fast = rasterize(clip, faces, (64, 64), backend="nvdiffrast")
    same = ref.triangle_id == fast.triangle_id
    assert same.float().mean() > 0.99
    assert torch.allclose(ref.barycentric[same], fast.barycentric[same], atol=1e-4)
    assert torch.allclose(ref.depth[same], fast.depth[same], rtol=1e-4)
    attr = torch.rand(len(verts), 3, device="cuda")
    a_ref, a_fast = interpolate(attr, ref, faces), interpolate(attr, fast, faces)
    assert torch.allclose(a_ref[same], a_fast[same], atol=1e-4)
    cov_ref = antialias(ref.mask, ref, clip, faces)
    cov_fast = antialias(fast.mask, fast, clip, faces)
    assert (cov_ref - cov_fast).abs().mean() < 2e-3
    assert mask_iou(cov_ref, cov_fast) > 0.99
    g_ref = torch.autograd.grad(cov_ref.sum(), clip)[0]
    g_fast = torch.autograd.grad(cov_fast.sum(), clip)[0]
    cos = torch.nn.functional.cosine_similarity(g_ref.flatten(), g_fast.flatten(), dim=0)
    assert cos > 0.9
