r"""mmDiff (ECCV 2024) phase 2 on mmBody (Arbe 4D imaging radar): the upstream settings.

Variants (after the colon):
  head (default) the official pysensing code (Oct 2024): the DDIM sampler denoises only the current
       pose; training feeds the predicted limb lengths; lr 2e-5, batch 128; one "Test" average
       over all frames.
  v1   the Nov-2023 code (`main_mmDiff.py`, published `ckpt_71.pth`): DDIM over the whole state
       (history included), ground-truth limb lengths while training, the history scaled by
       sqrt(ᾱ_t) in the forward process; the effective lr 1e-3 (argparse), batch 512; per-scene
       results averaged over the 7 scenes.
  demo a small model trained (both phases) and evaluated on a synthetic radar set generated into
       data/mmbody_synthetic on first use; a few minutes on a CPU.

Data (`data.source`): 'cache' (default) reads upstream's phase-2 cache, the phase-1 outputs cached
per frame (coarse pose, per-joint features, radar; spec §4.1); 'raw' reads mmBody's own folders
and runs phase 1 itself with the encoder `phase1` describes (P4Transformer), converted from the
released weights or trained here (`train.encoder_epochs`).

  python convert_torch_weights.py --family mmdiff --checkpoint ckpts/mmBody_mmDiff_phase2.pth \
      [--lifter ckpts/mmBody_mmDiff_phase1.pth] --output checkpoints/mmdiff_mmbody
  python evaluate.py --config configs/mmdiff_mmbody.py --checkpoint checkpoints/mmdiff_mmbody \
      [--config.data.source=raw --config.data.root=data/mmBody]
  python train.py --config configs/mmdiff_mmbody.py --workdir runs/mmdiff_mmbody \
      --config.data.source=raw --config.train.encoder_epochs=5   # phase 1, then phase 2
  python train.py --config configs/mmdiff_mmbody.py:demo --workdir runs/mmdiff_demo

Any field can be overridden on the command line, e.g. `--config.sampling.hypotheses=5`.
"""

import ml_collections

from posediff_jax import configs

MMBODY_DIR = "data/mmbody"
TEST_SCENES = ("lab1", "lab2", "furnished", "rain", "smoke", "poor_lighting", "occlusion")


def get_config(arg=None):
  variant = configs.pick_variant(__file__, arg, ("head", "v1", "demo"))
  if variant == "demo":
    return demo_config(get_config("head"), "data/mmbody_synthetic")
  v1 = variant == "v1"
  c = ml_collections.ConfigDict()
  c.family = "mmdiff"
  c.variant = variant
  c.seed = 19960903  # upstream's seed
  # Device mesh: batches split over `data` (-1 = every device); `model` is reserved.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, model=1))

  # The phase-2 cache written by phase 1 (spec §4.1), poses root-relative in metres:
  # joint_gt_array_<split>.npy [N, 17, 3], joint_pred_array_<split>.npy [N, 17, 3] (coarse),
  # radar_feat_array_<split>.npy [N, 17, 64], radar_input_array_<split>.npy [N, 5184, 6] (the
  # train radar in `radar_train_chunks` files radar_input_array_train{0..4}.npy), and with v1's
  # layout sequence_array_<split>.npy [N] and one test split per scene (test_<scene>).
  # The raw layout (data.source='raw'): root/train/sequence_<id>/{radar,mesh}/frame_<k>.* and
  # root/test/<scene>/sequence_<id>/..., preprocessed as upstream's loader (see data/radar.py).
  c.data = ml_collections.ConfigDict()
  c.data.layout = "radar"
  c.data.source = "cache"  # "cache": upstream's phase-2 cache; "raw": mmBody's own folders
  c.data.root = MMBODY_DIR
  c.data.dataset = "mmbody"
  c.data.generate_synthetic = False  # raw only: write a synthetic set into root if it is empty
  c.data.cache_layout = "v1" if v1 else "head"  # head: one test split, no ids; v1: per scene + ids
  c.data.test_scenes = TEST_SCENES
  c.data.radar_train_chunks = 5  # cache: radar_input_array_train{0..4}.npy
  c.data.points_per_frame = 5184  # 72 x 72, zero-padded or truncated (first rows)
  c.data.radar_channels = 6  # x, y, z (m, root-centred by the GT pelvis), vel*1e38, amp*10, e/100
  # Raw frames: x, y, z minus the current frame's ground-truth pelvis (at test time too), the
  # feature columns scaled, then the box around the pelvis kept (HEAD's crop).
  c.data.centre_on_pelvis = True
  c.data.feature_scale = (1e38, 10.0, 0.01)
  c.data.crop = ((-1.67, 1.67), (-1.0, 1.0), (-1.67, 1.67))
  c.data.allow_empty_frames = False  # True: a frame without points becomes all padding
  # The radar window: the current frame then frames t-4, t-3, t-2 (t-1 is skipped upstream); a
  # frame that does not exist is replaced by frame t+0, t+1, t+2 (upstream's sliding window).
  c.data.radar_window_offsets = (0, -4, -3, -2)
  c.data.radar_window_fallbacks = (0, 0, 1, 2)
  # Past coarse poses: HEAD ignores sequence boundaries and replaces rows before the start by row
  # i+k; v1 stays within the sequence and uses row i instead (spec §4.1). The cache's windows
  # follow respect_sequences too; raw windows always stay within the recording.
  c.data.respect_sequences = v1
  c.data.history_fallback = "current" if v1 else "forward"
  c.data.worker_count = 0

  # Denoiser (upstream GCNdiff). Upstream's `emd_dim` is ignored: the embeddings are 4 * hid_dim.
  c.model = ml_collections.ConfigDict(dict(
      hid_dim=96, num_layers=5, n_head=4, dropout=0.25,
      inner_dropout=0.1,  # after every ChebGC and on attention probabilities, LRC too (upstream)
      feature_size=64,  # P4Transformer's per-joint features (GRC)
      past_frames=6,  # TMC: coarse poses t-6 .. t-1
      radar_channels=6,
      global_flag=1, local_flag=1, temp_flag=1, limb_flag=1,  # GRC, LRC, TMC, SLC as upstream
      local_points=50, local_radius_sq=0.04, local_attn_layers=5, limb_hidden=1024))

  # Phase 1 (upstream P4Transformer_feat), for converting and running the released encoder; phase 2
  # itself reads its cached outputs.
  c.phase1 = ml_collections.ConfigDict(dict(
      encoder="p4transformer", radius=0.1, num_samples=32, spatial_stride=32,
      temporal_kernel_size=3, temporal_stride=2, temporal_padding=(1, 0), dim=1024, depth=10,
      heads=8, dim_head=256, mlp_dim=2048, feature_size=64, point_feature_channels=3))

  c.diffusion = ml_collections.ConfigDict(
      dict(beta_schedule="linear", beta_start=1e-4, beta_end=1e-3, num_steps=51))

  # Upstream `testing`: seq = range(0, 25, 25 // 2) = [0, 12, 24]: 3 DDIM steps from the coarse
  # pose taken as the state at t = 24 (never noised).
  c.sampling = ml_collections.ConfigDict()
  c.sampling.timestep_range = 25  # upstream test_num_diffusion_timesteps
  c.sampling.num_steps = 2  # upstream test_timesteps
  c.sampling.hypotheses = 1  # upstream test_times (v1's argparse default 5 is not used)
  c.sampling.eta = 0.0
  c.sampling.update_history = v1  # v1 runs DDIM on the history channels too

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 256
  c.eval.encoder_batch_size = 16  # phase 1 over raw data (upstream's pretrain batch)
  # v1 prints each scene and their unweighted mean; HEAD one bucket of all test frames.
  c.eval.average = "scenes" if v1 else "frames"
  # On CPU the LRC takes this many rows at a time, so its [rows, 17, 50, 96] point features stay
  # cache-sized (8 measured 5-15% faster than 32); the graph network takes the whole batch.
  # 0 = the whole batch everywhere.
  c.eval.cpu_chunk_size = 8
  # "bfloat16" runs the phase-2 denoiser's matmuls in bfloat16 (parameters stay float32).
  c.eval.compute_dtype = "float32"
  c.eval.use_ema = False  # upstream evaluates the live weights, never the EMA
  # Replay recorded sampler noise instead of drawing it from `seed` (posediff_jax/evaluation/
  # noise.py documents the file); "" = draw. Without it the noise is a function of `seed` alone.
  c.eval.noise_file = ""

  c.train = ml_collections.ConfigDict()
  # Phase 1 (HEAD `phase1_train`, pysensing yml): Adam lr 1e-4 with torch's weight decay 1e-8,
  # batch 16, grad-clip 1.0 (train.grad_clip), MSE on the root-relative joints, 5 epochs (the
  # author advises ~1 on mmBody). Needs data.source='raw'; 0 here, as the cache needs no encoder.
  c.train.encoder_epochs = 0
  c.train.encoder_steps = 0  # > 0 overrides encoder_epochs
  c.train.encoder_lr = 1e-4
  c.train.encoder_weight_decay = 1e-8
  c.train.encoder_batch_size = 16
  c.train.encoder_checkpoint = ""  # a converted phase-1 encoder for phase 2 on raw data
  # Phase 2.
  c.train.batch_size = 512 if v1 else 128
  c.train.epochs = 100
  c.train.steps = 0  # > 0 overrides epochs
  # v1: main_mmDiff.py's argparse --lr (1e-3) replaces the yml's malformed value; HEAD: the yml.
  c.train.lr = 1e-3 if v1 else 2e-5
  c.train.lr_decay_epochs = 60  # lr0 * 0.9^(epoch / 60), set at epochs 0 and 60
  c.train.lr_gamma = 0.9
  c.train.adam_eps = 1e-8
  c.train.grad_clip = 1.0
  c.train.ema_rate = 0.999
  c.train.limb_loss_weight = 10.0
  c.train.limb_teacher_forcing = v1  # feed the GT limb lengths to the limb embedding
  c.train.diffuse_history = v1  # q_sample the whole state (zero noise on the history)
  c.train.log_every = 100
  c.train.eval_every = 0  # steps; 0 = at the end of every epoch
  c.train.checkpoint_every = 0  # steps; 0 = at the end of every epoch
  c.train.keep_checkpoints = 3
  c.train.grad_accum_steps = 1
  # On CPU, rows per forward/backward pass (gradients averaged over passes); 0 = all at once.
  c.train.cpu_chunk_size = 0
  c.train.compute_dtype = "float32"
  c.train.eval_at_start = False
  c.train.eval_max_batches = 0
  return c


def demo_config(c, root: str):
  """A config made small enough to train both phases on a synthetic set in minutes on a CPU."""
  c.variant = "demo"
  c.seed = 0
  c.data.source = "raw"
  c.data.root = root
  c.data.generate_synthetic = True
  c.data.synthetic_frames = 48
  c.data.points_per_frame = min(c.data.points_per_frame, 256)
  c.model.update(hid_dim=32, num_layers=2, local_points=32, limb_hidden=128)
  c.model.feature_size = c.phase1.feature_size = 16
  if c.phase1.encoder == "p4transformer":
    c.phase1.update(dim=64, depth=2, heads=2, dim_head=32, mlp_dim=128, num_samples=16)
  else:
    c.phase1.update(num_blocks=2, dim=64, depth=2, heads=2, dim_head=32, mlp_dim=128,
                    model_dim=32, num_neighbours=8)
  c.eval.batch_size = 64
  c.eval.encoder_batch_size = 32
  c.eval.cpu_chunk_size = 0
  c.train.encoder_epochs = 0
  c.train.encoder_steps = 300
  c.train.encoder_lr = 1e-3
  c.train.encoder_batch_size = 16
  c.train.epochs = 0
  c.train.steps = 300
  c.train.lr = 1e-3
  c.train.batch_size = 32
  c.train.log_every = 50
  c.train.eval_every = 100
  c.train.checkpoint_every = 100
  return c
