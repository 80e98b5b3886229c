"""The reviewer-facing parts of the report: CIs and paired tests computed from the runs' samples, the budget-matched
view, Pareto frontiers, the published references, and the README blocks regenerated from records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tango import report as R
from tango.report import stats as S

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]
MODEL, TASK = "tiny_llava_ov_trained", "synthetic_pruning"


def write_run(root: Path, method: str, budget: float, seed: int, scores, *, question_set: str, retention=None,
              **extra) -> None:
    """A run folder as the runner writes it: record.json, and samples.jsonl with one 0/1 score per document."""
    key = f"{MODEL}__{method}__b{budget:g}__{TASK}__s{seed}"
    d = root / "runs" / key
    d.mkdir(parents=True)
    scores = np.asarray(scores, float)
    record = {"run_key": key, "status": "ok", "model": MODEL, "method": method, "budget": budget, "task": TASK,
              "seed": seed, "num_frames": 16, "date": "2026-12-06T00:00:00+00:00", "metric": "acc",
              "accuracy": 100 * float(scores.mean()), "question_set": question_set, "experiment": None, "variant": "",
              "retention": 1.0 if method == "none" else (budget if retention is None else retention), **extra}
    (d / "record.json").write_text(json.dumps(record))
    (d / "samples.jsonl").write_text("".join(json.dumps({"doc_id": i, "acc": s}) + "\n" for i, s in enumerate(scores)))


@pytest.fixture
def paired(tmp_path):
    """Two seeds, each on its own generated question set of 60 documents; Tango wrong on 9 + 6 of them."""
    rng = np.random.default_rng(0)
    full, tango = {}, {}
    for seed in (0, 1):
        full[seed] = (rng.random(60) < 0.9).astype(float)
        tango[seed] = full[seed].copy()
        right = np.flatnonzero(full[seed] == 1)
        tango[seed][right[: 9 - 3 * seed]] = 0  # 9 and 6 answers lost
        tango[seed][np.flatnonzero(full[seed] == 0)[:1]] = 1  # and one gained per seed
        write_run(tmp_path, "none", 1.0, seed, full[seed], question_set=f"q@{seed}")
        write_run(tmp_path, "tango", 0.1, seed, tango[seed], question_set=f"q@{seed}", retention=0.08)
    return tmp_path, full, tango


def test_ci_cells_are_the_bootstrap_of_the_samples(paired):
    root, full, tango = paired
    tables, _ = R.build_tables(R.load_runs([root]), ci=True, n_boot=2000)
    row = R.tables.Table.to_frame(tables[TASK])
    cell = row[row["Method"] == "Tango"]["Accuracy"].iloc[0]
    units = np.array([f"q@{seed}#{i}" for seed in (0, 1) for i in range(60)])
    order = np.argsort(units, kind="stable")  # questions in the order the report groups them (by name)
    scores = np.concatenate([tango[0], tango[1]])[order]
    iv = S.bootstrap_mean(scores, strata=np.repeat(["q@0", "q@1"], 60)[order], n_boot=2000, seed=0)
    assert cell == f"{iv.estimate:.1f} [{iv.low:.1f}, {iv.high:.1f}]"
    assert "paired-bootstrap CI" in tables[TASK].to_markdown()
    plain, _ = R.build_tables(R.load_runs([root]), ci=False)  # the switch: mean ± std over seeds instead
    assert "±" in R.tables.Table.to_frame(plain[TASK])["Accuracy"].iloc[1]


def test_significance_rows_are_exact_mcnemar_on_the_same_questions(paired):
    root, full, tango = paired
    tables, _ = R.build_tables(R.load_runs([root]), n_boot=2000)
    sig = tables["significance"].data
    (row,) = sig[(sig["a"] == "tango") & (sig["b"] == "none")].to_dict("records")
    a, b = np.concatenate([tango[0], tango[1]]), np.concatenate([full[0], full[1]])
    assert row["n"] == 120 and row["test"] == "mcnemar_exact"  # two question sets of 60: 120 questions
    assert row["p"] == pytest.approx(S.mcnemar_exact(a, b))
    assert row["diff"] == pytest.approx(100 * (a.mean() - b.mean())) and row["diff"] == pytest.approx(-100 * 13 / 120)
    assert row["low"] < row["diff"] < row["high"] < 0  # 15 lost vs 2 gained: the CI excludes 0
    md = tables["significance"].to_markdown()
    assert "Tango − Full tokens" in md and "McNemar" in md


def test_seeds_over_the_same_questions_are_averaged_per_question(tmp_path):
    a0, a1 = np.ones(40), np.r_[np.zeros(10), np.ones(30)]
    for seed, s in ((0, a0), (1, a1)):
        write_run(tmp_path, "none", 1.0, seed, np.ones(40), question_set="videomme")
        write_run(tmp_path, "tango", 0.1, seed, s, question_set="videomme")
    tables, _ = R.build_tables(R.load_runs([tmp_path]), n_boot=500)
    (row,) = tables["significance"].data.to_dict("records")
    assert row["n"] == 40 and row["test"] == "sign_flip"  # scores 0.5 on 10 questions: seed means
    assert row["diff"] == pytest.approx(-100 * 5 / 40)


def test_budget_matched_interpolates_along_realised_retention_and_never_extrapolates(tmp_path):
    for method, points in (("visionzip", ((0.1, 0.125, 0.6), (0.2, 0.25, 0.9))),
                           ("tango", ((0.1, 0.08, 0.7), (0.2, 0.15, 0.8)))):
        for budget, realised, acc in points:
            write_run(tmp_path, method, budget, 0, np.r_[np.ones(int(100 * acc)), np.zeros(100 - int(100 * acc))],
                      question_set="q", retention=realised)
    write_run(tmp_path, "none", 1.0, 0, np.ones(100), question_set="q")
    tables, _ = R.build_tables(R.load_runs([tmp_path]), significance=False)
    bm = tables["budget_matched"].data.set_index(["retention", "method"])["accuracy"]
    assert bm[(0.1, "tango")] == pytest.approx(70 + (0.1 - 0.08) / (0.15 - 0.08) * 10)
    assert np.isnan(bm[(0.1, "visionzip")])  # VisionZip realised 12.5 % at its lowest budget: no extrapolation
    assert bm[(0.2, "visionzip")] == pytest.approx(60 + (0.2 - 0.125) / (0.25 - 0.125) * 30)
    assert np.isnan(bm[(0.2, "tango")])  # Tango never reached 20 %
    assert "interpolated at equal realised retention" in tables["budget_matched"].title


def test_pareto_front_keeps_only_undominated_points():
    x = np.array([0.3, 0.1, 0.2, 0.25, 0.5])
    y = np.array([80.0, 70.0, 65.0, 85.0, 84.0])
    assert R.pareto_front(x, y).tolist() == [1, 3]  # 0.2/65 and 0.3/80 and 0.5/84 are dominated


def test_plots_of_realised_retention_and_cost(paired, tmp_path):
    root, _, _ = paired
    tables, data = R.build_tables(R.load_runs([root]), significance=False)
    data["ok"]["ttft_ms"] = np.where(data["ok"]["method"] == "none", 30.0, 20.0)
    data["ok"]["tflops_llm_paper"] = np.where(data["ok"]["method"] == "none", 1.0, 0.1)
    out = R.write_outputs(tables, data, tmp_path / "out")
    for name in ("accuracy_vs_retention.png", "accuracy_vs_cost.png"):
        p = tmp_path / "out" / name
        assert p in out and p.stat().st_size > 10_000


def test_published_references_resolve_through_the_registries():
    paths = sorted((ROOT / "results" / "tables" / "references").glob("*.csv"))
    assert [p.name for p in paths] == ["holitom_llava_ov_7b.csv", "vidcom2_qwen3_vl_8b.csv"]
    for p in paths:
        assert p.read_text().startswith("# source: ")
    ref, label = R.read_references(paths)
    assert "HoliTom" in label and "VidCom2" in label
    assert R.canonical_method("VisionZip") == "visionzip" and R.canonical_method("holitom_outer") == "holitom_outer"
    flops = ref[ref["metric"] == "prefill_tflops_fastv_convention"]
    assert flops["value"].tolist() == [40.8]
    t = R.compare_table(R.load_runs([]).iloc[:0], ref, label)
    src = dict(zip(zip(t.data["method"], t.data["model"]), (r[-1].md for r in t.rows)))
    assert "not in the harness" in src[("prunevid", "llava_ov")]
    assert "not in the harness" not in src[("visionzip", "llava_ov")]
    assert "not in the harness" not in src[("visionzip", "qwen3_vl")]  # the Qwen3-VL family resolves


def test_readme_blocks_are_generated_from_the_records():
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "update_readme.py"), "--check"], capture_output=True,
                       text=True, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr


def test_a_full_token_run_prints_the_published_full_token_numbers_of_its_checkpoint_and_benchmark(capsys):
    from tango.config import compose
    from tango.report.compare import full_token_references
    from tango.runner import _published_line

    (ov,) = full_token_references("llava_ov", "videomme")
    assert ov[0] == 58.6 and "HoliTom" in ov[1]
    assert [v for v, _ in full_token_references("qwen3_vl", "mlvu")] == [63.5]
    assert full_token_references("llava_video", "videomme") == []          # none published in the shipped files
    assert full_token_references("llava_ov", "videomme_local") == []       # a local stand-in is not the benchmark
    cfg = compose(["model=llava_ov", "task=videomme", "method=none"])
    line = _published_line({"method": "none"}, cfg)
    assert line.startswith("  published       58.6 full tokens (") and "HoliTom" in line
    assert _published_line({"method": "tango"}, cfg) == ""
