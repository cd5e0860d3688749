r"""Writes docs/scaling.md: the paper configs of all families planned for TPU slices (compile time).

  python benchmarks/plan_table.py [--families d3dp,finepose] [--topologies v5litepod-8,v5p-8]
      [--redo] [--markdown-only] [--timeout 3600]

Each (family, slice) cell runs `python -m posediff_jax.plan` in a fresh process at the paper's
per-chip batch (weak scaling: the global batch is the paper's batch times the data axis) and keeps
its JSON in benchmarks/plan_results/; a cell already there is reused unless `--redo`, so an
interrupted run continues where it stopped and the Markdown can be rewritten from the stored cells
alone (`--markdown-only`). Compiling a MixSTE-size train step for a TPU takes minutes on a small
CPU (13 minutes on a busy 2-core machine), so a full run takes hours; cells not compiled yet are
listed as such in the table.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import time
from typing import NamedTuple

REPO = pathlib.Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "plan_results"
DOC = REPO / "docs" / "scaling.md"

# family -> (config spec, paper per-chip train batch, per-chip eval batch (frame/radar families:
# eval.batch_size per chip; clip families: eval.batch_size is already per chip), what one example
# of a batch is)
PAPER = {
    "diffpose": ("configs/diffpose_h36m.py:cpn", 1024, 1024, "frames"),
    "icassp": ("configs/icassp_h36m.py:cpn", 1024, 1024, "frames"),
    "d3dp": ("configs/d3dp_h36m.py:cpn", 4, None, "clips of 243 frames"),
    "finepose": ("configs/finepose_h36m.py:cpn", 4, None, "clips of 243 frames"),
    "dsgdiffu": ("configs/dsgdiffu_h36m.py:cpn", 4, None, "clips of 243 frames"),
    "mmdiff": ("configs/mmdiff_mmbody.py:head", 128, 256, "radar frames"),
}
TOPOLOGIES = ("v5litepod-8", "v5p-8", "v5p-64", "v5p-256")
class Variant(NamedTuple):
  """Extra cells: a family with overrides (what the planner's numbers asked for), named."""
  title: str  # what the overrides are, for the section's heading
  overrides: dict[str, object]
  slices: tuple[str, ...]  # the slices it is meant for
  train_batch: int | None = None  # per chip, instead of the paper's
  programs: str = "train,eval"


VARIANTS: dict[str, Variant] = {
    # FinePOSE's sampler as it was before configs/finepose_h36m.py set eval.chunk_size = 80: all
    # 160 rows of a call in one pass, 21 GiB of activations on a 16 GiB v5e chip (a v5p chip's
    # 95 GiB hold it, so the v5p slices would show nothing new).
    "finepose+all-rows": Variant("`--config.eval.chunk_size=0` (every denoiser row at once: "
                                 "before the planner's fix)", {"eval.chunk_size": 0},
                                 ("v5litepod-8",)),
    # D3DP's step at twice the paper's per-chip batch, without and with rematerialisation.
    "d3dp+8clips": Variant("8 clips per chip (twice the paper's), train step only", {},
                           ("v5litepod-8",), train_batch=8, programs="train"),
    "d3dp+8clips+remat": Variant("8 clips per chip and `--config.model.remat=True`, train step "
                                 "only", {"model.remat": True}, ("v5litepod-8",), train_batch=8,
                                 programs="train"),
}


def slices_for(family: str, topologies) -> list[str]:
  """The slices a family's cells are planned on: all of them, or those its variant is meant for."""
  if family in VARIANTS:
    return [t for t in topologies if t in VARIANTS[family].slices]
  return list(topologies)


CHANGES = [
    "- **FinePOSE / DSGDiffu evaluation did not fit a v5e chip.** At the paper's sampler setting "
    "(4 clips × 20 hypotheses × 2 flips = 160 denoiser rows per call, 243 × 17 tokens each) XLA "
    "needs 20.86 GiB of temporaries and refuses to compile for a 16 GiB chip (row "
    "`finepose+all-rows` below). The evaluation can now run a call's rows a few at a time on "
    "accelerators (`eval.chunk_size`; the CPU keeps `eval.cpu_chunk_size`); the text-conditioned "
    "configs set 80, with which FinePOSE's evaluation needs 10.81 GiB per v5e chip and "
    "DSGDiffu's 10.23 GiB. The samples are the same (tests/test_plan.py).",
    "- **Evaluation on many chips gathered every chip's hypotheses onto each chip.** The clip "
    "families' evaluation program left the layout of the batched SVD inside P-MPJPE (Procrustes) "
    "to XLA's partitioner, which does not split a TPU SVD by batch: it gathered the whole call "
    "onto every chip, so the per-chip need grew with the slice (DSGDiffu: 16.1 GiB per chip on "
    "v5p-8, 55.5 GiB on v5p-64, 214.6 GiB and refused on v5p-256; FinePOSE the same). Each "
    "device now runs its own mini-batches start to end (`jax.shard_map` over the data axis, "
    "`sharding.per_data_shard`) and only the results cross chips: the tables below are the "
    "fixed program (tests/test_sharding.py checks that the results equal one device's, "
    "tests/test_plan.py that the program has no other collective). mmDiff's evaluation still "
    "gathers its frames' Procrustes inputs (a few MiB; its per-chip need is 1.7-1.9 GiB on every "
    "slice).",
    "- **Training fits as configured.** D3DP's step at the paper's 4 clips per chip needs "
    "10.6 GiB of a v5e chip's 16, FinePOSE's 9.9 GiB, DSGDiffu's 8.5 GiB, mmDiff's (128 frames) "
    "2.8 GiB: nothing was changed for the paper batch. Activations are ~95% of it (the state, "
    "parameters + Adam moments + EMA, is 0.5-0.75 GiB per chip), so sharding parameters over the "
    "data axis (maxtext's fsdp) would save little. For larger per-chip batches "
    "`model.remat=True` recomputes every MixSTE block in the backward pass instead of keeping "
    "its activations (same loss and gradients, tests/test_plan.py): at 8 clips per v5e chip "
    "D3DP's step needs 14.65 GiB (92% of the chip) without it and 4.36 GiB with it, for 15% more "
    "FLOPs (9.06 against 7.91 TFLOP; rows `d3dp+8clips` below).",
]


def _chips(topology: str) -> int:
  sys.path.insert(0, str(REPO))
  from posediff_jax import plan  # pylint: disable=g-import-not-at-top
  return plan.parse_topology(topology).chips


def cell_path(family: str, topology: str) -> pathlib.Path:
  return RESULTS / f"{family}_{topology}.json"


def run_cell(family: str, topology: str, timeout: float, programs: str = "train,eval") -> dict:
  """Plans one cell in a fresh process; returns the stored JSON (or an error record).

  With `programs` naming some of the cell's programs, only those are compiled again and replace
  their entries in the stored cell (the others, and the train step's compile time, are kept)."""
  base = family.split("+")[0]
  spec, train_batch, eval_batch, _ = PAPER[base]
  chips = _chips(topology)
  variant = VARIANTS.get(family)
  if variant and variant.train_batch:
    train_batch = variant.train_batch
  flags = [f"--config.train.batch_size={train_batch * chips}"]
  if eval_batch:
    flags.append(f"--config.eval.batch_size={eval_batch * chips}")
  if variant:
    flags += [f"--config.{k}={v}" for k, v in variant.overrides.items()]
    if variant.programs != "train,eval":
      flags.append(f"--programs={variant.programs}")
  stored = cell_path(family, topology)
  stored.parent.mkdir(parents=True, exist_ok=True)
  partial = programs != "train,eval" and stored.is_file()
  out = stored.with_suffix(".partial.json") if partial else stored
  cmd = [sys.executable, "-m", "posediff_jax.plan", f"--config={spec}", f"--topology={topology}",
         f"--json={out}", *flags, *([f"--programs={programs}"] if partial else [])]
  start = time.time()
  try:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          check=False)
  except subprocess.TimeoutExpired:
    return {"error": f"not finished within {timeout:.0f} s"}
  seconds = time.time() - start
  print(proc.stdout, flush=True)
  error = next((line for line in proc.stderr.splitlines() if line.startswith("error: ")), None)
  if not out.is_file():
    return {"error": error or proc.stderr.strip().splitlines()[-1:] or "no output"}
  record = json.loads(out.read_text())
  if partial:
    fresh, record = record, json.loads(stored.read_text())
    out.unlink()
    names = {prog["name"] for prog in fresh["programs"]}
    kept = [prog for prog in record["programs"] if prog["name"] not in names]
    record["programs"] = sorted(kept + fresh["programs"],
                                key=lambda prog: not prog["name"].startswith("train"))
    record["misfit"] = error
    record.setdefault("recompiled", {})[programs] = round(seconds)
  else:
    record.update(command=" ".join(["python -m posediff_jax.plan", f"--config={spec}",
                                    f"--topology={topology}", *flags]),
                  compile_seconds=round(seconds), misfit=error)
  stored.write_text(json.dumps(record, indent=2))
  return record


def _gib(n: float) -> str:
  return f"{n / 2**30:.2f}"


def _time(s: float) -> str:
  return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def markdown(families, topologies) -> str:
  lines = [
      "# Planning pod runs: the paper configs on TPU slices",
      "",
      "Generated by `python benchmarks/plan_table.py` from `python -m posediff_jax.plan` runs "
      "(stored in benchmarks/plan_results/). **Every number here is a compile-time estimate**: "
      "XLA compiled the real train step (`training.jit_train_step`, the state replicated) and the "
      "real evaluation program (`evaluation.make_predict_fn`) for each slice on a CPU with "
      "`libtpu`, without a TPU. Nothing was run on a TPU.",
      "",
      "- *HBM/chip*: what the program needs per chip (arguments, non-donated outputs, "
      "temporaries, code) from XLA's memory analysis, against the chip's HBM (v5e 16 GiB, v5p "
      "95 GiB).",
      "- *TFLOP/chip*: XLA's cost analysis of one chip's program. The evaluation programs loop "
      "(DDIM steps as a `lax.scan`, SVD iterations) and XLA counts a loop body once, so their "
      "FLOPs are lower bounds; the train steps have no loop unless `train.grad_accum_steps` > 1.",
      "- *Step time*: XLA's own `optimal_seconds` where it gives one, else (marked ≥) a roofline "
      "bound: FLOPs at the chip's peak bf16 rate or bytes at its HBM bandwidth, whichever is "
      "longer, plus the collectives' bytes moved twice over the chip's ICI. Real steps are "
      "slower.",
      "- *Global batch*: weak scaling from the paper's per-chip batch (train.batch_size = paper "
      "batch × data axis; frame and radar families' eval.batch_size likewise; clip families "
      "evaluate one mini-batch of eval.batch_size clips per chip).",
      "- Compiled on a 2-core CPU, usually two cells at a time beside other work: a MixSTE-size "
      "cell took 6-25 minutes (the *compile* column: the whole cell, both programs). `python "
      "benchmarks/plan_table.py` compiles the cells not stored yet; `--redo --programs eval` "
      "compiles only the evaluation programs again (done for the clip families after the "
      "evaluation change below).",
      "",
      "## What the planner changed",
      "",
      *CHANGES,
      "",
  ]
  for family in families:
    base = family.split("+")[0]
    spec, train_batch, _, unit = PAPER[base]
    title = f"## {family}: `{spec}`"
    if family in VARIANTS:
      title += f" with {VARIANTS[family].title}"
      if VARIANTS[family].train_batch:
        train_batch = VARIANTS[family].train_batch
    lines += [title, "", f"Per-chip train batch {train_batch} {unit}.", "",
              "| slice | chips | program | global batch | HBM/chip (GiB) | TFLOP/chip | "
              "step time | collectives | compile |",
              "|---|---|---|---|---|---|---|---|---|"]
    for topology in slices_for(family, topologies):
      path = cell_path(family, topology)
      if not path.is_file():
        lines.append(f"| {topology} | | not compiled yet | | | | | | |")
        continue
      record = json.loads(path.read_text())
      if "programs" not in record:
        lines.append(f"| {topology} | | failed: {record.get('error')} | | | | | | |")
        continue
      hbm = record["hbm_gib_per_chip"]
      for prog in record["programs"]:
        is_train = prog["name"].startswith("train")
        batch = prog["per_chip_batch"]
        if is_train:
          global_batch = batch.split("=")[1].split(" ")[0] if "=" in batch else batch
        else:
          global_batch = (batch.split("=")[1].split(" ")[0] if "=" in batch
                          else f"{record['mesh']['data']} × {batch.split(' ')[0]} clips")
        fits = ("" if prog["needed"] <= hbm * 2**30 and not prog.get("refused")
                else " **does not fit**")
        if prog.get("refused"):
          lines.append(f"| {topology} | {record['chips']} | {prog['name']} | {global_batch} | "
                       f"> {hbm:g}{fits} (XLA: {prog['refused'].split(': ', 1)[-1]}) | | | | |")
          continue
        if prog["optimal_seconds"] > 0:
          step = _time(prog["optimal_seconds"])
        else:
          step = "≥ " + _time(prog["roofline_seconds"])
        flops = f"{prog['flops'] / 1e12:.3g}" + ("+" if prog["loops"] else "")
        colls = ", ".join(f"{k} ×{c} ({s / 2**20:.0f} MiB)"
                          for k, (c, s) in prog["collectives"].items()) or "none"
        compile_s = (f"{record['compile_seconds'] / 60:.0f} min"
                     if prog is record["programs"][0] and record.get("compile_seconds") else "")
        lines.append(f"| {topology} | {record['chips']} | {prog['name']} | {global_batch} | "
                     f"{_gib(prog['needed'])} / {hbm:g}{fits} | {flops} | {step} | {colls} | "
                     f"{compile_s} |")
    lines.append("")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--families", default=",".join(list(PAPER) + list(VARIANTS)))
  parser.add_argument("--topologies", default=",".join(TOPOLOGIES))
  parser.add_argument("--redo", action="store_true", help="compile cells already stored again")
  parser.add_argument("--markdown-only", action="store_true", help="only rewrite the Markdown")
  parser.add_argument("--timeout", type=float, default=3600, help="seconds per cell")
  parser.add_argument("--programs", default="train,eval",
                      help="with --redo: compile only these programs of stored cells again "
                           "(e.g. eval after a change to the evaluation program)")
  args = parser.parse_args()
  families = [f for f in args.families.split(",") if f]
  topologies = [t for t in args.topologies.split(",") if t]
  all_families = list(PAPER) + list(VARIANTS)
  # The cheap cells first: every family on one slice, then the next slice.
  for topology in ([] if args.markdown_only else topologies):
    for family in families:
      if topology not in slices_for(family, [topology]):
        continue
      if cell_path(family, topology).is_file() and not args.redo:
        continue
      print(f"== {family} on {topology}", flush=True)
      record = run_cell(family, topology, args.timeout, args.programs)
      if "error" in record:
        print(f"   failed: {record['error']}", flush=True)
      # The whole document after every cell, so an interrupted run leaves every section.
      DOC.write_text(markdown(all_families, list(TOPOLOGIES)))
  DOC.write_text(markdown(all_families, list(TOPOLOGIES)))
  print(f"wrote {DOC}")


if __name__ == "__main__":
  main()
