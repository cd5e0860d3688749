"""Two processes on loopback train, checkpoint and resume like one process over the same devices.

Each process runs `runtime.initialize` with a local coordinator (gloo collectives on CPU) and one
CPU device; together they train the tiny run of `tests/tiny_run.py` for 2 steps (a checkpoint),
then resume in the same processes and train to the end. The reference is one process with 2 CPU
devices. The training stream is sharded by process: process p's share of global batch i is every
other frame of that batch starting at p, with its own kernel draw, and
`make_array_from_process_local_data` stacks the shares in process order. So the reference reads
the same layout: its local batch is shard 0's batch followed by shard 1's batch.
"""

import json
import pathlib
import socket
import subprocess

import jax
import numpy as np
import orbax.checkpoint as ocp

from posediff_jax import checkpoint
from tests import tiny_run

# Only the second piece evaluates (data-parallel over both processes); the first just checkpoints.
PIECES = [{"train.lifter_steps": 2, "train.steps": 0, "train.final_eval": False},
          {"train.lifter_steps": 2, "train.steps": 2}]

_WORKER = """
import json, sys
from posediff_jax import runtime, training
from tests import tiny_run
data_root, workdir, address, process_id = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
runtime.initialize(address, 2, process_id)
for overrides in json.loads(sys.argv[5]):
  training.train_and_evaluate(tiny_run.tiny_config(data_root, overrides), workdir)
"""

# One process whose local batch is the two process shards' batches one after the other.
_REFERENCE = """
import json, sys
import grain
import numpy as np
from posediff_jax import training
from posediff_jax.data import frame_pipeline
from tests import tiny_run
data_root, workdir = sys.argv[1], sys.argv[2]
def two_shards(frames, *, batch_size, seed, shard_index, shard_count, worker_count):
  assert (shard_index, shard_count) == (0, 1)
  # As frame_pipeline.train_dataset builds each process's stream, before to_iter_dataset.
  shards = [grain.MapDataset.source(frame_pipeline.ShuffledBatchSource(
      frames, batch_size=batch_size // 2, seed=seed, shard_index=p, shard_count=2,
      num_epochs=None)).seed(seed).random_map(frame_pipeline._sample_kernels) for p in range(2)]
  pair = lambda i: {k: np.concatenate([s[i][k] for s in shards]) for k in shards[0][0]}
  return grain.MapDataset.range(len(shards[0])).map(pair).to_iter_dataset()
frame_pipeline.train_dataset = two_shards
for overrides in json.loads(sys.argv[3]):
  training.train_and_evaluate(tiny_run.tiny_config(data_root, overrides), workdir)
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _state(workdir, step: int) -> dict:
  mngr = checkpoint.manager(pathlib.Path(workdir) / "checkpoints", create=False)
  # The 2-process checkpoint's arrays lived on 2 devices; this process has one.
  fallback = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(fallback_sharding=fallback)))
  mngr.close()
  return jax.tree.map(np.asarray, restored["state"])


def test_two_processes_equal_one_process_over_the_same_devices(tmp_path_factory):
  data = tiny_run.tiny_data(tmp_path_factory)
  cache = tiny_run.session_dir(tmp_path_factory, "xla_cache")
  root = tmp_path_factory.mktemp("multihost")
  address = f"127.0.0.1:{_free_port()}"
  pieces = json.dumps(PIECES)
  # Both workers must run at once, so they are started here rather than through tiny_run.python.
  env_cmd = ["-c", _WORKER, str(data), str(root / "multi"), address]
  procs = []
  for process_id in range(2):
    argv, kwargs = _popen_args(env_cmd + [str(process_id), pieces], cache)
    procs.append(subprocess.Popen(*argv, **kwargs))
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
  tiny_run.python(["-c", _REFERENCE, str(data), str(root / "single"), pieces], cache_dir=cache,
                  devices=2)

  # Only process 0 prints and writes results.
  assert f"resumed from {root / 'multi' / 'checkpoints'} step 2" in outs[0][0]
  assert "resumed from" not in outs[1][0] and "MPJPE" not in outs[1][0]
  data_items = {p.name for p in (root / "multi" / "checkpoints" / "4" / "data").iterdir()}
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= data_items
  got, expected = _state(root / "multi", 4), _state(root / "single", 4)
  assert jax.tree.structure(got) == jax.tree.structure(expected)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def _popen_args(args, cache):
  """(argv, kwargs) for `subprocess.Popen`, with `tiny_run.python`'s environment."""
  import os  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  env = {k: v for k, v in os.environ.items() if k not in ("POSEDIFF_TRACEBACK", "XLA_FLAGS")}
  env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return ([sys.executable, *args],), {"cwd": tiny_run.REPO_ROOT, "env": env,
                                      "stdout": subprocess.PIPE, "stderr": subprocess.PIPE,
                                      "text": True}
