r"""DiffPose (CVPR 2023), frame-based, on Human3.6M: the upstream settings.

Variants (after the colon):
  cpn  (default) train on GT 2D GMM data, test on CPN GMM detections; DDIM over t = 12 -> 0.
  gt   train and test on GT 2D GMM data; DDIM over t = 6 -> 0.

  python evaluate.py --config configs/diffpose_h36m.py:cpn --checkpoint checkpoints/diffpose_cpn
  python train.py --config configs/diffpose_h36m.py:cpn --workdir runs/diffpose_cpn \
      --config.train.lifter_checkpoint=checkpoints/diffpose_cpn

Any field can be overridden on the command line, e.g. `--config.model.hid_dim=64`.
"""

import ml_collections

from posediff_jax import configs

H36M_DIR = "data/h36m"


def get_config(arg=None):
  variant = configs.pick_variant(__file__, arg, ("cpn", "gt"))
  c = ml_collections.ConfigDict()
  c.family = "diffpose"
  c.variant = variant
  c.seed = 19960903  # upstream's seed

  c.data = ml_collections.ConfigDict()
  c.data.root = H36M_DIR
  c.data.file_3d = "data_3d_h36m.npz"
  # Upstream trains the CPN model on GT 2D too (DiffPose issue #3: better on both test inputs).
  c.data.train_2d = "data_2d_h36m_gt_gmm.npz"
  c.data.test_2d = ("data_2d_h36m_cpn_ft_h36m_dbb_gmm.npz" if variant == "cpn"
                    else "data_2d_h36m_gt_gmm.npz")
  c.data.train_subjects = ("S1", "S5", "S6", "S7", "S8")
  c.data.test_subjects = ("S9", "S11")
  # Only these action classes, in both splits (upstream's `-a`); () = all 15.
  c.data.actions = ()
  # The var channels a plain (non-GMM) 2D file gets when read as a one-kernel GMM; only scales
  # training noise. Unit: like a GMM file's var channels it is used as it is, as the standard
  # deviation of the noise on u, v in normalised screen units (2 / res_w per pixel), not pixels²:
  # 0.01 = 5 px on the 1000-pixel-wide Human3.6M cameras (prepare_h36m gmm converts pixels²).
  c.data.plain_2d_var = 0.01
  c.data.worker_count = 0
  # The demo sets this: write the synthetic set into data.root if absent.
  c.data.generate_synthetic = False

  # Device mesh: batches split over `data` (-1 = every device); `model` is reserved (README,
  # "Scaling"): no family shards its parameters yet.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, model=1))

  # Denoiser (upstream GCNdiff). Upstream's `emd_dim` is ignored: the time embedding is 4 * hid_dim.
  # `dropout` is the attention layers' sublayer dropout, `inner_dropout` the one after every ChebGC
  # and on the attention probabilities (upstream hard-codes 0.1).
  c.model = ml_collections.ConfigDict(
      dict(hid_dim=96, num_layers=5, n_head=4, dropout=0.25, inner_dropout=0.1, coords_dim=5))
  # Lifter (upstream GCNpose / GraFormer), frozen while the denoiser trains.
  c.lifter = ml_collections.ConfigDict(
      dict(hid_dim=96, num_layers=5, n_head=4, dropout=0.25, inner_dropout=0.1))

  c.diffusion = ml_collections.ConfigDict(
      dict(beta_schedule="linear", beta_start=1e-4, beta_end=1e-3, num_steps=51))

  # Upstream `testing`: seq = range(0, timestep_range, timestep_range // num_steps), so [0, 12]
  # (cpn) or [0, 6] (gt). The clean lifter output is used as the state at the largest t: upstream
  # never noises it (spec §0.1).
  c.sampling = ml_collections.ConfigDict()
  # Upstream test_num_diffusion_timesteps.
  c.sampling.timestep_range = 24 if variant == "cpn" else 12
  c.sampling.num_steps = 2  # upstream test_timesteps
  c.sampling.hypotheses = 1  # upstream test_times
  c.sampling.eta = 0.0

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 1024
  # Reproduce upstream's per-action P-MPJPE (batch means in mixed-action batches, float32 sums).
  c.eval.upstream_p2_batch_mean = False
  # Reproduce upstream's aliased in-place root subtraction on CPU (zeroes the root only; spec §0.4).
  c.eval.upstream_root_aliasing = False
  c.eval.use_ema = False  # upstream evaluates the live weights, never the EMA
  # Replay recorded sampler noise instead of drawing it from `seed` (posediff_jax/evaluation/
  # noise.py documents the file); "" = draw. Without it the noise is a function of `seed` alone.
  c.eval.noise_file = ""
  # "bfloat16" rounds the operands of the networks' dense matmuls to bfloat16 (~1.4-1.5x faster on
  # CPUs with AVX512-BF16; MPJPE +0.05 mm on small trained models); parameters, sums, norms,
  # attention and the sampler stay float32.
  c.eval.compute_dtype = "float32"

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 1024
  c.train.epochs = 80
  c.train.steps = 0  # > 0 overrides epochs
  # The effective upstream lr: main_diffpose_frame.py's argparse default 1e-3 replaces the yml's
  # 2e-5.
  c.train.lr = 1e-3
  c.train.lr_decay_epochs = 60
  c.train.lr_gamma = 0.9
  c.train.adam_eps = 1e-8
  c.train.grad_clip = 1.0
  c.train.ema_rate = 0.999
  # Upstream never released a lifter recipe: ours is MPJPE regression, run before the denoiser
  # stage.
  c.train.lifter_epochs = 0
  c.train.lifter_steps = 0  # > 0 overrides lifter_epochs
  c.train.lifter_lr = 1e-3
  c.train.lifter_checkpoint = ""  # a converted or trained checkpoint to take the lifter from
  c.train.log_every = 100
  c.train.eval_every = 0  # steps; 0 = at the end of every epoch
  c.train.checkpoint_every = 0  # steps; 0 = at the end of every epoch
  c.train.keep_checkpoints = 3
  # batch_size is the global batch of one optimizer step. With grad_accum_steps = k it is split into
  # k micro-batches (rows i, i + k, ...) whose gradients are averaged: the update equals one step on
  # the whole batch when the loss is a batch mean and has no randomness (dropout and diffusion noise
  # are drawn per micro-batch). batch_size must divide by k x the number of devices.
  c.train.grad_accum_steps = 1
  # On CPU the batch runs as passes of this many rows, the gradients averaged (the same step up to
  # float32 rounding; antithetic timesteps are paired within a pass): cache-sized activations made
  # the 1024-row step ~2x faster than all rows at once. 0 = all at once; other backends always.
  c.train.cpu_chunk_size = 128
  # "bfloat16" runs the forward and backward passes in bfloat16; parameters, optimizer state and
  # EMA stay float32.
  c.train.compute_dtype = "float32"
  c.train.eval_at_start = False  # evaluate the untrained model first (a baseline for the log)
  c.train.eval_max_batches = 0  # > 0 evaluates only the first batches during training
  c.train.final_eval = True  # evaluate the whole test split when training ends
  return c
