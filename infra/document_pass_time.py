"""How long the original's document pass (the index a query encoder is judged against) takes on this machine.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python infra/document_pass_time.py all-mpnet-base-v2 --threads 1

Encodes an evenly spaced sample of each set's documents at the model's own max length (as index.build_index
does) and extrapolates to the whole corpus. Issue 30 used it to size the all-mpnet-base-v2 run before starting it.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from leap_core.serve.encoder import EarlyExitEncoder
from leap_core.evaluation.retrieval import document_text
from leap_core.models import resolve_model
from leap_core.query_encoder.sources import read_corpus


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--data-dir", default="../shared/data/beir")
    parser.add_argument("--sets", default="nfcorpus,scifact")
    parser.add_argument("--sample", type=int, default=48, help="documents timed per set")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    encoder = EarlyExitEncoder.from_pretrained(str(resolve_model(args.model)), theta=0.95, k=1, l_min=1)
    result = {"model": args.model, "max_length": encoder.max_length, "threads": args.threads, "sets": {}}
    for name in args.sets.split(","):
        docs = [document_text(doc) for doc in read_corpus(f"{args.data_dir}/{name}").values()]
        sample = docs[::max(1, len(docs) // args.sample)][:args.sample]
        encoder.encode(sample[:4], batch_size=4, mode="full")  # warm-up
        started = time.perf_counter()
        encoder.encode(sample, batch_size=16, mode="full")
        rate = len(sample) / (time.perf_counter() - started)
        result["sets"][name] = {"documents": len(docs), "documents_per_second": round(rate, 3),
                                "hours": round(len(docs) / rate / 3600, 2)}
    result["hours"] = round(sum(s["hours"] for s in result["sets"].values()), 2)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
