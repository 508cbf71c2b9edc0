"""Step ``dmtet_geometry``: the DMTet geometry phase(s) (XBind Phase II: normal maps, planar-C + stereo + L_nc + L_ls), from the NeRF or, without one, a sphere.

The body is shared by the three phase steps: :func:`steps.phase_common.run_phase_step`.
"""

from __future__ import annotations

from pathlib import Path

from steps.contract import step
from steps.phase_common import phase_roles, run_phase_step

CODE = ("steps.phase_common", "anyto3d.models", "anyto3d.state_io")


@step("dmtet_geometry", 1, config_keys=("model", "method", "seed"), inputs=("encoded", "reference"), optional_inputs=("previous",),
      code_modules=CODE, roles=phase_roles("dmtet_geometry"))
def run(inputs: dict[str, Path], cfg: dict, out_dir: Path, device: str, work_dir: Path) -> dict:
    return run_phase_step("dmtet_geometry", "dmtet_geometry", inputs, cfg, out_dir, device, work_dir)


STEP = run
