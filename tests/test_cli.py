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
    assert row["size"] == "reduced" and row["dtype"] == "float32"
    assert json.loads(json.dumps(row)) == row


def test_bench_sweep_hands_over_each_row_as_its_case_ends():
    """An overnight sweep cut short keeps the cases it finished: each row reaches ``on_row``
    as its subprocess ends, the same rows the result returns."""
    from anyto3d import bench

    seen = []
    result = bench.run("raster", resolutions=[16], repeats=1, on_row=seen.append)
    assert len(seen) == len(bench.RASTER_SUBDIVISIONS) and seen == result["rows"]
    assert all(r["case"] == "raster" and r["seconds_fwd_bwd"] > 0 for r in seen)
