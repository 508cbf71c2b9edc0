"""The command line: bad input is one line on stderr and exit status 2, with nothing written."""

import subprocess
import sys


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_unwritable_output_is_one_clear_line_and_exit_2(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    proc = run_cli("reconstruct", "--out", str(blocker / "out"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("anyto3d: error:") and "out" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_unknown_subcommand_choice_exits_2():
    proc = run_cli("bench", "nope")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr and "Traceback" not in proc.stderr


def test_bench_losses_reports_a_real_measurement():
    """One loss case end to end through the CLI's subprocess-per-case runner."""
    import json

    from anyto3d import bench

    row = bench.loss_case("sds", 32, repeats=1, device="cpu")
    assert row["loss"] == "sds" and row["ms_per_call"] > 0 and row["prior_params"] > 0
    assert json.loads(json.dumps(row)) == row
