"""Runs over devices (see :mod:`metagrad.maml`, Devices): the meta-batch of one run over a ``jax.sharding.Mesh`` of
axis ``"tasks"`` (:func:`task_sharding`), or the independent seeds of :func:`metagrad.maml.train_seeds` over a mesh
of axis ``"seeds"`` (:func:`shard_seeds`). Both use every device of ``jax.devices()`` — the local CPU or GPUs, fake
CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8``) or, after ``jax.distributed.initialize()``, the
devices of every process."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from metagrad.maml.config import MAMLConfig


def task_sharding(config: MAMLConfig) -> NamedSharding | None:
    """``NamedSharding(Mesh(jax.devices(), ("tasks",)), P("tasks"))`` or ``None`` on one device.

    Raises ``ValueError`` when ``num_tasks`` is not divisible by the device count.
    """
    devices = jax.devices()
    if not config.shard or len(devices) == 1:
        return None
    if config.num_tasks % len(devices):
        raise ValueError(
            f"`num_tasks` = {config.num_tasks} must be divisible by the number of devices ({len(devices)}) "
            "to shard the meta-batch; change num_tasks or pass shard=False."
        )
    return NamedSharding(Mesh(np.array(devices), ("tasks",)), PartitionSpec("tasks"))


def shard_seeds(state, num_seeds: int):
    """``state`` (leaves with a leading seed axis ``[S, …]``) placed with ``NamedSharding(Mesh(jax.devices(),
    ("seeds",)), P("seeds"))`` — each device holds S / D seeds, and the jitted ``vmap`` over seeds runs them where
    they lie — or unchanged on one device or when the device count D does not divide ``num_seeds`` (the seeds then
    run together on the default device, as without sharding)."""
    devices = jax.devices()
    if len(devices) == 1 or num_seeds % len(devices):
        return state
    sharding = NamedSharding(Mesh(np.array(devices), ("seeds",)), PartitionSpec("seeds"))
    return jax.device_put(state, sharding)
