"""Which data a config reads, and how: single frames (DiffPose, ICASSP), clips (D3DP family) or
radar frames (mmDiff).

`config.data.layout` says which ("frames" when absent). Frame configs read DiffPose's GMM files
through `data.h36m` and batch them with `data.frame_pipeline`; clip configs read VideoPose3D's
files (`data.h36m`) or MPI-INF-3DHP's (`data.mpi3dhp`), as `config.data.dataset` says, and batch
them with `data.clip_pipeline`; radar configs read mmBody (`data.mmbody`) or mm-Fi (`data.mmfi`)
raw, or upstream's phase-2 cache (`data.mmdiff_cache`), and batch them with
`data.radar_pipeline`. Training and evaluation only talk to this module, so they never branch on
the file format themselves. Radar data is read per training stage (`staged`, `stage_data`): the
denoiser stage reads the frames with the frozen encoder's outputs.
"""

import pathlib
from typing import Any

from posediff_jax import skeleton
from posediff_jax.data import clip_pipeline
from posediff_jax.data import frame_pipeline
from posediff_jax.data import h36m
from posediff_jax.data import mmbody
from posediff_jax.data import mmdiff_cache
from posediff_jax.data import mmfi
from posediff_jax.data import mpi3dhp
from posediff_jax.data import radar
from posediff_jax.data import radar_pipeline
from posediff_jax.data.synthetic import h36m as synthetic_h36m
from posediff_jax.data.synthetic import mpi3dhp as synthetic_3dhp
from posediff_jax.data.synthetic import radar as synthetic_radar

LAYOUTS = ("frames", "clips", "radar")


def layout(config) -> str:
  value = config.data.get("layout", "frames")
  if value not in LAYOUTS:
    raise ValueError(f"config.data.layout must be one of {', '.join(map(repr, LAYOUTS))}, got "
                     f"{value!r}")
  return value


def staged(config) -> bool:
  """Whether each training stage reads its own stream (`stage_data`, `train_dataset(stage=)`)."""
  return layout(config) == "radar"


def check_stages(config, stages) -> None:
  """A clear error before training when the data cannot feed one of the planned stages."""
  if layout(config) == "radar":
    settings = radar.settings_from_config(config)
    for stage in stages:
      radar_pipeline.check_stage(settings, stage)


def stage_data(config, stage: str, params, train, test, *, progress: bool = True):
  """The (train, test) data a stage reads (radar: the denoiser's come with the frozen encoder's
  outputs, computed here with `params`); the splits themselves for other layouts."""
  if layout(config) != "radar":
    return train, test
  from posediff_jax import radar_phase1  # pylint: disable=g-import-not-at-top
  return radar_phase1.prepare_stage(config, stage, params, train, test, progress=progress)


def joint_symmetry(config) -> tuple[tuple[int, ...], tuple[int, ...], int]:
  """(left joints, right joints, root joint) of the dataset's skeleton."""
  if config.data.get("dataset", "h36m") == "3dhp":
    return skeleton.MPI3DHP_LEFT, skeleton.MPI3DHP_RIGHT, skeleton.MPI3DHP_ROOT_JOINT
  return skeleton.H36M_LEFT, skeleton.H36M_RIGHT, skeleton.ROOT_JOINT


def _require(path: pathlib.Path, field: str) -> pathlib.Path:
  if not path.is_file():
    raise FileNotFoundError(f"data file {path} (config.data.root + config.data.{field}) not found; "
                            "see README 'Data' for where to get it, or use configs/demo.py")
  return path


def _radar_data_paths(config) -> dict[str, pathlib.Path]:
  """{'root': the radar data folder}, generating the synthetic set first if asked."""
  settings = radar.settings_from_config(config)
  if config.data.get("generate_synthetic", False):
    if settings.source != "raw":
      raise ValueError("config.data.generate_synthetic writes the raw layout: set "
                       "config.data.source='raw'")
    synthetic_radar.ensure_synthetic_radar(
        settings.root, settings.dataset,
        frames_per_sequence=int(config.data.get("synthetic_frames",
                                                synthetic_radar.DEFAULT_FRAMES)))
  if not settings.root.is_dir():
    raise FileNotFoundError(f"radar data folder {settings.root} (config.data.root) not found; see "
                            "README 'mmDiff' for the layouts, or generate a synthetic set with "
                            "python -m posediff_jax.data.synthetic_radar")
  return {"root": settings.root}


def data_paths(config) -> dict[str, pathlib.Path]:
  """The files `config.data` names, generating the synthetic set first if asked."""
  if layout(config) == "radar":
    return _radar_data_paths(config)
  root = pathlib.Path(config.data.root)
  if config.data.get("dataset", "h36m") == "3dhp":
    if config.data.get("generate_synthetic", False):
      synthetic_3dhp.ensure_synthetic_3dhp(root)
    return {"train": _require(root / config.data.file_train, "file_train"),
            "test": _require(root / config.data.file_test, "file_test")}
  if config.data.get("generate_synthetic", False):
    synthetic_h36m.ensure_synthetic_data(root)
  if layout(config) == "clips":
    return {"3d": _require(root / config.data.file_3d, "file_3d"),
            "2d": _require(root / config.data.file_2d, "file_2d")}
  return {"3d": _require(root / config.data.file_3d, "file_3d"),
          "train_2d": _require(root / config.data.train_2d, "train_2d"),
          "test_2d": _require(root / config.data.test_2d, "test_2d")}


def load_split(config, split: str) -> Any:
  """The train or test split: an `h36m.FrameSet`, a list of `videos.VideoSequence` for clips, or
  a `radar.RadarSplit`.

  Frames: `config.data.kernel` ("weighted" when absent) and `config.data.fixed_resolution` (each
  camera's own resolution when absent or None) are passed on to `h36m.load_frame_set`. Radar:
  `config.data.source` and `config.data.dataset` pick the reader.

  Parts of a data set, as upstream's `-a` and `--subjects-test` give them (no filtered copies
  of the files): on Human3.6M `config.data.actions` (action classes; empty = all) keeps those
  sequences of both splits and `data.train_subjects` / `data.test_subjects` pick the subjects;
  on MPI-INF-3DHP `data.test_subjects` picks test sequences ('TS1' ... 'TS6'); radar data has
  `data.test_scenes` (mmBody, upstream's cache) and `data.test_subjects` (mm-Fi's own folders).
  """
  if split not in ("train", "test"):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")
  paths = data_paths(config)
  if layout(config) == "radar":
    settings = radar.settings_from_config(config)
    reader = (mmdiff_cache if settings.source == "cache"
              else mmbody if settings.dataset == "mmbody" else mmfi)
    return reader.load_split(settings, split)
  if layout(config) == "clips":
    if config.data.get("dataset", "h36m") == "3dhp":
      if split == "train":
        return mpi3dhp.load_train(paths[split])
      return _test_sequences(mpi3dhp.load_test(paths[split]), config.data.get("test_subjects"),
                             paths[split])
    subjects = config.data.train_subjects if split == "train" else config.data.test_subjects
    return h36m.load_h36m_videos(paths["3d"], paths["2d"], tuple(subjects),
                                 tuple(config.data.get("actions", ())))
  subjects = config.data.train_subjects if split == "train" else config.data.test_subjects
  resolution = config.data.get("fixed_resolution")
  return h36m.load_frame_set(paths["3d"], paths[f"{split}_2d"], tuple(subjects),
                             plain_2d_var=config.data.plain_2d_var,
                             fixed_resolution=tuple(resolution) if resolution else None,
                             kernel=config.data.get("kernel", "weighted"),
                             actions=tuple(config.data.get("actions", ())))


def _test_sequences(sequences, wanted, path):
  """MPI-INF-3DHP's test sequences named in `data.test_subjects` (None or empty: all), in file
  order; a name the file lacks is an error."""
  if not wanted:
    return sequences
  if isinstance(wanted, str):
    raise ValueError(f"config.data.test_subjects must be a list of names, got the string "
                     f"{wanted!r}")
  names = [str(s.subject) for s in sequences]
  unknown = [w for w in wanted if w not in names]
  if unknown:
    raise ValueError(f"config.data.test_subjects: {path} has no test sequence(s) {unknown}; it "
                     f"has {', '.join(names)}")
  return [s for s in sequences if str(s.subject) in set(wanted)]


def num_train_examples(config, data) -> int:
  """Examples in one training epoch: frames, or clips (chunks, doubled by flip augmentation)."""
  if layout(config) == "clips":
    lengths = [len(s.input_2d) for s in data]
    return len(clip_pipeline.chunk_index(lengths, config.model.num_frames,
                                 config.train.get("flip_augment", False)))
  return len(data.target_3d)  # frames, and radar frames


def train_dataset(config, data, *, batch_size: int, shard_index: int, shard_count: int,
                  stage: str | None = None):
  """The checkpointable training stream of `batch_size` examples per batch on this process.

  `stage` picks the stream of one training stage for `staged` layouts (radar).
  """
  if layout(config) == "radar":
    if stage is None:
      raise ValueError("radar data has one training stream per stage: pass stage=")
    return radar_pipeline.train_dataset(
        data, radar.settings_from_config(config), stage=stage, batch_size=batch_size,
        seed=config.seed, shard_index=shard_index, shard_count=shard_count,
        worker_count=config.data.worker_count)
  order = config.train.get("shuffle", "seeded")
  if layout(config) == "clips":
    left, right, _ = joint_symmetry(config)
    upstream = order == "upstream"
    return clip_pipeline.train_dataset(
        data, num_frames=config.model.num_frames, batch_size=batch_size,
        seed=config.train.upstream_shuffle_seed if upstream else config.seed,
        shard_index=shard_index, shard_count=shard_count,
        flip_augment=config.train.get("flip_augment", False), left=left, right=right,
        worker_count=config.data.worker_count, order=order)
  if order != "seeded":
    raise ValueError(f"train.shuffle={order!r} exists for the clip families (upstream's "
                     "ChunkedGenerator order); frame and radar data shuffle per seeded epoch")
  return frame_pipeline.train_dataset(data, batch_size=batch_size, seed=config.seed,
                                      shard_index=shard_index, shard_count=shard_count,
                                      worker_count=config.data.worker_count)
