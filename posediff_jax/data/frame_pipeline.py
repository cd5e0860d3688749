"""The frame pipeline: batches of single frames of a `h36m.FrameSet` (DiffPose, ICASSP'24).

A shuffled, checkpointable grain stream for training and unshuffled fixed-shape batches for
evaluation. The data side knows no model: both yield dicts of numpy arrays,

- `input_2d` float32 `[B, 17, 2]`: the chosen GMM kernel's mean (normalised u, v),
- `input_2d_var` float32 `[B, 17, 2]`: that kernel's variances (DiffPose's noise scales),
- `target_3d` float32 `[B, 17, 3]`: root-relative camera-frame metres,
- `action` int32 `[B]`: index into `h36m.ACTIONS`,

and evaluation batches add `valid` bool `[B]` and `index` int32 `[B]` (row in the `FrameSet`).
"""

from typing import Any, Iterator

import grain
import numpy as np

from posediff_jax.data import h36m
from posediff_jax.data import pipeline


class ShuffledBatchSource(pipeline.ShuffledBatchIndices):
  """`pipeline.ShuffledBatchIndices` over the frames of a `FrameSet`: element i is a dict of
  frame arrays."""

  def __init__(self, frames: h36m.FrameSet, *, batch_size: int, seed: int, shard_index: int,
               shard_count: int, num_epochs: int | None):
    super().__init__(len(frames), batch_size=batch_size, seed=seed, shard_index=shard_index,
                     shard_count=shard_count, num_epochs=num_epochs)
    self._frames = frames

  def __getitem__(self, index) -> dict[str, np.ndarray]:
    rows = super().__getitem__(index)
    return {"gmm_2d": self._frames.gmm_2d[rows], "target_3d": self._frames.target_3d[rows],
            "action": self._frames.action[rows]}


def _sample_kernels(batch: dict[str, np.ndarray], rng: np.random.Generator
                    ) -> dict[str, np.ndarray]:
  """Draws one GMM kernel per sample and joint by weight, as upstream's training loader does."""
  uv, var = h36m.choose_kernel(batch["gmm_2d"], rng)
  return {"input_2d": uv.astype(np.float32), "input_2d_var": var.astype(np.float32),
          "target_3d": batch["target_3d"].astype(np.float32),
          "action": batch["action"].astype(np.int32)}


def train_dataset(frame_set: h36m.FrameSet, *, batch_size: int, seed: int, shard_index: int = 0,
                  shard_count: int = 1, worker_count: int = 0,
                  num_epochs: int | None = None) -> grain.IterDataset:
  """The training stream: reshuffled every epoch, one random GMM kernel per joint and sample.

  `ShuffledBatchSource` -> `random_map` (the kernel draw, seeded per batch from `seed`) ->
  `to_iter_dataset`, plus `mp_prefetch` when `worker_count > 0`. Everything is a function of
  `seed` and the shard layout. Iterators from `iter(...)` support `get_state()` / `set_state()`
  (and grain's orbax checkpoint handlers).

  Args:
    frame_set: the training frames.
    batch_size: samples per batch on this process.
    seed: seeds the shuffles and the kernel draws.
    shard_index: this process's index (`jax.process_index()`).
    shard_count: the number of processes (`jax.process_count()`).
    worker_count: > 0 runs the pipeline in that many worker processes (`mp_prefetch`).
    num_epochs: None repeats forever; otherwise the stream ends after that many epochs.

  Returns:
    A `grain.IterDataset` of batch dicts (see the module docstring; no `valid`).
  """
  pipeline.check_train_shard(batch_size, shard_index, shard_count)
  if len(frame_set) < shard_count * batch_size:
    raise ValueError(f"{len(frame_set)} frames cannot fill one batch of {batch_size} on each of "
                     f"{shard_count} process(es)")
  if num_epochs is not None and num_epochs <= 0:
    raise ValueError(f"num_epochs must be None or > 0, got {num_epochs}")
  source = ShuffledBatchSource(frame_set, batch_size=batch_size, seed=seed,
                               shard_index=shard_index, shard_count=shard_count,
                               num_epochs=num_epochs)
  dataset = grain.MapDataset.source(source).seed(seed).random_map(_sample_kernels)
  return pipeline.training_stream(dataset, worker_count)


def _eval_batch(frame_set: h36m.FrameSet, rows: np.ndarray, valid: np.ndarray) -> dict[str, Any]:
  uv, var = h36m.choose_kernel(frame_set.gmm_2d[rows])
  return {"input_2d": uv.astype(np.float32), "input_2d_var": var.astype(np.float32),
          "target_3d": frame_set.target_3d[rows], "action": frame_set.action[rows],
          "valid": valid, "index": rows.astype(np.int32)}


def eval_batches(frame_set: h36m.FrameSet, batch_size: int, *, shard_index: int = 0,
                 shard_count: int = 1) -> tuple[Iterator[dict[str, Any]], int]:
  """Evaluation batches in dataset order with upstream's batch boundaries and a fixed shape.

  Global batch i holds frames `[i * batch_size, (i + 1) * batch_size)`, as upstream's unshuffled
  test loader does (its per-action P-MPJPE depends on these boundaries). The last batch is padded
  by repeating the last frame; `valid` marks the real rows. With several processes, each global
  batch is split into `shard_count` contiguous slices of `batch_size // shard_count` rows and
  this process gets slice `shard_index`, so every process yields the same number of batches and
  the slices concatenate back to the global batch. The GMM kernel is chosen deterministically
  (`h36m.choose_kernel` with no generator).

  Args:
    frame_set: the test frames.
    batch_size: the global batch size (divisible by `shard_count`).
    shard_index: this process's index.
    shard_count: the number of processes.

  Returns:
    `(iterator of batch dicts with batch_size // shard_count rows, number of batches)`.
  """
  pipeline.check_eval_shard(batch_size, shard_index, shard_count)
  num_frames = len(frame_set)
  if num_frames == 0:
    raise ValueError("eval_batches: the frame set is empty")
  num_batches = -(-num_frames // batch_size)
  local = batch_size // shard_count

  def generate():
    for batch in range(num_batches):
      rows = batch * batch_size + shard_index * local + np.arange(local)
      valid = rows < num_frames
      yield _eval_batch(frame_set, np.minimum(rows, num_frames - 1), valid)

  return generate(), num_batches
