r"""Plans a run on a TPU slice from a CPU: compiles the train step and the sampler for the slice.

  python -m posediff_jax.plan --config configs/d3dp_h36m.py:cpn --topology v5litepod-8 \
      [--config.train.batch_size=32] [--programs train,eval] [--json plan.json]

With `libtpu` installed (`pip install "jax[tpu]==0.10.2"`, in requirements-dev.txt), XLA compiles
for a TPU slice that is not there (`jax.experimental.topologies`, as maxtext's train_compile.py
does): the compiled programs are the ones the slice would run, so their memory and cost analyses
answer, before a slice is booked, whether the model fits per chip at this batch, how many FLOPs a
step is, which collectives it runs and roughly how long a step takes. The programs are the real
ones: `training.jit_train_step` with `training.make_optimizer` and `training.init_state` (as
`training.train_and_evaluate` builds them) and `evaluation.make_predict_fn` (as `evaluate.py`
runs it), on the slice's ('data', 'model') mesh of `config.mesh`. Parameters and inputs are
abstract (`jax.eval_shape`, `jax.ShapeDtypeStruct`): nothing is allocated.

Every figure is a compile-time estimate. Memory is XLA's buffer assignment for one chip; FLOPs and
bytes are XLA's cost analysis of one chip's program (a loop body counts once); the step time is
XLA's own `optimal_seconds` when it gives one (for these programs it reports a negative number,
i.e. none) and otherwise a roofline bound from the chip's published peak figures.

A program that does not fit the chip's HBM ends the command with one `error: ...` line (exit
status 2) saying by how much and what to change. The JAX backend of this process stays the CPU.
"""

import collections
import contextlib
import dataclasses
import json
import math
import os
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np

from posediff_jax import datasets
from posediff_jax import evaluation
from posediff_jax import families
from posediff_jax import sharding
from posediff_jax import training

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """Published per-chip figures of a TPU generation (Google Cloud TPU system architecture pages).

  Attributes:
    name: generation as Cloud names it ('v5e', 'v5p', ...).
    hbm_gib: HBM per chip. The runtime keeps a little for itself (a v5e program may use 15.75 GiB).
    bf16_tflops: peak bf16 matmul throughput per chip.
    hbm_gb_s: HBM bandwidth per chip, GB/s.
    ici_gb_s: inter-chip interconnect bandwidth per chip, GB/s (all links).
    cores_per_chip: TensorCores per chip (Cloud's `v5p-N` / `v4-N` count cores, one megacore
      device per chip; `v5litepod-N` / `v6e-N` count chips).
    dims: 2 or 3, the torus dimensions of a slice.
  """
  name: str
  hbm_gib: float
  bf16_tflops: float
  hbm_gb_s: float
  ici_gb_s: float
  cores_per_chip: int
  dims: int


CHIPS = {
    "v4": Chip("v4", 32, 275, 1200, 300, 2, 3),
    "v5e": Chip("v5e", 16, 197, 819, 200, 1, 2),
    "v5p": Chip("v5p", 95, 459, 2765, 600, 2, 3),
    "v6e": Chip("v6e", 32, 918, 1640, 448, 1, 2),
}
# Accelerator-type prefixes (Cloud's and libtpu's) -> generation.
_GENERATIONS = {"v4": "v4", "v5e": "v5e", "v5litepod": "v5e", "v5lite": "v5e", "v5p": "v5p",
                "v5": "v5p", "v6e": "v6e"}
# Chips -> slice shape, for Cloud names (`v5p-64`); libtpu names (`v5p:2x4x4`) give it directly.
_SHAPES = {
    3: {1: (1, 1, 1), 4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
        128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16), 2048: (8, 16, 16),
        4096: (16, 16, 16)},
    2: {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16),
        256: (16, 16)},
}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


@dataclasses.dataclass(frozen=True)
class Topology:
  """A TPU slice: `name` as given, its chip generation, shape (chips per torus axis)."""
  name: str
  chip: Chip
  shape: tuple[int, ...]

  @property
  def chips(self) -> int:
    return math.prod(self.shape)

  @property
  def libtpu_name(self) -> str:
    prefix = {"v5p": "v5p", "v5e": "v5e", "v4": "v4", "v6e": "v6e"}[self.chip.name]
    return f"{prefix}:{'x'.join(map(str, self.shape))}"

  @property
  def cloud_name(self) -> str:
    prefix = {"v5e": "v5litepod"}.get(self.chip.name, self.chip.name)
    return f"{prefix}-{self.chips * self.chip.cores_per_chip}"


def parse_topology(name: str) -> Topology:
  """`v5litepod-8`, `v5e-8`, `v5p-64`, `v4-32`, `v6e-16` (Cloud accelerator types: v5p/v4 count
  TensorCores, v5e/v6e chips) or libtpu's `v5p:2x4x4`, `v5e:2x4`."""
  text = name.strip().lower()
  match = re.fullmatch(r"([a-z0-9]+?)(?:-(\d+)|:(\d+(?:x\d+)*))", text)
  known = ", ".join(sorted(_GENERATIONS))
  if not match or match.group(1) not in _GENERATIONS:
    raise ValueError(f"--topology {name!r}: expected a TPU slice such as v5litepod-8, v5p-64 or "
                     f"v5p:2x4x4 (generations: {known})")
  chip = CHIPS[_GENERATIONS[match.group(1)]]
  if match.group(3):
    shape = tuple(int(d) for d in match.group(3).split("x"))
    if len(shape) != chip.dims:
      raise ValueError(f"--topology {name!r}: a {chip.name} slice has {chip.dims} axes "
                       f"(e.g. {chip.name}:{'x'.join(['2'] * chip.dims)})")
    return Topology(name, chip, shape)
  cores = int(match.group(2))
  chips, left = divmod(cores, chip.cores_per_chip)
  sizes = _SHAPES[chip.dims]
  if left or chips not in sizes:
    unit = "TensorCores" if chip.cores_per_chip > 1 else "chips"
    valid = ", ".join(f"{match.group(1)}-{n * chip.cores_per_chip}" for n in sizes
                      if n * chip.cores_per_chip >= chip.cores_per_chip * (4 if chip.dims == 3
                                                                          else 1))
    raise ValueError(f"--topology {name!r}: {cores} {unit} is not a {chip.name} slice this "
                     f"planner knows ({valid}; or give the shape, e.g. {chip.name}:2x2x1)")
  return Topology(name, chip, sizes[chips])


def _quiet_libtpu(topology: Topology) -> None:
  """Tells libtpu what it would otherwise probe a cloud metadata server for (there is none): no
  probe, no warnings. Only defaults: a real TPU VM's settings win."""
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", topology.cloud_name)
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  # libtpu locks /tmp/libtpu_lockfile so that two processes never drive one TPU; compiling drives
  # none, and a planner beside another (a test beside its subprocess) must not be refused.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def topology_devices(topology: Topology) -> list:
  """The compile-only devices of the slice (one per chip), made by libtpu without a TPU."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  from jax._src import cloud_tpu_init  # pylint: disable=g-import-not-at-top

  if cloud_tpu_init.get_tpu_library_path() is None:
    raise ValueError('planning for a TPU needs libtpu: pip install "jax[tpu]==0.10.2" (or '
                     "pip install -r requirements-dev.txt); the default backend stays the CPU")
  _quiet_libtpu(topology)
  kwargs = {"chips_per_host_bounds": (1, 1, 1) if topology.chips < 4 else (2, 2, 1)}
  if topology.chip.cores_per_chip > 1:
    kwargs["chip_config_name"] = "megacore"  # one device per chip, as Cloud runs v4/v5p
  if topology.chip.dims == 3 and topology.chips >= 64:
    kwargs["wrap"] = (True, True, True)  # full cubes are tori
  elif topology.chip.dims == 2 and topology.chips >= 128:
    kwargs["wrap"] = (topology.chips >= 256, True, False)
  try:
    devices = topologies.get_topology_desc(topology.libtpu_name, "tpu", **kwargs).devices
  except Exception as e:  # pylint: disable=broad-except
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(f"libtpu cannot describe --topology {topology.name} "
                     f"({topology.libtpu_name}): {first}") from e
  if len(devices) != topology.chips:
    raise ValueError(f"libtpu describes {topology.libtpu_name} with {len(devices)} devices, "
                     f"expected one per chip ({topology.chips})")
  return list(devices)


@contextlib.contextmanager
def traced_for(platform: str):
  """Makes `jax.default_backend()` answer `platform` while the programs are traced.

  A few functions pick a CPU-only tuning by asking it (`chunking.chunk_rows`, the pieces of
  `families.diffpose.predict`, training's `train.cpu_chunk_size` passes); the slice would build
  and trace them with its own backend. JAX's own lowering reads the backend elsewhere, so only
  those choices change.
  """
  real = jax.default_backend
  jax.default_backend = lambda: platform
  try:
    yield
  finally:
    jax.default_backend = real


# ------------------------------------------------------------------------------------------------
# The abstract inputs: what train.py and evaluate.py feed the programs, as shapes.


def _spec(shape, dtype, sharding_) -> jax.ShapeDtypeStruct:
  if not jax.dtypes.issubdtype(dtype, jax.dtypes.extended):  # PRNG keys keep their key dtype
    dtype = jnp.dtype(dtype)
  return jax.ShapeDtypeStruct(tuple(int(s) for s in shape), dtype, sharding=sharding_)


def train_batch(config, stage: str, batch_size: int, sharding_) -> dict:
  """The global training batch of `stage` as the family's stream yields it (+ train.py's
  `action_index` for prompt families): frames `data/frame_pipeline.py`, clips
  `data/clip_pipeline.py`, radar `data/radar_pipeline.py`'s `encoder_batch` / `denoiser_batch`."""
  b, f32, i32 = batch_size, jnp.float32, jnp.int32
  spec = lambda shape, dtype=f32: _spec(shape, dtype, sharding_)
  kind = datasets.layout(config)
  if kind == "clips":
    frames, joints = config.model.num_frames, config.model.num_joints
    batch = {"input_2d": spec((b, frames, joints, 2)), "target_3d": spec((b, frames, joints, 3)),
             "sequence": spec((b,), i32)}
    if getattr(families.get(config.family), "TEXT_CONDITIONED", False):
      batch["action_index"] = spec((b,), i32)
    return batch
  if kind == "radar":
    from posediff_jax.data import radar  # pylint: disable=g-import-not-at-top
    settings = radar.settings_from_config(config)
    radar_shape = (b, len(settings.window_offsets), settings.preprocessing.points,
                   settings.preprocessing.channels)
    if stage == "encoder":
      return {"radar": spec(radar_shape), "target_3d": spec((b, 17, 3))}
    batch = {"x_history": spec((b, 17, 3 * (settings.past_frames + 1))),
             "features": spec((b, 17, config.model.feature_size)),
             "target_3d": spec((b, 17, 3))}
    if settings.phase2_radar:
      batch["radar"] = spec(radar_shape)
    return batch
  return {"input_2d": spec((b, 17, 2)), "input_2d_var": spec((b, 17, 2)),
          "target_3d": spec((b, 17, 3)), "action": spec((b,), i32)}


def eval_inputs(config, mesh) -> tuple:
  """(batch, key) as `evaluation.evaluate` and its clip / radar versions pass them."""
  by_batch, repl = sharding.by_batch(mesh), sharding.replicated(mesh)
  key = jax.eval_shape(lambda: jax.random.key(0))
  kind = datasets.layout(config)
  b = int(config.eval.batch_size)
  if kind == "clips":
    # D = the data axis: D mini-batches of B clips per call (evaluation.clips.evaluate, _stack).
    d, frames, joints = mesh.shape["data"], config.model.num_frames, config.model.num_joints
    spec = lambda shape, dtype=jnp.float32: _spec((d,) + shape, dtype, by_batch)
    batch = {"input_2d": spec((b, frames, joints, 2)), "target_3d": spec((b, frames, joints, 3)),
             "trajectory": spec((b, frames, 1, 3)), "clip_mask": spec((b,), bool),
             "frame_mask": spec((b, frames), bool), "intrinsic": spec((9,)),
             "image_size": spec((2,)), "linear_projection": spec((), bool)}
    if getattr(families.get(config.family), "TEXT_CONDITIONED", False):
      batch["action_index"] = spec((b,), jnp.int32)
    return batch, _spec((d,), key.dtype, by_batch)
  sharding.check_divisible(b, mesh, "eval.batch_size")
  if kind == "radar":
    batch = train_batch(config, "denoiser", b, by_batch)
    return batch, _spec((), key.dtype, repl)
  return _spec((b, 17, 2), jnp.float32, by_batch), _spec((), key.dtype, repl)


# ------------------------------------------------------------------------------------------------
# What a compiled program needs and does.


def _shape_bytes(text: str) -> int:
  """Bytes of an HLO result type: `f32[8,128]{1,0}` or a tuple `(f32[2], bf16[4,4])`."""
  sizes = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
           "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
  total = 0
  for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([0-9,]*)\]", text):
    if dtype in sizes:
      total += sizes[dtype] * math.prod(int(d) for d in dims.split(",") if d)
  return total


def collectives(hlo_text: str) -> dict[str, tuple[int, int]]:
  """{kind: (count, bytes)} of the collectives in a compiled program's HLO text.

  An asynchronous pair (`all-reduce-start` / `-done`) counts once, by its start; the bytes are
  the result's (for an all-gather, the gathered output; a start's tuple holds operand and
  result, so the larger half is taken).
  """
  found = collections.defaultdict(lambda: [0, 0])
  pattern = re.compile(r"\s(" + "|".join(COLLECTIVES) + r")(-start)?\(")
  for line in hlo_text.splitlines():
    match = pattern.search(line)
    if not match or "=" not in line[:match.start()]:
      continue
    kind, start = match.groups()
    result = line[line.index("=") + 1:match.start()]
    size = _shape_bytes(result)
    if start and result.strip().startswith("(") and kind != "all-reduce":
      size = max(_shape_bytes(part) for part in re.findall(r"[a-z]+\d*\[[0-9,]*\]", result))
    found[kind][0] += 1
    found[kind][1] += size
  return {kind: tuple(found[kind]) for kind in COLLECTIVES if kind in found}


def while_loops(hlo_text: str) -> int:
  """How many while loops the program has: XLA's cost analysis counts each loop body once (the
  DDIM steps of a sampler, a scan over micro-batches, an SVD's iterations), so a program with
  loops does more FLOPs than it reports."""
  return sum(1 for line in hlo_text.splitlines() if re.search(r"\swhile\(", line))


def _tree_bytes(tree) -> int:
  """Per-chip bytes of an abstract tree laid out by its shardings."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += math.prod(shape) * leaf.dtype.itemsize
  return total


@dataclasses.dataclass
class ProgramPlan:
  """One compiled program on one chip of the slice (bytes, FLOPs and seconds per chip)."""
  name: str
  per_chip_batch: str
  parts: dict[str, int]  # argument bytes by what they hold (parameters, optimizer state, batch)
  argument: int
  output: int
  alias: int
  temp: int
  code: int
  flops: float
  bytes_accessed: float
  optimal_seconds: float
  collectives: dict[str, tuple[int, int]]
  loops: int
  refused: str = ""  # XLA's out-of-memory message when it would not compile the program at all

  @property
  def needed(self) -> int:
    """HBM the program needs per chip: arguments, outputs not written over donated arguments,
    temporaries (activations, gradients, workspace) and the program itself."""
    return self.argument + self.output - self.alias + self.temp + self.code

  def roofline_seconds(self, chip: Chip) -> float:
    """A lower bound: compute at peak bf16 or HBM traffic at peak bandwidth, whichever is
    longer, plus the collectives' bytes moved twice over the chip's ICI (no overlap)."""
    compute = self.flops / (chip.bf16_tflops * 1e12)
    memory = self.bytes_accessed / (chip.hbm_gb_s * 1e9)
    moved = sum(size for _, size in self.collectives.values())
    return max(compute, memory) + 2 * moved / (chip.ici_gb_s * 1e9)


_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _parse_size(number: str, unit: str) -> int:
  return int(float(number) * _UNITS[unit[:1].upper() if unit else ""])


def refused_plan(name: str, lowered, error: Exception, per_chip_batch: str,
                 parts: dict[str, int]) -> ProgramPlan:
  """What is known of a program XLA would not compile because it needs more HBM than the chip
  has: the arguments, the size XLA reports (temporaries, or all it tried to place) and the
  lowered (not yet partitioned or optimised) program's FLOPs where XLA gives them."""
  text = str(error)
  first = next((line.strip() for line in text.splitlines() if line.strip()), text)
  temp = 0
  match = (re.search(r"required for HLO temporaries \(([\d.]+)\s*([KMGT]?i?B?)\)", text)
           or re.search(r"Used ([\d.]+)\s*([KMGT]?i?B?) of [\d.]+\s*[KMGT]?i?B? hbm", text))
  if match:
    temp = _parse_size(*match.groups())
  cost = {}
  try:
    cost = lowered.cost_analysis() or {}
  except Exception:  # pylint: disable=broad-except
    pass
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return ProgramPlan(
      name=name, per_chip_batch=per_chip_batch, parts=parts, argument=sum(parts.values()),
      output=0, alias=0, temp=temp, code=0, flops=float(cost.get("flops", 0.0)),
      bytes_accessed=float(cost.get("bytes accessed", 0.0)), optimal_seconds=-1.0,
      collectives={}, loops=0, refused=first)


def compile_or_refuse(name: str, lowered, per_chip_batch: str, parts: dict[str, int]
                      ) -> ProgramPlan:
  """Compiles `lowered` for the slice and analyses it; a program that cannot fit the chip's HBM
  (XLA's RESOURCE_EXHAUSTED) becomes a `refused_plan`."""
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    return refused_plan(name, lowered, e, per_chip_batch, parts)
  return analyse(name, compiled, per_chip_batch, parts)


def analyse(name: str, compiled, per_chip_batch: str, parts: dict[str, int]) -> ProgramPlan:
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis() or {}
  if isinstance(cost, (list, tuple)):  # older JAX returned one dict per program
    cost = cost[0] if cost else {}
  text = compiled.as_text()
  return ProgramPlan(
      name=name, per_chip_batch=per_chip_batch, parts=parts,
      argument=memory.argument_size_in_bytes, output=memory.output_size_in_bytes,
      alias=memory.alias_size_in_bytes, temp=memory.temp_size_in_bytes,
      code=memory.generated_code_size_in_bytes, flops=float(cost.get("flops", 0.0)),
      bytes_accessed=float(cost.get("bytes accessed", 0.0)),
      optimal_seconds=float(cost.get("optimal_seconds", -1.0)),
      collectives=collectives(text), loops=while_loops(text))


# ------------------------------------------------------------------------------------------------
# The programs.


def train_stages(config) -> list[str]:
  """The stages train.py would train with this config (DiffPose's lifter only with
  train.lifter_epochs/steps, mmDiff's encoder only with train.encoder_epochs/steps)."""
  return [name for name, _ in training.stage_plan(config, steps_per_epoch=1000)]


def _batch_field(config, stage: str) -> str:
  own = f"{stage}_batch_size"
  return f"train.{own}" if datasets.staged(config) and config.train.get(own) else "train.batch_size"


def _check_batch(config, field: str, mesh) -> int:
  """The global batch of `field`, or a ValueError saying which sizes split over the slice."""
  size = int(config.train[field.split(".", 1)[1]])
  accum = int(config.train.get("grad_accum_steps", 1))
  data = mesh.shape["data"]
  if size % accum or (size // accum) % data:
    per_chip = max(1, -(-size // (data * accum)))
    raise ValueError(f"{field}={size} with train.grad_accum_steps={accum} does not split over "
                     f"the {data} chips of the data axis; use --config.{field}="
                     f"{per_chip * data * accum} ({per_chip} per chip per micro-step)")
  return size


def plan_train(config, stage: str, mesh, state_sharding=None) -> tuple:
  """(lowered train step of `stage`, argument parts, per-chip batch) as train_and_evaluate builds
  it.

  `state_sharding` lays the state out (default: replicated, as train.py does).
  """
  family = families.get(config.family)
  field = _batch_field(config, stage)
  size = _check_batch(config, field, mesh)
  optimizers = {name: training.make_optimizer(config, name, training.untrained_params(config, name))
                for name in family.STAGES}

  def init():
    params = family.init_params(config, jax.random.key(config.seed))
    return training.init_state(config, params,
                               {k: v for k, v in optimizers.items() if k in params})

  shapes = jax.eval_shape(init)
  layout = state_sharding or sharding.replicated(mesh)
  state = jax.tree.map(lambda s: _spec(s.shape, s.dtype, layout), shapes)
  if getattr(family, "TEXT_CONDITIONED", False):
    # train.py binds the (frozen) text cache into the loss as a constant of the program.
    cache = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes["params"]["text_cache"])
    losses = family.losses(cache)
  else:
    losses = family.LOSSES
  batch = train_batch(config, stage, size, sharding.by_batch(mesh))
  with traced_for("tpu"):  # building the step may already pick CPU-only settings
    step = training.jit_train_step(config, stage, optimizers[stage], losses[stage], mesh,
                                   steps_per_epoch=1000, stage_start=0)
    lowered = step.lower(state, batch)
  parts = {"parameters": _tree_bytes(state["params"]),
           "optimizer state + EMA": _tree_bytes((state["opt_state"], state["ema_params"])),
           "batch": _tree_bytes(batch)}
  data = mesh.shape["data"]
  return lowered, parts, f"{size // data} ({field}={size} over {data})"


def plan_eval(config, mesh) -> tuple:
  """(lowered evaluation program, argument parts, per-chip batch): `evaluation.make_predict_fn`
  with the inputs `evaluation.evaluate` gives it."""
  family = families.get(config.family)
  shapes = jax.eval_shape(lambda: family.init_params(config, jax.random.key(config.seed)))
  if datasets.layout(config) == "radar":
    shapes = {"denoiser": shapes["denoiser"]}  # evaluation.radar.evaluate passes only these
  else:
    needed = family.eval_parts(config) if hasattr(family, "eval_parts") else family.STAGES
    shapes = {k: v for k, v in shapes.items() if k in needed or k == "text_cache"}
  params = jax.tree.map(lambda s: _spec(s.shape, s.dtype, sharding.replicated(mesh)), shapes)
  batch, key = eval_inputs(config, mesh)
  with traced_for("tpu"):
    predict = evaluation.make_predict_fn(config, mesh=mesh)
    lowered = predict.lower(params, batch, key)
  b = int(config.eval.batch_size)
  if datasets.layout(config) == "clips":
    per_chip = (f"{b} clips (eval.batch_size; one mini-batch per chip, "
                f"{mesh.shape['data']} per call)")
  else:
    per_chip = f"{b // mesh.shape['data']} (eval.batch_size={b} over {mesh.shape['data']})"
  return lowered, {"parameters": _tree_bytes(params), "batch": _tree_bytes(batch)}, per_chip


@dataclasses.dataclass
class Plan:
  """The slice and its programs."""
  family: str
  topology: Topology
  mesh_shape: dict[str, int]
  programs: list[ProgramPlan]

  def to_dict(self) -> dict:
    out = {"family": self.family, "topology": self.topology.name,
           "libtpu_topology": self.topology.libtpu_name, "chip": self.topology.chip.name,
           "chips": self.topology.chips, "hbm_gib_per_chip": self.topology.chip.hbm_gib,
           "mesh": self.mesh_shape, "programs": []}
    for p in self.programs:
      entry = dataclasses.asdict(p)
      entry["needed"] = p.needed
      entry["roofline_seconds"] = p.roofline_seconds(self.topology.chip)
      out["programs"].append(entry)
    return out


def plan(config, topology: str | Topology, programs=("train", "eval"), stages=None) -> Plan:
  """Compiles the train step of every stage train.py would train (or `stages`) and evaluate.py's
  program for `topology` and analyses them (see the module docstring)."""
  topo = topology if isinstance(topology, Topology) else parse_topology(topology)
  unknown = set(programs) - {"train", "eval"}
  if unknown or not programs:
    raise ValueError(f"--programs takes train and/or eval, got {','.join(programs)}")
  devices = topology_devices(topo)
  mesh = sharding.make_mesh(config.get("mesh"), devices=devices)
  planned = []
  if "train" in programs:
    family = families.get(config.family)
    for stage in stages or train_stages(config) or [family.STAGES[-1]]:
      if stage not in family.STAGES:
        raise ValueError(f"{config.family} has no stage {stage!r} (it has "
                         f"{', '.join(family.STAGES)})")
      lowered, parts, per_chip = plan_train(config, stage, mesh)
      planned.append(compile_or_refuse(f"train step ({stage})", lowered, per_chip, parts))
  if "eval" in programs:
    lowered, parts, per_chip = plan_eval(config, mesh)
    planned.append(compile_or_refuse("evaluation (evaluate.py)", lowered, per_chip, parts))
  return Plan(config.family, topo, dict(mesh.shape), planned)


# ------------------------------------------------------------------------------------------------
# Reporting.


def _gib(n: float) -> str:
  return f"{n / GIB:.2f} GiB" if n >= 0.1 * GIB else f"{n / 2**20:.1f} MiB"


def _flops(n: float) -> str:
  return f"{n / 1e12:.3g} TFLOP" if n >= 1e11 else f"{n / 1e9:.3g} GFLOP"


def _seconds(s: float) -> str:
  return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def format_plan(p: Plan) -> str:
  """The human-readable report (per chip)."""
  t, chip = p.topology, p.topology.chip
  lines = [f"{p.family} on {t.name} ({t.libtpu_name}: {t.chips} {chip.name} "
           f"chip{'s' if t.chips > 1 else ''}, "
           f"{chip.hbm_gib:g} GiB HBM each); mesh data={p.mesh_shape['data']} "
           f"model={p.mesh_shape['model']}. All figures: compile-time estimates, per chip."]
  for prog in p.programs:
    lines.append(f"\n{prog.name}: batch per chip {prog.per_chip_batch}")
    if prog.refused:
      lines.append(f"  HBM needed      more than {chip.hbm_gib:g} GiB: DOES NOT FIT (XLA would not "
                   f"compile it: {prog.refused})")
      for what, size in prog.parts.items():
        lines.append(f"    {what:<22}{_gib(size)}")
      if prog.temp:
        lines.append(f"    {'activations + temps':<22}{_gib(prog.temp)}")
      if prog.flops:
        lines.append(f"  FLOPs           {_flops(prog.flops)} (XLA's estimate of the whole "
                     "unpartitioned program, before optimisation)")
      continue
    fits = "fits" if prog.needed <= chip.hbm_gib * GIB else "DOES NOT FIT"
    lines.append(f"  HBM needed      {_gib(prog.needed)} of {chip.hbm_gib:g} GiB "
                 f"({100 * prog.needed / (chip.hbm_gib * GIB):.0f}%, {fits})")
    for what, size in prog.parts.items():
      lines.append(f"    {what:<22}{_gib(size)}")
    lines.append(f"    {'activations + temps':<22}{_gib(prog.temp)}")
    extra = prog.output - prog.alias
    if extra:
      lines.append(f"    {'outputs (not donated)':<22}{_gib(extra)}")
    lines.append(f"    {'program code':<22}{_gib(prog.code)}")
    note = ""
    if prog.loops:
      note = (f" (at least: XLA counts a loop body once, and the program has {prog.loops} "
              "while loops)")
    lines.append(f"  FLOPs           {_flops(prog.flops)}{note}")
    lines.append(f"  HBM traffic     {prog.bytes_accessed / 1e9:.3g} GB")
    if prog.optimal_seconds > 0:
      lines.append(f"  step time       {_seconds(prog.optimal_seconds)} (XLA's estimate)")
    else:
      lines.append(f"  step time       XLA's estimate: none (optimal_seconds = "
                   f"{prog.optimal_seconds:.3g})")
    lines.append(f"                  >= {_seconds(prog.roofline_seconds(chip))} (roofline bound: "
                 f"{chip.bf16_tflops:g} TFLOP/s bf16, {chip.hbm_gb_s:g} GB/s HBM, "
                 f"{chip.ici_gb_s:g} GB/s ICI)")
    if prog.collectives:
      listed = ", ".join(f"{kind} x{count} ({size / 2**20:.1f} MiB)"
                         for kind, (count, size) in prog.collectives.items())
    else:
      listed = "none"
    lines.append(f"  collectives     {listed}")
  return "\n".join(lines)


def misfit_message(p: Plan, config) -> str | None:
  """One line for the first program that does not fit, saying by how much and what to change."""
  chip = p.topology.chip
  limit = chip.hbm_gib * GIB
  for prog in p.programs:
    if prog.needed <= limit and not prog.refused:
      continue
    over = max(prog.needed - limit, 0)
    fixes = []
    if prog.name.startswith("train"):
      fixes.append(f"a smaller per-chip batch (now {prog.per_chip_batch.split(' ')[0]}; "
                   "--config.train.batch_size)")
      fixes.append("--config.train.grad_accum_steps=2 (or more)")
      if config.train.get("compute_dtype", "float32") == "float32":
        fixes.append("--config.train.compute_dtype=bfloat16")
      if "remat" in config.model and not config.model.remat:
        fixes.append("--config.model.remat=True (recompute the transformer blocks' "
                     "activations in the backward pass)")
    else:
      fixes.append(f"a smaller --config.eval.batch_size (now {config.eval.batch_size})")
      if "chunk_size" in config.eval:
        fixes.append("fewer denoiser rows at a time (--config.eval.chunk_size, now "
                     f"{config.eval.chunk_size or 'all'}; same results)")
      if "num_hypotheses" in config.get("sampling", {}):
        fixes.append(f"fewer hypotheses per call (--config.sampling.num_hypotheses, now "
                     f"{config.sampling.num_hypotheses})")
      if config.eval.get("compute_dtype", "float32") == "float32":
        fixes.append("--config.eval.compute_dtype=bfloat16")
    if prog.refused and not over:
      need = f"more than the {chip.hbm_gib:g} GiB of a {chip.name} chip ({prog.refused})"
    else:
      need = (f"{_gib(prog.needed)} per chip but a {chip.name} chip has {chip.hbm_gib:g} GiB "
              f"({_gib(over)} over)")
    return f"{p.family}'s {prog.name} needs {need}; try {'; or '.join(fixes)}"
  return None


def write_json(p: Plan, path) -> None:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(p.to_dict(), indent=2))


def main(argv, config, topology: str, programs: str, json_path: str | None) -> None:
  """The command line: plan, print, write JSON, and fail (exit 2) if a program does not fit."""
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {' '.join(argv[1:])}")
  result = plan(config, topology, programs=tuple(p for p in programs.split(",") if p))
  print(format_plan(result), flush=True)
  if json_path:
    write_json(result, json_path)
  problem = misfit_message(result, config)
  if problem:
    raise ValueError(problem)


def cli() -> None:
  """`python -m posediff_jax.plan` and `posediff-plan`."""
  # The host backend is the CPU even on a TPU VM (where a running job may hold the chips): the
  # planner only compiles, for the compile-only devices libtpu describes.
  jax.config.update("jax_platforms", "cpu")
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from posediff_jax import runtime  # pylint: disable=g-import-not-at-top

  config = config_flags.DEFINE_config_file(
      "config", None, "Config file (configs/*.py[:variant]) or a shipped config's name.",
      lock_config=True)
  topology = flags.DEFINE_string("topology", None, "TPU slice: v5litepod-8, v5p-64, v5p:2x4x4...")
  programs = flags.DEFINE_string("programs", "train,eval", "Which programs: train and/or eval.")
  json_path = flags.DEFINE_string("json", None, "Also write the plan as JSON here.")
  flags.mark_flags_as_required(["config", "topology"])
  runtime.run(lambda argv: main(argv, config.value, topology.value, programs.value,
                                json_path.value), usage=__doc__,
              key_flags=("config", "topology", "programs", "json"))


if __name__ == "__main__":
  cli()
