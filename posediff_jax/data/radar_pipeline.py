"""The radar pipeline: batches of a `radar.RadarSplit` for each mmDiff training stage.

The encoder stage (phase 1) reads radar windows and the ground truth (`encoder_batch`); the
denoiser stage (phase 2) reads the past and current coarse poses, the phase-1 features, the ground
truth and, with LRC on, the radar (`denoiser_batch`). `train_dataset` is the stage's shuffled,
checkpointable stream (`pipeline.ShuffledBatchIndices`); `eval_batches` walks a split in order.
"""

from typing import Any, Iterator

import grain
import numpy as np

from posediff_jax.data import pipeline
from posediff_jax.data import radar

STAGES = ("encoder", "denoiser")
NUM_JOINTS = radar.NUM_JOINTS


def check_stage(settings: radar.RadarSettings, stage: str) -> None:
  """A clear error for a stage the data cannot feed."""
  if stage not in STAGES:
    raise ValueError(f"unknown mmDiff stage {stage!r}; expected one of {STAGES}")
  if stage == "encoder" and settings.source == "cache":
    raise ValueError("the phase-1 encoder trains on raw radar frames, but config.data.source="
                     "'cache' (upstream's cache holds the authors' phase-1 outputs); set "
                     "config.data.source='raw' or train.encoder_steps/encoder_epochs=0")


def encoder_batch(split: radar.RadarSplit, rows: np.ndarray) -> dict[str, np.ndarray]:
  """Phase-1 inputs of `rows`: `radar` float32 [B, T, P, C], `target_3d` [B, 17, 3]."""
  return {"radar": split.radar(rows), "target_3d": split.target_3d[rows]}


def denoiser_batch(split: radar.RadarSplit, rows: np.ndarray, history: np.ndarray, *,
                   with_radar: bool) -> dict[str, np.ndarray]:
  """Phase-2 inputs of `rows` (the family's batch dict, spec §4.1).

  Returns:
    `x_history` float32 [B, 17, 3(P+1)] (the past coarse poses `history[rows]`, oldest first,
    then the current one), `features` [B, 17, F], `target_3d` [B, 17, 3] and with `with_radar`
    `radar` [B, T, P, C].
  """
  if not split.has_phase1:
    raise ValueError(f"{split.name} has no phase-1 outputs yet; run the encoder first "
                     "(radar_phase1.encode_split)")
  rows = np.asarray(rows, np.int64)
  past = split.coarse[history[rows]]  # [B, P, 17, 3]
  frames = np.concatenate([past, split.coarse[rows][:, None]], axis=1)
  x_history = np.transpose(frames, (0, 2, 1, 3)).reshape(len(rows), NUM_JOINTS, -1)
  batch = {"x_history": x_history.astype(np.float32), "features": split.features[rows],
           "target_3d": split.target_3d[rows]}
  if with_radar:
    batch["radar"] = split.radar(rows)
  return batch


def _history(split: radar.RadarSplit, settings: radar.RadarSettings) -> np.ndarray:
  """The rows of every frame's past coarse poses, by the config's rule (`radar.history_rows`)."""
  return radar.history_rows(split, settings.past_frames,
                            respect_sequences=settings.respect_sequences,
                            fallback=settings.history_fallback)


class RadarBatches(pipeline.ShuffledBatchIndices):
  """`pipeline.ShuffledBatchIndices` over the frames of a split: element i is one batch of the
  stage (`encoder_batch` or `denoiser_batch`)."""

  def __init__(self, split: radar.RadarSplit, settings: radar.RadarSettings, *, stage: str,
               batch_size: int, seed: int, shard_index: int, shard_count: int,
               num_epochs: int | None):
    super().__init__(len(split), batch_size=batch_size, seed=seed, shard_index=shard_index,
                     shard_count=shard_count, num_epochs=num_epochs)
    self._split = split
    self._stage = stage
    self._with_radar = settings.phase2_radar
    self._history = _history(split, settings) if stage == "denoiser" else None

  def __getitem__(self, index) -> dict[str, np.ndarray]:
    rows = np.sort(super().__getitem__(index))
    if self._stage == "encoder":
      return encoder_batch(self._split, rows)
    return denoiser_batch(self._split, rows, self._history, with_radar=self._with_radar)


def train_dataset(split: radar.RadarSplit, settings: radar.RadarSettings, *, stage: str,
                  batch_size: int, seed: int, shard_index: int = 0, shard_count: int = 1,
                  worker_count: int = 0, num_epochs: int | None = None) -> grain.IterDataset:
  """The training stream of one stage, reshuffled every epoch and split across processes.

  Global batch i is the next `batch_size * shard_count` frames of the epoch's permutation; this
  process keeps every `shard_count`-th (`pipeline.ShuffledBatchIndices`); a partial last global
  batch is dropped. The encoder stage's batches are `encoder_batch`es, the denoiser's
  `denoiser_batch`es (the split must hold phase-1 outputs). The stages shuffle differently (the
  stage is mixed into the seed). Iterators support `get_state()` / `set_state()`.
  """
  check_stage(settings, stage)
  pipeline.check_train_shard(batch_size, shard_index, shard_count)
  if len(split) < batch_size * shard_count:
    raise ValueError(f"{split.name}: {len(split)} frames cannot fill one batch of {batch_size} on "
                     f"each of {shard_count} process(es)")
  if stage == "denoiser" and not split.has_phase1:
    raise ValueError(f"{split.name} has no phase-1 outputs: the denoiser stage needs the coarse "
                     "poses and features (train or convert the encoder first)")
  source = RadarBatches(split, settings, stage=stage, batch_size=batch_size,
                        seed=seed + STAGES.index(stage), shard_index=shard_index,
                        shard_count=shard_count, num_epochs=num_epochs)
  return pipeline.training_stream(grain.MapDataset.source(source), worker_count)


def eval_batches(split: radar.RadarSplit, batch_size: int, *, stage: str,
                 settings: radar.RadarSettings, shard_index: int = 0, shard_count: int = 1
                 ) -> tuple[Iterator[dict[str, Any]], int]:
  """Evaluation batches in split order with a fixed shape.

  Global batch i holds frames `[i * batch_size, (i + 1) * batch_size)`; the last one is padded
  by repeating the last frame. Each process reads only its contiguous `batch_size // shard_count`
  rows of a global batch (`arrays`); every process gets the global bookkeeping.

  Args:
    split: the frames.
    batch_size: global batch size (divisible by `shard_count`).
    stage: 'encoder' (phase-1 inputs) or 'denoiser' (phase-2 inputs; needs phase-1 outputs).
    settings: the data settings (past frames, history rule, radar in phase 2).
    shard_index: this process's index.
    shard_count: the number of processes.

  Returns:
    `(iterator, number of batches)`. Each item: `arrays` (this process's rows of `encoder_batch`
    or `denoiser_batch`), and for the whole global batch `valid` bool [B] (False on padding),
    `scene` int32 [B] and `index` int64 [B] (row in the split).
  """
  if stage not in STAGES:
    raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
  if stage == "denoiser" and not split.has_phase1:
    raise ValueError(f"{split.name} has no phase-1 outputs; run the encoder over it first "
                     "(radar_phase1.encode_split)")
  pipeline.check_eval_shard(batch_size, shard_index, shard_count)
  n = len(split)
  num_batches = -(-n // batch_size)
  local = batch_size // shard_count
  history = _history(split, settings) if stage == "denoiser" else None

  def generate():
    for b in range(num_batches):
      rows = b * batch_size + np.arange(batch_size)
      valid = rows < n
      rows = np.minimum(rows, n - 1)
      mine = rows[shard_index * local:(shard_index + 1) * local]
      arrays = (encoder_batch(split, mine) if stage == "encoder"
                else denoiser_batch(split, mine, history, with_radar=settings.phase2_radar))
      yield {"arrays": arrays, "valid": valid, "scene": split.scene[rows], "index": rows}

  return generate(), num_batches
