"""Test-wide settings: offline, no telemetry, seeded, and CUDA-only paths skipped visibly."""

import os

# Before anything imports huggingface_hub, prefect, mlflow or dvc.
for key, value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
}.items():
    os.environ[key] = value

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (accelerated backend checked against the PyTorch reference)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def test_zoo(tmp_path_factory):
    """A complete tiny zoo with random weights at test sizes, built once per session (read-only)."""
    from anyto3d.zoo.fixtures import build_test_zoo

    return build_test_zoo(tmp_path_factory.mktemp("test-zoo"))
