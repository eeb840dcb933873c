"""What the server and the clients share: the model and how a client draws its batch.

As in Chapter 8, client ``p`` (its SuperNode's ``partition-id``) holds the 100 offline
MNIST digits ``100p`` to ``100p + 99`` (disjoint across clients) and draws a fresh batch
from them every round, with a seed known to the auditor.
"""
from __future__ import annotations

import torch

from leakutils import data, models

#: digits per client
PARTITION_SIZE = 100


def global_model() -> torch.nn.Module:
    """The global model: the 784-256-10 ReLU MLP of Chapters 1 and 8, in float64."""
    torch.manual_seed(0)
    return models.MLP((1, 28, 28), (256,), dtype=torch.float64)


def client_batch(partition: int, server_round: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch client ``partition`` trains on in ``server_round``: images ``(M, 1, 28, 28)``, labels ``(M,)``."""
    digits = data.load("mnist", dtype=torch.float64)
    if not 0 <= partition < len(digits) // PARTITION_SIZE:
        raise ValueError(f"partition-id must be in 0..{len(digits) // PARTITION_SIZE - 1}, got {partition}")
    gen = torch.Generator().manual_seed(1000 * server_round + partition)
    rows = PARTITION_SIZE * partition + torch.randperm(PARTITION_SIZE, generator=gen)[:batch_size]
    return digits.images[rows], digits.labels[rows]
