"""`python -m posediff_jax.data.synthetic_radar --out DIR [--layout mmbody|mmfi] [--frames N]
[--seed S]`: a synthetic radar set. The generator is `posediff_jax.data.synthetic.radar`; this
module only keeps the documented command."""

from posediff_jax.data.synthetic import radar

if __name__ == "__main__":
  radar.main()
