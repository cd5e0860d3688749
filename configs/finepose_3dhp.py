r"""FinePOSE on MPI-INF-3DHP (GT 2D), as upstream main_3dhp.py.

  python convert_torch_weights.py --family finepose --config configs/finepose_3dhp.py \
      --checkpoint best_epoch.bin --output checkpoints/finepose_3dhp
  python evaluate.py --config configs/finepose_3dhp.py --checkpoint checkpoints/finepose_3dhp

The 3DHP model has no action text: one prompt for every clip (the text cache has one row, read
at token 76). Data and metrics are D3DP's (configs/d3dp_3dhp.py); the text branch and the
evaluation settings are FinePOSE's (configs/finepose_h36m.py).
"""

import ml_collections

from posediff_jax import configs
from posediff_jax.configs import d3dp_3dhp
from posediff_jax.configs import finepose_h36m


def get_config(arg=None):
  configs.pick_variant(__file__, arg)
  c = d3dp_3dhp.get_config()
  finepose_h36m.add_text_branch(c, "finepose")
  c.text = ml_collections.ConfigDict()
  c.text.actions = ()  # no action text on 3DHP
  c.train.epochs = 100
  return c
