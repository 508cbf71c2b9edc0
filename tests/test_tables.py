"""Table I in Markdown and LaTeX from fake results: aggregation, order, bold, booktabs."""

import json
import math

import pytest

from anyto3d.errors import InputError
from anyto3d.tables import (
    render_latex,
    render_markdown,
    table_note,
    table_rows,
    write_tables,
)


def result(method, modality, seed, **metrics):
    return {"method": method, "modality": modality, "suite": "asymmetric", "seed": seed, "object": "house-red",
            "metrics": {"encoder": "tiny judge", "n_views": 120, **metrics}}


RESULTS = [
    result("xbind", "text", 0, clip_r=0.8, view_consistency=0.9, geometry_iou=0.8, chamfer=0.03),
    result("xbind", "text", 1, clip_r=0.6, view_consistency=0.7, geometry_iou=0.7, chamfer=0.05),
    result("xbind", "image", 0, clip_i=0.85, clip_r=0.0, geometry_iou=0.9, chamfer=0.02),
    result("stable_sds_3d", "text", 0, clip_r=0.9, view_consistency=0.4, geometry_iou=0.5, chamfer=0.01),
    result("stable_sds_3d", "audio", 0, arcc=0.4),
    {"method": "my_ablation", "modality": "text", "clip_r": 0.1, "chamfer": 0.2},  # flat form
]


def test_rows_aggregate_by_method_and_modality():
    rows = table_rows(RESULTS)
    assert [r.name for r in rows] == ["StableSDS-3D", "XBind", "my_ablation"]  # Table I order first
    xbind = rows[1].cells
    # CLIP-R only from the text suite: the image result's clip_r = 0 must not count.
    assert xbind["clip_r"].n == 2 and xbind["clip_r"].mean == pytest.approx(0.7)
    assert xbind["clip_r"].std == pytest.approx(math.sqrt(0.02))  # sample std of (0.8, 0.6)
    assert xbind["clip_i"].n == 1 and xbind["clip_i"].std == 0.0
    assert xbind["geometry_iou"].n == 3 and xbind["geometry_iou"].mean == pytest.approx(0.8)
    assert "arcc" not in xbind  # absent is absent, never 0
    assert rows[0].cells["arcc"].mean == pytest.approx(0.4)
    assert rows[2].cells["chamfer"].mean == pytest.approx(0.2)


def test_markdown_bolds_the_best_per_column():
    md = render_markdown(table_rows(RESULTS), note=table_note(RESULTS))
    lines = md.splitlines()
    assert lines[0].startswith("| Method | CLIP-R ↑ | CLIP-I ↑ | ARCC ↑")
    assert "Chamfer ↓" in lines[0]
    stable, xbind, ablation = lines[2], lines[3], lines[4]
    assert "**0.900** ± 0.000 (n=1)" in stable  # best CLIP-R
    assert "**0.010**" in stable  # lowest Chamfer wins
    assert "**0.800** ± 0.100 (n=3)" in xbind  # best geometry IoU, mean of 0.8/0.7/0.9
    assert "**0.800** ± 0.141 (n=2)" in xbind  # best view consistency
    assert "0.700 ± 0.141 (n=2)" in xbind and "**0.700" not in xbind
    assert "–" in ablation  # no CLIP-I for the ablation
    assert lines[-1] == "Encoder: tiny judge; suite: asymmetric."
    assert md.count("**") == 2 * 6  # exactly one bold per column


def test_latex_is_booktabs_and_balanced():
    tex = render_latex(table_rows(RESULTS), note="Encoder: tiny_judge; suite: a & b.")
    assert tex.count("{") == tex.count("}")
    for rule in ("\\toprule", "\\midrule", "\\bottomrule"):
        assert tex.count(rule) == 1
    assert tex.index("\\toprule") < tex.index("\\midrule") < tex.index("\\bottomrule")
    assert tex.count("\\begin{") == tex.count("\\end{") == 2
    assert "\\begin{tabular}{lcccccc}" in tex
    assert "my\\_ablation &" in tex  # escaped
    assert "tiny\\_judge; suite: a \\& b." in tex
    assert "\\textbf{0.900} $\\pm$ 0.000$_{n=1}$" in tex
    body = [line for line in tex.splitlines() if line.endswith("\\\\")]
    assert len(body) == 4 and all(line.count("&") == 6 for line in body)


def test_write_tables(tmp_path):
    paths = write_tables(RESULTS[:3], tmp_path / "metrics")
    assert sorted(paths) == ["json", "md", "tex"]
    data = json.loads(paths["json"].read_text())
    assert data["rows"][0]["name"] == "XBind" and data["rows"][0]["cells"]["clip_r"]["n"] == 2
    assert paths["md"].read_text().startswith("| Method |")
    assert not list((tmp_path / "metrics").glob(".*tmp*"))


def test_result_without_method_is_an_input_error():
    with pytest.raises(InputError):
        table_rows([{"metrics": {"clip_r": 1.0}}])
