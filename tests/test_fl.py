"""The curious Flower server (leakutils.fl): a real Flower simulation attacked, and its errors."""
from __future__ import annotations

import csv
import json
import math

import pytest
import torch

flwr = pytest.importorskip("flwr", reason="Flower is part of leakutils[book]; pip install 'leakutils[fl]'")
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

from leakutils import fl, models  # noqa: E402

SHAPE = (1, 8, 8)
LR = 0.1


def _batch(partition: int, size: int):
    """The private batch of client ``partition``: seeded random 8x8 images and labels."""
    gen = torch.Generator().manual_seed(100 + partition)
    return torch.rand(size, *SHAPE, generator=gen, dtype=torch.float64), torch.randint(0, 10, (size,), generator=gen)


def _model():
    torch.manual_seed(0)
    return models.MLP(SHAPE, [512], 10, dtype=torch.float64)


def _apps(strategy_box: list, out_dir, sizes=(1, 8)):
    """A ClientApp (client p trains one SGD step on a batch of sizes[p]) and a curious ServerApp."""
    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        x, y = _batch(partition, sizes[partition])
        net = _model()
        net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        opt = torch.optim.SGD(net.parameters(), lr=msg.content["config"]["lr"])
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        content = RecordDict({"arrays": ArrayRecord(net.state_dict()),
                              "metrics": MetricRecord({"train_loss": loss.item(), "num-examples": len(y)}),
                              "audit": ConfigRecord({"partition": partition})})
        return Message(content=content, reply_to=msg)

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        def truth(server_round, reply):
            partition = int(reply.content["audit"]["partition"])
            x, y = _batch(partition, sizes[partition])
            return x, y, f"client {partition}"

        strategy = fl.CuriousStrategy(_model(), FedAvg(fraction_evaluate=0.0, min_available_nodes=len(sizes)),
                                      truth=truth, out_dir=out_dir, progress=False)
        strategy_box.append(strategy)
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(_model().state_dict()), num_rounds=1,
                       train_config=ConfigRecord({"lr": LR, "local-steps": 1}))
        strategy_box.append(result)

    return client, server


def test_a_flower_simulation_of_two_clients_is_attacked(tmp_path):
    box: list = []
    client, server = _apps(box, tmp_path)
    run_simulation(server_app=server, client_app=client, num_supernodes=2,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": 2, "num_gpus": 0, "log_to_driver": False}})
    strategy, result = box
    log = sorted(strategy.log, key=lambda r: r["examples"])
    assert [r["examples"] for r in log] == [1, 8] and all(r["round"] == 1 for r in log)
    # batch 1: exact (the bias ratio or ExAN); batch 8: ExAN rebuilds all 8, each certified
    assert log[0]["recovered"] == 1 and log[0]["psnr_min"] > 100, log[0]
    assert log[1]["recovered"] == 8 and log[1]["psnr_min"] > 100 and log[1]["attack"].lower().startswith("exan")
    assert {r["client"] for r in log} == {"client 0", "client 1"}
    assert all(r["dtype"] == "float64" and r["lr"] == LR and not r["refused"] for r in log)
    # the audit on disk: a CSV and a JSONL record per reply, a PNG per reconstruction
    rows = list(csv.DictReader(open(tmp_path / "audit.csv")))
    assert len(rows) == 2 and set(rows[0]) == set(fl.LOG_FIELDS)
    records = [json.loads(line) for line in open(tmp_path / "audit.jsonl")]
    assert sorted(r["recovered"] for r in records) == [1, 8]
    assert all((tmp_path / r["png"]).stat().st_size > 0 for r in records)
    # nothing of the training changed: the new global model is FedAvg's mean of the clients'
    # weights, weighted by their example counts, as without the curious wrapper
    expected = {}
    for partition, size in enumerate((1, 8)):
        net = _model()
        x, y = _batch(partition, size)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        for n, p in net.named_parameters():
            expected[n] = expected.get(n, 0) + size / 9 * (p.detach() - LR * p.grad)
    final = result.arrays.to_torch_state_dict()
    assert all(torch.allclose(final[n], w, rtol=0, atol=1e-12) for n, w in expected.items())
    assert all(math.isfinite(r["seconds"]) and r["seconds"] < 30 for r in log)


def test_without_a_learning_rate_the_server_says_so():
    strategy = fl.CuriousStrategy(_model(), progress=False)
    with pytest.raises(ValueError, match="learning rate"):
        strategy.configure_train(1, ArrayRecord(_model().state_dict()), ConfigRecord({}), None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_default_attack_is_exact_for_one_example_after_many_local_steps(dtype):
    # the first layer's pseudo-gradient after T steps on one example is still rank one
    from leakutils import defences, metrics
    from leakutils.attacks import fedavg

    net = _model().to(dtype)
    x, y = _batch(0, 1)
    x = x.to(dtype)
    update = defences.fedavg_update(net, x, y, lr=LR, local_steps=10)
    rec = fl.default_attack(net, update)
    assert "ExAN" in rec.diagnostics["fallback"]
    assert float(metrics.compare(rec, x, y).psnr.min()) > (100 if dtype == torch.float32 else 250)
    # one gradient cannot explain ten steps: only the replay of the ten steps certifies it
    assert rec.fraction_determined == 0.0
    assert fedavg.certify(net, update, rec, lr=LR, local_steps=10).fraction_determined == 1.0
    assert fedavg.certify(net, update, rec, lr=LR, local_steps=3).fraction_determined == 0.0
    # a batch of 8 after 5 steps: a blend, and the mask says so
    x8, y8 = _batch(1, 8)
    x8 = x8.to(dtype)
    eight = defences.fedavg_update(net, x8, y8, lr=LR, local_steps=5)
    blend = fl.default_attack(net, eight)
    assert blend.fraction_determined == 0.0
    assert fedavg.certify(net, eight, blend, lr=LR, local_steps=5).fraction_determined == 0.0


@pytest.mark.parametrize("m", [1, 8])
def test_weights_read_with_the_wrong_sign_give_nothing_certified(m):
    # sent and returned swapped: the ratios survive, the labels and every check do not
    from leakutils import defences

    net = _model()
    x, y = _batch(3, m)
    sent = {n: w.detach().clone() for n, w in net.state_dict().items()}
    step = defences.fedavg_update(net, x, y, lr=LR)
    returned = {n: w - LR * step[n] for n, w in sent.items()}
    right = defences.update_from_weights(sent, returned, lr=LR, batch_size=m, input_shape=SHAPE, names=net)
    swapped = defences.update_from_weights(returned, sent, lr=LR, batch_size=m, input_shape=SHAPE, names=net)
    assert fl.default_attack(net, right).fraction_determined == 1.0
    wrong = fl.default_attack(net, swapped)
    assert wrong.fraction_determined == 0.0
