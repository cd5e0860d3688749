"""The device mesh and how arrays are laid out on it, shared by training and evaluation.

The mesh has two axes, `data` and `model` (`config.mesh`, sizes; -1 = every device left over).
Batches are split along `data`; parameters, optimizer state and EMA are replicated. No family here
shards its parameters along `model` yet: the largest (FinePOSE without CLIP, ~50M parameters) fits
on any accelerator many times over, so `model` stays 1 unless a future model outgrows one device.
With `model` > 1 the devices of one `model` row compute the same data shard redundantly.
"""

from typing import Any

import jax
import numpy as np

P = jax.sharding.PartitionSpec


def mesh_shape(mesh_config, device_count: int) -> tuple[int, int]:
  """(data, model) axis sizes for `device_count` devices; -1 in the config = the remainder."""
  data = int(mesh_config.get("data", -1)) if mesh_config is not None else -1
  model = int(mesh_config.get("model", 1)) if mesh_config is not None else 1
  if model < 1:
    raise ValueError(f"config.mesh.model must be >= 1, got {model}")
  if data == -1:
    if device_count % model:
      raise ValueError(f"config.mesh.model={model} does not divide the {device_count} devices")
    data = device_count // model
  if data < 1 or data * model != device_count:
    raise ValueError(f"config.mesh (data={data}, model={model}) needs {data * model} devices, but "
                     f"there are {device_count}; use data=-1 to take every device")
  return data, model


def make_mesh(mesh_config=None, devices=None) -> jax.sharding.Mesh:
  """The ('data', 'model') mesh over every device of every process, or over `devices` (the
  compile-only devices of a TPU topology, which `posediff_jax.plan` compiles for)."""
  count = jax.device_count() if devices is None else len(devices)
  shape = mesh_shape(mesh_config, count)
  return jax.make_mesh(shape, ("data", "model"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2, devices=devices)


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  return jax.sharding.NamedSharding(mesh, P())


def by_batch(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """Leading (batch) axis split over `data`, the rest whole."""
  return jax.sharding.NamedSharding(mesh, P("data"))


def per_data_shard(fn, mesh: jax.sharding.Mesh, batch_args: tuple[int, ...], num_args: int):
  """`fn` run by every device on its own shard of the batch (`jax.shard_map` over `data`).

  For functions whose leading-axis rows are independent, so that each device's result is its
  rows of the whole: arguments at positions `batch_args` are split along `data` (their leading
  axis), the others replicated, and every output leaf is split along `data`. Nothing inside
  crosses devices, whatever the partitioner would have chosen for ops it does not split by
  batch (a batched SVD, for one).
  """
  in_specs = tuple(P("data") if i in batch_args else P() for i in range(num_args))
  # check_vma=False: the samplers' loops start from unsharded constants (a step counter, a done
  # flag) that the shard's data then touch; with no collective inside there is nothing to check.
  return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=P("data"), check_vma=False)


def check_divisible(batch_size: int, mesh: jax.sharding.Mesh, what: str) -> None:
  """A clear error unless `batch_size` splits evenly over the data axis and the processes."""
  data = mesh.shape["data"]
  if batch_size % data or batch_size % jax.process_count():
    raise ValueError(f"{what}={batch_size} must be divisible by the mesh's data axis ({data} "
                     f"devices) and by the {jax.process_count()} processes")


def global_batch(local_batch: dict[str, Any], sharding) -> dict[str, jax.Array]:
  """Stacks every process's local rows (in process order) into one batch-sharded global array."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def process_slice(rows: int) -> slice:
  """This process's contiguous share of `rows` global rows (`rows` divisible by the processes)."""
  local = rows // jax.process_count()
  return slice(jax.process_index() * local, (jax.process_index() + 1) * local)
