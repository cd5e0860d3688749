r"""mmDiff (ECCV 2024) phase 2 on mmBody (Arbe 4D imaging radar): the upstream settings.

Variants (after the colon):
  head (default) the official pysensing code (Oct 2024): the DDIM sampler denoises only the current
       pose; training feeds the predicted limb lengths; lr 2e-5, batch 128.
  v1   the Nov-2023 code (`main_mmDiff.py`, published `ckpt_71.pth`): DDIM over the whole state
       (history included), ground-truth limb lengths while training, the history scaled by
       sqrt(ᾱ_t) in the forward process; the effective lr 1e-3 (argparse), batch 512.

Phase 2 runs on phase-1 outputs cached per frame (coarse pose, per-joint features, radar; spec
§4.1); `phase1` describes the P4Transformer that makes them (for converting its released weights).

  python convert_torch_weights.py --family mmdiff --checkpoint ckpts/mmBody_mmDiff_phase2.pth \
      --output checkpoints/mmdiff_mmbody
  python evaluate.py --config configs/mmdiff_mmbody.py --checkpoint checkpoints/mmdiff_mmbody

Any field can be overridden on the command line, e.g. `--config.sampling.hypotheses=5`.
"""

import ml_collections

MMBODY_DIR = "data/mmbody"
TEST_SCENES = ("lab1", "lab2", "furnished", "rain", "smoke", "poor_lighting", "occlusion")


def get_config(arg=None):
  variant = arg or "head"
  if variant not in ("head", "v1"):
    raise ValueError(f"mmdiff_mmbody: unknown variant {variant!r}; expected 'head' or 'v1'")
  v1 = variant == "v1"
  c = ml_collections.ConfigDict()
  c.family = "mmdiff"
  c.variant = variant
  c.seed = 19960903  # upstream's seed

  # The phase-2 cache written by phase 1 (spec §4.1), poses root-relative in metres:
  # joint_gt_array_<split>.npy [N, 17, 3], joint_pred_array_<split>.npy [N, 17, 3] (coarse),
  # radar_feat_array_<split>.npy [N, 17, 64], radar_input_array_<split>.npy [N, 5184, 6] (the
  # train radar in `radar_train_chunks` files radar_input_array_train{0..4}.npy), and with v1's
  # layout sequence_array_<split>.npy [N] and one test split per scene (test_<scene>).
  c.data = ml_collections.ConfigDict()
  c.data.root = MMBODY_DIR
  c.data.dataset = "mmbody"
  c.data.cache_layout = variant  # "head": one test split, no sequence ids; "v1": per scene + ids
  c.data.test_scenes = TEST_SCENES
  c.data.radar_train_chunks = 5
  c.data.points_per_frame = 5184  # 72 x 72, zero-padded or truncated (first rows)
  c.data.radar_channels = 6  # x, y, z (m, root-centred by the GT pelvis), vel*1e38, amp*10, e/100
  # The radar window: the current frame then frames t-4, t-3, t-2 (t-1 is skipped upstream).
  c.data.radar_window_offsets = (0, -4, -3, -2)
  # Rows outside the recording (and, with v1's ids, from another sequence) fall back to the
  # current row (v1, history) or to row i+k (HEAD, and v1's radar window): spec §4.1.
  c.data.respect_sequences = v1
  c.data.worker_count = 0

  # Denoiser (upstream GCNdiff). Upstream's `emd_dim` is ignored: the embeddings are 4 * hid_dim.
  c.model = ml_collections.ConfigDict(dict(
      hid_dim=96, num_layers=5, n_head=4, dropout=0.25,
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
  # On CPU the denoiser takes this many rows at a time: the radar-neighbourhood search holds a
  # [rows, 17, 20736] distance array. 0 = the whole batch everywhere.
  c.eval.cpu_chunk_size = 32
  c.eval.use_ema = False  # upstream evaluates the live weights, never the EMA

  c.train = ml_collections.ConfigDict()
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
  c.train.compute_dtype = "float32"
  c.train.eval_at_start = False
  c.train.eval_max_batches = 0
  return c
