"""Data readers: real STS-B / NLI sentences / BEIR files in shared/data, and bad files built in tmp_path."""

from __future__ import annotations

import gzip
import json
import random
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from leap_core.data import (
    DataError,
    StsPairs,
    extract_sentences,
    load_beir,
    load_corpus,
    read_sentences,
    read_sentences_parquet,
    read_sts,
    read_tags,
    sentence_key,
    sts_sentences,
    write_sentences_parquet,
)
from leap_core.data.corpus import equal_quotas


@pytest.fixture(scope="module")
def data_dir() -> Path:
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"real data not found at {path}")
    return path


@pytest.fixture(scope="module")
def beir_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


# --- STS ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("split", "count"), [("test", 1379), ("dev", 1500), ("train", 5749)])
def test_real_stsb_counts(data_dir, split, count):
    pairs = read_sts(data_dir / "stsb" / f"{split}.tsv")
    assert len(pairs) == len(pairs.sentences1) == len(pairs.sentences2) == count
    assert all(0.0 <= s <= 5.0 for s in pairs.scores)


def test_real_stsb_first_pair_and_raw_layout_agree(data_dir):
    tsv = read_sts(data_dir / "stsb" / "test.tsv")
    assert (tsv.scores[0], tsv.sentences1[0], tsv.sentences2[0]) == (
        2.5,
        "A girl is styling her hair.",
        "A girl is brushing her hair.",
    )
    raw = read_sts(data_dir / "stsb" / "raw" / "sts-test.csv.gz")
    assert (raw.sentences1, raw.sentences2, raw.scores) == (tsv.sentences1, tsv.sentences2, tsv.scores)
    assert Counter(raw.genres) == {"main-captions": 625, "main-news": 500, "main-forums": 254}


def test_real_stsb_quotes_survive(data_dir):
    pairs = read_sts(data_dir / "stsb" / "test.tsv")
    # file line 409 = pair 408; line 650 has an unbalanced quote that csv quoting would run on from
    assert pairs.sentences1[407] == 'A young boy jumping into a pool that says "no diving".'
    assert pairs.sentences2[648] == 'I always go by the rule "When in doubt, throw it out!'
    assert pairs.scores[648] == 4.0


def test_read_sts_tsv_and_raw_small(tmp_path):
    tsv = tmp_path / "a.tsv"
    tsv.write_text('score\tsentence1\tsentence2\n1.5\tHe said "hi.\t She left. \n\n4\tx y\tz\n')
    pairs = read_sts(tsv)
    assert pairs.sentences1 == ['He said "hi.', "x y"]
    assert pairs.sentences2 == ["She left.", "z"]
    assert pairs.scores == [1.5, 4.0]

    raw = tmp_path / "raw.csv.gz"
    with gzip.open(raw, "wt", encoding="utf-8") as f:
        f.write('g\tf\t2012\t0001\t1.5\tHe said "hi.\tShe left.\tsrc1\tsrc2\n')
        f.write("h\tf\t2012\t0002\t4.000\tx y\tz\n")
    read = read_sts(raw)
    assert read.genres == ["g", "h"] and pairs.genres is None  # only the raw layout names a genre
    assert (read.sentences1, read.sentences2, read.scores) == (pairs.sentences1, pairs.sentences2, pairs.scores)


def test_unique_sentences_first_seen_order():
    pairs = StsPairs(["a", "b", "c"], ["b", "a", "d"], [1.0, 2.0, 3.0])
    assert pairs.unique_sentences() == ["a", "b", "c", "d"]


def test_sts_sentences_of_several_files(tmp_path):
    (tmp_path / "one.tsv").write_text("score\tsentence1\tsentence2\n1\ta\tb\n")
    (tmp_path / "two.tsv").write_text("score\tsentence1\tsentence2\n2\tb\tc\n")
    assert sts_sentences(tmp_path, ["one.tsv", "two.tsv"]) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("score\tsentence1\tsentence2\n1\ta\tb\n2\ta\n", "line 3: expected 3 tab-separated fields, got 2"),
        ("score\tsentence1\tsentence2\n1\ta\tb\nhigh\ta\tb\n", "line 3: field 'score' is not a number"),
        ("score\tsentence1\tsentence2\nnan\ta\tb\n", "line 2: field 'score' is not a number"),
        ("score\tsentence1\tsentence2\n1\ta\t  \n", "line 2: field 'sentence2' is empty"),
        ("1\ta\tb\n", "line 1: expected the header"),
        (
            "g\tf\t2012\t1\t2.0\ta\tb\ng\tf\t2012\t2\t3.0\ta\n",
            "line 2: expected 7+ tab-separated fields, got 6",
        ),
        ("score\tsentence1\tsentence2\n", "no sentence pair"),
        ("", "no sentence pair"),
    ],
)
def test_read_sts_errors_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.tsv"
    path.write_text(content)
    with pytest.raises(DataError, match="bad.tsv") as info:
        read_sts(path)
    assert message in str(info.value)


def test_read_sts_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.tsv: file not found"):
        read_sts(tmp_path / "nope.tsv")


# --- corpus ------------------------------------------------------------------------------------


def test_real_corpus_first_lines_and_count(data_dir):
    with gzip.open(data_dir / "nli_sentences" / "sentences.txt.gz", "rt", encoding="utf-8") as f:
        first = [next(f).rstrip("\n") for _ in range(3)]
    sentences = load_corpus("nli_sentences", data_dir)
    assert sentences[:3] == first
    assert sentences[0] == "A man and a woman walk with their arms around each other near many columns."
    assert len(sentences) == 271_833


def test_read_sentences_plain_skips_blank_lines(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("  First one.\n\n   \nSecond one.\r\n")
    assert read_sentences(path) == ["First one.", "Second one."]
    # a folder spec finds sentences.txt; a relative spec is relative to data_dir
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "sentences.txt").write_text("Third one.\n")
    assert load_corpus("folder", tmp_path) == ["Third one."]
    assert load_corpus(str(path), "/nonexistent") == ["First one.", "Second one."]


def test_read_sentences_bad_utf8_names_line(tmp_path):
    path = tmp_path / "s.txt.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"fine\nalso fine\nbad \xff byte\n")
    with pytest.raises(DataError, match=r"s\.txt\.gz, line 3: not valid UTF-8"):
        read_sentences(path)


def test_read_sentences_errors(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_sentences(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(DataError, match=r"empty\.txt: no sentence"):
        read_sentences(tmp_path / "empty.txt")
    (tmp_path / "dir").mkdir()
    with pytest.raises(DataError, match="none of sentences.txt.gz, sentences.txt"):
        load_corpus("dir", tmp_path)


def test_sentence_key():
    assert sentence_key("It's  OK, Bob-42!") == "itsokbob42"
    assert sentence_key("?!  ...") == ""


def test_extract_length_filter_whitespace_and_dedup():
    sentences = [
        "A dog  runs\tfast.",  # collapsed to "A dog runs fast." (16 chars)
        "short one",  # 9 chars
        "a DOG runs fast!!",  # same key as the first: dropped
        "   Cats sleep all day.  ",
        "!!!!!!!!!!!!!!!!",  # no key
    ]
    assert extract_sentences(sentences, None, 10, 0) == ["A dog runs fast.", "Cats sleep all day."]
    # min_chars is inclusive: 16 keeps "A dog runs fast.", 17 drops it, so its 17-character
    # twin is then the first of its key (the length filter comes before dedup)
    assert extract_sentences(sentences, None, 16, 0) == ["A dog runs fast.", "Cats sleep all day."]
    assert extract_sentences(sentences, None, 17, 0) == ["a DOG runs fast!!", "Cats sleep all day."]
    assert extract_sentences(sentences, None, 19, 0) == ["Cats sleep all day."]  # 19 chars


def test_extract_excludes_held_out_keys():
    sentences = ["A girl is styling her hair.", "Another sentence here.", "A third sentence."]
    kept = extract_sentences(sentences, None, 1, 0, exclude=["a girl is STYLING her hair"])
    assert kept == ["Another sentence here.", "A third sentence."]


def test_extract_subsample_deterministic_and_seeded():
    sentences = [f"Sentence number {i}." for i in range(100)]
    a = extract_sentences(sentences, 10, 1, seed=1)
    assert len(a) == 10 and len(set(a)) == 10
    assert a == extract_sentences(sentences, 10, 1, seed=1)
    assert a != extract_sentences(sentences, 10, 1, seed=2)
    assert a == sorted(a, key=sentences.index)  # returned in input order
    assert extract_sentences(sentences, 1000, 1, seed=1) == sentences


def test_equal_quotas_share_what_small_groups_cannot_take():
    assert equal_quotas({"a": 100, "b": 100, "c": 100}, 30) == {"a": 10, "b": 10, "c": 10}
    assert equal_quotas({"a": 100, "b": 100, "c": 4}, 30) == {"a": 13, "b": 13, "c": 4}
    assert equal_quotas({"b": 100, "a": 100}, 5) == {"a": 3, "b": 2}  # remainder to the first name
    assert equal_quotas({"a": 3, "b": 2, "c": 0}, 50) == {"a": 3, "b": 2, "c": 0}  # n above what there is


def test_extract_balanced_by_tags_draws_each_source_equally():
    sentences = [f"Caption number {i}." for i in range(90)] + [f"News sentence {i}." for i in range(10)]
    tags = ["caption"] * 90 + ["news"] * 10
    kept = extract_sentences(sentences, 20, 1, seed=0, tags=tags)
    assert sum(s.startswith("News") for s in kept) == 10 and len(kept) == 20
    assert kept == sorted(kept, key=sentences.index)
    small = extract_sentences(sentences, 8, 1, seed=0, tags=tags)
    assert sum(s.startswith("News") for s in small) == 4
    # a held-out or duplicate sentence does not count towards its source
    kept = extract_sentences(sentences + ["News sentence 3."], 20, 1, seed=0, exclude=["News sentence 0"],
                             tags=tags + ["news"])
    assert sum(s.startswith("News") for s in kept) == 9
    # without tags, the sample is the one drawn before tags existed
    assert extract_sentences(sentences, 20, 1, seed=0) == [sentences[i] for i in
                                                          sorted(random.Random(0).sample(range(100), 20))]
    with pytest.raises(DataError, match="3 source tags for 100 sentences"):
        extract_sentences(sentences, 20, 1, seed=0, tags=["a", "b", "c"])


def test_read_tags_must_pair_with_the_corpus(tmp_path):
    path = tmp_path / "tags.txt"
    path.write_text("a\nb\n")
    assert read_tags(path, 2, "corpus.txt") == ["a", "b"]
    with pytest.raises(DataError, match=r"tags.txt: 2 tags for the 3 sentences of corpus.txt"):
        read_tags(path, 3, "corpus.txt")
    path.write_text("a\n\n")
    with pytest.raises(DataError, match=r"tags.txt, line 2: empty tag"):
        read_tags(path, 2, "corpus.txt")


def test_real_corpus_balanced_sample(data_dir, tmp_path):
    from leap_core.pipeline import experiment
    from leap_core.config import load_profile

    profile = load_profile("cpu", {"data": {"data_dir": str(data_dir), "n_sentences": 800,
                                            "balance_by": "nli_sentences/sentence_sources.txt.gz"}})
    kept = read_sentences_parquet(experiment.extract(profile, tmp_path / "s.parquet"))
    source = dict(zip(load_corpus("nli_sentences", data_dir),
                      read_tags(data_dir / "nli_sentences/sentence_sources.txt.gz", 271833, "nli_sentences")))
    counts = Counter(source[s] for s in kept)
    assert len(counts) == 8 and set(counts.values()) == {100}, counts


def test_extract_empty_result_error_gives_counts():
    sentences = ["abc", "Hello world", "hello, world", "!!!!!!!"]
    expected = (
        "no sentence left: 4 given, 1 shorter than 5 characters, "
        "1 without letters or digits, 2 held out"
    )
    with pytest.raises(DataError, match=expected):
        extract_sentences(sentences, None, 5, 0, exclude=["HELLO WORLD"])
    with pytest.raises(DataError, match="n must be >= 1"):
        extract_sentences(["Hello world"], 0, 5, 0)


def test_parquet_round_trip(tmp_path):
    sentences = ['He said "hi".', "Ünïcode ✓", "tab\tinside"]
    path = tmp_path / "out" / "s.parquet"
    write_sentences_parquet(sentences, path)
    assert read_sentences_parquet(path) == sentences
    assert pq.read_table(path).schema.names == ["sentence"]
    assert [p.name for p in path.parent.iterdir()] == ["s.parquet"]  # no temp file left


def test_parquet_errors(tmp_path):
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"text": ["a"]}), bad)
    expected = r"bad\.parquet: expected one string column 'sentence', found \(text: string\)"
    with pytest.raises(DataError, match=expected):
        read_sentences_parquet(bad)
    pq.write_table(pa.table({"sentence": [1, 2]}), bad)
    with pytest.raises(DataError, match="sentence: int64"):
        read_sentences_parquet(bad)
    with pytest.raises(DataError, match="file not found"):
        read_sentences_parquet(tmp_path / "missing.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(DataError, match=r"junk\.parquet: not a readable parquet file"):
        read_sentences_parquet(tmp_path / "junk.parquet")


# --- BEIR --------------------------------------------------------------------------------------


def test_real_scifact(data_dir, beir_cache):
    corpus, queries, qrels = load_beir(data_dir / "beir" / "scifact", cache_dir=beir_cache)
    assert (len(corpus), len(queries), len(qrels)) == (5183, 300, 300)
    assert sum(len(docs) for docs in qrels.values()) == 339
    assert set(corpus["4983"]) == {"title", "text"}
    assert all(isinstance(v, str) for v in queries.values())
    assert set(queries) == set(qrels)
    # the decompressed copy is reused: a second load adds no cache folder
    before = sorted(p.name for p in (beir_cache / "beir").iterdir())
    assert len(load_beir(data_dir / "beir" / "scifact", cache_dir=beir_cache)[0]) == 5183
    assert sorted(p.name for p in (beir_cache / "beir").iterdir()) == before


def test_real_nfcorpus(data_dir, beir_cache):
    corpus, queries, qrels = load_beir(data_dir / "beir" / "nfcorpus", cache_dir=beir_cache)
    assert (len(corpus), len(queries)) == (3633, 323)
    assert sum(len(docs) for docs in qrels.values()) == 12334
    assert all(isinstance(s, int) for docs in qrels.values() for s in docs.values())


def _write_beir(folder: Path, corpus_lines: list[str], gz: bool = True) -> None:
    folder.mkdir(parents=True)
    queries = [json.dumps({"_id": "q1", "text": "what?"}), json.dumps({"_id": "q2", "text": "unjudged"})]
    for stem, lines in (("corpus", corpus_lines), ("queries", queries)):
        text = "".join(line + "\n" for line in lines)
        if gz:
            with gzip.open(folder / f"{stem}.jsonl.gz", "wt", encoding="utf-8") as f:
                f.write(text)
        else:
            (folder / f"{stem}.jsonl").write_text(text)
    (folder / "qrels").mkdir()
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td2\t2\n")


DOCS = [
    json.dumps({"_id": "d1", "title": "T1", "text": "one", "metadata": {}}),
    json.dumps({"_id": "d2", "title": "", "text": "two"}),
]


@pytest.mark.parametrize("gz", [True, False])
def test_load_beir_small(tmp_path, gz):
    _write_beir(tmp_path / "tiny", DOCS, gz=gz)
    corpus, queries, qrels = load_beir(tmp_path / "tiny", cache_dir=tmp_path / "cache")
    assert corpus == {"d1": {"text": "one", "title": "T1"}, "d2": {"text": "two", "title": ""}}
    assert queries == {"q1": "what?"}  # only judged queries
    assert qrels == {"q1": {"d2": 2}}


def test_load_beir_malformed_gz_line(tmp_path):
    _write_beir(tmp_path / "tiny", [DOCS[0], '{"_id": "d2", "text": "two"', DOCS[1]])
    with pytest.raises(DataError, match=r"corpus\.jsonl\.gz, line 2: malformed JSON"):
        load_beir(tmp_path / "tiny", cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "beir").iterdir()) == []  # no half-written cache folder


def test_load_beir_missing_field(tmp_path):
    _write_beir(tmp_path / "tiny", [DOCS[0], json.dumps({"_id": "d2", "body": "two"})], gz=False)
    with pytest.raises(DataError, match=r"corpus\.jsonl, line 2: field 'text' is missing"):
        load_beir(tmp_path / "tiny", cache_dir=tmp_path / "cache")


def test_load_beir_missing_files(tmp_path):
    _write_beir(tmp_path / "tiny", DOCS)
    with pytest.raises(DataError, match=r"qrels/dev\.tsv: qrels file not found"):
        load_beir(tmp_path / "tiny", split="dev", cache_dir=tmp_path / "cache")
    (tmp_path / "tiny" / "queries.jsonl.gz").unlink()
    with pytest.raises(DataError, match=r"queries\.jsonl: file not found"):
        load_beir(tmp_path / "tiny", cache_dir=tmp_path / "cache")


def test_load_beir_bad_qrels(tmp_path):
    _write_beir(tmp_path / "tiny", DOCS)
    qrels = tmp_path / "tiny" / "qrels" / "test.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\td2\thigh\n")
    with pytest.raises(DataError, match=r"test\.tsv, line 2: field 'score' is not an integer"):
        load_beir(tmp_path / "tiny", cache_dir=tmp_path / "cache")
    qrels.write_text("query-id\tcorpus-id\tscore\nq9\td2\t1\n")
    with pytest.raises(DataError, match=r"test\.tsv: query id 'q9' has no query"):
        load_beir(tmp_path / "tiny", cache_dir=tmp_path / "cache")


def test_data_submodules_import_each_other_never_the_package():
    """leap_core.data's __init__ re-exports its submodules, so none of them may import it back (a cycle)."""
    import ast

    import leap_core.data

    for path in Path(leap_core.data.__file__).parent.glob("*.py"):
        if path.name == "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [node.module] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            assert "leap_core.data" not in names, f"{path.name}, line {node.lineno}: imports the leap_core.data package"
