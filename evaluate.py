"""Evaluates a checkpoint on a config's test split: `posediff_jax.cli.evaluate` (installed:
`posediff-evaluate`).

  python evaluate.py --config configs/diffpose_h36m.py:cpn --checkpoint checkpoints/diffpose_cpn
"""

from posediff_jax.cli import evaluate

if __name__ == "__main__":
  evaluate.cli()
