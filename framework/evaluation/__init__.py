"""Evaluation: metrics, evaluation datasets, sweeps, trade-off fronts, paired comparisons and plots."""
