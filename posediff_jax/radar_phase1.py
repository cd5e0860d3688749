"""mmDiff's phase 1 over whole radar splits: the coarse poses and features that phase 2 trains
and is evaluated on.

`encode_split` runs the phase-1 encoder over every frame of a split (upstream `phase1_save`) and
returns the split with its outputs; `phase2_split` does so only when the split has none yet (raw
data; upstream's cache already holds them); `prepare_stage` gives each training stage its splits
(`datasets.stage_data`). The pass is data parallel like the evaluators: every process walks the
same global batches and reads its own rows, and the outputs come back to every process.
"""

import jax
import numpy as np

from posediff_jax import families
from posediff_jax import sharding
from posediff_jax import summary
from posediff_jax.data import radar as radar_data
from posediff_jax.data import radar_pipeline


def make_encode_fn(config):
  """A jitted `(encoder_variables, radar [B, T, P, C]) -> (coarse [B, 17, 3], features [B, 17,
  F])`, the coarse pose root-relative, both replicated on every device."""
  family = families.get(config.family)

  def encode(variables, radar):
    coarse, features = family.encode(config, variables, radar)
    return coarse - coarse[:, :1], features

  return jax.jit(encode, out_shardings=sharding.replicated(sharding.make_mesh(config.get("mesh"))))


def encode_split(config, encoder_variables, split: radar_data.RadarSplit, *, progress: bool = True,
                 encode_fn=None) -> radar_data.RadarSplit:
  """Phase 1 over every frame of `split` (upstream `phase1_save`): the split with its outputs.

  Args:
    config: experiment config (`eval.encoder_batch_size` frames per call).
    encoder_variables: the encoder's {'params'[, 'batch_stats']}.
    split: the frames (its radar windows are read batch by batch).
    progress: show a progress bar on stderr.
    encode_fn: `make_encode_fn(config)`'s result, for callers that encode repeatedly.

  Returns:
    `split.with_phase1(coarse, features)`.
  """
  settings = radar_data.settings_from_config(config)
  mesh = sharding.make_mesh(config.get("mesh"))
  batch_size = int(config.eval.get("encoder_batch_size", config.eval.batch_size))
  sharding.check_divisible(batch_size, mesh, "eval.encoder_batch_size")
  by_batch, repl = sharding.by_batch(mesh), sharding.replicated(mesh)
  variables = jax.device_put(encoder_variables, repl)
  encode = encode_fn or make_encode_fn(config)
  batches, num_batches = radar_pipeline.eval_batches(
      split, batch_size, stage="encoder", settings=settings, shard_index=jax.process_index(),
      shard_count=jax.process_count())
  coarse, features = [None] * num_batches, [None] * num_batches
  bar = summary.ProgressBar(num_batches, "phase 1", enabled=progress)
  for i, batch in enumerate(batches):
    radar = sharding.global_batch({"radar": batch["arrays"]["radar"]}, by_batch)["radar"]
    pose, feats = jax.device_get(encode(variables, radar))
    coarse[i], features[i] = pose[batch["valid"]], feats[batch["valid"]]
    bar.update(1)
  bar.close()
  return split.with_phase1(np.concatenate(coarse), np.concatenate(features))


def phase2_split(config, params, split: radar_data.RadarSplit, *, progress: bool = True
                 ) -> radar_data.RadarSplit:
  """`split` ready for phase 2: as it is if it holds phase-1 outputs (upstream's cache), else
  encoded with `params['encoder']` (a clear error when there is none)."""
  if split.has_phase1:
    return split
  if "encoder" not in params:
    raise ValueError(
        f"{split.name} holds raw radar frames, so phase 2 needs the phase-1 encoder, but the "
        f"parameters hold only {', '.join(sorted(params))}; convert the phase-1 file too "
        "(convert_torch_weights.py --lifter {mmBody,MetaFi}_mmDiff_phase1.pth), train it "
        "(train.encoder_epochs) or read upstream's cache (config.data.source='cache')")
  return encode_split(config, params["encoder"], split, progress=progress)


def prepare_stage(config, stage: str, params, train: radar_data.RadarSplit,
                  test: radar_data.RadarSplit, *, progress: bool = True):
  """The (train, test) splits a training stage reads: the encoder stage the raw frames, the
  denoiser stage the frames with phase-1 outputs (computed with the frozen encoder if needed)."""
  radar_pipeline.check_stage(radar_data.settings_from_config(config), stage)
  if stage == "encoder":
    return train, test
  return (phase2_split(config, params, train, progress=progress),
          phase2_split(config, params, test, progress=progress))
