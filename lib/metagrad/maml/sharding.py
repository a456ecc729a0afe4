"""The meta-batch over devices (see [`metagrad.maml`][metagrad.maml], Devices): a `jax.sharding.Mesh` of axis `"tasks"`
([`task_sharding`][metagrad.maml.sharding.task_sharding]) over every device of `jax.devices()` — the local CPU or GPUs, fake CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=8`) or, after `jax.distributed.initialize()`, the devices of
every process (tested with two local processes, `tests/test_maml_sharding.py`)."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from metagrad.maml.config import MAMLConfig


def task_sharding(config: MAMLConfig) -> NamedSharding | None:
    """`NamedSharding(Mesh(jax.devices(), ("tasks",)), P("tasks"))` or `None` on one device.

    Raises `ValueError` when `num_tasks` is not divisible by the device count.
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

