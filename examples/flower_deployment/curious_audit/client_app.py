"""The ClientApp: one local SGD step on a batch of the SuperNode's own digits.

Each SuperNode is started with ``--node-config 'partition-id=<p>'``; the client trains a
copy of the global model it receives for one full-batch SGD step (FedSGD, as Chapter 8's
client 2) and returns its weights with its example count, the only things FedAvg needs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from curious_audit.task import client_batch, global_model

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received weights for one SGD step on this node's batch and send them back."""
    torch.set_num_threads(1)
    partition = int(context.node_config["partition-id"])
    server_round = int(msg.content["config"]["server-round"])
    lr = float(msg.content["config"]["lr"])
    batch_size = int(context.run_config["batch-size"])

    net = global_model()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = client_batch(partition, server_round, batch_size)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    opt.zero_grad()
    F.cross_entropy(net(x), y).backward()
    opt.step()

    counts = MetricRecord({"num-examples": len(y), "local-steps": 1})
    # for the audit only: which client this is, so that the server can score its attack
    audit = ConfigRecord({"partition": partition})
    content = RecordDict({"arrays": ArrayRecord(net.state_dict()), "metrics": counts, "audit": audit})
    return Message(content=content, reply_to=msg)
