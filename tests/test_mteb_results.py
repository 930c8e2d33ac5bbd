"""`leap mteb` runs STSBenchmark, SciFact and NFCorpus offline from the data folder and writes MTEB's own results
folder, with the model's metadata, that MTEB's result loader reads back."""

import json

import mteb
import pytest

from leap_core.cli import main
from leap_core.evaluation.mteb_run import local_task, run_mteb
from leap_core.models import load_model
from leap_core.serve.st_module import save_exit_folder

TINY = "random-bert:layers=4,hidden=64,heads=2,seed=1"
DOCS = {"d1": "Aspirin lowers the risk of a heart attack in adults.", "d2": "Vitamin D deficiency leads to bone loss.",
        "d3": "Smoking causes lung cancer.", "d4": "Exercise improves cardiovascular health.",
        "d5": "Sleep deprivation impairs memory."}
QUERIES = {"q1": "aspirin and heart attacks", "q2": "vitamin D and bones", "q3": "does smoking cause cancer"}


def _beir(folder, docs, queries) -> None:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n"
                                                 for i, t in docs.items()))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in queries.items()))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\td{n}\t1\n" for n, q in enumerate(queries, start=1)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, data_dir):
    """A student folder and a data folder holding 40 STS-B test pairs and two tiny BEIR sets under their names."""
    root = tmp_path_factory.mktemp("mteb")
    model, tokenizer = load_model(TINY)
    folder = save_exit_folder(model, tokenizer, root / "student", 64, {"theta": 0.9, "k": 1, "l_min": 2})
    data = root / "data"
    (data / "stsb").mkdir(parents=True)
    (data / "stsb" / "test.tsv").write_text("".join((data_dir / "stsb" / "test.tsv").open().readlines()[:41]))
    _beir(data / "beir" / "scifact", DOCS, QUERIES)
    _beir(data / "beir" / "nfcorpus", DOCS, dict(list(QUERIES.items())[:2]))
    return folder, data, root


def test_local_tasks_run_offline_and_write_mtebs_results_folder(tiny):
    folder, data, root = tiny
    results_dir = root / "results"
    result = run_mteb(folder, ["STSBenchmark", "SciFact", "NFCorpus"], data, results_dir=results_dir)
    assert result["mteb_name"] == "leap/student"
    assert {name: task["data"] for name, task in result["tasks"].items()} == {
        "STSBenchmark": "local", "SciFact": "local", "NFCorpus": "local"}
    assert result["tasks"]["SciFact"]["main_metric"] == "ndcg_at_10"
    # Texts MTEB encoded for SciFact: its 5 documents and 3 queries, each with an exit layer.
    assert result["tasks"]["SciFact"]["exit"]["n_texts"] == len(DOCS) + len(QUERIES)
    # MTEB's own loader reads the folder back: every task, the same main scores, the model's metadata.
    loaded = mteb.ResultCache(results_dir).load_results(models=["leap/student"], include_remote=False)
    (model_result,) = loaded.model_results
    scores = {task.task_name: task.get_score() for task in model_result.task_results}
    assert scores == pytest.approx({name: task["main_score"] for name, task in result["tasks"].items()})
    (meta_file,) = results_dir.glob("results/leap__student/*/model_meta.json")
    meta = json.loads(meta_file.read_text())
    assert meta["name"] == "leap/student" and meta["revision"] == meta_file.parent.name
    assert meta["embed_dim"] == 64 and meta["languages"] == ["eng-Latn"] and meta["n_parameters"] > 0


def test_a_task_without_a_local_copy_points_to_the_hub_flag(tiny):
    _, data, _ = tiny
    with pytest.raises(ValueError, match=r"no local copy .*; pass --hub to load it from the hub") as raised:
        local_task("ArguAna", data)
    assert "--local" not in str(raised.value)


def test_leap_mteb_writes_the_results_folder_it_names(tiny, capsys):
    folder, data, root = tiny
    results_dir = root / "cli-results"
    assert main(["mteb", str(folder), "--tasks", "SciFact", "--profile", "smoke", "--data-dir", str(data),
                 "--results", str(results_dir)]) == 0
    shown = capsys.readouterr().out
    assert f"MTEB results folder (mteb.ResultCache layout, as leap/student): {results_dir}" in shown
    assert list(results_dir.glob("results/leap__student/*/SciFact.json"))
