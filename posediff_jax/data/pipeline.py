"""Input pipelines over a `FrameSet`: a shuffled, checkpointable grain stream for training and
unshuffled fixed-shape batches for evaluation.

The data side knows no model: both yield dicts of numpy arrays,

- `input_2d` float32 `[B, 17, 2]`: the chosen GMM kernel's mean (normalised u, v),
- `input_2d_var` float32 `[B, 17, 2]`: that kernel's variances (DiffPose's noise scales),
- `target_3d` float32 `[B, 17, 3]`: root-relative camera-frame metres,
- `action` int32 `[B]`: index into `h36m.ACTIONS`,

and evaluation batches add `valid` bool `[B]` and `index` int32 `[B]` (row in the `FrameSet`).

`ShuffledBatchIndices` (the per-epoch shuffle split across processes) and `training_stream` are
shared with the clip pipeline of `data.video`.
"""

import threading
from typing import Any, Iterator

import grain
import numpy as np

from posediff_jax.data import h36m


# Threads that assemble training batches ahead of the consumer, and how many batches they keep
# ready. Small on purpose: each batch is one vectorised gather, and a large queue would keep
# computing (and delay interpreter exit) after training stops.
_READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)
_FOREVER = 2**62
# How training batches are shuffled (`ShuffledBatchIndices`).
ORDERS = ("seeded", "upstream")


class ShuffledBatchIndices:
  """A grain random-access source whose element i is one process's share of training batch i.

  The element is the sample indices (int `[batch_size]`); subclasses turn them into arrays. Each
  epoch draws a fresh permutation of the samples: from `seed` and the epoch number (`order`
  "seeded"), or, as VideoPose3D's and D3DP's `ChunkedGenerator` does (`order` "upstream"), as the
  epoch-th successive `permutation` of one `np.random.RandomState(seed)`. Global batch i
  takes the next `batch_size * shard_count` samples of that permutation and this process keeps
  every `shard_count`-th of them, starting at `shard_index`, so the processes' shares of a step are
  disjoint. A partial global batch at the end of an epoch is dropped. Reading a batch is then one
  vectorised gather; grain's per-element shuffle would cost ~15 us per sample in Python.
  """

  def __init__(self, num_samples: int, *, batch_size: int, seed: int, shard_index: int,
               shard_count: int, num_epochs: int | None, order: str = "seeded"):
    if order not in ORDERS:
      raise ValueError(f"shuffle order must be one of {ORDERS}, got {order!r}")
    self._order = order
    self._num_samples = num_samples
    self._batch_size = batch_size
    self._seed = seed
    self._shard_index = shard_index
    self._shard_count = shard_count
    self.steps_per_epoch = epoch_steps(num_samples, batch_size * shard_count)
    self._length = _FOREVER if num_epochs is None else num_epochs * self.steps_per_epoch
    self._cache = None  # (epoch, permutation of the samples)
    self._upstream = None  # (epoch, RandomState after drawing that epoch's permutation)
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return self._length

  def _permutation(self, epoch: int) -> np.ndarray:
    cached = self._cache  # one atomic read: prefetch threads may replace it concurrently
    if cached is None or cached[0] != epoch:
      if self._order == "upstream":
        cached = (epoch, self._upstream_permutation(epoch))
      else:
        cached = (epoch, np.random.default_rng([self._seed, epoch]).permutation(self._num_samples))
      self._cache = cached
    return cached[1]

  def _upstream_permutation(self, epoch: int) -> np.ndarray:
    """The epoch-th permutation of one RandomState(seed), drawn forward from the last one drawn
    (replayed from the seed when an earlier epoch is asked for, e.g. after a restore)."""
    with self._lock:
      done, state = self._upstream or (-1, None)
      if state is None or epoch <= done:
        done, rng = -1, np.random.RandomState(self._seed)
      else:
        rng = np.random.RandomState()
        rng.set_state(state)
      while done < epoch:
        permutation = rng.permutation(self._num_samples)
        done += 1
      self._upstream = (done, rng.get_state())
      return permutation

  def __getstate__(self):
    # Worker processes rebuild the permutation instead of receiving it.
    return {k: v for k, v in self.__dict__.items() if k != "_lock"} | {
        "_cache": None, "_upstream": None}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def __getitem__(self, index) -> np.ndarray:
    index = int(index)
    if not 0 <= index < self._length:
      raise IndexError(f"batch {index} is outside the {self._length} batches of this source")
    epoch, step = divmod(index, self.steps_per_epoch)
    global_batch = self._batch_size * self._shard_count
    start = step * global_batch + self._shard_index
    return self._permutation(epoch)[start:start + global_batch:self._shard_count]

  def __repr__(self) -> str:
    return (f"{type(self).__name__}({self._num_samples} samples, batch {self._batch_size}, "
            f"shard {self._shard_index}/{self._shard_count})")


class ShuffledBatchSource(ShuffledBatchIndices):
  """`ShuffledBatchIndices` over the frames of a `FrameSet`: element i is a dict of frame arrays."""

  def __init__(self, frames: h36m.FrameSet, *, batch_size: int, seed: int, shard_index: int,
               shard_count: int, num_epochs: int | None):
    super().__init__(len(frames), batch_size=batch_size, seed=seed, shard_index=shard_index,
                     shard_count=shard_count, num_epochs=num_epochs)
    self._frames = frames

  def __getitem__(self, index) -> dict[str, np.ndarray]:
    rows = super().__getitem__(index)
    return {"gmm_2d": self._frames.gmm_2d[rows], "target_3d": self._frames.target_3d[rows],
            "action": self._frames.action[rows]}


def training_stream(dataset: grain.MapDataset, worker_count: int = 0) -> grain.IterDataset:
  """A map dataset of training batches as a prefetched, checkpointable `grain.IterDataset`.

  Args:
    dataset: element i = training batch i.
    worker_count: > 0 assembles batches in that many worker processes (`mp_prefetch`).

  Returns:
    The stream; its iterators support `get_state()` / `set_state()`.
  """
  stream = dataset.to_iter_dataset(_READ_OPTIONS)
  if worker_count > 0:
    stream = stream.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return stream


def _sample_kernels(batch: dict[str, np.ndarray], rng: np.random.Generator
                    ) -> dict[str, np.ndarray]:
  """Draws one GMM kernel per sample and joint by weight, as upstream's training loader does."""
  uv, var = h36m.choose_kernel(batch["gmm_2d"], rng)
  return {"input_2d": uv.astype(np.float32), "input_2d_var": var.astype(np.float32),
          "target_3d": batch["target_3d"].astype(np.float32),
          "action": batch["action"].astype(np.int32)}


def epoch_steps(num_samples: int, batch_size: int) -> int:
  """Full batches in one pass over `num_samples` (the remainder is dropped, as in training)."""
  if batch_size <= 0:
    raise ValueError(f"batch_size must be > 0, got {batch_size}")
  return num_samples // batch_size


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
  if batch_size <= 0:
    raise ValueError(f"batch_size must be > 0, got {batch_size}")
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index} must be in [0, shard_count={shard_count})")
  if len(frame_set) < shard_count * batch_size:
    raise ValueError(f"{len(frame_set)} frames cannot fill one batch of {batch_size} on each of "
                     f"{shard_count} process(es)")
  if num_epochs is not None and num_epochs <= 0:
    raise ValueError(f"num_epochs must be None or > 0, got {num_epochs}")
  source = ShuffledBatchSource(frame_set, batch_size=batch_size, seed=seed,
                               shard_index=shard_index, shard_count=shard_count,
                               num_epochs=num_epochs)
  dataset = grain.MapDataset.source(source).seed(seed).random_map(_sample_kernels)
  return training_stream(dataset, worker_count)


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
  if batch_size <= 0 or batch_size % shard_count:
    raise ValueError(f"eval batch_size={batch_size} must be > 0 and divisible by "
                     f"shard_count={shard_count}")
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index} must be in [0, shard_count={shard_count})")
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
