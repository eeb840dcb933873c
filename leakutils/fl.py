"""A curious Flower server: every client's reply in a real Flower run, attacked and logged.

An honest-but-curious server runs the federated training it promised and looks at what it
receives. In Flower (Beutel et al., "Flower: A Friendly Federated Learning Framework",
2020; version 1.42's Message API) a ``ServerApp`` sends the global weights as an
``ArrayRecord`` with a ``ConfigRecord`` (learning rate, local steps...) and gets back each
client's trained weights and a ``MetricRecord`` holding its example count.
:class:`CuriousStrategy` wraps any Flower strategy (``FedAvg`` by default): it keeps the
weights it sends, reads every reply as the FedAvg pseudo-gradient ``(w_sent - w_returned) /
lr`` (:func:`leakutils.defences.update_from_weights`; McMahan et al. 2017), runs an attack on
it and writes a reconstruction per client and round, and then hands the replies, unchanged,
to the wrapped strategy. The training is exactly the one the wrapped strategy runs.

A client that trains in another dtype than the weights it was sent (a float32 client of a
float64 server) started from the sent weights rounded to its dtype; the server rounds them
the same way before reading the update.

The wrapper uses nothing but Flower's ``Strategy`` interface, so it goes wherever the
wrapped strategy goes; the course runs it in a ``ServerApp`` under
``flwr.simulation.run_simulation`` (Ray). Flower is an optional dependency: ``pip install
"leakutils[fl]"``.
"""
from __future__ import annotations

import copy
import csv
import json
import math
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

try:
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
    from flwr.serverapp import Grid
    from flwr.serverapp.strategy import FedAvg, Strategy
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError("leakutils.fl needs Flower: pip install 'leakutils[fl]' (flwr[simulation]>=1.42)") from error

from . import metrics
from .attacks import fedavg
from .core import Reconstruction, Update
from .defences.local import update_from_weights
from .validate import check_callable, check_module, check_number, check_shape

__all__ = ["CuriousStrategy", "default_attack", "LOG_FIELDS"]

#: The attack a curious server runs by default: :func:`leakutils.attacks.fedavg.analytic`.
default_attack = fedavg.analytic

#: Columns of the audit log (``audit.csv``; ``audit.jsonl`` holds the same records).
LOG_FIELDS = ("round", "node_id", "client", "examples", "dtype", "lr", "local_steps", "attack", "returned",
              "recovered", "fraction_determined", "psnr_median", "psnr_min", "ssim_median", "label_accuracy",
              "seconds", "refused", "message", "png")


class CuriousStrategy(Strategy):
    """A Flower strategy that attacks every training reply and changes nothing of the training.

    Parameters
    ----------
    model : nn.Module
        The global model's architecture (its weights are replaced by those sent in each
        round; the given module is not changed). Its trainable parameters must be the
        entries of the ``ArrayRecord`` the server sends (buffers are allowed and ignored).
    strategy : flwr Strategy, optional
        The strategy that really runs the training; default ``FedAvg()``. Its
        ``configure_*``, ``aggregate_*`` and ``summary`` are called as they would be
        without the wrapper, with the same arguments and replies.
    attack : callable, optional
        ``attack(model, update) -> Reconstruction``; default :func:`default_attack`. A
        ``ValueError`` or ``TypeError`` it raises is logged as a refusal.
    lr : float, optional
        The clients' learning rate (``> 0``). Default: read from the train config the
        server sends, key ``lr_key``; a ``ValueError`` when neither gives it.
    lr_key, steps_key : str
        Config keys of the learning rate (``"lr"``) and of the number of full-batch local
        steps (``"local-steps"``; a client that reports its own under the same key in its
        ``MetricRecord`` overrides the config). With more than one step the update is a FedAvg
        pseudo-gradient, the sum of the steps' gradients, and what the attack returns is
        marked recovered only if replaying the steps on it gives the update
        (:func:`leakutils.attacks.fedavg.certify`).
    examples_key : str
        Key of the example count in each reply's ``MetricRecord`` (Flower's
        ``"num-examples"``); the update's batch size.
    input_shape : tuple of int, optional
        One sample's shape; default ``model.input_shape`` when the model has one.
    truth : callable, optional
        ``truth(server_round, reply) -> (images, labels[, client name]) or None``: the
        client's true batch ``(M, C, H, W)`` in ``[0, 1]`` and its ``(M,)`` int64 labels (or
        None), which an auditor of a simulation knows; then each reconstruction is scored with
        :func:`leakutils.metrics.compare` (PSNR in dB, SSIM, label accuracy) and the PNG
        shows the truth under it. ``None`` skips scoring.
    out_dir : str or Path, optional
        Folder for ``round_<r>/client_<id>.png`` (top row: reconstruction, undetermined
        samples dimmed; bottom: truth when known) and the logs ``audit.csv`` and
        ``audit.jsonl`` (one record per reply; columns :data:`LOG_FIELDS`), written afresh
        by each strategy (logs of an earlier run in the folder are replaced).
    progress : bool
        Show a tqdm bar over each round's replies.

    Attributes
    ----------
    log : list of dict
        One record per attacked reply, keys :data:`LOG_FIELDS`.
    reconstructions : dict
        ``(server_round, node_id) -> Reconstruction``.
    truths : dict
        ``(server_round, node_id) -> images``, the true batches ``truth`` gave.

    Raises
    ------
    TypeError
        ``model`` not an ``nn.Module``, ``strategy`` not a Flower ``Strategy``, ``attack`` or
        ``truth`` not callable, keys not strings.
    ValueError
        ``lr <= 0``; a model without ``input_shape`` and none given.
    """

    def __init__(self, model: nn.Module, strategy: Strategy | None = None, *,
                 attack: Callable[[nn.Module, Update], Reconstruction] | None = None, lr: float | None = None,
                 lr_key: str = "lr", steps_key: str = "local-steps", examples_key: str = "num-examples",
                 input_shape=None, truth: Callable | None = None, out_dir: str | Path | None = None,
                 progress: bool = True) -> None:
        self.model = copy.deepcopy(check_module("model", model))
        self.strategy = FedAvg() if strategy is None else strategy
        if not isinstance(self.strategy, Strategy):
            raise TypeError(f"strategy must be a Flower Strategy (e.g. flwr.serverapp.strategy.FedAvg()), got "
                            f"{type(self.strategy).__name__}")
        self.attack = default_attack if attack is None else check_callable(
            "attack", attack, "attack(model, update) -> Reconstruction")
        self.lr = None if lr is None else check_number("lr", lr, 0.0, lo_open=True)
        for name, key in (("lr_key", lr_key), ("steps_key", steps_key), ("examples_key", examples_key)):
            if not isinstance(key, str):
                raise TypeError(f"{name} must be a config or metric key (str), got {type(key).__name__}")
        self.lr_key, self.steps_key, self.examples_key = lr_key, steps_key, examples_key
        if input_shape is None:
            input_shape = getattr(model, "input_shape", None)
            if input_shape is None:
                raise ValueError("the model has no input_shape attribute: pass input_shape=, one sample's shape, "
                                 "e.g. (1, 28, 28)")
        self.input_shape = check_shape("input_shape", input_shape)
        self.truth = None if truth is None else check_callable(
            "truth", truth, "truth(server_round, reply) -> (images, labels) or None")
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.progress = bool(progress)
        self.log: list[dict] = []
        self.reconstructions: dict[tuple[int, int], Reconstruction] = {}
        self.truths: dict[tuple[int, int], torch.Tensor] = {}
        self._sent: dict[int, tuple[dict[str, torch.Tensor], float, object]] = {}
        self._logging = False

    # ----------------------------------------------------------------- Flower's hooks

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Keep the weights and the learning rate sent this round, then configure as the wrapped strategy does.

        Raises
        ------
        ValueError
            No learning rate: neither ``lr=`` nor the config's ``lr_key``.
        """
        lr = self.lr if self.lr is not None else config.get(self.lr_key)
        if lr is None:
            raise ValueError(f"the curious server must know the clients' learning rate to read their weights as "
                             f"an update: pass lr= to CuriousStrategy or send it in the train config under "
                             f"{self.lr_key!r}")
        lr = check_number("lr", float(lr), 0.0, lo_open=True)
        # the sent weights as tensors, read once per round (a copy: the strategy may change its record)
        self._sent[server_round] = (_tensors(arrays), lr, config.get(self.steps_key))
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        """Attack every reply without an error, then aggregate them with the wrapped strategy."""
        replies = list(replies)
        if server_round in self._sent:
            self._audit(server_round, [r for r in replies if not r.has_error()])
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """The wrapped strategy's evaluation, unchanged."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
        """The wrapped strategy's evaluation, unchanged."""
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        """The wrapped strategy's summary."""
        self.strategy.summary()

    # ----------------------------------------------------------------- the audit

    def _audit(self, server_round: int, replies: Sequence[Message]) -> None:
        from tqdm.auto import tqdm

        sent, lr, steps = self._sent[server_round]
        for reply in tqdm(replies, desc=f"round {server_round}: attacking", disable=not self.progress,
                          leave=False):
            record = self._attack_one(server_round, reply, sent, lr, steps)
            self.log.append(record)
            if self.out_dir is not None:
                self._write(record)

    def _model_at(self, sent: dict[str, torch.Tensor]) -> nn.Module:
        """The architecture with the sent weights, in their dtype."""
        model = copy.deepcopy(self.model)
        dtype = next(v.dtype for v in sent.values() if v.is_floating_point())
        model.to(dtype).load_state_dict(sent, strict=False)
        return model

    def _attack_one(self, server_round: int, reply: Message, sent: dict[str, torch.Tensor], lr: float,
                    steps) -> dict:
        node = int(reply.metadata.src_node_id)
        record = dict.fromkeys(LOG_FIELDS)
        record.update({"round": server_round, "node_id": node, "lr": lr, "refused": False})
        returned = _tensors(_only(reply.content.array_records, "ArrayRecord"))
        counts = _only(reply.content.metric_records, "MetricRecord")
        if self.examples_key not in counts:
            raise ValueError(f"the reply of node {node} has no {self.examples_key!r} in its MetricRecord: the "
                             f"server needs the client's example count (pass examples_key=)")
        record["examples"] = int(counts[self.examples_key])
        # a client may report its own number of local steps; else the configured one
        steps = counts.get(self.steps_key, steps)
        record["local_steps"] = None if steps is None else int(steps)
        # a client that trains in another dtype starts from the sent weights rounded to it
        dtype = next(v.dtype for v in returned.values() if v.is_floating_point())
        start_weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sent.items()}
        model = self._model_at(start_weights)
        record["dtype"] = str(dtype).replace("torch.", "")
        update = update_from_weights(start_weights, returned, lr=lr, batch_size=record["examples"],
                                     input_shape=self.input_shape, names=model)
        start = time.perf_counter()
        try:
            rec = self.attack(model, update)
        except (ValueError, TypeError) as error:
            record.update(refused=True, message=str(error), seconds=time.perf_counter() - start)
            return record
        if steps is not None and int(steps) > 1:
            # the attack's check compares one gradient; the pseudo-gradient of T steps needs a replay
            rec = fedavg.certify(model, update, rec, lr=lr, local_steps=int(steps))
        record["seconds"] = time.perf_counter() - start
        rec.diagnostics["pseudo_gradient"] = _pseudo_note(steps)
        self.reconstructions[(server_round, node)] = rec
        whole = rec.determined.flatten(1).all(dim=1) if rec.images.shape[0] else torch.zeros(0, dtype=torch.bool)
        record.update(attack=rec.attack, returned=int(rec.images.shape[0]), recovered=int(whole.sum()),
                      fraction_determined=rec.fraction_determined)
        truth = None if self.truth is None else self.truth(server_round, reply)
        if truth is not None:
            images, labels, *client = _check_truth(truth, node)
            record["client"] = client[0] if client else None
            scores = metrics.compare(rec, images, labels)
            record.update(_score_fields(scores))
            self.truths[(server_round, node)] = images
        return record

    def _write(self, record: dict) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        key = (record["round"], record["node_id"])
        if key in self.reconstructions:
            folder = self.out_dir / f"round_{record['round']}"
            folder.mkdir(exist_ok=True)
            path = folder / f"client_{record['node_id']}.png"
            _save_png(path, self.reconstructions[key], self.truths.get(key))
            record["png"] = str(path.relative_to(self.out_dir))
        # the first record of this strategy starts the logs afresh: one run, one log
        mode = "a" if self._logging else "w"
        self._logging = True
        with open(self.out_dir / "audit.csv", mode, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
            if mode == "w":
                writer.writeheader()
            writer.writerow(record)
        with open(self.out_dir / "audit.jsonl", mode) as f:
            f.write(json.dumps(record) + "\n")


def _tensors(record) -> dict[str, torch.Tensor]:
    """An ArrayRecord's arrays as tensors, by name."""
    return {k: torch.from_numpy(np.array(v.numpy())) for k, v in record.items()}


def _only(records, kind: str):
    if len(records) != 1:
        raise ValueError(f"a training reply must hold exactly one {kind} (the client's weights and its counts), "
                         f"this one holds {len(records)}")
    return next(iter(records.values()))


def _pseudo_note(steps) -> str:
    if steps is None:
        return "(w_sent - w_returned) / lr; the local steps were not in the config"
    if int(steps) == 1:
        return "(w_sent - w_returned) / lr after one local step: the client's gradient"
    return (f"(w_sent - w_returned) / lr after {int(steps)} local steps: a FedAvg pseudo-gradient, the sum of "
            f"{int(steps)} gradients at drifting weights, not one gradient")


def _score_fields(scores: metrics.Scores) -> dict:
    psnr = scores.psnr[torch.isfinite(scores.psnr)] if scores.psnr.numel() else scores.psnr
    if psnr.numel() == 0:
        return {"psnr_median": None, "psnr_min": None, "ssim_median": None,
                "label_accuracy": scores.label_accuracy}
    return {"psnr_median": float(psnr.median()), "psnr_min": float(psnr.min()),
            "ssim_median": float(scores.ssim.median()) if scores.ssim.numel() else None,
            "label_accuracy": None if scores.label_accuracy is None or math.isnan(scores.label_accuracy)
            else float(scores.label_accuracy)}


def _check_truth(truth, node: int) -> tuple:
    if not isinstance(truth, tuple) or len(truth) not in (2, 3) or not isinstance(truth[0], torch.Tensor):
        raise TypeError(f"truth(server_round, reply) must return (images, labels) or (images, labels, client name), "
                        f"or None; for node {node} it returned {type(truth).__name__}")
    return truth


def _save_png(path: Path, rec: Reconstruction, truth) -> None:
    """One strip per reply: reconstructions on top (undetermined ones at half brightness), truth below."""
    import matplotlib.pyplot as plt

    top = _strip(rec.images.detach().double().clamp(0, 1), rec.determined.flatten(1).all(dim=1))
    rows = [top] if truth is None else [top, _strip(truth.detach().double().clamp(0, 1), None)]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    plt.imsave(path, np.concatenate(rows, axis=0))


def _strip(images: torch.Tensor, whole) -> np.ndarray:
    if images.ndim != 4 or images.shape[0] == 0:
        return np.zeros((1, 1, 3))
    images = images.repeat(1, 3, 1, 1) if images.shape[1] == 1 else images[:, :3]
    if whole is not None:
        images = torch.where(whole[:, None, None, None], images, images * 0.5)
    return torch.cat(list(images.permute(0, 2, 3, 1)), dim=1).numpy()
