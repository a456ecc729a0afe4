"""Runs over devices and processes (issue 20 §3): the seeds of ``train_seeds`` shard over 8 host CPU devices, and one
run splits its meta-batch over two processes joined by ``jax.distributed`` (a localhost coordinator, CPU). Each
side runs in subprocesses (the device count and the distributed runtime are fixed when JAX starts) and is compared
with the same run in this process, on one device."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

from metagrad import maml

CONFIG = dict(env="navigation", hidden_sizes=(8, 8), num_tasks=4, num_trajectories=3, horizon=5, inner_steps=1,
              inner_estimator="maml", outer="pg", num_iterations=2, checkpoint_every=2)

SEEDS = textwrap.dedent(
    """
    import json, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    from jax.flatten_util import ravel_pytree
    from metagrad import maml
    assert len(jax.devices()) == 8, jax.devices()
    config = maml.MAMLConfig(**json.loads(sys.argv[1]))
    keys = jax.random.split(jax.random.PRNGKey(0), 8)
    params, history = maml.train_seeds(config, keys, progress=False)
    leaf = jax.tree_util.tree_leaves(params)[0]
    print(json.dumps({"devices": len(leaf.sharding.device_set),
                      "per_device": leaf.addressable_shards[0].data.shape[0],
                      "params": jax.vmap(lambda p: ravel_pytree(p)[0])(params).tolist(),
                      "post_return": history["post_return"].tolist()}))
    """
)

DISTRIBUTED = textwrap.dedent(
    """
    import json, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    process, port = int(sys.argv[2]), sys.argv[3]
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=process,
                               initialization_timeout=240)
    from jax.flatten_util import ravel_pytree
    from metagrad import maml
    config = maml.MAMLConfig(**json.loads(sys.argv[1]))
    sharding = maml.task_sharding(config)
    params, history = maml.train(config, jax.random.PRNGKey(0), progress=False)
    print(json.dumps({"processes": jax.process_count(), "devices": len(jax.devices()),
                      "local_devices": len(jax.local_devices()),
                      "mesh_processes": sorted({d.process_index for d in sharding.mesh.devices.flat}),
                      "params": ravel_pytree(params)[0].tolist(), "post_return": history["post_return"].tolist()}))
    """
)


def _env(devices=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    if devices:  # keeps conftest's flags
        env["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}").strip()
    return env


def _result(out):
    return json.loads(out.strip().splitlines()[-1])


def test_train_seeds_shards_the_seeds_over_8_cpu_devices():
    """8 seeds on 8 fake CPU devices: one seed per device, and the same parameters and curves as on one device."""
    out = subprocess.run([sys.executable, "-c", SEEDS, json.dumps(CONFIG)], capture_output=True, text=True,
                         env=_env(8), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = _result(out.stdout)
    assert result["devices"] == 8 and result["per_device"] == 1
    params, history = maml.train_seeds(maml.MAMLConfig(**CONFIG), jax.random.split(jax.random.PRNGKey(0), 8),
                                       progress=False)
    single = jax.vmap(lambda p: ravel_pytree(p)[0])(params)
    np.testing.assert_allclose(result["params"], single, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(result["post_return"], history["post_return"], rtol=1e-9, atol=1e-12)


def test_one_run_splits_over_two_processes_with_jax_distributed():
    """Two processes (one CPU device each) joined by ``jax.distributed.initialize`` on localhost: the task mesh spans
    both, each holds half of the meta-batch, and both end with the parameters of the one-process run."""
    with socket.socket() as s:  # a free port for the coordinator
        s.bind(("localhost", 0))
        port = str(s.getsockname()[1])
    procs = [subprocess.Popen([sys.executable, "-c", DISTRIBUTED, json.dumps(CONFIG), str(i), port],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
             for i in range(2)]
    outs = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, stderr[-3000:]
        outs.append(_result(stdout))
    params, history = maml.train(maml.MAMLConfig(**CONFIG), jax.random.PRNGKey(0), progress=False)
    for result in outs:
        assert result["processes"] == 2 and result["devices"] == 2 and result["local_devices"] == 1
        assert result["mesh_processes"] == [0, 1]
        np.testing.assert_allclose(result["params"], ravel_pytree(params)[0], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(result["post_return"], history["post_return"], rtol=1e-9, atol=1e-12)
