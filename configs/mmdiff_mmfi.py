r"""mmDiff (ECCV 2024) phase 2 on mm-Fi (TI IWR6843 radar): the upstream (HEAD) settings.

Upstream's `mmDiffRunner` for "MetaFi": Point Transformer phase-1 features of width 32, 8 past
coarse poses, and no radar in phase 2: the local-context layers are built but never run
(`local_flag=2`), and the limb lengths are regressed from the whole pose state rather than from the
features (`limb_flag=2`). Conditions in use: GRC + TMC + SLC. Only HEAD supports mm-Fi.

Phase 2 runs on phase-1 outputs: upstream's cache (`data.source='cache'`, spec §4.2) or the
Point Transformer `phase1` describes run over mm-Fi's own folders (`data.source='raw'`:
root/E0x/Sxx/Axx/{mmwave/frame<NNN>.bin, ground_truth.npy}). Variant `demo`: a small model on a
synthetic mm-Fi-layout set (data/mmfi_synthetic, generated on first use).

  python convert_torch_weights.py --family mmdiff --config configs/mmdiff_mmfi.py \
      --checkpoint ckpts/MetaFi_mmDiff_phase2.pth [--lifter ckpts/MetaFi_mmDiff_phase1.pth] \
      --output checkpoints/mmdiff_mmfi
  python evaluate.py --config configs/mmdiff_mmfi.py --checkpoint checkpoints/mmdiff_mmfi
"""

import ml_collections

from posediff_jax import configs
from posediff_jax.configs import mmdiff_mmbody

MMFI_DIR = "data/mmfi"
# Protocol 1 (14 daily actions), cross-subject split: spec §4.2.
PROTOCOL1_ACTIONS = ("A02", "A03", "A04", "A05", "A13", "A14", "A17", "A18", "A19", "A20", "A21",
                     "A22", "A23", "A27")
TEST_SUBJECTS = ("S05", "S10", "S15", "S20", "S25", "S30", "S35", "S40")


def get_config(arg=None):
  variant = configs.pick_variant(__file__, arg, ("head", "demo"),
                                 hint="v1 had no mm-Fi setting")
  if variant == "demo":
    return mmdiff_mmbody.demo_config(get_config("head"), "data/mmfi_synthetic")
  # Diffusion, sampler, evaluation and the HEAD training recipe are mmBody's.
  c = mmdiff_mmbody.get_config("head")

  c.data.root = MMFI_DIR
  c.data.dataset = "mmfi"
  c.data.protocol_actions = PROTOCOL1_ACTIONS
  c.data.test_subjects = TEST_SUBJECTS  # the other 32 subjects train
  c.data.test_scenes = ("test",)  # the cache's one test split; raw data: by environment
  c.data.radar_train_chunks = 0  # phase 2 caches no radar for mm-Fi
  c.data.points_per_frame = 150  # phase-1 input: 5 frames x 150 points x 5 channels
  c.data.radar_channels = 5  # x, y, z, doppler, intensity
  # HEAD reads the points as they are: no centring, scaling or cropping.
  c.data.centre_on_pelvis = False
  c.data.feature_scale = None
  c.data.crop = None
  # Upstream quirk (spec §4.2): HEAD's 5-frame window reads the current file 5 times.
  c.data.radar_window_offsets = (0, 0, 0, 0, 0)
  c.data.radar_window_fallbacks = (0, 0, 0, 0, 0)
  c.data.respect_sequences = False
  c.data.history_fallback = "forward"
  c.eval.average = "frames"
  c.train.encoder_lr = 1e-4  # HEAD's pysensing yml, as mmBody (the notebook: AdamW 5e-5, 10 epochs)

  c.model.feature_size = 32  # Point Transformer's per-joint features
  c.model.past_frames = 8
  c.model.radar_channels = 5
  c.model.local_flag = 2  # LRC built (6 input channels, hard-coded) but never run
  c.model.limb_flag = 2  # limb lengths from the whole [17, 27] state
  # Phase 1: upstream PointTransformerReg_feat (5 frames x 150 points, one cloud).
  c.phase1 = ml_collections.ConfigDict(dict(
      encoder="point_transformer", input_dim=5, num_blocks=5, num_neighbours=16, model_dim=128,
      dim=512, depth=5, heads=4, dim_head=128, mlp_dim=256, feature_size=32))
  # Only the LRC runs a few rows at a time, and mm-Fi has none: the whole batch goes at once.
  c.eval.cpu_chunk_size = 0
  return c
