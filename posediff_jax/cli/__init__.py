"""The command-line tools, each a `main` and a `cli()` entry point.

`train`, `evaluate` and `convert` are what the repository's train.py, evaluate.py and
convert_torch_weights.py run, and what the installed commands posediff-train, posediff-evaluate
and posediff-convert run (pyproject.toml); posediff-predict and posediff-plan run
`posediff_jax.predict` and `posediff_jax.plan`. Flags are defined inside `cli()`, so importing a
tool defines none and several tools can be imported into one process.
"""
