"""Asymmetric operating points (leap_core.query_encoder.points): query depth x precision against the original's index,
chosen under the same floors as the symmetric points, and how `leap calibrate` / `leap pareto` carry them."""

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from leap_core.model_folder import model_fingerprint
from leap_core.models import resolve_model
from leap_core.query_encoder import (ShallowQueryEncoder, check_pair, load_query_encoder, points as qp,
                                     save_query_encoder)
from leap_core.query_encoder.points import asymmetric_points, asymmetric_section, choose_asymmetric
from leap_core.report.asymmetric_report import asymmetric_markdown

pytest.importorskip("onnxruntime")

DOC_MODEL = "random-bert:layers=2,hidden=32,heads=2,seed=0"
OTHER_MODEL = "random-bert:layers=2,hidden=32,heads=2,seed=1"
TOPICS = ["vitamin D and bone health", "statins and breast cancer", "sugar and heart disease", "fish oil for the brain",
          "red meat and colon cancer", "green tea and weight", "soy and hormone levels", "fiber and gut bacteria"]
NAMES = ["original · fp32", "original · int8", "qe-depth1 · fp32", "qe-depth1 · int8", "qe-depth2 · fp32",
         "qe-depth2 · int8"]


def _write_gz(path: Path, lines: list[str]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))


@pytest.fixture(scope="module")
def beir(tmp_path_factory) -> Path:
    """A tiny BEIR folder, every one of its 16 queries judged: 9 fall in the dev half (pareto_points.query_half), 7 in test."""
    folder = tmp_path_factory.mktemp("sets") / "tiny"  # its name names the sets: tiny-dev, tiny-test
    folder.mkdir()
    docs = [json.dumps({"_id": f"d{i}", "title": f"A study of {TOPICS[i % 8]} number {i}",
                        "text": f"We measured {TOPICS[i % 8]} in {10 * i + 5} adults. The effect was small but real."})
            for i in range(24)]
    _write_gz(folder / "corpus.jsonl.gz", docs)
    _write_gz(folder / "queries.jsonl.gz",
              [json.dumps({"_id": f"q{i}", "text": f"does {TOPICS[i % 8]} matter {i}"}) for i in range(16)])
    (folder / "qrels").mkdir()
    judged = "".join(f"q{i}\td{i}\t{1 + i % 2}\nq{i}\td{i + 8}\t1\n" for i in range(16))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + judged)
    return folder


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> list[Path]:
    """Depth 1 (a cut) and depth 2 (all the original's layers, identity head: the original's own query embedding)."""
    root = tmp_path_factory.mktemp("encoders")
    return [save_query_encoder(ShallowQueryEncoder.from_original(DOC_MODEL, depth), root / f"qe-depth{depth}",
                               DOC_MODEL) for depth in (1, 2)]


@pytest.fixture(scope="module")
def points(beir, encoders, tmp_path_factory):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return asymmetric_points(DOC_MODEL, encoders, [beir], cache_dir=tmp_path_factory.mktemp("cache"),
                                 n_resamples=50, threads=1)
    finally:
        torch.set_num_threads(threads)


def test_every_path_is_judged_on_both_halves_against_the_originals_documents(points, encoders, beir):
    assert [p["name"] for p in points] == NAMES
    assert [p["depth"] for p in points] == [2, 2, 1, 1, 2, 2]  # the original's 2 layers; the encoders' recorded depth
    reference = points[0]
    assert {name: (row["half"], row["n_queries"]) for name, row in reference["sets"].items()} == {
        "tiny-dev": ("dev", 9), "tiny-test": ("test", 7)}
    assert all(row["ndcg10_rel"] == 0.0 for row in reference["sets"].values())
    assert all(0 <= row["quality"] <= 1 for p in points for row in p["sets"].values())
    # Depth 2 with an identity head IS the original's query embedding: the same NDCG@10 on both halves.
    for name in ("tiny-dev", "tiny-test"):
        assert points[4]["sets"][name]["quality"] == pytest.approx(reference["sets"][name]["quality"], abs=1e-6)
    # Depth 1's queries (torch, not ORT) against the ORIGINAL's document embeddings give the point's numbers.
    sets = qp.half_sets([beir])
    original = qp.original_embedder(DOC_MODEL, None)
    shallow = load_query_encoder(encoders[0], DOC_MODEL)
    for s in sets:
        (docs, doc_texts), (queries, texts) = qp._docs(s), qp._queries(s)
        items = s.per_item({docs: original.layers(docs, doc_texts)[-1], queries: shallow.encode(texts)})
        assert points[2]["sets"][s.name]["quality"] == pytest.approx(float(np.mean(items)), abs=1e-6)
    assert points[2]["query_fingerprint"] == model_fingerprint(encoders[0])


def test_the_chosen_point_is_the_cheapest_within_the_floor_on_every_dev_half(points):
    reference = points[0]
    for floor in (0.0, 0.05, 0.2, 1.0):
        fits = [p for p in points[1:] if all(p["sets"][n]["quality"] >= reference["sets"][n]["quality"] * (1 - floor)
                                             for n in reference["sets"] if n.endswith("-dev"))]
        expected = min(fits, key=lambda p: (p["depth"], qp.PRECISION_COST[p["precision"]], p["name"]), default=None)
        assert choose_asymmetric(points, floor) is expected
    assert choose_asymmetric(points, 1.0)["name"] == "qe-depth1 · int8"  # anything goes: fewest layers, then int8


def _point(name, kind, depth, precision, **quality):
    sets = {key.replace("_", "-"): {"half": key.rsplit("_", 1)[1], "quality": value} for key, value in quality.items()}
    return {"name": name, "kind": kind, "depth": depth, "precision": precision, "sets": sets}


def test_choice_reads_every_dev_half_and_never_a_test_half():
    reference = _point("original · fp32", "original", 6, "fp32", a_dev=0.50, a_test=0.50, b_dev=0.40, b_test=0.40)
    points = [reference,
              _point("d1 · int8", "query_encoder", 1, "int8", a_dev=0.50, a_test=0.50, b_dev=0.30, b_test=0.40),
              _point("d2 · fp32", "query_encoder", 2, "fp32", a_dev=0.49, a_test=0.10, b_dev=0.395, b_test=0.10),
              _point("d2 · int8", "query_encoder", 2, "int8", a_dev=0.48, a_test=0.50, b_dev=0.39, b_test=0.40),
              _point("original · int8", "original", 6, "int8", a_dev=0.499, a_test=0.5, b_dev=0.399, b_test=0.4)]
    assert choose_asymmetric(points, 0.05)["name"] == "d2 · int8"  # d1 loses 25% on b's dev half: out
    assert choose_asymmetric(points, 0.03)["name"] == "d2 · fp32"  # its test halves collapse: not read
    assert choose_asymmetric(points, 0.003)["name"] == "original · int8"
    assert choose_asymmetric(points, 0.3)["name"] == "d1 · int8"
    assert choose_asymmetric(points, 0.001) is None  # no path but the reference itself: keep the original's queries
    with pytest.raises(ValueError, match="needs max_ndcg_drop"):
        choose_asymmetric(points, None)
    with pytest.raises(ValueError, match="one original fp32 point"):
        choose_asymmetric(points[1:], 0.05)


def test_the_section_says_what_to_serve_and_when_nothing_qualifies(points):
    chosen = choose_asymmetric(points, 1.0)
    section = asymmetric_section(DOC_MODEL, resolve_model(DOC_MODEL), points, chosen, 1.0)
    assert section["floor"]["on"] == ["tiny-dev"] and section["chosen"]["name"] == "qe-depth1 · int8"
    serve = section["serve"]
    assert serve["queries"]["query_model"] == chosen["query_model"] and serve["queries"]["precision"] == "int8"
    assert serve["documents"] == {**serve["documents"], "model": DOC_MODEL, "mode": "full",
                                  "fingerprint": model_fingerprint(resolve_model(DOC_MODEL))}
    assert serve["ship"] == [f"leap export {chosen['query_model']} --out ONNX_FOLDER --int8"]
    assert all("_items" not in p and isinstance(p["within_floor"], bool) for p in section["points"])
    json.dumps(section, allow_nan=False)  # finite: it may go into leap_exit.json's calibration
    table = asymmetric_markdown(section)
    assert "| qe-depth1 · int8 | 1 | int8 |" in table and "**Chosen:** qe-depth1 · int8" in table
    empty = asymmetric_section(DOC_MODEL, resolve_model(DOC_MODEL), points, None, 1.0)
    assert empty["chosen"] is None and empty["serve"]["queries"] is None
    assert "**Chosen:** none." in asymmetric_markdown(empty)


def test_an_encoder_for_another_document_model_is_refused_before_any_work(beir, encoders, tmp_path, monkeypatch):
    other = save_query_encoder(ShallowQueryEncoder.from_original(OTHER_MODEL, 1), tmp_path / "other", OTHER_MODEL)
    monkeypatch.setattr(qp, "original_embedder", lambda *a, **k: pytest.fail("encoded before checking the pairs"))
    with pytest.raises(ValueError, match="trained for the document model"):
        asymmetric_points(DOC_MODEL, [encoders[0], other], [beir])
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        asymmetric_points(DOC_MODEL, encoders, [beir], precisions=("fp16",))


def test_the_commands_refuse_a_wrong_pairing_before_their_replay(encoders, tmp_path, monkeypatch, capsys):
    from leap_core.cli import main
    from leap_core.evaluation import pareto

    other = save_query_encoder(ShallowQueryEncoder.from_original(OTHER_MODEL, 1), tmp_path / "other", OTHER_MODEL)
    monkeypatch.setattr(pareto, "depth_model", lambda *a, **k: pytest.fail("replayed before checking the pairs"))
    assert main(["pareto", DOC_MODEL, "--profile", "smoke", "--name", "x", "--out-dir", str(tmp_path / "out"),
                 "--query-encoders", str(encoders[0]), str(other)]) == 2
    assert "trained for the document model" in capsys.readouterr().err
    assert main(["calibrate", DOC_MODEL, "--profile", "smoke", "--max-ndcg-drop", "0.03",
                 "--query-encoders", str(other)]) == 2
    assert "trained for the document model" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_leap_calibrate_and_pareto_gain_the_asymmetric_points(beir, encoders, tmp_path, data_dir, capsys):
    from leap_core.cli import main
    from leap_core.model_folder import read_exit_settings

    model = shutil.copytree(resolve_model(DOC_MODEL), tmp_path / "doc")  # --save writes here, not the shared cache
    common = ["--profile", "smoke", "--data-dir", str(data_dir), "--set", f"output_dir={tmp_path / 'runs'}",
              "--set", f"evaluation.beir=[{beir}]", "--max-sts-drop", "0.01", "--max-ndcg-drop", "0.5"]
    assert main(["calibrate", str(model), *common, "--out", str(tmp_path / "plain.json")]) == 0
    assert main(["calibrate", str(model), *common, "--query-encoders", *map(str, encoders), "--save",
                 "--out", str(tmp_path / "cal.json")]) == 0
    plain, result = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("plain", "cal"))
    assert result["policy"] == plain["policy"]  # an asymmetric point never moves the symmetric policy
    section = result["asymmetric"]
    assert set(section) >= {"points", "chosen", "floor", "serve"} and section["floor"]["max_ndcg_drop"] == 0.5
    saved = read_exit_settings(model)
    assert saved["calibration"]["query_route"]["queries"]["name"] == section["serve"]["queries"]["name"]
    assert saved["calibration"]["query_route"]["documents"]["mode"] == "full"
    # original/original on a dev half is the symmetric replay's full-depth point on it: one scorer, one set
    assert section["sets"]["tiny-dev"]["original_ndcg10"] == pytest.approx(result["dev_full"]["tiny-dev"]["quality"])
    check_pair(encoders[0], str(model))  # the record lives in leap_exit.json: the weights hash did not move

    out = tmp_path / "pareto"
    assert main(["pareto", str(model), *common, "--name", "tiny", "--out-dir", str(out), "--no-timing",
                 "--query-encoders", str(encoders[0])]) == 0
    report = json.loads((out / "tiny.json").read_text())
    assert [p["name"] for p in report["asymmetric"]["points"]] == NAMES[:4]
    assert "## Asymmetric points" in (out / "tiny.md").read_text()
    assert "queries: " in capsys.readouterr().out

    assert main(["calibrate", str(model), "--profile", "smoke", "--data-dir", str(data_dir),
                 "--query-encoders", str(encoders[0])]) == 2  # no --max-ndcg-drop: nothing to choose under
    assert "needs --max-ndcg-drop" in capsys.readouterr().err


def test_leap_package_query_encoder_writes_a_router_package(encoders, tmp_path):
    from leap_core.cli import main
    from leap_core.query_encoder.package import is_router_package

    assert main(["package-query-encoder", str(encoders[0]), "--out", str(tmp_path / "pkg")]) == 0
    assert is_router_package(tmp_path / "pkg")
    assert main(["package-query-encoder", str(encoders[0]), "--out", str(tmp_path / "bad"),
                 "--document-model", OTHER_MODEL]) == 2
