"""A run over processes (issue 20 §3): one run splits its meta-batch over two processes joined by ``jax.distributed``
(a localhost coordinator, CPU), in subprocesses (the distributed runtime is fixed when JAX starts), compared with the
same run in this process on one device. (Tasks over 8 host CPU devices: ``tests/test_maml.py``.)"""

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
    params, history = maml.train(config, jax.random.PRNGKey(0), progress=False, checkpoint_dir=sys.argv[4])
    print(json.dumps({"processes": jax.process_count(), "devices": len(jax.devices()),
                      "local_devices": len(jax.local_devices()),
                      "mesh_processes": sorted({d.process_index for d in sharding.mesh.devices.flat}),
                      "params": ravel_pytree(params)[0].tolist(), "post_return": history["post_return"].tolist()}))
    """
)


def _env():
    return dict(os.environ, JAX_PLATFORMS="cpu")


def _result(out):
    return json.loads(out.strip().splitlines()[-1])


def test_one_run_splits_over_two_processes_with_jax_distributed(tmp_path):
    """Two processes (one CPU device each) joined by ``jax.distributed.initialize`` on localhost: the task mesh spans
    both, each holds half of the meta-batch, and both end with the parameters of the one-process run. Both are
    given one `checkpoint_dir`: only process 0 locks and writes it (a second writer would raise `RuntimeError`),
    and the checkpoint holds the run's parameters."""
    with socket.socket() as s:  # a free port for the coordinator
        s.bind(("localhost", 0))
        port = str(s.getsockname()[1])
    procs = [subprocess.Popen([sys.executable, "-c", DISTRIBUTED, json.dumps(CONFIG), str(i), port, str(tmp_path)],
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
    saved = maml.load_checkpoint(str(tmp_path), maml.make_train(maml.MAMLConfig(**CONFIG))[0](jax.random.PRNGKey(0)))
    assert saved[2] == CONFIG["num_iterations"]
    np.testing.assert_allclose(ravel_pytree(saved[0]["params"])[0], ravel_pytree(params)[0], rtol=1e-9, atol=1e-12)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.json", "checkpoint.npz"]  # lock released, no temp files
