"""Converts released PyTorch checkpoints: `posediff_jax.cli.convert` (installed:
`posediff-convert`).

  python convert_torch_weights.py --family diffpose \
      --checkpoint diffpose_uvxyz_cpn.pth --lifter gcn_xyz_cpn.pth --output checkpoints/diffpose_cpn
"""

from posediff_jax.cli import convert

if __name__ == "__main__":
  convert.cli()
