"""Family-independent helpers to turn a PyTorch state dict into a Flax parameter tree, strictly.

A family converter declares a list of `Rule`s (a regex over torch keys, a Flax path template and a
`Transform`), the keys its checkpoints carry but the model does not use, and a parameter template
from `jax.eval_shape(model.init, ...)`. `map_state_dict` then fills every template leaf exactly once
and refuses anything it cannot account for: a torch key matched by no rule and not declared unused,
a rule that points outside the model, two keys for one parameter, a shape that does not fit, or a
parameter left empty. Declared-unused keys are listed in the returned report, never dropped
silently.

Before mapping, each converter reads every size the weights determine (widths, depths, layer and
frame counts) and compares them all with the config: `size_error` then names every differing
field at once, with the exact `--config.<field>=<value>` overrides that fit the file.
"""

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from posediff_jax import config_checks


class ConversionError(ValueError):
  """A checkpoint does not fit the model it is being converted for.

  Attributes:
    mismatches: the model sizes that differ from the config (`SizeMismatch`), when that is why.
    source: the file they were read from.
  """

  def __init__(self, message: str, *, mismatches: Sequence["SizeMismatch"] = (),
               source: str | None = None):
    super().__init__(message)
    self.mismatches = tuple(mismatches)
    self.source = source


@dataclasses.dataclass(frozen=True)
class SizeMismatch:
  """A model size the checkpoint's weights determine that differs from the config's.

  Attributes:
    field: the dotted config field, e.g. 'model.hid_dim'.
    found: the checkpoint's value, or None when the weights fix no single value (see `advice`).
    configured: the config's value.
    evidence: how the weights show it, e.g. "key 'gconv_input.weight' has shape [3, 1, 5, 64]".
    advice: what to set instead, when `found` is None.
  """
  field: str
  found: Any
  configured: Any
  evidence: str = ""
  advice: str = ""

  def describe(self) -> str:
    head = f"{self.field}={self.found} in the checkpoint" if self.found is not None else self.field
    evidence = f" ({self.evidence})" if self.evidence else ""
    text = f"{head}{evidence}, {self.configured} in the config"
    return text + (f": {self.advice}" if self.advice else "")


def size_error(source: str, mismatches: Sequence[SizeMismatch], *,
               more: Sequence[tuple[str, Sequence[SizeMismatch]]] = ()) -> ConversionError:
  """One error naming every size that differs, and the overrides that fit the checkpoint.

  Args:
    source: the checkpoint file.
    mismatches: its sizes that differ from the config's.
    more: (file, mismatches) of the other files of the same conversion (e.g. the lifter).
  """
  parts = [(source, tuple(mismatches))] + [(s, tuple(m)) for s, m in more if m]
  every = [m for _, part in parts for m in part]
  flags = [config_checks.override_flag(m.field, m.found) for m in every if m.found is not None]
  if len(parts) == 1:
    text = (f"{source}: the checkpoint's model sizes differ from the config's: "
            + "; ".join(m.describe() for m in every))
  else:
    text = "the checkpoints' model sizes differ from the config's: " + "; ".join(
        f"{s}: " + "; ".join(m.describe() for m in part) for s, part in parts)
  if flags:
    text += "; pass " + " ".join(flags)
  return ConversionError(text, mismatches=every, source=source)


def check_sizes(mismatches: Sequence[SizeMismatch], source: str) -> None:
  """Raises `size_error` when there is any mismatch."""
  if mismatches:
    raise size_error(source, mismatches)


# --------------------------------------------------------------------------------------------------
# Finding the state dict inside a checkpoint object.


def _is_state_dict(obj: Any) -> bool:
  return (isinstance(obj, Mapping) and len(obj) > 0
          and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items()))


def _describe(obj: Any) -> str:
  if isinstance(obj, Mapping):
    keys = list(obj)
    shown = ", ".join(repr(k) for k in keys[:8]) + (", ..." if len(keys) > 8 else "")
    return f"a dict with {len(keys)} keys ({shown})"
  if isinstance(obj, (list, tuple)):
    kinds = ", ".join(type(v).__name__ for v in obj[:8]) + (", ..." if len(obj) > 8 else "")
    return f"a {type(obj).__name__} of {len(obj)} elements ({kinds})"
  return f"a {type(obj).__name__}"


def strip_module_prefix(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Drops the `module.` prefix (torch DataParallel) if every key has it; else a plain copy."""
  if state_dict and all(k.startswith("module.") for k in state_dict):
    return {k[len("module."):]: v for k, v in state_dict.items()}
  return dict(state_dict)


def extract_state_dict(obj: Any, path, *, list_index: int = 0,
                       dict_key: str | None = None) -> dict[str, np.ndarray]:
  """Finds the model state dict inside a loaded checkpoint.

  Accepted layouts:
  - a bare state dict `{name: array}`;
  - a list / tuple, e.g. upstream DiffPose's `[state_dict, optimizer, epoch, step, ema]`: element
    `list_index` (0 = the live weights; DiffPose's EMA is element 4);
  - a dict holding the state dict under `dict_key` (e.g. D3DP's `model_pos`).

  Args:
    obj: what `safe_load.load_torch_checkpoint` returned.
    path: the file it came from (only used in error messages).
    list_index: which list element holds the state dict.
    dict_key: the key under which a dict checkpoint holds the state dict.

  Returns:
    `{name: np.ndarray}` in checkpoint order, with a `module.` prefix removed if every key has it.

  Raises:
    ConversionError: no state dict at the expected place; the message names the file and says
      what was found.
  """
  if isinstance(obj, (list, tuple)):
    if not -len(obj) <= list_index < len(obj):
      raise ConversionError(f"{path}: expected the state dict at list index {list_index}, but the "
                            f"checkpoint is {_describe(obj)}")
    candidate, where = obj[list_index], f"element {list_index} of the checkpoint list"
  elif isinstance(obj, Mapping):
    if dict_key is not None and dict_key in obj:
      candidate, where = obj[dict_key], f"key {dict_key!r} of the checkpoint dict"
    elif _is_state_dict(obj):
      candidate, where = obj, "the checkpoint"
    else:
      wanted = (f"a dict with key {dict_key!r} or a bare state dict" if dict_key is not None
                else "a bare state dict {name: tensor}")
      raise ConversionError(f"{path}: expected {wanted}, found {_describe(obj)}")
  else:
    raise ConversionError(f"{path}: expected a state dict, a list holding one, or a dict holding "
                          f"one; found {_describe(obj)}")
  if not _is_state_dict(candidate):
    raise ConversionError(f"{path}: {where} is not a state dict {{name: tensor}}; it is "
                          f"{_describe(candidate)}")
  return strip_module_prefix(candidate)


# --------------------------------------------------------------------------------------------------
# Rules and transforms.


@dataclasses.dataclass(frozen=True)
class Transform:
  """How a torch tensor becomes a Flax array.

  Attributes:
    name: short description for messages.
    apply: torch array -> flax array; may assume `torch_shape(flax_shape) == array.shape`.
    torch_shape: the torch shape that yields a given Flax shape (for checks and messages).
  """

  name: str
  apply: Callable[[np.ndarray], np.ndarray]
  torch_shape: Callable[[tuple[int, ...]], tuple[int, ...]]


IDENTITY = Transform("identity", lambda a: a, lambda s: tuple(s))
# torch nn.Linear weight [out, in] -> flax kernel [in, out].
LINEAR_WEIGHT = Transform("transpose", lambda a: a.T, lambda s: tuple(reversed(s)))
# Upstream ChebConv weight [K+1, 1, in, out] -> [K+1, in, out].
CHEB_WEIGHT = Transform("squeeze axis 1", lambda a: a[:, 0], lambda s: (s[0], 1, *s[1:]))
# Upstream ChebConv bias [1, 1, out] -> [out].
CHEB_BIAS = Transform("squeeze to 1-D", lambda a: a.reshape(-1), lambda s: (1, 1, *s))


@dataclasses.dataclass(frozen=True)
class Rule:
  """Maps torch keys matching `pattern` (a full-match regex) to `target` with `transform`.

  `target` is a '/'-separated Flax path; `{0}`, `{1}`, ... are replaced by the regex groups, e.g.
  `Rule(r"atten_layers\\.(\\d+)\\.self_attn\\.linears\\.(\\d+)\\.weight",
  "atten_layers_{0}/self_attn/linears_{1}/kernel", LINEAR_WEIGHT)`.
  """

  pattern: str
  target: str
  transform: Transform = IDENTITY


@dataclasses.dataclass(frozen=True)
class ConversionReport:
  """What a conversion did.

  Attributes:
    unused: torch keys that matched a declared-unused pattern, in checkpoint order.
    num_tensors: torch tensors mapped onto parameters.
    num_elements: parameter elements filled.
  """

  unused: tuple[str, ...]
  num_tensors: int
  num_elements: int

  def __str__(self) -> str:
    text = f"mapped {self.num_tensors} tensors ({self.num_elements:,} values)"
    if self.unused:
      text += f"; {len(self.unused)} checkpoint keys unused by the model: " + ", ".join(self.unused)
    return text


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    path = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, Mapping):
      flat.update(_flatten(value, path))
    else:
      flat[path] = value
  return flat


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def _shape(shape: Sequence[Any]) -> str:
  return "[" + ", ".join(str(d) for d in shape) + "]"


def map_state_dict(
    state_dict: Mapping[str, np.ndarray],
    rules: Sequence[Rule],
    template: Mapping[str, Any],
    *,
    unused: Sequence[str] = (),
    source: str = "checkpoint",
) -> tuple[dict[str, Any], ConversionReport]:
  """Builds a Flax parameter tree from a flat torch state dict, strictly.

  Args:
    state_dict: `{torch_key: array}` (prefix already stripped).
    rules: tried in order; the first whose pattern fully matches a key wins.
    template: the Flax `params` collection to fill (nested dicts whose leaves have `.shape` and
      `.dtype`, e.g. from `jax.eval_shape(model.init, ...)["params"]`).
    unused: full-match regexes of torch keys the checkpoint may carry but the model does not use.
    source: names the checkpoint in error messages.

  Returns:
    `(params, report)`: `params` has the template's structure with numpy arrays of the template's
    dtypes; `report` lists the unused keys.

  Raises:
    ConversionError: an unknown torch key, a rule target missing from the model, two keys for one
      parameter, a shape mismatch (naming the key, the Flax path and both shapes), a non-float
      tensor for a float parameter, or parameters left unfilled.
  """
  leaves = _flatten(template)
  compiled = [(re.compile(rule.pattern), rule) for rule in rules]
  unused_patterns = [re.compile(p) for p in unused]
  filled: dict[str, np.ndarray] = {}
  filled_from: dict[str, str] = {}
  unused_keys, unknown_keys = [], []
  for key, array in state_dict.items():
    for regex, rule in compiled:
      match = regex.fullmatch(key)
      if match:
        break
    else:
      if any(p.fullmatch(key) for p in unused_patterns):
        unused_keys.append(key)
      else:
        unknown_keys.append(key)
      continue
    flax_path = rule.target.format(*match.groups())
    if flax_path not in leaves:
      raise ConversionError(
          f"{source}: key {key!r} maps to Flax parameter {flax_path!r}, which the model does not "
          "have (a deeper or differently built model?)")
    if flax_path in filled_from:
      raise ConversionError(f"{source}: keys {filled_from[flax_path]!r} and {key!r} both map to "
                            f"Flax parameter {flax_path!r}")
    leaf = leaves[flax_path]
    array = np.asarray(array)
    expected_torch = rule.transform.torch_shape(tuple(leaf.shape))
    if tuple(array.shape) != tuple(expected_torch):
      raise ConversionError(
          f"{source}: key {key!r} has shape {_shape(array.shape)}, but the model's parameter "
          f"{flax_path!r} {_shape(leaf.shape)} needs {_shape(expected_torch)} in the checkpoint "
          f"({rule.transform.name})")
    target_dtype = np.dtype(leaf.dtype)
    if np.issubdtype(target_dtype, np.floating) and not np.issubdtype(array.dtype, np.floating):
      raise ConversionError(f"{source}: key {key!r} has dtype {array.dtype}, expected a floating "
                            f"tensor for {flax_path!r}")
    filled[flax_path] = np.ascontiguousarray(rule.transform.apply(array)).astype(target_dtype)
    filled_from[flax_path] = key
  if unknown_keys:
    shown = ", ".join(repr(k) for k in unknown_keys[:10])
    more = f" (+{len(unknown_keys) - 10} more)" if len(unknown_keys) > 10 else ""
    raise ConversionError(
        f"{source}: {len(unknown_keys)} checkpoint keys do not belong to this model: {shown}{more}")
  missing = [p for p in leaves if p not in filled]
  if missing:
    shown = ", ".join(repr(p) for p in missing[:10])
    more = f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""
    raise ConversionError(
        f"{source}: {len(missing)} model parameters have no checkpoint key: {shown}{more}")
  report = ConversionReport(
      unused=tuple(unused_keys), num_tensors=len(filled),
      num_elements=int(sum(a.size for a in filled.values())))
  return _unflatten({p: filled[p] for p in leaves}), report


def linear_rules(torch_name: str, flax_name: str) -> tuple[Rule, ...]:
  """torch `nn.Linear` `<torch_name>.weight/.bias` -> flax `<flax_name>/kernel` (transposed)."""
  return (Rule(re.escape(torch_name) + r"\.weight", flax_name + "/kernel", LINEAR_WEIGHT),
          Rule(re.escape(torch_name) + r"\.bias", flax_name + "/bias"))


def layer_norm_rules(torch_name: str, flax_name: str) -> tuple[Rule, ...]:
  """torch `nn.LayerNorm` `.weight/.bias` -> flax `<flax_name>/scale`, `/bias`."""
  return (Rule(re.escape(torch_name) + r"\.weight", flax_name + "/scale"),
          Rule(re.escape(torch_name) + r"\.bias", flax_name + "/bias"))
