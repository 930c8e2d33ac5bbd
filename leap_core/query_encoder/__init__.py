"""Shallow query encoders for an index the original model built (issue 30).

sources: unlabelled query text (text / JSONL / Parquet files, BEIR queries less the test split, traffic logs,
pseudo-queries from the corpus) and its split into training text and a dev slice; index: the original's document
embeddings, cached by weights and corpus hash; fit: the original's cached pools and training at one depth (which
experiment and loop share), and `leap query-encoder`'s fit; model: the encoder (the original's first N layers +
mean pool + head), saved with its document model's hash; losses / train: matching the original's query embedding
and its ranking of its own documents; evaluate / experiment / report: NDCG@10, Recall@100 and top-10 agreement
against the original's index, with paired CIs; package: the encoder and its document model as one
sentence-transformers Router folder; points: the asymmetric operating points (depth x precision) that
`leap calibrate` and `leap pareto` choose among.
"""

from leap_core.query_encoder.index import DocumentIndex, build_index
from leap_core.query_encoder.model import (
    ShallowQueryEncoder,
    check_pair,
    load_query_encoder,
    save_query_encoder,
)
from leap_core.query_encoder.package import package_router
from leap_core.query_encoder.points import asymmetric_points, choose_asymmetric
from leap_core.query_encoder.sources import pseudo_queries, read_corpus, read_queries
from leap_core.query_encoder.train import QueryEncoderConfig, TrainingSet, train

__all__ = [
    "DocumentIndex",
    "QueryEncoderConfig",
    "ShallowQueryEncoder",
    "TrainingSet",
    "asymmetric_points",
    "build_index",
    "check_pair",
    "choose_asymmetric",
    "load_query_encoder",
    "package_router",
    "pseudo_queries",
    "read_corpus",
    "read_queries",
    "save_query_encoder",
    "train",
]
