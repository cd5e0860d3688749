r"""D3DP (ICCV 2023): MixSTE transformer denoiser over 243-frame clips, on Human3.6M.

Variants (after the colon):
  cpn  (default) 2D from CPN detections (data_2d_h36m_cpn_ft_h36m_dbb.npz), train and test.
  gt   2D from the projected ground truth (data_2d_h36m_gt.npz).

  python convert_torch_weights.py --family d3dp --checkpoint h36m_best_epoch.bin \
      --output checkpoints/d3dp_cpn
  python evaluate.py --config configs/d3dp_h36m.py:cpn --checkpoint checkpoints/d3dp_cpn
  python train.py --config configs/d3dp_h36m.py:cpn --workdir runs/d3dp_cpn

The evaluation settings are the README's (H=5 hypotheses, K=5 DDIM steps, 4 clips per call, flip
test-time augmentation); the paper's tables use `--config.sampling.num_hypotheses=20
--config.sampling.num_steps=10`. Any field can be overridden on the command line.
"""

import ml_collections

from posediff_jax import configs

H36M_DIR = "data/h36m"


def get_config(arg=None):
  variant = configs.pick_variant(__file__, arg, ("cpn", "gt"))
  c = ml_collections.ConfigDict()
  c.family = "d3dp"
  c.variant = variant
  c.seed = 1  # upstream seeds random, numpy and torch with 1

  c.data = ml_collections.ConfigDict()
  c.data.dataset = "h36m"
  c.data.layout = "clips"  # 243-frame clips, not single frames (posediff_jax.datasets)
  c.data.root = H36M_DIR
  c.data.file_3d = "data_3d_h36m.npz"
  c.data.file_2d = ("data_2d_h36m_cpn_ft_h36m_dbb.npz" if variant == "cpn"
                    else "data_2d_h36m_gt.npz")
  c.data.train_subjects = ("S1", "S5", "S6", "S7", "S8")
  c.data.test_subjects = ("S9", "S11")
  # Only these action classes, in both splits (upstream's `-a`); () = all 15.
  c.data.actions = ()
  c.data.worker_count = 0
  c.data.generate_synthetic = False  # write the synthetic set into data.root if absent

  # Device mesh: batches split over `data` (-1 = every device); `model` is reserved.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, model=1))

  # MixSTE2 (upstream args: -f 243, -cs 512, -dep 8; 8 heads, mlp_ratio 2 hard-coded).
  c.model = ml_collections.ConfigDict()
  c.model.num_frames = 243
  c.model.num_joints = 17
  c.model.embed_dim = 512
  c.model.depth = 8
  c.model.num_heads = 8
  c.model.mlp_ratio = 2.0
  c.model.drop_path_rate = 0.1  # training only; evaluation never drops
  # Recompute each block's activations in the backward pass: ~depth-fold less activation memory
  # in training (larger per-chip batches; python -m posediff_jax.plan shows the figures), ~1/3
  # more FLOPs. Same parameters and results.
  c.model.remat = False

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.beta_schedule = "cosine"
  c.diffusion.num_steps = 1000
  c.diffusion.scale = 1.0  # upstream `-scale`, the "SNR scale" on x0
  c.diffusion.clip = 1.1  # upstream clamps x_t and x0 to ±1.1·scale

  c.sampling = ml_collections.ConfigDict()
  c.sampling.num_hypotheses = 5  # upstream -num_proposals (H)
  c.sampling.num_steps = 5  # upstream -sampling_timesteps (K)
  c.sampling.eta = 1.0
  c.sampling.flip = True  # upstream test_time_augmentation, always on

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 4  # clips per call (upstream -b 4)
  c.eval.modes = ("J_Best", "J_Agg", "P_Best", "P_Agg")
  # Also score the last step with only the first h hypotheses, h = 1..H (evaluate.py --plots).
  c.eval.hypotheses_curve = True
  # "bfloat16" runs the denoiser's matmuls in bfloat16 (parameters stay float32).
  c.eval.compute_dtype = "float32"
  # On CPU each denoiser pass takes this many of a call's clip-hypothesis rows (cache-sized
  # matmuls, ~1.2-1.4x faster per row than 4 at once); 0 = all rows. Other backends: all rows.
  c.eval.cpu_chunk_size = 1
  # GPUs/TPUs: rows per denoiser pass when a call's rows do not fit the device at once; 0 = all.
  # Same results. D3DP's 40 rows (4 clips x 5 hypotheses x 2 flips) need 8.8 GiB on a v5e chip
  # (python -m posediff_jax.plan), so all at once.
  c.eval.chunk_size = 0
  c.eval.use_ema = False
  # Replay recorded sampler noise instead of drawing it from `seed` (posediff_jax/evaluation/
  # noise.py documents the file); "" = draw. Without it the noise is a function of `seed` alone.
  c.eval.noise_file = ""

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 4  # clips (upstream 1024 // 243)
  c.train.epochs = 400
  c.train.steps = 0  # > 0 overrides epochs
  c.train.lr = 6e-5
  c.train.lr_decay = 0.993  # multiplied in after every epoch
  c.train.weight_decay = 0.1
  c.train.adam_eps = 1e-8
  c.train.grad_clip = 0.0  # upstream does not clip
  c.train.ema_rate = 0.0  # upstream keeps no EMA; > 0 keeps one
  c.train.flip_augment = True  # each chunk also appears mirrored (upstream default)
  # "seeded": a fresh permutation per epoch from (seed, epoch). "upstream": the successive
  # permutations of one RandomState(upstream_shuffle_seed), upstream's ChunkedGenerator order.
  c.train.shuffle = "seeded"
  c.train.upstream_shuffle_seed = 1234  # upstream's --random_seed default
  # Upstream calls loss.backward(gradient=loss): the gradient of ½·loss², not of the loss.
  c.train.upstream_loss_scaled_gradient = True
  c.train.log_every = 100
  c.train.eval_every = 0  # steps; 0 = at the end of every epoch
  c.train.checkpoint_every = 0  # steps; 0 = at the end of every epoch
  c.train.keep_checkpoints = 3
  c.train.grad_accum_steps = 1
  # On CPU the batch runs as passes of this many clips, the gradients averaged (same step up to
  # float32 rounding): smaller activations, faster on a 2-core CPU (docs/benchmarks.md). 0 = all
  # rows at once. Other backends always take the whole batch.
  c.train.cpu_chunk_size = 1
  c.train.compute_dtype = "float32"
  c.train.eval_at_start = False
  c.train.eval_max_batches = 0
  c.train.final_eval = True  # evaluate the whole test split when training ends
  # A converted or trained checkpoint to start from ("" = fresh weights). FinePOSE/DSGDiffu take
  # their text cache from it.
  c.train.init_checkpoint = ""
  # Upstream validates every epoch with H=1, K=1 (flip on).
  c.train.eval_num_hypotheses = 1
  c.train.eval_num_steps = 1
  return c
