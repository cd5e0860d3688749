"""`python -m posediff_jax.data.synthetic --out DIR [--frames N] [--seed S]`: the synthetic
Human3.6M files (`synthetic.h36m`)."""

from posediff_jax.data.synthetic import h36m

if __name__ == "__main__":
  h36m.main()
