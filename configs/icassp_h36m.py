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

To train from scratch, only the lifter is needed: convert it alone (or take a DiffPose checkpoint's)
  python convert_torch_weights.py --family icassp --lifter ckpts/gcn_xyz_cpn.pth \
      --output checkpoints/lifter_cpn
  python train.py --config configs/icassp_h36m.py:cpn --workdir runs/icassp_cpn \
      --config.train.lifter_checkpoint=checkpoints/lifter_cpn

Any field can be overridden on the command line, e.g. `--config.model.hid_dim=64`.
"""

from posediff_jax import configs
from posediff_jax.configs import diffpose_h36m


def get_config(arg=None):
  variant = configs.pick_variant(__file__, arg, ("cpn", "gt"))
  # Everything not set here is DiffPose's (data files, subjects, schedule, lr staircase, EMA, ...).
  c = diffpose_h36m.get_config(variant)
  c.family = "icassp"

  # Unlike DiffPose, the same 2D file serves training and testing. Upstream's own prepared
  # `data_2d_h36m_*_gmm_norm.npy` files are read too (they hold the same kernel-0 2D, normalised).
  source = "cpn_ft_h36m_dbb" if variant == "cpn" else "gt"
  c.data.train_2d = f"data_2d_h36m_{source}_gmm.npz"
  c.data.test_2d = f"data_2d_h36m_{source}_gmm.npz"
  c.data.kernel = "first"  # the GMM's kernel 0 only, whatever its weight (prepare_2d_poses.py)
  # Upstream quirk (spec §0.8): every camera is normalised as 1000x1000, also the 1000x1002 ones.
  c.data.fixed_resolution = (1000, 1000)

  # Denoiser (upstream DiffModel; 2D enters as its own branch, so there is no coords_dim).
  del c.model["coords_dim"]
  # The lifter is DiffPose's GraFormer and its released gcn_xyz_*.pth, frozen.

  # Upstream `testing`: seq = range(0, 12, 12 // 2) = [0, 6] for both variants. The clean lifter
  # output is the state at t = 6; nothing is noised.
  c.sampling.timestep_range = 12

  # Also denoise the mirrored pose (u and x negated, left/right swapped) and average (upstream
  # flip_aug); both passes run as one batch. The lifter is not re-run on the mirrored 2D.
  c.eval.flip_tta = True
  # On CPU the pipeline goes over a batch in pieces of this many denoiser rows (frames x 2 passes;
  # the lifter takes twice as many rows), so activations stay in cache; same results. 64 measured
  # fastest on a 2-core EPYC (32 and 128: 5-15% slower), for float32 and bfloat16 alike. GPUs and
  # TPUs take the whole batch. 0 = the whole batch everywhere.
  c.eval.cpu_chunk_size = 64

  c.train.epochs = 800
  # The forward-process noise scale of (u, v, x, y, z): constant, not the GMM variances (spec §B.2).
  c.train.noise_scale = (0.1, 0.1, 1.0, 1.0, 1.0)
  c.train.flip_probability = 0.5  # mirror each training pose (2D and 3D) with this probability
  # Upstream trains no lifter: take it from a converted checkpoint (DiffPose's or ICASSP's), or
  # train one first with our MPJPE-regression recipe (train.lifter_epochs / lifter_steps).
  return c
