r"""The demo: a small DiffPose trained and evaluated on the project's own synthetic data.

  python train.py --config configs/demo.py --workdir runs/demo

The synthetic Human3.6M-layout files are generated into data/synthetic on first use. The run trains
the lifter (MPJPE regression), then the denoiser (upstream's noise-prediction loss), and ends with
the per-action evaluation table. Fits in well under 10 minutes on 2 CPU cores.
"""

from posediff_jax import configs
from posediff_jax.configs import diffpose_h36m


def get_config(arg=None):
  configs.pick_variant(__file__, arg)
  c = diffpose_h36m.get_config("cpn")
  c.variant = "demo"
  c.seed = 0
  c.data.root = "data/synthetic"
  c.data.generate_synthetic = True
  c.model.update(hid_dim=64, num_layers=2, n_head=4)
  c.lifter.update(hid_dim=64, num_layers=2, n_head=4)
  c.eval.batch_size = 1024
  c.train.batch_size = 256
  c.train.epochs = 0
  c.train.lifter_steps = 1500
  c.train.steps = 1500
  c.train.lifter_lr = 2e-3
  c.train.log_every = 250
  c.train.eval_every = 500
  c.train.checkpoint_every = 500
  c.train.eval_at_start = True
  c.train.eval_max_batches = 8
  return c
