"""Live panels of the chapters, and the plain functions behind them.

Each chapter has a module with the same three parts: a *demo* function that runs the
chapter's experiment and returns a small record (a plain notebook cell calls it and asserts
on it, so the logic is tested even though widget callbacks swallow exceptions), a *show*
function that draws the record, and a *panel* function that wires both to ipywidgets
controls through the shared factory :func:`leakutils.widgets.panel.build_panel`.
``ipywidgets`` is imported only when a panel is built.

========================  ===================================================================
module                    demo, show, panel, kernel-free twin
========================  ===================================================================
``bias_ratio`` (Ch. 1)    :func:`bias_ratio_demo`, :func:`show_bias_ratio_demo`, :func:`bias_ratio_panel`, :func:`bias_ratio_twin`
``activations`` (Ch. 2)   :func:`propagation_demo`, :func:`show_propagation_demo`, :func:`propagation_panel`, :func:`propagation_twin`
``conv`` (Ch. 3)          :func:`conv_demo`, :func:`show_conv_demo`, :func:`conv_panel`, :func:`conv_twin`
``exan`` (Ch. 4)          :func:`exan_demo`, :func:`show_exan_demo`, :func:`exan_panel`, :func:`exan_twin`
``inversion`` (Ch. 5)     :func:`inversion_demo`, :func:`show_inversion_demo`, :func:`inversion_panel`, :func:`inversion_twin`
``extraction`` (Ch. 6)    :func:`extraction_demo`, :func:`show_extraction_demo`, :func:`extraction_panel`, :func:`extraction_twin`
``defences`` (Ch. 7)      :func:`defence_demo`, :func:`show_defence_demo`, :func:`defence_panel`, :func:`defence_twin`
``fedavg`` (Ch. 8)        :func:`fedavg_demo`, :func:`show_fedavg_demo`, :func:`fedavg_panel`, :func:`fedavg_twin`
``malicious`` (Ch. 9)     :func:`malicious_demo`, :func:`show_malicious_demo`, :func:`malicious_panel`, :func:`malicious_twin`
========================  ===================================================================

Every live panel has a kernel-free twin for the HTML book: :func:`static_panel` (module
``static``) runs the demo over a grid of the panel's main control when the notebook executes
and stores the drawn results behind one slider that works without a kernel or network.

Every name is re-exported here, so ``widgets.exan_demo(...)`` works without naming the module.
"""
from . import panel
from .activations import (PropagationDemo, propagation_demo, propagation_panel, propagation_twin,
                          show_propagation_demo)
from .defences import DefenceDemo, defence_demo, defence_panel, defence_twin, show_defence_demo
from .bias_ratio import BiasRatioDemo, bias_ratio_demo, bias_ratio_panel, bias_ratio_twin, show_bias_ratio_demo
from .conv import ConvDemo, conv_demo, conv_panel, conv_twin, show_conv_demo
from .exan import ExanDemo, exan_demo, exan_panel, exan_twin, show_exan_demo
from .extraction import ExtractionDemo, extraction_demo, extraction_panel, extraction_twin, show_extraction_demo
from .fedavg import FedAvgDemo, fedavg_demo, fedavg_panel, fedavg_twin, show_fedavg_demo
from .malicious import MaliciousDemo, malicious_demo, malicious_panel, malicious_twin, show_malicious_demo
from .inversion import inversion_demo, inversion_panel, inversion_twin, show_inversion_demo
from .panel import DEMO_ACTIVATIONS, DEMO_DATASETS
from .static import StaticPanel, static_panel

__all__ = ["DEMO_DATASETS", "DEMO_ACTIVATIONS", "StaticPanel", "static_panel",
           "BiasRatioDemo", "bias_ratio_demo", "show_bias_ratio_demo", "bias_ratio_panel", "bias_ratio_twin",
           "PropagationDemo", "propagation_demo", "show_propagation_demo", "propagation_panel", "propagation_twin",
           "ConvDemo", "conv_demo", "show_conv_demo", "conv_panel", "conv_twin",
           "ExanDemo", "exan_demo", "show_exan_demo", "exan_panel", "exan_twin",
           "inversion_demo", "show_inversion_demo", "inversion_panel", "inversion_twin",
           "ExtractionDemo", "extraction_demo", "show_extraction_demo", "extraction_panel",
           "extraction_twin", "DefenceDemo", "defence_demo", "show_defence_demo", "defence_panel", "defence_twin",
           "FedAvgDemo", "fedavg_demo", "show_fedavg_demo", "fedavg_panel", "fedavg_twin",
           "MaliciousDemo", "malicious_demo", "show_malicious_demo", "malicious_panel", "malicious_twin"]
