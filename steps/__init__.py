"""DAG steps: pure functions from input files to a content-addressed output directory.

The contract (:mod:`steps.contract`) and the store (:mod:`steps.store`) are generic; one module per
stage of the pipeline sits beside them. Nothing here imports Prefect, MLflow or DVC: the flows in
``flows/`` wrap these steps, and every step also runs with a plain :class:`Store`.
"""

from anyto3d.checkpoints import CheckpointManager
from steps.contract import (
    Step,
    capture_rng_state,
    config_subset,
    deterministic_kernels,
    restore_rng_state,
    seed_everything,
    step,
)
from steps.store import MANIFEST, STORE_FORMAT, Manifest, Store, ensure_writable_dir

__all__ = [
    "MANIFEST",
    "STORE_FORMAT",
    "CheckpointManager",
    "Manifest",
    "Step",
    "Store",
    "capture_rng_state",
    "config_subset",
    "deterministic_kernels",
    "ensure_writable_dir",
    "restore_rng_state",
    "seed_everything",
    "step",
]
