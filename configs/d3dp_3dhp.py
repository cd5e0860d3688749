r"""D3DP on MPI-INF-3DHP (GT 2D), as upstream main_3dhp.py.

  python evaluate.py --config configs/d3dp_3dhp.py --checkpoint checkpoints/d3dp_3dhp
  python train.py --config configs/d3dp_3dhp.py --workdir runs/d3dp_3dhp

Data: P-STMO-style files built from the camera-space `annot3` (spec §7.4), in `data.root`:
data_train_3dhp_ori.npz and data_test_3dhp_ori.npz. The metrics are the official MATLAB ones
(PCK@150 mm, AUC, MPJPE per sequence), computed in Python.
"""

from posediff_jax import configs
from posediff_jax.configs import d3dp_h36m


def get_config(arg=None):
  configs.pick_variant(__file__, arg)
  c = d3dp_h36m.get_config("gt")
  c.variant = "3dhp"
  c.data.dataset = "3dhp"
  c.data.root = "data/3dhp"
  c.data.file_train = "data_train_3dhp_ori.npz"
  c.data.file_test = "data_test_3dhp_ori.npz"
  for field in ("file_3d", "file_2d", "train_subjects", "actions"):
    del c.data[field]
  # The test sequences to evaluate (the _ori files carry no action labels to filter by).
  c.data.test_subjects = ("TS1", "TS2", "TS3", "TS4", "TS5", "TS6")
  c.eval.batch_size = 2  # hard-coded bs = 2 in upstream main_3dhp.py
  return c
