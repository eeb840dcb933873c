"""Attacks. Each module offers ``reconstruct(model, update, **options) -> Reconstruction``.

- :mod:`leakutils.attacks.bias_ratio`: one sample through a fully connected layer (Chapter 1).
- :mod:`leakutils.attacks.labels`: labels from the output layer's gradient (iDLG).
- :mod:`leakutils.attacks.conv`: one sample through conv layers as linear systems (R-CONV; Chapter 3).
- :mod:`leakutils.attacks.dlg`: Deep Leakage from Gradients, the optimisation baseline (Chapter 3).
- :mod:`leakutils.attacks.inverting`: Inverting Gradients, cosine gradient matching with a
  total-variation prior (Geiping et al. 2020).
- :mod:`leakutils.attacks.pruned`: the bias ratio of a pruned update, read from the entries
  that survived (Chapter 7).
- :mod:`leakutils.attacks.forward`: a layer's input from the next layer's activations, by
  forward equations with the data range as a box, certified unique or not (against a
  withheld weight gradient, Soteria; Chapter 7).
- :mod:`leakutils.attacks.fedavg`: a reconstruction checked against a FedAvg pseudo-gradient
  by replaying the client's local steps (Chapter 8).
- :mod:`leakutils.attacks.imprint`: a malicious server's imprint block and the samples alone
  in its bins (Fowl et al. 2022).
- :mod:`leakutils.attacks.fishing`: a malicious server's fished classifier and the one
  target-class sample of a large batch, checked against the whole update (Wen et al. 2022).
- :mod:`leakutils.attacks.residual`: the gradient-residual check every gradient attack ends
  with, public so that any reconstruction can be checked against the update.
"""
from . import bias_ratio, conv, dlg, exan, fedavg, fishing, forward, imprint, inverting, labels, pruned, residual

__all__ = ["bias_ratio", "conv", "dlg", "exan", "fedavg", "fishing", "forward", "imprint", "inverting", "labels",
           "pruned", "residual"]
