r"""DSGDiffu on MPI-INF-3DHP (GT 2D): README command `-d 3dhp -lrd 0.995 -lr 0.00007 -e 120`.

Upstream's released 3DHP model cannot run (its prompt has 66 tokens against CLIP's 77
positions, spec §3.4); here the prompt is padded to 77 with the padding token
(posediff_jax.models.prompts), so results are not comparable with the paper's.
"""

from posediff_jax import configs
from posediff_jax.configs import finepose_3dhp


def get_config(arg=None):
  configs.pick_variant(__file__, arg)
  c = finepose_3dhp.get_config()
  c.family = "dsgdiffu"
  c.model.graph = "3dhp"
  c.train.lr = 7e-5
  c.train.lr_decay = 0.995
  c.train.epochs = 120
  return c
