"""The pipeline report: the paper's claims judged by their stated rules, and the files it writes."""

from __future__ import annotations

import json

import pytest

from leap_core.config import load_profile
from leap_core.report import pipeline_report as report

REF = report.load_reference()


def metrics(exit_rate=1.0, by7=0.95, mean_layer=6.6, stsb_full=0.80, stsb_exited=0.79, sim6=0.95, beats=False):
    similarity = [0.2] * 5 + [sim6] + [0.97] * 5 + [1.0]
    sweep_point = {"layer_reduction": 12 / mean_layer, "stsb": stsb_exited}
    return {
        "stsb_full": stsb_full, "stsb_exited": stsb_exited, "n_pairs": 100,
        "stsb_full_ci": {"estimate": stsb_full, "low": stsb_full - 0.02, "high": stsb_full + 0.02},
        "stsb_exited_ci": {"estimate": stsb_exited, "low": stsb_exited - 0.02, "high": stsb_exited + 0.02},
        "exit_rate": exit_rate, "exit_by_layer_7": by7, "mean_exit_layer": mean_layer,
        "layer_reduction": 12 / mean_layer, "similarity_to_final": similarity,
        "cumulative_exit_rate": [0.0] * 5 + [0.4, by7] + [exit_rate] * 5, "nn10_per_layer": [0.5] * 5 + [0.85] * 7,
        "contraction": {"per_layer": [0.9] * 10 + [None, None], "median": 0.9},
        "sweep": {"threshold": [{**sweep_point, "theta": 0.95}],
                  "fixed": [{"depth": d, "layer_reduction": 12 / d, "stsb": 0.7 + d / 100} for d in range(1, 13)],
                  "patience": [], "pareto": [sweep_point], "early_exit_beats_truncation": beats},
    }


def arm(name, seed, group="main", **values):
    return {"arm": name, "seed": seed, "group": group, "status": "ok", "failed_step": None, "error": None,
            "metrics": metrics(**values), "model": None, "mlflow_run_id": None, "train_seconds": 10.0}


def paper_like_results(plus_exit_rate=0.9):
    results = [arm("baseline", s, exit_rate=0.0, by7=0.0, mean_layer=12.0, stsb_full=0.78, stsb_exited=0.78, sim6=0.3)
               for s in range(3)]
    results += [arm("leap", s, stsb_exited=0.77 + s / 1000) for s in range(3)]
    results += [arm(name, 0, "ablation", exit_rate=0.0, by7=0.0, mean_layer=12.0, sim6=0.3)
                for name in ("final_only", "plus_inter", "plus_contrast")]
    results += [arm("plus_exit", 0, "ablation", exit_rate=plus_exit_rate)]
    results += [arm(f"beta_{b}", 0, "sweep", exit_rate=0.9) for b in (0.1, 0.2, 0.4, 0.6, 0.8)]
    return results


def verdicts(results, **kwargs):
    return {c["claim"].split(":")[0].split(" (")[0]: c["verdict"]
            for c in report.claims(results, kwargs.get("analysis"), kwargs.get("latency"), REF, 6)}


def test_paper_like_numbers_replicate_the_training_claims():
    found = verdicts(paper_like_results())
    assert found["Layer-aligned distillation gives 0% exit"] == report.REPLICATES
    assert found["LEAP makes layers exit early"] == report.REPLICATES
    assert found["Early exit costs little STS-B"] == report.REPLICATES
    assert found["A model cut to a fixed depth matches or beats early exit"] == report.REPLICATES
    assert found["Only adding L_exit makes layers exit"] == report.REPLICATES
    assert found["Exit is robust to beta"] == report.REPLICATES
    # What was not measured is said so, never judged.
    assert found["Per-layer monitoring costs 22% of inference time"] == report.NOT_MEASURED
    assert found["Published sentence encoders are exit-incompatible"] == report.NOT_MEASURED


def test_verdicts_follow_our_numbers():
    results = paper_like_results(plus_exit_rate=0.3)
    results[0]["metrics"]["exit_rate"] = 0.45  # a baseline seed that exits
    for r in results:
        if r["arm"] == "leap":
            r["metrics"].update(stsb_exited=0.70, exit_by_layer_7=0.4, layer_reduction=1.3, exit_rate=0.9)
            r["metrics"]["sweep"]["early_exit_beats_truncation"] = True
    found = verdicts(results)
    assert found["Layer-aligned distillation gives 0% exit"] == report.PARTLY  # mean exit 0.15
    assert found["LEAP makes layers exit early"] == report.PARTLY
    assert found["Early exit costs little STS-B"] == report.DOES_NOT  # 0.08 below the baseline
    assert found["A model cut to a fixed depth matches or beats early exit"] == report.DOES_NOT
    assert found["Only adding L_exit makes layers exit"] == report.PARTLY


def test_latency_claims_read_the_benchmark():
    latency = {"overhead_monitored": 0.02, "speedup_bs1": 1.5, "speedup_bs1_vs_theoretical": 0.95,
               "layer_reduction": 1.6, "speedup_bs32_batch": 1.4, "speedup_bs32_batch_vs_theoretical": 0.88,
               "speedup_bs32_compact": 1.6}
    found = verdicts(paper_like_results(), latency=latency)
    assert found["Per-layer monitoring costs 22% of inference time"] == report.DOES_NOT
    assert found["Batch-1 speedup 1.61x, 80.6% of the layer reduction"] == report.REPLICATES
    assert found["Batched early exit loses most of its gain"] == report.PARTLY


def test_beir_claims_use_paired_query_differences():
    def scored(values):
        per_query = {f"q{i}": v for i, v in enumerate(values)}
        return {"modes": {"full": {"ndcg@10": sum(values) / len(values), "ndcg@10_per_query": per_query},
                          "compact": {"ndcg@10": sum(values) / len(values), "ndcg@10_per_query": per_query}}}

    analysis = {"beir": {"leap": {"nfcorpus": scored([0.2, 0.3, 0.4, 0.5])},
                         "baseline": {"nfcorpus": scored([0.4, 0.5, 0.6, 0.7])}}}
    found = verdicts(paper_like_results(), analysis=analysis)
    assert found["LEAP at full depth retrieves better than the baseline"] == report.DOES_NOT  # every query lower
    assert found["Early exit leaves NFCorpus retrieval flat"] == report.REPLICATES


def test_write_report_writes_every_file_and_names_failures(tmp_path):
    results = paper_like_results()
    results.append({"arm": "leap", "seed": 3, "group": "main", "status": "failed", "failed_step": "train",
                    "error": "builtins.RuntimeError: out of memory", "metrics": None, "model": None,
                    "mlflow_run_id": None, "train_seconds": None})
    steps = [{"step": "train", "task": "4", "seconds": 30.0, "peak_rss_mb": 900.0},
             {"step": "train", "task": "5", "seconds": 40.0, "peak_rss_mb": 950.0}]
    written = report.write_report(tmp_path, load_profile("cpu"), results,
                                  run={"pathspec": "LeapFlow/1", "mlflow_run_id": "abc", "started_at": 0.0,
                                       "report_at": 600.0, "steps": steps,
                                       "step_failures": {"latency": "builtins.OSError: no device"}})
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["run_minutes"] == 10.0 and saved["steps"] == [["train", 2, "70", "40", "950"]]
    assert [f["name"] for f in saved["failed"]] == ["leap-seed3", "latency"]
    markdown = (tmp_path / "report.md").read_text()
    assert markdown == written["markdown"]
    assert "- `leap-seed3` failed in `train`: builtins.RuntimeError: out of memory" in markdown
    assert "| leap | 3 | main | failed in train |" in markdown
    assert "5,000 training sentences" in markdown and "1,500,000 sentences" in markdown
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "contraction.png", "exit_distribution.png", "layer_similarity.png", "nn10_by_layer.png", "theta_pareto.png"]
    assert not list(tmp_path.rglob("*.tmp*"))  # atomic writes leave no temporary files


def test_retrofit_section_lists_each_model_beside_its_original(tmp_path):
    summary = {"depth": 6, "original_stsb": 0.8204, "stsb_full": 0.8231, "stsb_exited": 0.8069, "exit_rate": 0.4751,
               "mean_exit_layer": 4.79, "layer_reduction": 1.2525, "train_seconds": 834.2,
               "vs_truncated_original": {"truncated_depth": 5, "difference": 0.1412, "ci_low": 0.1201, "ci_high": 0.1633}}
    run = {"pathspec": "LeapFlow/1", "mlflow_run_id": "abc"}
    budgeted = {**summary, "at_quality_budget": {"max_drop": 0.01, "theta": 0.97, "exit_rate": 0.612,
                                                 "layer_reduction": 1.1832, "stsb_exited": 0.8123}}
    unmet = {**summary, "at_quality_budget": {"max_drop": 0.01, "theta": None},
             "exit_by_genre": {"main-captions": {"exit_rate": 1.0}, "main-forums": {"exit_rate": 0.187}}}
    report.write_report(tmp_path, load_profile("cpu"), paper_like_results(), run=run,
                        retrofit={"m/x": summary, "m/y": budgeted, "m/z": unmet})
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["retrofit"]["m/x"]["stsb_exited"] == 0.8069
    markdown = (tmp_path / "report.md").read_text()
    cells = "| 0.820 | 0.823 | 0.807 | 47.5% | 4.79 of 6 | 1.25x | +0.141 [+0.120, +0.163] vs depth 5 |"
    assert f"| `m/x` {cells} not measured | not measured | 834 |" in markdown
    assert f"| `m/y` {cells} <= 0.01 below: theta 0.97, 61% exit, 1.18x, exited 0.812 | not measured | 834 |" in markdown
    assert f"| `m/z` {cells} no theta within 0.01 on dev | captions 100%, forums 19% | 834 |" in markdown
    report.write_report(tmp_path / "none", load_profile("cpu"), paper_like_results(), run=run)
    assert "## Retrofit" not in (tmp_path / "none" / "report.md").read_text()


@pytest.mark.parametrize("values, expected", [([0.70, 0.72, 0.74], (0.72, 0.02)), ([0.5], (0.5, None))])
def test_seed_summaries_are_t_intervals(values, expected):
    results = [arm("leap", i, stsb_exited=v) for i, v in enumerate(values)]
    summary = report.seed_summaries(results, "leap")["stsb_exited"]
    assert summary["estimate"] == pytest.approx(expected[0])
    assert summary["std"] == (pytest.approx(expected[1]) if expected[1] else None)


def test_the_committed_cpu_report_is_rebuilt_byte_for_byte_from_what_it_records(tmp_path):
    """The report is a function of the run's recorded results: the committed report.md and report.json come back
    unchanged from report.json's own inputs (what `resume report` would redo)."""
    from pathlib import Path

    committed = Path(__file__).resolve().parents[1] / "reports" / "cpu"
    written = report.rebuild(committed / "report.json", load_profile("cpu"), tmp_path)
    assert written["markdown"] == (committed / "report.md").read_text(encoding="utf-8")
    rebuilt, recorded = (json.loads(p.read_text()) for p in (tmp_path / "report.json", committed / "report.json"))
    assert {k: v for k, v in rebuilt.items() if k != "figures"} == {k: v for k, v in recorded.items() if k != "figures"}


def test_every_claim_is_one_function_and_its_paper_numbers_come_from_the_reference():
    from leap_core.report.claims import CLAIMS, THRESHOLDS

    ref = report.load_reference()
    rows = report.claims([], None, None, ref, 6)
    assert len(rows) == len(CLAIMS) == 12 and all(row["verdict"] == report.NOT_MEASURED for row in rows)
    ref["exits"]["leap_exit_by_layer_7"] = 0.5  # an edited reference number shows in the claim's text
    assert "50.0% by layer 7" in report.claims([], None, None, ref, 6)[1]["claim"]
    assert {"monitoring", "speedup_bs1", "beir_flat"} <= set(THRESHOLDS)


def test_verify_report_names_runs_missing_from_the_store_in_one_line_each(tmp_path):
    """On another machine the committed report's runs are not in the local store: each is named, no traceback."""
    from pathlib import Path

    from leap_core.report.verify import verify_against_mlflow

    committed = Path(__file__).resolve().parents[1] / "reports" / "cpu" / "report.json"
    problems = verify_against_mlflow(committed, f"sqlite:///{tmp_path / 'empty.db'}")
    assert problems and all("is not in the tracking store sqlite:///" in line for line in problems)
