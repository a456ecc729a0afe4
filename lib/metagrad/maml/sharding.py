"""The meta-batch over devices: a ``jax.sharding.Mesh`` of axis ``"tasks"`` (see :mod:`metagrad.maml`, Devices)."""

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
