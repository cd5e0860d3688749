r"""DSGDiffu (elianafang/GraphDiffu): FinePOSE plus graph attention, on Human3.6M.

Variants (after the colon): cpn (default) and gt, as configs/finepose_h36m.py.

  python convert_torch_weights.py --family dsgdiffu --checkpoint best_epoch_20_10.bin \
      --output checkpoints/dsgdiffu_cpn
  python evaluate.py --config configs/dsgdiffu_h36m.py:cpn --checkpoint checkpoints/dsgdiffu_cpn

Everything not set here is FinePOSE's. Both torch-geometric key layouts of the graph layers
(2.4: lin_src/lin_dst, 2.6: lin) convert.
"""

from posediff_jax import configs
from posediff_jax.configs import finepose_h36m


def get_config(arg=None):
  c = finepose_h36m.get_config(configs.pick_variant(__file__, arg, ("cpn", "gt")))
  c.family = "dsgdiffu"
  c.model.graph = "h36m"  # the skeleton of the graph attention (upstream -d)
  c.train.lr_decay = 0.998  # README: -lrd 0.998
  return c
