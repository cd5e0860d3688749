"""What every training pipeline shares: a per-epoch shuffle split across processes, as a
checkpointable grain stream.

`ShuffledBatchIndices` is a random-access source whose element i is this process's share of
training batch i (sample indices); the frame, clip and radar pipelines (`frame_pipeline`,
`clip_pipeline`, `radar_pipeline`) subclass it to turn the indices into arrays, and
`training_stream` makes the prefetched, checkpointable stream of it. The `check_*` functions are
the batch-size and process-shard checks the pipelines make, with one wording.
"""

import threading

import grain
import numpy as np


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


def check_train_shard(batch_size: int, shard_index: int, shard_count: int) -> None:
  """A clear error for a training batch size or process shard no stream can have."""
  if batch_size <= 0:
    raise ValueError(f"batch_size must be > 0, got {batch_size}")
  check_shard_index(shard_index, shard_count)


def check_eval_shard(batch_size: int, shard_index: int, shard_count: int) -> None:
  """A clear error for a global evaluation batch that the processes cannot split evenly."""
  if batch_size <= 0 or batch_size % shard_count:
    raise ValueError(f"eval batch_size={batch_size} must be > 0 and divisible by "
                     f"shard_count={shard_count}")
  check_shard_index(shard_index, shard_count)


def check_shard_index(shard_index: int, shard_count: int) -> None:
  """A clear error for a process index outside the job's processes."""
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index} must be in [0, shard_count={shard_count})")


def epoch_steps(num_samples: int, batch_size: int) -> int:
  """Full batches in one pass over `num_samples` (the remainder is dropped, as in training)."""
  if batch_size <= 0:
    raise ValueError(f"batch_size must be > 0, got {batch_size}")
  return num_samples // batch_size
