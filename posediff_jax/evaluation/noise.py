"""Evaluation noise: drawn from `config.seed` alone, or replayed from a recorded file.

**Drawn.** Batch i of an evaluation (frames and radar: the i-th global batch; clips: the i-th
mini-batch of up to `eval.batch_size` clips of one video, `batch_index`) samples with
`batch_key(config, i) = fold_in(key(config.seed), i)`. Nothing else (the device or process count,
an earlier evaluation, the checkpoint's RNG) enters, so two evaluations of one config print the
same table.

**Replayed** (`--config.eval.noise_file=FILE.npz`): the noise the authors' code drew, recorded per
batch, goes into the sampler instead (the only way to compare with it number for number). A plain
`.npz` of float arrays (no pickles), one member per batch and kind, batches numbered as above in
the order this evaluation runs them (after `data.test_subjects` / `data.actions` filtering):

- clip families (D3DP, FinePOSE, DSGDiffu), mini-batch b with b_c real clips (the last mini-batch
  of a video may have fewer than `eval.batch_size`):
  `noise_init_<b>` `[b_c, H, F, J, 3]`, x_T (upstream `ddim_sample_flip`'s `torch.randn(shape)`);
  `noise_steps_<b>` `[K-1, b_c, H, F, J, 3]`, the eta noise of every DDIM step but the last (whose
  σ is 0), in the order the steps run; it may be left out when K = 1 or `sampling.eta` = 0.
- frame families (DiffPose, ICASSP'24) and mmDiff, global batch i with b_v real samples:
  `noise_<i>` `[K, H·P·b_v, ...]`, the z of each of the K sampler steps for the sampler's rows,
  row (h·P + p)·b_v + n being hypothesis h, pass p, sample n (P = 2 passes with ICASSP's flip
  test-time augmentation, the mirrored one second; else P = 1), `[..., 17, 5]` for DiffPose and
  ICASSP'24, `[..., J, D]` for mmDiff (D = 3, or 3(P+1) for v1's sampler). Upstream's samplers
  have eta = 0 and draw nothing; this is for eta > 0.

A batch missing from the file is an error naming the member; members for batches the evaluation
does not reach (`max_batches`, filters) are ignored. Rows for padding (clips past a video's end,
frames past the split's end) are filled with zeros: they are not scored.
"""

import pathlib

import jax
import numpy as np


def batch_key(config, index: int):
  """The PRNG key of evaluation batch `index`: a function of `config.seed` alone."""
  return jax.random.fold_in(jax.random.key(int(config.seed)), int(index))


def noise_file(config) -> str:
  """`config.eval.noise_file`, or "" when the config has none."""
  return str(config.eval.get("noise_file", "") or "")


class NoiseFile:
  """A recorded-noise `.npz` (module docstring), read member by member."""

  def __init__(self, path):
    self.path = pathlib.Path(path)
    if not self.path.is_file():
      raise FileNotFoundError(f"config.eval.noise_file: {self.path}: file not found")
    try:
      self._file = np.load(self.path, allow_pickle=False)
      self.names = set(self._file.files)
    except (OSError, ValueError) as e:
      raise ValueError(f"config.eval.noise_file: {self.path} is not a readable .npz "
                       f"({e})") from None

  def _member(self, name: str, what: str) -> np.ndarray:
    if name not in self.names:
      listed = sorted(self.names)
      shown = ", ".join(listed[:6]) + (", ..." if len(listed) > 6 else "")
      raise ValueError(f"config.eval.noise_file: {self.path} has no {name!r} ({what}); it holds "
                       f"{len(listed)} member(s): {shown}")
    try:
      array = self._file[name]
    except ValueError as e:  # an object array needs pickles, which are not read
      raise ValueError(f"config.eval.noise_file: {self.path}: {name!r} is not a plain numeric "
                       f"array ({e})") from None
    if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
      raise ValueError(f"config.eval.noise_file: {self.path}: {name!r} must hold finite floats, "
                       f"found dtype {array.dtype}")
    return array.astype(np.float32, copy=False)

  def _shaped(self, name: str, array: np.ndarray, expected: tuple, what: str) -> None:
    if array.shape != tuple(expected):
      raise ValueError(f"config.eval.noise_file: {self.path}: {name!r} has shape {array.shape}, "
                       f"expected {tuple(expected)} ({what})")

  def clips(self, index: int, real: int, batch: int, shape: tuple, steps: int, eta: float
            ) -> tuple[np.ndarray, np.ndarray]:
    """(x_T `[batch, H, F, J, 3]`, step noise `[K-1, batch, H, F, J, 3]`) of mini-batch `index`
    with `real` real clips, zero-padded to `batch` clips; `shape` = (H, F, J, 3)."""
    name = f"noise_init_{index}"
    init = self._member(name, f"x_T of mini-batch {index}")
    self._shaped(name, init, (real,) + tuple(shape), "[real clips, H, F, J, 3]")
    name = f"noise_steps_{index}"
    if name in self.names or (steps > 1 and eta != 0):
      step_noise = self._member(name, f"the DDIM steps' noise of mini-batch {index}")
      self._shaped(name, step_noise, (steps - 1, real) + tuple(shape),
                   "[K-1, real clips, H, F, J, 3]")
    else:
      step_noise = np.zeros((steps - 1, real) + tuple(shape), np.float32)
    pad = batch - real
    init = np.concatenate([init, np.zeros((pad,) + init.shape[1:], np.float32)])
    step_noise = np.concatenate(
        [step_noise, np.zeros(step_noise.shape[:1] + (pad,) + step_noise.shape[2:], np.float32)],
        axis=1)
    return init, step_noise

  def rows(self, index: int, steps: int, groups: int, real: int, batch: int,
           tail: tuple) -> np.ndarray:
    """The z `[K, G·batch, *tail]` of global batch `index`, G = H·P blocks of `batch` rows of
    which the first `real` are real samples (the file holds `[K, G·real, *tail]`); padding rows
    are zero."""
    name = f"noise_{index}"
    array = self._member(name, f"the sampler noise of batch {index}")
    self._shaped(name, array, (steps, groups * real) + tuple(tail),
                 f"[K, {groups} (hypotheses x passes) x {real} samples, ...]")
    padded = np.zeros((steps, groups, batch) + tuple(tail), np.float32)
    padded[:, :, :real] = array.reshape((steps, groups, real) + tuple(tail))
    return padded.reshape((steps, groups * batch) + tuple(tail))


def open_noise_file(config) -> NoiseFile | None:
  """The config's `NoiseFile`, or None to draw from the seed."""
  path = noise_file(config)
  return NoiseFile(path) if path else None
