import socket
from pathlib import Path

import pytest

from anyto3d.errors import InputError, MissingWeightsError
from anyto3d.priors.weights import ENV_VAR, PAPER_MODELS, component_files, hf_cache_dir, layout_files, resolve_weights

REQUIRED = ["unet/config.json", "unet/diffusion_pytorch_model.safetensors|unet/diffusion_pytorch_model.bin"]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No user weights dir, an empty HF cache, and any network attempt is a test failure."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))

    def no_network(*args, **kwargs):
        raise AssertionError("resolve_weights tried to open a network connection")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)


def _write(root: Path, files: list[str]) -> Path:
    for f in files:
        p = root / f
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    return root


def test_missing_weights_message_names_model_files_places_and_setting(tmp_path):
    local = tmp_path / "my_model"
    with pytest.raises(MissingWeightsError) as err:
        resolve_weights("org/some-model", REQUIRED, local_dir=local)
    msg = str(err.value)
    assert isinstance(err.value, InputError)
    assert "org/some-model" in msg
    assert "unet/config.json" in msg and "unet/diffusion_pytorch_model.safetensors" in msg
    assert "diffusion_pytorch_model.bin" in msg  # the alternative is named too
    assert ENV_VAR in msg
    assert str(local) in msg
    assert str(tmp_path / "hf_home" / "hub") in msg


def test_missing_files_in_a_partial_dir_are_listed(tmp_path):
    local = _write(tmp_path / "partial", ["unet/config.json"])
    with pytest.raises(MissingWeightsError, match=r"partial \(missing unet/diffusion_pytorch_model.safetensors"):
        resolve_weights("org/some-model", REQUIRED, local_dir=local)


def test_found_in_local_dir_with_either_alternative(tmp_path):
    local = _write(tmp_path / "m", ["unet/config.json", "unet/diffusion_pytorch_model.bin"])
    assert resolve_weights("org/some-model", REQUIRED, local_dir=local) == local


def test_found_under_env_var_by_repo_id(tmp_path, monkeypatch):
    root = tmp_path / "weights"
    _write(root / "org" / "some-model", ["unet/config.json", "unet/diffusion_pytorch_model.safetensors"])
    monkeypatch.setenv(ENV_VAR, str(root))
    assert resolve_weights("org/some-model", REQUIRED) == root / "org" / "some-model"


def test_registry_key_resolves_under_env_var(tmp_path, monkeypatch):
    spec = PAPER_MODELS["zero123"]
    root = tmp_path / "weights"
    target = _write(root / spec.repo_id, [r.split("|")[0] for r in spec.required])
    monkeypatch.setenv(ENV_VAR, str(root))
    assert resolve_weights("zero123") == target


def _fake_hf_cache(hub: Path, repo_id: str, files: list[str], commit: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    repo_dir = hub / ("models--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return _write(repo_dir / "snapshots" / commit, files)


def test_found_in_hf_cache_layout_offline(tmp_path):
    hub = tmp_path / "hf_home" / "hub"
    assert hf_cache_dir() == hub
    snapshot = _fake_hf_cache(hub, "org/some-model", ["unet/config.json", "unet/diffusion_pytorch_model.safetensors"])
    assert resolve_weights("org/some-model", REQUIRED) == snapshot


def test_incomplete_hf_cache_is_missing(tmp_path):
    _fake_hf_cache(tmp_path / "hf_home" / "hub", "org/some-model", ["unet/config.json"])
    with pytest.raises(MissingWeightsError, match="not cached or incomplete"):
        resolve_weights("org/some-model", REQUIRED)


def test_hf_hub_cache_variable_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    snapshot = _fake_hf_cache(tmp_path / "elsewhere", "org/m", ["a.txt"])
    assert resolve_weights("org/m", ["a.txt"]) == snapshot


def test_unknown_model_without_file_list_is_an_error():
    with pytest.raises(MissingWeightsError, match="unknown model"):
        resolve_weights("not-a-registered-model")


def test_paper_models_registry_is_complete():
    for key in ("sd-2-1-unclip", "zero123", "sd-2-1-base", "mvdream", "zeroscope_v2_576w", "imagebind_huge",
                "open_clip-ViT-H-14", "open_clip-ViT-B-32"):  # fmt: skip
        assert key in PAPER_MODELS and PAPER_MODELS[key].required, key
    unclip = PAPER_MODELS["sd-2-1-unclip"].required
    assert "image_normalizer/config.json" in unclip and "image_noising_scheduler/scheduler_config.json" in unclip


def test_component_files_layouts():
    assert component_files("scheduler", "scheduler") == ["scheduler/scheduler_config.json"]
    assert layout_files({"text_encoder": "transformers_model"})[1].startswith("text_encoder/model.safetensors|")
    with pytest.raises(ValueError):
        component_files("x", "onnx")
