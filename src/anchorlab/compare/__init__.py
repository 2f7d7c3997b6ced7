"""Detectors side by side: the same data, backbone, schedule and seed; one table, plots and a report."""

from anchorlab.compare.presets import BUDGETS, budget_tree, model_tree
from anchorlab.compare.run import compare, resolve_config

__all__ = ["BUDGETS", "budget_tree", "compare", "model_tree", "resolve_config"]
