"""Evaluation: judges over checkpoints, the harness, reports and plots.

The pure metrics live one layer down in `rlaif_jax.metrics` (training and judging use them too);
they are re-exported here, so `from rlaif_jax.evaluation import agreement` keeps working.
"""
from rlaif_jax.metrics import agreement, diversity, length_bias, stats

__all__ = ["agreement", "diversity", "length_bias", "stats"]
