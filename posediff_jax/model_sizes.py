"""Checkpoints that describe themselves: the model sizes a checkpoint records replace the config's.

A checkpoint's `meta` item records its model's sizes (each family's `checkpoint_meta`: the sections
`model`, `lifter` and `phase1`), whether convert_torch_weights.py or train.py wrote it. evaluate.py
and predict take them from there (`adopt_from_checkpoint`), so a checkpoint of other sizes needs no
`--config.model.*` flags: a recorded size replaces the config's, and one line says which. A field
the command line set itself (`runtime.config_overrides`) is not replaced: if it differs from the
checkpoint's, that is an error naming every such field at once.

The converter reads every size the weights determine off their shapes (`convert/*.py`) and records
the config's value for what no shape shows: the attention head counts (`HEAD_COUNTS`), which it
checks where a width must divide by them (`head_problems`), and says so in its output
(`unseen_line`).
"""

import dataclasses
import json
from typing import Any, Iterable

from posediff_jax import config_checks

# The meta sections that hold model sizes, and the checkpoint part each describes.
SECTIONS = {"model": "denoiser", "lifter": "lifter", "phase1": "encoder"}

# The attention head counts, which no weight shape shows (the q, k and v projections are C x C
# whatever the number of heads), with the widths each must divide. mmDiff's phase-1 transformer
# projects to heads x dim_head channels: the converter checks that product
# (`convert.mmdiff.phase1_size_mismatches`), not the two factors.
HEAD_COUNTS = {
    "diffpose": {"model.n_head": ("model.hid_dim",), "lifter.n_head": ("lifter.hid_dim",)},
    "icassp": {"model.n_head": ("model.hid_dim",), "lifter.n_head": ("lifter.hid_dim",)},
    "d3dp": {"model.num_heads": ("model.embed_dim",)},
    "finepose": {"model.num_heads": ("model.embed_dim", "model.text_width")},
    "dsgdiffu": {"model.num_heads": ("model.embed_dim", "model.text_width")},
    "mmdiff": {"model.n_head": ("model.hid_dim",), "phase1.heads": (), "phase1.dim_head": ()},
}
# Other recorded model settings that no weight shape shows.
OTHER_UNSEEN = {"dsgdiffu": ("model.graph",)}

def _as_json(value):
  """`value` as the JSON meta stores it (tuples become lists)."""
  return json.loads(json.dumps(value))


def set_value(config, field: str, value) -> None:
  """Sets `field`, in the config value's own type (JSON gives lists for tuples)."""
  *sections, name = field.split(".")
  node = config
  for section in sections:
    node = node[section]
  current = node[name]
  if isinstance(current, tuple) and isinstance(value, list):
    value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
  elif isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  node[name] = value


def recorded(meta: dict[str, Any]) -> dict[str, Any]:
  """{'model.hid_dim': 16, ...}: the sizes a checkpoint's meta records."""
  out = {}
  for section in SECTIONS:
    for name, value in (meta.get(section) or {}).items():
      out[f"{section}.{name}"] = value
  return out


def _values(items) -> str:
  return ", ".join(f"{field}={value}" for field, value in items)


@dataclasses.dataclass(frozen=True)
class Adopted:
  """What `adopt` did.

  Attributes:
    source: the checkpoint directory.
    changed: (field, the checkpoint's value, the config's value) of every size it replaced.
    count: how many sizes the checkpoint records.
  """
  source: str
  changed: tuple[tuple[str, Any, Any], ...]
  count: int

  def line(self) -> str:
    """One line for the console: which sizes were taken from the checkpoint."""
    if not self.count:
      return f"checkpoint {self.source} records no model sizes: the config's are used"
    if not self.changed:
      return (f"model sizes from checkpoint {self.source}: its {self.count} recorded sizes equal "
              "the config's")
    had = ", ".join(str(configured) for _, _, configured in self.changed)
    rest = self.count - len(self.changed)
    return (f"model sizes from checkpoint {self.source}: "
            f"{_values((f, v) for f, v, _ in self.changed)} (the config had {had})"
            + (f"; its other {rest} recorded sizes equal the config's" if rest else ""))


def adopt(config, meta: dict[str, Any], source, explicit: Iterable[str] = ()) -> Adopted:
  """Puts the sizes `meta` records into `config`, except those the command line set.

  Args:
    config: the experiment config (changed in place; a locked ConfigDict is fine).
    meta: the checkpoint's meta item.
    source: the checkpoint directory, for the messages.
    explicit: the config fields the command line set (`runtime.config_overrides()`).

  Raises:
    ValueError: fields the command line set to other values than the checkpoint's, all of them
      in one message with the flags that fit.
  """
  explicit = set(explicit)
  sizes = {field: value for field, value in recorded(meta).items()
           if config_checks.get_value(config, field) is not config_checks.MISSING}
  changed, conflicts = [], []
  for field, value in sizes.items():
    current = config_checks.get_value(config, field)
    if _as_json(current) == value:
      continue
    (conflicts if field in explicit else changed).append((field, value, current))
  if conflicts:
    given = ", ".join(f"{config_checks.override_flag(field, current)} but the checkpoint has "
                      f"{field}={value}" for field, value, current in conflicts)
    fits = " ".join(config_checks.override_flag(field, value) for field, value, _ in conflicts)
    raise ValueError(f"checkpoint {source} was made with other model sizes than the command line "
                     f"sets: {given}; leave these flags out to take the checkpoint's sizes, or "
                     f"pass {fits}")
  for field, value, _ in changed:
    set_value(config, field, value)
  return Adopted(str(source), tuple(changed), len(sizes))


def adopt_from_checkpoint(config, checkpoint_dir, explicit: Iterable[str] = ()) -> Adopted | None:
  """`adopt` with the meta of `checkpoint_dir`'s newest step.

  Returns None, changing nothing, when there is nothing to adopt from: no such directory, an
  unreadable step, or a checkpoint of another family. The tool's own checks
  (`config_checks.check_evaluate`, `check_predict`) then say what is wrong.
  """
  from posediff_jax import checkpoint  # pylint: disable=g-import-not-at-top
  if not checkpoint_dir:
    return None
  try:
    meta, _ = checkpoint.load_meta(checkpoint_dir)
  except (FileNotFoundError, ValueError):
    return None
  if meta.get("family") and meta.get("family") != config.get("family"):
    return None
  return adopt(config, meta, checkpoint_dir, explicit)


def head_problems(config, family: str) -> list[str]:
  """Head counts that do not divide the widths they split (read off the weights, or set)."""
  problems = []
  for field, widths in HEAD_COUNTS.get(family, {}).items():
    heads = config_checks.get_value(config, field)
    for width_field in widths:
      width = config_checks.get_value(config, width_field)
      if not (isinstance(heads, int) and isinstance(width, int) and heads > 0 and width > 0):
        continue  # config_checks.value_problems reports values that are not positive counts
      if width % heads:
        fits = [n for n in range(1, width + 1) if width % n == 0]
        problems.append(f"{field}={heads} does not divide {width_field}={width} (the heads "
                        f"split that width): pass --config.{field}=N with N one of "
                        f"{', '.join(map(str, fits))}")
  return problems


def unseen_line(config, family: str, parts: Iterable[str]) -> str | None:
  """The converter's line about the recorded settings no weight shape shows, for the converted
  `parts` ('denoiser', 'lifter', 'encoder'); None if there are none."""
  parts = set(parts)
  fields = [f for f in (*HEAD_COUNTS.get(family, {}), *OTHER_UNSEEN.get(family, ()))
            if SECTIONS.get(f.split(".")[0]) in parts
            and config_checks.get_value(config, f) is not config_checks.MISSING]
  if not fields:
    return None
  heads = [f for f in fields if f in HEAD_COUNTS.get(family, {})]
  text = (f"not in the weights, recorded from the config: "
          f"{_values((f, config_checks.get_value(config, f)) for f in fields)}")
  if heads:
    text += (" (no weight shape shows a head count; if the checkpoint was trained with another, "
             f"convert again with --config.{heads[0]}=N")
    text += (", and phase1.heads x phase1.dim_head must equal the width the weights show)"
             if "phase1.heads" in heads else ")")
  return text
