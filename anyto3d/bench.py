"""Throughput and memory of the 3D core, per backend (``anyto3d bench render|raster --json``).

Each case runs in a fresh Python process so its peak resident memory (CPU) or peak CUDA
allocation is its own; the figure reported is the peak minus the process's footprint just
before the timed work. Times are the median of ``repeats`` forward+backward passes after one
warm-up pass. Performance is measured here, never asserted in tests.
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import date

import torch

VOLUME_PRESETS = ("cpu_dense", "cpu_hash", "paper_hash")
RASTER_SUBDIVISIONS = (4, 6)  # icosphere: 5,120 and 81,920 faces
# Papers' sizes: XBind Phase I renders 128^2 (volume), Phases II/III 512^2 (raster); 64^2 is the
# CPU working size.
# The full-size priors resize renders to their own sizes (256² to 768²); 256² is MVDream's and
# Zero-1-to-3's.
DEFAULT_RESOLUTIONS = {"volume": [64, 128], "raster": [128, 512], "losses": [64], "losses_full": [256]}
LOSSES = ("sds", "augmented_sds", "cds", "sds_3d", "vsd", "multiview_sds", "video_sds", "modality_similarity")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _timed(step, repeats: int, device: torch.device) -> float:
    step()  # warm-up (allocations, lazy init)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def volume_case(preset: str, resolution: int, occupancy: bool = False, repeats: int = 3, device: str = "cpu") -> dict:
    """One view at ``resolution``², NeRF field with the encoding ``preset``, fwd+bwd; with
    ``occupancy`` the empty-space-skipping grid is refreshed once on a fresh (blob) field."""
    from anyto3d.cameras import orbit_cameras
    from anyto3d.fields.encoding import PRESETS
    from anyto3d.fields.nerf import NeRFField, NeRFFieldConfig
    from anyto3d.render.background import SolidBackground
    from anyto3d.render.volume import OccupancyGridConfig, VolumeRenderer, VolumeRendererConfig

    dev = torch.device(device)
    field = NeRFField(NeRFFieldConfig(encoding=PRESETS[preset]), device=dev).to(dev)
    renderer = VolumeRenderer(VolumeRendererConfig(n_samples=64), occupancy=OccupancyGridConfig() if occupancy else None)
    renderer.to(dev)
    renderer.update_occupancy(field)
    cams = orbit_cameras(1, elevation_deg=20.0, distance=2.5).to(dev)
    background = SolidBackground().to(dev)
    base_rss = _peak_rss_mb()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()

    def step():
        out = renderer.render(field, cams, resolution, resolution, background)
        out.rgb.mean().backward()

    seconds = _timed(step, repeats, dev)
    row = {
        "case": "volume",
        "encoding": preset,
        "backend": _backend_names(preset, dev),
        "occupancy": occupancy,
        "resolution": resolution,
        "samples_per_ray": 64,
        "seconds_fwd_bwd": round(seconds, 4),
        "rays_per_s": round(resolution * resolution / seconds),
    }
    row.update(_memory(dev, base_rss, base_cuda if dev.type == "cuda" else 0))
    return row


def raster_case(subdivisions: int, resolution: int, repeats: int, device: str, batch: int = 4) -> dict:
    """A batch of ``batch`` views of an icosphere, opacity + normals + rgb, fwd+bwd to vertices."""
    import trimesh

    from anyto3d.cameras import orbit_cameras
    from anyto3d.mesh import Mesh
    from anyto3d.render.mesh_renderer import MeshRenderer

    dev = torch.device(device)
    sphere = Mesh.from_trimesh(trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.8)).to(dev)
    vertices = sphere.vertices.clone().requires_grad_(True)
    renderer = MeshRenderer()
    cams = orbit_cameras(batch, elevation_deg=20.0, distance=2.5).to(dev)
    base_rss = _peak_rss_mb()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()

    def step():
        out = renderer.render(Mesh(vertices, sphere.faces), cams, resolution, resolution)
        (out.opacity.mean() + out.normal.mean() + out.rgb.mean()).backward()

    seconds = _timed(step, repeats, dev)
    row = {
        "case": "raster",
        "backend": "nvdiffrast" if _fast("nvdiffrast", dev) else "torch",
        "faces": sphere.num_faces,
        "resolution": resolution,
        "batch": batch,
        "seconds_fwd_bwd": round(seconds, 4),
        "images_per_s": round(batch / seconds, 2),
        "megapixels_per_s": round(batch * resolution * resolution / seconds / 1e6, 3),
    }
    row.update(_memory(dev, base_rss, base_cuda if dev.type == "cuda" else 0))
    return row


def _loss_setup(name: str, resolution: int, dev: torch.device, size: str = "reduced", frames: int = 8,
                dtype: str = "auto"):
    """A random-weight prior of the paper architecture behind ``name``, at reduced size
    (``build_dummy``, float32) or at full size in ``dtype`` (``build_full_size``, the GPU figures;
    "auto" as ``model.dtype``), and a call of the loss on a [B, H, W, 3] render that needs gradients."""
    from anyto3d.cameras import orbit_cameras, relative_camera
    from anyto3d.losses import cds, modality_similarity, sds, video_sds, vsd
    from anyto3d.models import paper_dtype

    if size not in ("reduced", "full"):
        raise ValueError(f"size must be 'reduced' or 'full', got {size!r}")

    def build(cls):
        if size == "reduced":
            return cls.build_dummy().to(dev)
        return cls.build_full_size(device=dev, dtype=paper_dtype({"dtype": dtype}, dev))

    g = torch.Generator().manual_seed(0)
    t = torch.tensor([500])
    if name in ("sds", "augmented_sds", "cds"):
        from anyto3d.priors.sd_unclip import StableUnCLIPPrior

        prior = build(StableUnCLIPPrior)
        cond = prior.build_condition(image_embedding=torch.randn(1, prior.embedding_dim, device=dev))
        images = torch.rand(1, resolution, resolution, 3, device=dev)
        if name == "sds":
            return prior, images, lambda x: sds.score_distillation_sampling(prior, x, cond, t, guidance_scale=7.5, generator=g)
        if name == "augmented_sds":
            return prior, images, lambda x: sds.augmented_sds(
                prior, x, cond, t, guidance_scale=7.5, image_weight=0.1, denoise_steps=4, generator=g
            )
        noise = cds.FixedNoise(seed=0)
        return prior, images, lambda x: cds.consistency_distillation(prior, x, cond, torch.tensor([600]), torch.tensor([400]), noise)
    if name == "sds_3d":
        from anyto3d.priors.zero123 import Zero123Prior

        prior = build(Zero123Prior)
        ref = orbit_cameras(1)
        rel = relative_camera(ref, orbit_cameras(1, azimuth_start_deg=90.0)).to(dev)
        reference = prior.encode_reference(torch.rand(1, 3, resolution, resolution, device=dev) * 2 - 1)
        images = torch.rand(1, resolution, resolution, 3, device=dev)
        return prior, images, lambda x: sds.sds_3d(prior, x, t, reference=reference, relative_camera=rel, generator=g)
    if name == "vsd":
        from anyto3d.priors.sd_vsd import StableDiffusionVSDPrior

        prior = build(StableDiffusionVSDPrior)
        c2w = orbit_cameras(1).c2w.to(dev)
        cond = prior.build_condition(text=["a red cube"])
        lora_cond = prior.build_condition(text=["a red cube"], camera_c2w=c2w)
        images = torch.rand(1, resolution, resolution, 3, device=dev)
        return prior, images, lambda x: vsd.variational_score_distillation(prior, prior.lora_branch, x, cond, lora_cond, t, generator=g)
    if name == "multiview_sds":
        from anyto3d.priors.mvdream import MVDreamPrior

        prior = build(MVDreamPrior)
        cond = prior.build_condition(text=["a red cube"], cameras=orbit_cameras(4).to(dev))
        images = torch.rand(4, resolution, resolution, 3, device=dev)
        return prior, images, lambda x: sds.multiview_sds(prior, x, cond, t, generator=g)
    if name == "video_sds":
        from anyto3d.priors.zeroscope import ZeroscopePrior

        prior = build(ZeroscopePrior)
        cond = prior.build_condition(text=["a red cube spinning"])
        frames = torch.rand(frames, resolution, resolution, 3, device=dev)
        return prior, frames, lambda x: video_sds.video_sds(prior, x, cond, t, generator=g)
    if name == "modality_similarity":
        from anyto3d.encoders.imagebind import ImageBindEncoder

        encoder = ImageBindEncoder.build_dummy().to(dev) if size == "reduced" else ImageBindEncoder.build_full_size(dev)
        target = torch.nn.functional.normalize(torch.randn(1, encoder.dim, device=dev), dim=-1)
        images = torch.rand(4, resolution, resolution, 3, device=dev)
        return encoder, images, lambda x: modality_similarity.modality_similarity(x, target, encoder.embed_image, generator=g)
    raise ValueError(f"unknown loss {name!r}")


def loss_case(name: str, resolution: int, size: str = "reduced", dtype: str = "auto", repeats: int = 3,
              device: str = "cpu") -> dict:
    """One call of a loss, forward and backward to the render, with random-weight versions of the
    paper architectures: at reduced size (``build_dummy``) the cost of the loss machinery; at full
    size (``dtype``, 16 video frames) the cost on a GPU of the networks the papers use. ImageBind
    (the MS loss) runs in float32 whatever ``dtype``, as ``model=paper`` loads it."""
    dev = torch.device(device)
    model, images, call = _loss_setup(name, resolution, dev, size, frames=16 if size == "full" else 8, dtype=dtype)
    params = sum(p.numel() for p in model.parameters())
    base_rss = _peak_rss_mb()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()

    def step():
        x = images.clone().requires_grad_(True)
        loss = call(x)
        loss = loss[0] if isinstance(loss, tuple) else loss
        loss.backward()

    seconds = _timed(step, repeats, dev)
    row = {
        "case": "loss",
        "loss": name,
        "size": size,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "prior_params": params,
        "render": f"{images.shape[0]}x{resolution}x{resolution}",
        "ms_per_call": round(seconds * 1000, 1),
    }
    row.update(_memory(dev, base_rss, base_cuda if dev.type == "cuda" else 0))
    return row


def _fast(accelerated: str, dev: torch.device) -> bool:
    from anyto3d import backends

    return backends.resolve("auto", accelerated, dev) != "torch"


def _backend_names(preset: str, dev: torch.device) -> str:
    grid = "tcnn" if preset != "cpu_dense" and _fast("tcnn", dev) else "torch"
    compositing = "nerfacc" if _fast("nerfacc", dev) else "torch"
    return f"grid={grid},compositing={compositing}"


def _memory(dev: torch.device, base_rss: float, base_cuda: int) -> dict:
    if dev.type == "cuda":
        return {"peak_cuda_mb": round((torch.cuda.max_memory_allocated() - base_cuda) / 2**20, 1)}
    return {"peak_rss_delta_mb": round(_peak_rss_mb() - base_rss, 1)}


def _cases(what: str, resolutions: list[int] | None, size: str = "reduced", dtype: str = "auto") -> list[tuple[str, tuple]]:
    cases = []
    if what in ("render", "all"):
        for r in resolutions or DEFAULT_RESOLUTIONS["volume"]:
            cases += [("volume", (p, r, occ)) for p in VOLUME_PRESETS for occ in (False, True)]
    if what in ("raster", "all"):
        cases += [("raster", (s, r)) for s in RASTER_SUBDIVISIONS for r in resolutions or DEFAULT_RESOLUTIONS["raster"]]
    if what in ("losses", "all"):
        default = DEFAULT_RESOLUTIONS["losses_full" if size == "full" else "losses"]
        cases += [("loss", (name, r, size, dtype)) for name in LOSSES for r in resolutions or default]
    return cases


def run(what: str, resolutions: list[int] | None = None, repeats: int = 3, device: str = "cpu",
        size: str = "reduced", dtype: str = "auto", on_row=None) -> dict:
    """Run every case of ``what`` ("render", "raster", "losses", "all") in its own process;
    ``size`` is that of the loss cases' networks ("reduced", or "full": the papers', in ``dtype``).
    ``on_row(row)`` sees each row as its case ends, so a sweep cut short keeps what it measured."""
    rows = []
    for kind, args in _cases(what, resolutions, size, dtype):
        payload = json.dumps({"kind": kind, "args": list(args), "repeats": repeats, "device": device})
        proc = subprocess.run(
            [sys.executable, "-m", "anyto3d.bench", payload], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            rows.append({"case": kind, "args": list(args), "error": proc.stderr.strip().splitlines()[-1:]})
        else:
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        if on_row is not None:
            on_row(rows[-1])
    return {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip(),
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "rows": rows,
    }


def _main(payload: str) -> None:
    spec = json.loads(payload)
    fn = {"volume": volume_case, "raster": raster_case, "loss": loss_case}[spec["kind"]]
    print(json.dumps(fn(*spec["args"], repeats=spec["repeats"], device=spec["device"])))


if __name__ == "__main__":
    _main(sys.argv[1])
