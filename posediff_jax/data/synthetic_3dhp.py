"""`python -m posediff_jax.data.synthetic_3dhp --out DIR [--frames N] [--test-frames N] [--seed S]`:
the synthetic MPI-INF-3DHP files. The generator is `posediff_jax.data.synthetic.mpi3dhp`; this
module only keeps the documented command."""

from posediff_jax.data.synthetic import mpi3dhp

if __name__ == "__main__":
  mpi3dhp.main()
