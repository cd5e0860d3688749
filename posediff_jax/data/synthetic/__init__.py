"""Synthetic data in the layouts of the real files, so the demo and the tests need no download.

- `body`: seven subjects' skeletons and the forward kinematics from joint angles to joints.
- `motion`: fifteen Human3.6M-like actions as joint-angle tracks (`synthesize_sequence`).
- `h36m`: that motion as the Human3.6M files (3D, plain 2D, GMM 2D; `python -m
  posediff_jax.data.synthetic --out DIR`).
- `mpi3dhp`: the MPI-INF-3DHP `_ori` files (`python -m posediff_jax.data.synthetic_3dhp`).
- `radar`: mmBody and mm-Fi radar point clouds around the motion (`python -m
  posediff_jax.data.synthetic_radar`).

Generation is deterministic given the seed, and every sequence draws from its own random stream,
so a subset of subjects, actions or scenes reproduces the same arrays as the full set.
"""
