"""anyto3d: any-modality prompt -> textured 3D mesh or 4D scene.

The library is pure PyTorch. It never imports Prefect, MLflow or DVC, and never imports a
CUDA-only package (tinycudann, nvdiffrast, nerfacc's CUDA kernels, kaolin) at module load:
accelerated backends are chosen at run time by :mod:`anyto3d.backends`.
"""

from anyto3d.env import apply_offline_defaults

apply_offline_defaults()

__version__ = "0.1.0"
