"""Trains a model family from a config: `posediff_jax.cli.train` (installed: `posediff-train`).

  python train.py --config configs/demo.py --workdir runs/demo
"""

from posediff_jax.cli import train

if __name__ == "__main__":
  train.cli()
