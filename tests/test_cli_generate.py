"""`anyto3d generate` on bad input: exit 2, one `anyto3d: error:` line, no traceback, nothing
written to the store or the output directory. Plus `models check` and `ui --print`."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
from PIL import Image

from flows.cli import check_models, main, one_line, ui_command


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("ANYTO3D_TRACKING", "0")
    monkeypatch.setenv("ANYTO3D_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    (tmp_path / "weights").mkdir()
    return tmp_path


def _png(path, rgba):
    Image.fromarray(np.asarray(rgba, dtype=np.uint8), "RGBA").save(path)
    return path


def _wav(path, samples, sr=16000):
    soundfile.write(str(path), np.asarray(samples, dtype=np.float32), sr, subtype="PCM_16")
    return path


def _object_png(path):
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24] = (200, 30, 30, 255)
    return _png(path, rgba)


def _tone(path, seconds=1.0):
    t = np.arange(int(16000 * seconds)) / 16000
    return _wav(path, 0.5 * np.sin(2 * np.pi * 440 * t))


def _bad_prompt(kind, tmp):
    """(CLI prompt args, words the message must contain) for each kind of bad input."""
    if kind == "empty_text":
        return ["--text", ""], "empty"
    if kind == "whitespace_text":
        return ["--text", "  \t \n "], "empty"
    if kind == "zero_byte_image":
        (tmp / "z.png").write_bytes(b"")
        return ["--image", str(tmp / "z.png")], "empty (0 bytes)"
    if kind == "truncated_image":
        good = _object_png(tmp / "good.png").read_bytes()
        (tmp / "t.png").write_bytes(good[: len(good) // 2])
        return ["--image", str(tmp / "t.png")], "truncated or corrupt"
    if kind == "corrupt_image":
        (tmp / "c.png").write_bytes(b"\x89PNG not really" * 20)
        return ["--image", str(tmp / "c.png")], "not a readable image"
    if kind == "image_without_foreground":
        return ["--image", str(_png(tmp / "clear.png", np.zeros((32, 32, 4))))], "no foreground"
    if kind == "silent_audio":
        return ["--audio", str(_wav(tmp / "silent.wav", np.zeros(16000)))], "silent"
    if kind == "short_audio":
        return ["--audio", str(_tone(tmp / "short.wav", 0.2))], "too short"
    if kind == "corrupt_audio":
        (tmp / "c.wav").write_bytes(b"RIFF....WAVEfmt garbage" * 10)
        return ["--audio", str(tmp / "c.wav")], "corrupt"
    if kind == "unknown_audio_format":
        (tmp / "a.xyz").write_bytes(b"abc")
        return ["--audio", str(tmp / "a.xyz")], "unknown audio format"
    raise AssertionError(kind)


def _assert_one_clean_error(capsys, rc, must_contain, tmp):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("anyto3d: error: "), err
    assert must_contain.lower() in lines[0].lower(), lines[0]
    store, out = tmp / "store", tmp / "out"
    assert not store.exists() or not any(store.rglob("*")), sorted(store.rglob("*"))
    assert not out.exists() or not any(out.iterdir())


def _generate_args(tmp, *args):
    return ["generate", *args, "--local", "--out", str(tmp / "out"), f"paths.store={tmp / 'store'}"]


BAD_PROMPTS = [
    "empty_text",
    "whitespace_text",
    "zero_byte_image",
    "truncated_image",
    "corrupt_image",
    "image_without_foreground",
    "silent_audio",
    "short_audio",
    "corrupt_audio",
    "unknown_audio_format",
]


@pytest.mark.parametrize("kind", BAD_PROMPTS)
def test_bad_prompt_is_one_line_exit_2_and_writes_nothing(kind, env, capsys):
    args, words = _bad_prompt(kind, env)
    rc = main(_generate_args(env, *args))
    _assert_one_clean_error(capsys, rc, words, env)


@pytest.mark.parametrize(
    "option, words",
    [
        (["--method", "xbindd"], "unknown method 'xbindd'"),
        (["--model", "huge"], "unknown model 'huge'"),
        (["--experiment", "wo_everything"], "unknown experiment 'wo_everything'"),
        (["render.viewz=3"], "unknown config key 'render.viewz'"),
        (["--weights", "1", "2"], "2 weight(s) for 1 prompt"),
    ],
)
def test_unknown_names_are_one_line_exit_2(option, words, env, capsys):
    rc = main(_generate_args(env, "--text", "a red cube", *option))
    _assert_one_clean_error(capsys, rc, words, env)


def test_missing_paper_weights_is_one_line_naming_the_model(env, capsys):
    rc = main(_generate_args(env, "--text", "a red cube", "--model", "paper"))
    _assert_one_clean_error(capsys, rc, "weights for 'imagebind_huge' not found", env)


def test_unwritable_out_is_one_line_and_leaves_nothing(env, capsys):
    blocker = env / "a-file"
    blocker.write_text("x")
    rc = main(["generate", "--text", "a red cube", "--local", "--out", str(blocker / "out"), f"paths.store={env / 'store'}"])
    _assert_one_clean_error(capsys, rc, "not writable", env)
    assert blocker.read_text() == "x"


def test_valid_prompts_pass_validation(env):
    """The same checks accept good files (so the failures above are about the input)."""
    from flows.generate import validate_prompts

    validate_prompts("a red cube", _object_png(env / "ok.png"), _tone(env / "ok.wav", 1.0))


def test_multi_line_errors_become_one_line():
    assert one_line("weights not found.\nFiles expected:\n  a.pth\n") == "weights not found.; Files expected:; a.pth"


def test_models_check_reports_every_paper_model_and_where_it_looked(env):
    from anyto3d.priors.weights import PAPER_MODELS

    lines, ok = check_models("paper")
    assert not ok
    missing = [line for line in lines if line.strip().startswith("missing")]
    assert len(missing) == len(PAPER_MODELS)
    text = "\n".join(lines)
    assert str(env / "weights" / "imagebind_huge") in text  # a place looked, with the reason
    assert "Hugging Face cache" in text


def test_models_check_tiny_present_and_missing(env):
    from anyto3d.zoo.fixtures import build_test_zoo

    zoo = build_test_zoo(env / "zoo")
    lines, ok = check_models("tiny", str(zoo))
    assert ok and sum(line.strip().startswith("present") for line in lines) == 7
    lines, ok = check_models("tiny", str(env / "nowhere"))
    assert not ok and sum(line.strip().startswith("missing") for line in lines) == 7


def test_ui_prints_a_localhost_command(capsys):
    assert main(["ui", "mlflow", "--print"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///")
    assert ui_command("prefect")[:5] == ["prefect", "server", "start", "--host", "127.0.0.1"]
