"""Experiment configs: one file per family and dataset, each with `get_config(variant)`.

A command line picks a variant after a colon (`configs/diffpose_h36m.py:gt`); every config checks it
with `pick_variant`, so a misspelled variant, or one given to a config without variants, is an error
rather than the default in disguise.

The package ships these files as `posediff_jax.configs` (`posediff_jax/configs` is a link to this
folder), so they import each other under that name: it works in a checkout and after `pip install .`
alike. A config of one's own can build on them the same way
(`from posediff_jax.configs import d3dp_h36m`), and the tools accept a shipped config by name
(`--config demo`, `--config d3dp_h36m.py:gt`) where no such file exists (`runtime.shipped_config`).
"""

import pathlib


def pick_variant(config_file: str, arg, variants: tuple[str, ...] = (), *,
                 hint: str = "") -> str | None:
  """The variant asked for after the colon, checked strictly.

  Args:
    config_file: the config's `__file__` (named in the error).
    arg: what followed the colon; None or "" when nothing did.
    variants: the valid variants, the default first; empty for a config without variants.
    hint: a sentence added to the error (e.g. why a variant does not exist for this dataset).

  Returns:
    The variant (the default when none was given); None for a config without variants.

  Raises:
    ValueError: an unknown variant, or a variant given to a config that has none.
  """
  name = f"configs/{pathlib.Path(config_file).name}"
  extra = f" ({hint})" if hint else ""
  if not variants:
    if arg:
      raise ValueError(f"{name} has no variants but {name}:{arg} asks for {arg!r}; use {name} "
                       f"without a colon{extra}")
    return None
  if not arg:
    return variants[0]
  if arg not in variants:
    raise ValueError(f"{name}: unknown variant {arg!r}; valid variants: {', '.join(variants)} "
                     f"(default {variants[0]}){extra}")
  return arg
