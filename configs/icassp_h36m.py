r"""ICASSP 2024 cross-channel diffusion (jjkislele/monoMotionDiff) on Human3.6M, upstream settings.

Variants (after the colon):
  cpn  (default) train and test on CPN detections (kernel 0 of DiffPose's GMM file).
  gt   train and test on ground-truth 2D (kernel 0 of DiffPose's GT GMM file).
Both evaluate with flip test-time augmentation and DDIM over t = 6 -> 0, starting from DiffPose's
released lifter.

  python convert_torch_weights.py --family icassp --checkpoint ckpts/ckpt_cpn.pth \
      --lifter ckpts/gcn_xyz_cpn.pth --output checkpoints/icassp_cpn
  python evaluate.py --config configs/icassp_h36m.py:cpn --checkpoint checkpoints/icassp_cpn
  python train.py --config configs/icassp_h36m.py:cpn --workdir runs/icassp_cpn \
      --config.train.lifter_checkpoint=checkpoints/icassp_cpn

Any field can be overridden on the command line, e.g. `--config.model.hid_dim=64`.
"""

import ml_collections

H36M_DIR = "data/h36m"


def get_config(arg=None):
  variant = arg or "cpn"
  if variant not in ("cpn", "gt"):
    raise ValueError(f"icassp_h36m: unknown variant {variant!r}; expected 'cpn' or 'gt'")
  c = ml_collections.ConfigDict()
  c.family = "icassp"
  c.variant = variant
  c.seed = 19960903  # upstream's seed

  c.data = ml_collections.ConfigDict()
  c.data.root = H36M_DIR
  c.data.file_3d = "data_3d_h36m.npz"
  # Unlike DiffPose, the same 2D file serves training and testing. Upstream's own prepared
  # `data_2d_h36m_*_gmm_norm.npy` files are read too (they hold the same kernel-0 2D, normalised).
  source = "cpn_ft_h36m_dbb" if variant == "cpn" else "gt"
  c.data.train_2d = f"data_2d_h36m_{source}_gmm.npz"
  c.data.test_2d = f"data_2d_h36m_{source}_gmm.npz"
  c.data.train_subjects = ("S1", "S5", "S6", "S7", "S8")
  c.data.test_subjects = ("S9", "S11")
  c.data.kernel = "first"  # the GMM's kernel 0 only, whatever its weight (prepare_2d_poses.py)
  # Upstream quirk (spec §0.8): every camera is normalised as 1000x1000, also the 1000x1002 ones.
  c.data.fixed_resolution = (1000, 1000)
  c.data.plain_2d_var = 0.01  # only read for plain 2D files; ICASSP's noise scale is constant
  c.data.worker_count = 0
  c.data.generate_synthetic = False

  # Denoiser (upstream DiffModel; the time embedding is 4 * hid_dim, `emd_dim` is ignored).
  c.model = ml_collections.ConfigDict(dict(hid_dim=96, num_layers=5, n_head=4, dropout=0.25))
  # Lifter: DiffPose's GraFormer and its released gcn_xyz_*.pth, frozen.
  c.lifter = ml_collections.ConfigDict(dict(hid_dim=96, num_layers=5, n_head=4, dropout=0.25))

  c.diffusion = ml_collections.ConfigDict(
      dict(beta_schedule="linear", beta_start=1e-4, beta_end=1e-3, num_steps=51))

  # Upstream `testing`: seq = range(0, 12, 12 // 2) = [0, 6] for both variants. The clean lifter
  # output is the state at t = 6; nothing is noised.
  c.sampling = ml_collections.ConfigDict()
  c.sampling.timestep_range = 12  # upstream test_num_diffusion_timesteps
  c.sampling.num_steps = 2  # upstream test_timesteps
  c.sampling.hypotheses = 1  # upstream test_times
  c.sampling.eta = 0.0

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 1024
  # Also denoise the mirrored pose (u and x negated, left/right swapped) and average (upstream
  # flip_aug); both passes run as one batch. The lifter is not re-run on the mirrored 2D.
  c.eval.flip_tta = True
  # On CPU the networks go over a batch this many rows at a time (activations stay in cache; same
  # results); GPUs and TPUs take the whole batch. 0 = the whole batch everywhere.
  c.eval.cpu_chunk_size = 64
  # Reproduce upstream's per-action P-MPJPE (batch means in mixed-action batches, float32 sums).
  c.eval.upstream_p2_batch_mean = False
  # Reproduce upstream's aliased in-place root subtraction on CPU (zeroes the root only; spec §0.4).
  c.eval.upstream_root_aliasing = False
  c.eval.use_ema = False  # upstream evaluates the live weights, never the EMA

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 1024
  c.train.epochs = 800
  c.train.steps = 0  # > 0 overrides epochs
  c.train.lr = 1e-3
  c.train.lr_decay_epochs = 60
  c.train.lr_gamma = 0.9
  c.train.adam_eps = 1e-8
  c.train.grad_clip = 1.0
  c.train.ema_rate = 0.999
  # The forward-process noise scale of (u, v, x, y, z): constant, not the GMM variances (spec §B.2).
  c.train.noise_scale = (0.1, 0.1, 1.0, 1.0, 1.0)
  c.train.flip_probability = 0.5  # mirror each training pose (2D and 3D) with this probability
  # Upstream trains no lifter: take it from a converted checkpoint, or train one first with our
  # MPJPE-regression recipe (train.lifter_epochs / lifter_steps).
  c.train.lifter_epochs = 0
  c.train.lifter_steps = 0  # > 0 overrides lifter_epochs
  c.train.lifter_lr = 1e-3
  c.train.lifter_checkpoint = ""
  c.train.log_every = 100
  c.train.eval_every = 0  # steps; 0 = at the end of every epoch
  c.train.checkpoint_every = 0  # steps; 0 = at the end of every epoch
  c.train.keep_checkpoints = 3
  c.train.eval_at_start = False
  c.train.eval_max_batches = 0  # > 0 evaluates only the first batches during training
  return c
