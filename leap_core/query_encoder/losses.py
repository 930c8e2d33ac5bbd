"""The query encoder's objective: match the original's query embedding and how it ranks its own documents.

L = cosine (1 - cos(q, t)) + kl KL(P_t || P_q) + in_batch L_contrast(q, t), where t is the original's final
embedding of the query, P_x = softmax(x . D_k / T) over the original's top-k documents D_k for that query (from
its cached index), and L_contrast is losses.contrast's in-batch similarity KL. No relevance label enters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from leap_core.train.losses.contrast import contrastive_kl
from leap_core.train.losses.final import final_loss


def listwise_kl(query: torch.Tensor, teacher: torch.Tensor, docs: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(P_t || P_q) = mean_b sum_j P_t(j) (log P_t(j) - log P_q(j)), P_x(j) = softmax_j(x_b . d_bj / T).

    query, teacher: (B, d) normalised; docs: (B, k, d) normalised documents the ORIGINAL ranked top-k for each
    query. Distils the original's ranking of its own index, which the cosine term alone matches only loosely.
    """
    if docs.dim() != 3 or docs.shape[0] != query.shape[0] or query.shape != teacher.shape:
        raise ValueError(f"listwise_kl: query {tuple(query.shape)}, teacher {tuple(teacher.shape)}, "
                         f"docs {tuple(docs.shape)} do not match")
    if temperature <= 0:
        raise ValueError(f"listwise_kl: temperature must be > 0, got {temperature}")
    log_q = F.log_softmax(torch.einsum("bd,bkd->bk", query, docs) / temperature, dim=-1)
    log_t = F.log_softmax(torch.einsum("bd,bkd->bk", teacher.to(query.dtype), docs) / temperature, dim=-1)
    return (log_t.exp() * (log_t - log_q)).sum(dim=-1).mean()


def query_loss(query: torch.Tensor, teacher: torch.Tensor, docs: torch.Tensor | None, cosine: float, kl: float,
               kl_temperature: float, in_batch: float,
               in_batch_temperature: float) -> tuple[torch.Tensor, dict[str, float]]:
    """L = cosine (1 - cos(q, t)) + kl KL(P_t || P_q) + in_batch L_contrast(q, t); returns (loss, per-term floats)."""
    total = query.sum() * 0.0
    terms: dict[str, float] = {}
    parts = {"cosine": (cosine, lambda: final_loss(query, teacher.to(query.dtype))),
             "kl": (kl, lambda: listwise_kl(query, teacher, docs, kl_temperature)),
             "in_batch": (in_batch, lambda: contrastive_kl(query, teacher, in_batch_temperature))}
    for name, (weight, term) in parts.items():
        if weight:
            if name == "kl" and docs is None:
                raise ValueError("query_loss: kl > 0 needs the original's top-k documents")
            value = term()
            total = total + weight * value
            terms[name] = float(value.detach())
    terms["total"] = float(total.detach())
    return total, terms
