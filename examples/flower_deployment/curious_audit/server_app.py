"""The ServerApp: FedAvg wrapped, unchanged, in Chapter 8's curious strategy.

:class:`leakutils.fl.CuriousStrategy` keeps the weights it sends, reads every client's reply
as the pseudo-gradient ``(w_sent - w_returned) / lr``, attacks it (ExAN, else the bias
ratio) and writes ``audit.csv``, ``audit.jsonl`` and one PNG per client and round to the
run config's ``audit-dir``; then FedAvg aggregates the replies as it would without it.
"""
from __future__ import annotations

from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from leakutils import fl

from curious_audit.task import client_batch, global_model

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-rounds`` rounds of FedAvg on ``min-nodes`` clients, every reply audited."""
    cfg = context.run_config
    nodes, batch_size = int(cfg["min-nodes"]), int(cfg["batch-size"])

    def truth(server_round, reply):
        # the auditor knows each client's batch: it scores what the attack rebuilt
        partition = int(reply.content["audit"]["partition"])
        images, labels = client_batch(partition, server_round, batch_size)
        return images, labels, partition

    fedavg = FedAvg(fraction_evaluate=0.0, min_train_nodes=nodes, min_available_nodes=nodes)
    curious = fl.CuriousStrategy(global_model(), fedavg, truth=truth,
                                 out_dir=Path(str(cfg["audit-dir"])).expanduser().resolve(), progress=False)
    curious.start(grid=grid, initial_arrays=ArrayRecord(global_model().state_dict()),
                  num_rounds=int(cfg["num-rounds"]), train_config=ConfigRecord({"lr": float(cfg["lr"])}))
    for r in curious.log:
        psnr = "no PSNR" if r["psnr_median"] is None else f"median PSNR {r['psnr_median']:.1f} dB"
        print(f"audit: round {r['round']}, client {r['client']}: {r['attack']} recovered {r['recovered']} of "
              f"{r['examples']}, {psnr}")
