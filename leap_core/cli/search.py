"""`leap` commands for search's query side: query-encoder, package-query-encoder."""

from __future__ import annotations

import argparse

from leap_core.cli.common import command
from leap_core.query_encoder.command import add_query_encoder_args, run_query_encoder
from leap_core.query_encoder.package import package_router

command("query-encoder", "a shallow query encoder for the original's index: fit on unlabelled queries "
        "(--corpus) or judge on a BEIR folder (--beir)", add_query_encoder_args)(run_query_encoder)


def add_package_query_encoder_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query_encoder", help="a query encoder folder (leap query-encoder --out)")
    parser.add_argument("--out", required=True, help="the new package folder (absent, empty or an earlier package)")
    parser.add_argument("--document-model", help="where to load the document model from (default: the one its "
                        "leap_query_encoder.json names; either way its weights hash must match)")


@command("package-query-encoder", "a query encoder and its document model as one sentence-transformers Router "
         "folder (encode_query / encode_document)", add_package_query_encoder_args)
def cmd_package_query_encoder(args: argparse.Namespace) -> None:
    folder = package_router(args.query_encoder, args.out, args.document_model)
    print(f"{args.query_encoder} (query route) + its document model (document route) -> {folder}")
