"""Defences against data reconstruction, each a documented function (Chapters 5, 7, 8, 9).

Where each acts, and its source:

On the shared update, between capture and attack (:mod:`~leakutils.defences.update`, an
``Update`` in, a new ``Update`` out, through :meth:`Update.map`):

- :func:`clip`: scale the whole update to global L2 norm ``<= max_norm`` (DP-FedAvg,
  McMahan et al. 2018).
- :func:`gaussian_noise`: add ``N(0, std^2)`` to every entry, absolute or relative to the
  largest entry.
- :func:`clip_and_noise`: both, noise std ``noise_multiplier * max_norm``: client-level
  Gaussian mechanism (McMahan et al. 2018).
- :func:`prune`: zero each tensor's smallest-magnitude entries (Zhu et al. 2019, DLG, Sec. 5).
- :func:`quantise`: float16, per-tensor int8, or scaled sign (signSGD, Bernstein et al. 2018).

On the client's step (they need the model and the private batch):

- :func:`dp_sgd_update` (:mod:`~leakutils.defences.dp`): DP-SGD with Opacus, per-sample
  clipping and noise, with its (epsilon, delta) from Opacus' accountant (:func:`epsilon`;
  Abadi et al. 2016).
- :func:`fedavg_update` (:mod:`~leakutils.defences.local`): several local SGD steps; the
  server reads the pseudo-gradient ``(w_sent - w_returned) / lr``
  (:func:`update_from_weights`; McMahan et al. 2017).
- :func:`soteria` (module ``leakutils.defences.soteria``; :func:`feature_scores` its
  per-feature scores): withhold one fully connected layer's
  weight-gradient columns where its input reveals most (Sun et al., CVPR 2021).

At the server, across clients:

- :func:`secure_aggregation` (:mod:`~leakutils.defences.aggregation`): the server decodes
  only the example-weighted average of ``K`` updates (Bonawitz et al. 2017);
  :func:`client_updates` splits a batch into ``K`` clients.

Before training, against a malicious server (:mod:`~leakutils.defences.detect`):
:func:`inspect_model` checks the model a client receives for parallel rows with biases at
the client's data quantiles (the imprint block, Fowl et al. 2022), classes that receive no
softmax mass (fishing, Wen et al. 2022) and a large change from the previous round;
:func:`~leakutils.defences.detect.separation` measures its scores over honest and
malicious models.

On a classifier's outputs, against model inversion (:mod:`~leakutils.defences.output`,
Chapter 5): :func:`~leakutils.defences.output.round_outputs` (Fredrikson et al. 2015) and
:func:`~leakutils.defences.output.top_k` (Yang et al. 2019).

Measuring them (Chapter 7):

- :mod:`~leakutils.defences.registry`: every defence with its three strengths, where it acts,
  how to apply it to one client and how to train under it (``DEFENCES``, ``train_under``).
- :mod:`~leakutils.defences.matrix`: the best of the course's attacks against each defended
  update (``best_attack``, ``run_matrix``, ``breaking_points``).
- :mod:`~leakutils.defences.utility`: what a defence costs in test accuracy (``train``,
  ``train_dp_sgd`` with Opacus, ``accuracy``, the MNIST split).
- :mod:`~leakutils.defences.figures`: the attack x defence heatmap and the privacy-utility
  plane.
"""
from . import aggregation, detect, dp, local, output, update
from . import figures, matrix, registry, utility
from .aggregation import client_updates, secure_aggregation
from .detect import Inspection, inspect_model
from .dp import DPReport, dp_sgd_update, epsilon
from .local import fedavg_update, update_from_weights
from .output import round_outputs, top_k
# the function, not its module: defences.soteria(model, x, y) like every other defence
from .soteria import feature_scores, soteria
from .update import clip, clip_and_noise, gaussian_noise, global_norm, prune, quantise

__all__ = ["aggregation", "dp", "local", "output", "update", "registry", "matrix", "utility", "figures", "clip", "gaussian_noise", "clip_and_noise",
           "prune", "quantise", "global_norm", "secure_aggregation", "client_updates", "DPReport",
           "dp_sgd_update", "epsilon", "fedavg_update", "update_from_weights", "soteria", "feature_scores",
           "round_outputs", "top_k", "detect", "inspect_model", "Inspection"]
