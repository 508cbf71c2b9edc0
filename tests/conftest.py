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
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def test_zoo(tmp_path_factory):
    """A complete tiny zoo with random weights at test sizes, built once per session (read-only)."""
    from anyto3d.zoo.fixtures import build_test_zoo

    return build_test_zoo(tmp_path_factory.mktemp("test-zoo"))


@pytest.fixture
def model_loads(monkeypatch):
    """The tiny model directories looked up (``anyto3d.zoo.build.model_dir``, which every tiny
    load goes through), in order: a step's declared ``roles`` are checked against it."""
    from anyto3d.zoo import build

    loads: list[str] = []
    real = build.model_dir

    def recording(name, root=None):
        if name:  # "" is the zoo's root (models.tiny_models_root), not a model
            loads.append(name)
        return real(name, root)

    monkeypatch.setattr(build, "model_dir", recording)
    return loads
