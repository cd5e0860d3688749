"""Model families: how each paper's networks, sampler and losses fit together.

A family module exposes `init_params`, `predict` (the whole evaluation pipeline for a batch of 2D
input), `losses` (the training objectives, by stage) and `convert` (torch checkpoints -> params).
`config.family` picks one.
"""

import importlib

FAMILIES = ("diffpose", "icassp", "d3dp", "finepose", "dsgdiffu", "mmdiff")
# DSGDiffu is FinePOSE plus graph attention: one module serves both (it reads config.family).
_MODULES = {"dsgdiffu": "finepose"}


def get(name: str):
  """The family module for `config.family`."""
  if name not in FAMILIES:
    raise ValueError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}")
  return importlib.import_module(f"posediff_jax.families.{_MODULES.get(name, name)}")
