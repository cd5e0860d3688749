r"""FinePOSE (CVPR 2024): D3DP's MixSTE denoiser conditioned on a text prompt, on Human3.6M.

Variants (after the colon):
  cpn  (default) 2D from CPN detections (data_2d_h36m_cpn_ft_h36m_dbb.npz), train and test.
  gt   2D from the projected ground truth (data_2d_h36m_gt.npz).

  python convert_torch_weights.py --family finepose --checkpoint best_epoch_20_10.bin \
      --output checkpoints/finepose_cpn
  python evaluate.py --config configs/finepose_h36m.py:cpn --checkpoint checkpoints/finepose_cpn
  python train.py --config configs/finepose_h36m.py:cpn --workdir runs/finepose_cpn

Released checkpoints carry CLIP ViT-B/32; converting one encodes the prompt of every action in
`text.actions` once (the text cache). A checkpoint without CLIP needs OpenAI's ViT-B-32.pt
(`--clip ViT-B-32.pt`). Everything not set here is D3DP's (configs/d3dp_h36m.py). The evaluation
settings are the README's: H=20 hypotheses, K=10 DDIM steps, 4 clips per call.
"""

import ml_collections

from posediff_jax import configs
from posediff_jax.configs import d3dp_h36m
from posediff_jax.models import prompts


def add_text_branch(c, family: str) -> None:
  """Turns a D3DP config into a `family` ("finepose" / "dsgdiffu") one, in place."""
  c.family = family
  # Upstream hard-codes these (512 = CLIP's width, which also has to equal model.embed_dim).
  c.model.text_width = 512
  c.model.text_layers = 4
  c.model.text_ff_dim = 2048
  # "upstream": a temporal row r reads the prompt of clip r mod b (spec §11.1), needed for
  # checkpoint parity; "per_clip" reads its own clip's. Equal when a batch shares one prompt.
  c.model.text_tiling = "upstream"
  c.sampling.num_hypotheses = 20
  c.sampling.num_steps = 10
  # 4 clips x 20 hypotheses x 2 flips = 160 rows per call need 21 GiB of activations on a TPU,
  # more than a v5e chip's 16 (python -m posediff_jax.plan --topology v5litepod-8): run them 80
  # rows at a time on accelerators. Same results; the CPU keeps eval.cpu_chunk_size.
  c.eval.chunk_size = 80
  # A batch's rows interact (upstream's text tiling; DSGDiffu's graph attention on row 0), so the
  # training batch cannot run in passes of fewer clips.
  c.train.cpu_chunk_size = 0


def get_config(arg=None):
  variant = configs.pick_variant(__file__, arg, ("cpn", "gt"))
  c = d3dp_h36m.get_config(variant)
  add_text_branch(c, "finepose")
  # One text cache row per prompt name; S1's Martinez-archive names get rows too (spec §13).
  c.text = ml_collections.ConfigDict()
  c.text.actions = prompts.H36M_ACTIONS + ("TakingPhoto", "WalkingDog")

  # Recipe (spec §10): main.py trains 100 epochs on CPN, main_gt.py 120 on GT 2D; lr and decay
  # as D3DP. Upstream forces lr 8e-6 when it resumes a run; a resumed run here continues the
  # schedule (set --config.train.lr=8e-6 to imitate that).
  c.train.epochs = 100 if variant == "cpn" else 120
  return c
