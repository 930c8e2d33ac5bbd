"""reports/int8.{json,md} (leap_core.bench.int8_quality, int8_report): every model's int8 drift and NDCG@10 on the fp32
index, the rule computed from the CIs, on a tiny BEIR set with tiny random models."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from leap_core.bench.int8_quality import INT8, run_int8_report, verdicts  # noqa: E402
from leap_core.report.int8_report import readme_rows, render_markdown, rule_lines  # noqa: E402

DOC_MODEL = "random-bert:layers=2,hidden=32,heads=2,seed=0"
TOPICS = ["vitamin D and bone health", "statins and breast cancer", "sugar and heart disease", "fish oil for the brain",
          "red meat and colon cancer", "green tea and weight", "soy and hormone levels", "fiber and gut bacteria"]


def _write_gz(path: Path, lines: list[str]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))


@pytest.fixture(scope="module")
def beir(tmp_path_factory) -> Path:
    """A tiny BEIR folder: 24 documents, 12 queries, all judged in qrels/test.tsv."""
    folder = tmp_path_factory.mktemp("tiny") / "tiny"
    folder.mkdir()
    _write_gz(folder / "corpus.jsonl.gz", [json.dumps({
        "_id": f"d{i}", "title": f"A study of {TOPICS[i % 8]} number {i}",
        "text": f"We measured {TOPICS[i % 8]} in {10 * i + 5} adults. The effect was small."}) for i in range(24)])
    _write_gz(folder / "queries.jsonl.gz", [json.dumps({"_id": f"q{i}", "text": f"does {TOPICS[i % 8]} matter {i}"})
                                            for i in range(12)])
    (folder / "qrels").mkdir()
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\td{i}\t1\nq{i}\td{i + 8}\t1\n" for i in range(12)))
    return folder


@pytest.fixture(scope="module")
def report(beir, tmp_path_factory):
    from leap_core.query_encoder import ShallowQueryEncoder, save_query_encoder

    work = tmp_path_factory.mktemp("int8")
    encoders = [save_query_encoder(ShallowQueryEncoder.from_original(DOC_MODEL, depth), work / f"tiny-depth{depth}",
                                   DOC_MODEL) for depth in (0, 1)]
    check = work / "dev.txt"
    check.write_text("\n".join(f"a dev sentence about {topic}, number {i}" for i, topic in enumerate(TOPICS * 3)))
    sts = [f"a test sentence on {topic} {i}" for i, topic in enumerate(TOPICS * 2)]
    return run_int8_report(DOC_MODEL, {"tiny": encoders}, {"tiny": str(beir)}, sts, work / "exports", work / "cache",
                           threads=1, n_resamples=200, check_texts=check)


def test_every_model_has_its_drift_ndcg_and_auto_choice(report):
    assert list(report["models"]) == ["original", "tiny-depth0", "tiny-depth1"]
    for label, entry in report["models"].items():
        for where in ("stsb-test", "tiny"):
            for name in INT8:
                summary = entry["cosine"][where][name]
                assert -1 <= summary["min"] <= summary["p01"] <= summary["mean"] <= 1 and summary["mean"] > 0.9
        rows = entry["retrieval"]["tiny"]["shared_index"]
        assert "vs_fp32" not in rows["fp32"] and all("vs_fp32" in rows[name] for name in INT8)
        assert ("int8_index" in entry["retrieval"]["tiny"]) is (label == "original")  # both sides: the original only
        candidates = entry["auto"]["candidates"]
        assert entry["auto"]["chosen"] == max(candidates, key=lambda name: candidates[name]["mean"])
    original = report["models"]["original"]["retrieval"]["tiny"]["shared_index"]["fp32"]
    assert abs(original["ndcg10_diff"]) < 1e-3 and original["agreement10"] > 0.99  # ORT fp32 = the index's model


def _model(lows: dict[str, float]) -> dict:
    change = {s: {"ndcg10_rel": low / 2, "ndcg10_rel_ci": [low, 0.01]} for s, low in lows.items()}
    return {"sets": list(lows), "retrieval": {s: {"shared_index": {name: {"vs_fp32": change[s]} for name in INT8}}
                                              for s in lows}}


def test_a_scheme_shares_the_fp32_index_only_when_every_sets_ci_clears_the_floor():
    found = verdicts({"a": _model({"x": -0.02, "y": -0.029}), "b": _model({"x": -0.01, "y": -0.031})}, 0.03)
    assert all(found["a"][name]["shares_fp32_index"] for name in INT8)
    assert not any(found["b"][name]["shares_fp32_index"] for name in INT8)
    assert found["b"]["int8 per-tensor"]["worst_rel_ci_low"] == pytest.approx(-0.031)


def test_the_markdown_states_the_rule_from_the_numbers(report):
    markdown = render_markdown(report)
    rule = rule_lines(report)
    assert all(line in markdown for line in rule) and all(line in markdown for line in readme_rows(report))
    for name, scheme in INT8.items():
        sharing = [label for label, found in report["verdicts"].items() if found[name]["shares_fp32_index"]]
        said = next(line for line in rule if line.startswith(f"- **{scheme}**"))
        assert (f"clears the floor for {', '.join(sharing)}" in said) if sharing else "clears it for no model" in said
    assert len(readme_rows(report)) == 2 + len(report["models"]) * len(INT8)
    assert json.loads(json.dumps(report)) == report and np.isfinite(report["floor"])  # plain, finite JSON
