"""Evaluating a row-independent network a few rows at a time (`eval.cpu_chunk_size`).

On CPU a batch of a few rows keeps every activation and matmul operand cache-sized, which is
faster per row than one large batch (~1.7x for ICASSP's denoiser, ~1.2-1.4x for D3DP's MixSTE);
on GPU/TPU one batch is best while it fits the device's memory, and `eval.chunk_size` rows at a
time when it does not (FinePOSE's 160 rows of 243 x 17 tokens need 21 GiB, a v5e chip has 16).
The result is the same either way.
"""

import jax
import jax.numpy as jnp


def chunk_rows(config) -> int:
  """Rows per piece of a batch: `eval.cpu_chunk_size` on CPU, else `eval.chunk_size` (absent:
  0); 0 = all rows at once. On an accelerator pieces only bound the activation memory of a call
  (`python -m posediff_jax.plan` shows when a call does not fit)."""
  if jax.default_backend() == "cpu":
    return int(config.eval.cpu_chunk_size)
  return int(config.eval.get("chunk_size", 0))


def map_rows(fn, chunk: int, *arrays: jax.Array):
  """`fn(*arrays)` for a function whose rows are independent, computed `chunk` rows at a time.

  The rows are padded (with copies of the last row) to a multiple of `chunk` and the padding is
  dropped again. Chunk j holds rows j, j + n, j + 2n, ... (n chunks), so a batch sharded along its
  rows stays evenly sharded inside every chunk.

  Args:
    fn: maps arrays [R, ...] to an array [R, ...] (or a pytree of them), row by row.
    chunk: rows per call; 0 or >= R calls `fn` once on everything.
    *arrays: inputs (arrays or pytrees of arrays) whose leaves share the leading axis R.

  Returns:
    `fn(*arrays)`.
  """
  rows = jax.tree.leaves(arrays)[0].shape[0]
  if chunk <= 0 or rows <= chunk:
    return fn(*arrays)
  num_chunks = -(-rows // chunk)

  def split(a):  # [R, ...] -> [n, chunk, ...], chunk j = rows j, j + n, ...
    a = jnp.concatenate([a, jnp.repeat(a[-1:], num_chunks * chunk - rows, axis=0)])
    return jnp.swapaxes(a.reshape((chunk, num_chunks) + a.shape[1:]), 0, 1)

  out = jax.lax.map(lambda xs: fn(*xs), jax.tree.map(split, arrays))
  return jax.tree.map(
      lambda y: jnp.swapaxes(y, 0, 1).reshape((num_chunks * chunk,) + y.shape[2:])[:rows], out)
