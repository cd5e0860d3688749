"""Process start-up shared by the command-line tools: logging, multi-process jobs, user errors.

`run(main)` is the tools' `absl.app.run`: a mistake on the command line or in the input ends with
one line `error: <what is wrong>` on stderr and exit status 2, never a traceback. That covers errors
raised by `main` (`USER_ERRORS`) and the command line itself: before absl parses the flags, every
`--config` is checked here (the file exists, its variant is valid, every `--config.<field>`
override names a field, with the nearest valid name suggested), because ml_collections raises
those while parsing flags, before `main` runs, with a traceback or a multi-line dump.

A `--config` that names no file but a config the package ships (`demo`, `d3dp_h36m.py:gt`, or
`configs/demo.py` outside a checkout) is read from `posediff_jax.configs` (`shipped_config`), so
the installed commands (`posediff-train`, ...) take the README's config arguments anywhere. The
`--config.<field>` overrides given are recorded (`config_overrides`): evaluate.py and predict take
a checkpoint's model sizes except where the command line sets them.
"""

import difflib
import importlib.util
import os
import pathlib
import re
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections.config_flags import config_flags
from ml_collections.config_flags import config_path

# Errors that mean "the input is wrong": the CLIs print their message, not a traceback.
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, FileExistsError, FloatingPointError)

_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0 for a multi-process job (GPU clusters without Slurm/OpenMPI). "
    "TPU pods, Slurm and OpenMPI jobs are detected without it.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job (one per host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "This process's index in [0, num_processes).")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Joins a multi-process job when launched as one; a single process needs nothing.

  The job is described by the arguments, else by the `--coordinator_address`, `--num_processes`
  and `--process_id` flags, else by JAX's own environment (`JAX_COORDINATOR_ADDRESS`, or
  `POSEDIFF_DISTRIBUTED=1` to let `jax.distributed.initialize()` detect a TPU pod, Slurm or
  OpenMPI job). Plain `jax.distributed.initialize()` fails on one host outside such a job, hence
  the opt-in. CPU-only jobs use gloo for cross-process collectives (the CPU default has none).
  Library INFO logs (orbax, XLA backend probing) are silenced so the console shows progress and
  results.
  """
  logging.set_verbosity(logging.WARNING)
  if flags.FLAGS.is_parsed():
    coordinator_address = coordinator_address or _COORDINATOR.value
    num_processes = num_processes if num_processes is not None else _NUM_PROCESSES.value
    process_id = process_id if process_id is not None else _PROCESS_ID.value
  explicit = coordinator_address is not None or num_processes is not None
  if not (explicit or os.environ.get("JAX_COORDINATOR_ADDRESS")
          or os.environ.get("POSEDIFF_DISTRIBUTED") == "1"):
    return
  if explicit and (coordinator_address is None or num_processes is None or process_id is None):
    raise ValueError("a multi-process job needs all of --coordinator_address, --num_processes and "
                     f"--process_id (got {coordinator_address!r}, {num_processes!r}, "
                     f"{process_id!r})")
  platforms = (os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms or "").lower()
  if platforms == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


def _one_line(message: str) -> str:
  """`message` on one line: the error contract of the tools is one `error: ...` line."""
  return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def fail(message: str) -> None:
  """Prints `error: <message>` (on one line) to stderr and exits with status 2."""
  print(f"error: {_one_line(message)}", file=sys.stderr)
  sys.exit(2)


def _traceback_wanted() -> bool:
  return os.environ.get("POSEDIFF_TRACEBACK") == "1"


def config_argument(argv: list[str], name: str) -> str | None:
  """The last value given to `--name` (`--name=X` or `--name X`), as absl reads it; None if none."""
  value = None
  for i, arg in enumerate(argv):
    match = re.match(rf"^-{{1,2}}{re.escape(name)}(=|$)", arg)
    if match:
      if match.group(1) == "=":
        value = arg.split("=", 1)[1]
      elif i + 1 < len(argv):
        value = argv[i + 1]
  return value


def shipped_configs_dir() -> pathlib.Path:
  """The folder of the configs the package ships (`posediff_jax.configs`: the checkout's configs/
  in a repository, installed with the package by `pip install .`)."""
  return pathlib.Path(__file__).resolve().parent / "configs"


def shipped_config_names() -> list[str]:
  """The shipped configs' names, e.g. ['d3dp_3dhp', ..., 'demo', ...]."""
  return sorted(p.stem for p in shipped_configs_dir().glob("*.py") if p.name != "__init__.py")


def shipped_config(spec: str) -> str:
  """`spec` (`file.py[:variant]`), or the shipped config it names when no such file exists.

  `demo`, `demo.py`, `configs/demo` and `configs/demo.py` (each with an optional `:variant`) name
  the shipped configs/demo.py. An existing file is always taken as it is, and any other spec is
  returned unchanged (reading it then fails, listing the shipped names).
  """
  path_text, colon, variant = spec.partition(":")
  path = pathlib.Path(path_text)
  if not path_text or path.exists():
    return spec
  if str(path.parent) not in (".", "configs") or path.suffix not in ("", ".py"):
    return spec
  shipped = shipped_configs_dir() / f"{path.stem}.py"
  if path.stem == "__init__" or not shipped.is_file():
    return spec
  return str(shipped) + colon + variant


def _resolve_config_specs(argv: list[str]) -> list[str]:
  """`argv` with the value of every config-file flag passed through `shipped_config`."""
  names = {name for name in list(flags.FLAGS)
           if isinstance(flags.FLAGS[name].parser, config_flags.ConfigFileFlagParser)}
  out, i = [], 0
  while i < len(argv):
    arg = argv[i]
    match = re.match(r"^(-{1,2})([\w-]+)(=(.*))?$", arg)
    if i > 0 and match and match.group(2) in names:
      if match.group(3) is not None:
        arg = f"{match.group(1)}{match.group(2)}={shipped_config(match.group(4))}"
      elif i + 1 < len(argv):  # `--config SPEC`
        out.append(arg)
        i += 1
        arg = shipped_config(argv[i])
    out.append(arg)
    i += 1
  return out


# The `--<name>.<field>` overrides of each config flag on the command line, recorded by
# `parse_flags` (see `config_overrides`).
_OVERRIDES: dict[str, tuple[str, ...]] = {}


def config_overrides(name: str = "config") -> tuple[str, ...]:
  """The fields the command line set with `--<name>.<field>=...` (e.g. 'model.hid_dim'), in order.

  Recorded when the flags were parsed (`--flagfile` contents included); before that, read from
  `sys.argv`.
  """
  if name in _OVERRIDES:
    return _OVERRIDES[name]
  return tuple(_override_fields(sys.argv, name))


def _override_fields(argv: list[str], name: str) -> list[str]:
  """The fields of `--name.<field>[=value]` / `--noname.<field>` overrides, in order (the same
  arguments ml_collections' config flag treats as overrides)."""
  fields = []
  for arg in argv:
    if re.match(rf"-{{1,2}}(no)?{re.escape(name)}\.", arg):
      field = arg.split("=", 1)[0].split(".", 1)[1]
      if field not in fields:
        fields.append(field)
  return fields


def _config_paths(config, prefix: str = "") -> list[str]:
  """Every dotted field path of a ConfigDict, sections included."""
  paths = []
  for key, value in config.items():
    path = f"{prefix}{key}"
    paths.append(path)
    if hasattr(value, "items") and not isinstance(value, dict):
      paths.extend(_config_paths(value, path + "."))
  return paths


def _unknown_field_message(name: str, spec: str, config, field: str) -> str:
  """Why `--name.field` names no field of `config`, with the nearest valid field."""
  plain = re.sub(r"\[[^\]]*\]", "", field)  # `a.b[0]` indexes field a.b
  if plain != field:
    try:
      value = config_path.get_value(plain, config)
      return f"--{name}.{field}: {spec}'s {plain} = {value!r} has no such element"
    except (KeyError, AttributeError, IndexError, ValueError):
      pass
  # The deepest section that exists, and what is left of the path below it.
  parts = plain.split(".")
  node, depth = config, 0
  while depth < len(parts) - 1 and parts[depth] in node and hasattr(node[parts[depth]], "items"):
    node, depth = node[parts[depth]], depth + 1
  section = ".".join(parts[:depth])
  if depth == len(parts) - 1:
    # Only the last name is wrong: compare it with its section's fields, not with whole paths
    # (which share the section's prefix and would all look alike).
    close = difflib.get_close_matches(parts[-1], list(node.keys()), n=1, cutoff=0.6)
    close = [f"{section}.{close[0]}" if section else close[0]] if close else []
  else:
    close = difflib.get_close_matches(plain, _config_paths(config), n=1, cutoff=0.6)
  if not close:
    # A right name in the wrong place (`--config.batch_size`): the fields of that name anywhere.
    close = [p for p in _config_paths(config) if p.rsplit(".", 1)[-1] == parts[-1]]
  if close:
    options = " or ".join(f"--{name}.{c}" for c in close)
    return f"--{name}.{field}: {spec} has no field {plain!r}; did you mean {options}?"
  where = f"section {section!r}" if section else "the config"
  return (f"--{name}.{field}: {spec} has no field {plain!r} ({where} has: "
          f"{', '.join(sorted(node.keys()))})")


def _load_config_file(spec: str):
  """Runs `get_config` of a `file.py[:variant]` spec as ml_collections will, or fails in one line.

  Returns:
    The config, or None when the file's `get_config` returned none (ml_collections then decides).
  """
  path_text, *variant = spec.split(":", 1)
  path = pathlib.Path(path_text)
  if not path.is_file():
    what = "is a directory, not a config file" if path.is_dir() else "not found"
    hint = ""
    folder = path.parent if str(path.parent) else pathlib.Path(".")
    if not path.is_dir() and folder.is_dir():
      names = sorted(str(p.name) for p in folder.glob("*.py") if p.name != "__init__.py")
      close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.6)
      if close:
        hint = f"; did you mean {folder / close[0]}?"
      elif names:
        hint = f" (configs in {folder}: {', '.join(names)})"
    if not hint and not path.is_dir():
      shipped = shipped_config_names()
      close = difflib.get_close_matches(path.stem, shipped, n=1, cutoff=0.6)
      hint = (f"; did you mean the shipped config {close[0]}?" if close
              else f" (shipped configs, by name: {', '.join(shipped)})")
    fail(f"--config {spec}: config file {path} {what}{hint}")
  module_spec = importlib.util.spec_from_file_location(f"_posediff_config_{path.stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except
    # A broken or foreign .py file: say which and why; POSEDIFF_TRACEBACK=1 shows where.
    if _traceback_wanted():
      raise
    fail(f"--config {spec}: {path} could not be loaded ({type(e).__name__}: {e})")
  if not callable(getattr(module, "get_config", None)):
    fail(f"--config {spec}: {path} has no get_config() function; is it a config file?")
  try:
    return module.get_config(*variant)
  except (ValueError, TypeError) as e:
    # The configs' own errors (configs.pick_variant) name the file and the valid variants.
    fail(str(e) if path.name in str(e) else f"--config {spec}: {e}")


def check_config_file(name: str, spec: str, argv: list[str]) -> None:
  """Checks the config file `spec` of flag `--name` and the `--name.<field>` overrides in `argv`.

  Exits with `error: ...` (status 2) naming the problem: a missing file, an unknown variant, or
  every override that names no field (each with the nearest valid field).
  """
  config = _load_config_file(spec)
  if config is None or not hasattr(config, "items"):
    return  # not a ConfigDict: ml_collections decides what overriding it means
  problems = []
  for field in _override_fields(argv, name):
    try:
      config_path.get_value(field, config)
    except (KeyError, AttributeError, IndexError, ValueError):
      problems.append(_unknown_field_message(name, spec, config, field))
  if problems:
    fail("; ".join(problems))


def check_config_flags(argv: list[str]) -> None:
  """`check_config_file` for every config-file flag given a value on the command line.

  A flag left at its default was loaded when it was defined; a tool whose default config takes
  overrides calls `check_config_file` itself before defining the flag (convert_torch_weights.py).
  """
  argv = flags.FLAGS.read_flags_from_files(argv, force_gnu=False)
  for name in list(flags.FLAGS):
    flag = flags.FLAGS[name]
    if not isinstance(flag.parser, config_flags.ConfigFileFlagParser) or flag.name != name:
      continue
    spec = config_argument(argv, name)
    if spec is not None:
      check_config_file(name, spec, argv)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing for `app.run`, with one-line errors and exit status 2 instead of a
  `FATAL Flags parsing error` block (status 1) or a traceback.

  Config specs that name a shipped config are resolved first (`shipped_config`), and the
  `--config.<field>` overrides are recorded (`config_overrides`).
  """
  argv = _resolve_config_specs(argv)
  expanded = flags.FLAGS.read_flags_from_files(argv, force_gnu=False)
  for name in list(flags.FLAGS):
    if isinstance(flags.FLAGS[name].parser, config_flags.ConfigFileFlagParser):
      _OVERRIDES[name] = tuple(_override_fields(expanded, name))
  if _traceback_wanted():
    return flags.FLAGS(argv)
  check_config_flags(argv)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e))


def quiet_libtpu_without_tpu() -> None:
  """With libtpu installed (requirements-dev.txt has it for `posediff_jax.plan`) on a machine
  without a TPU, JAX still loads libtpu to look for one, and libtpu prints "could not determine
  TPU accelerator type" / TPU_WORKER_HOSTNAMES warnings before falling back to the CPU. When there
  is no TPU chip and no other accelerator plugin, and the user chose no platform, ask JAX for the
  CPU alone. A machine with TPU chips or a GPU plugin is left as it is."""
  if os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms or "JAX_FORCE_TPU_INIT" in (
      os.environ):
    return
  try:
    from jax._src import hardware_utils  # pylint: disable=g-import-not-at-top
    chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
  except Exception:  # pylint: disable=broad-except
    return  # not knowing is no reason to change anything
  if chips == 0 and not _accelerator_plugins():
    jax.config.update("jax_platforms", "cpu")


def _accelerator_plugins() -> list[str]:
  """The PJRT plugins JAX would load (CUDA, ROCm, ...), found the way JAX finds them: modules of
  the `jax_plugins` namespace package and `jax_plugins` entry points."""
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  import pkgutil  # pylint: disable=g-import-not-at-top
  names = [e.name for e in importlib.metadata.entry_points(group="jax_plugins")]
  try:
    import jax_plugins  # pylint: disable=g-import-not-at-top
    names += [m.name for m in pkgutil.iter_modules(jax_plugins.__path__)]
  except ImportError:
    pass
  return names


def run(main, usage: str | None = None, key_flags=()) -> None:
  """`absl.app.run(main)`, printing user errors as one `error: ...` line with exit status 2.

  Covers the command line (`parse_flags`), `USER_ERRORS` raised by `main` and `app.UsageError`.
  Set POSEDIFF_TRACEBACK=1 to see the full traceback instead.

  Args:
    main: the tool's `main(argv)`.
    usage: the text `--help` shows above the flags: the tool's docstring. absl reads it from
      `__main__`, which for an installed command (`posediff-train`) is pip's launcher.
    key_flags: the names of the tool's flags, which `--help` lists. absl lists the flags defined
      in `__main__`; the tools define theirs in their own modules.
  """
  quiet_libtpu_without_tpu()
  if usage is not None:
    sys.modules["__main__"].__doc__ = usage
  for name in key_flags:
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])

  def guarded(argv):
    # Quiet library INFO logs (matplotlib's font cache, orbax) from the first line of main on;
    # `initialize` does it too, but the tools check their input before they call it.
    logging.set_verbosity(logging.WARNING)
    try:
      return main(argv)
    except USER_ERRORS + (app.UsageError,) as e:
      if _traceback_wanted():
        raise
      fail(e.args[0] if isinstance(e, KeyError) and e.args else str(e))

  try:
    app.run(guarded, flags_parser=parse_flags)
  except SystemExit as e:
    # absl ends `--help` with status 1; help that was asked for is a success.
    if e.code == 1 and _HELP_FLAGS.intersection(arg.split("=")[0] for arg in sys.argv[1:]):
      sys.exit(0)
    raise


_HELP_FLAGS = frozenset({"-h", "-?", "-help", "--help", "--helpshort", "--helpfull"})
