"""Gymnasium registration of metagrad's environments, run by `import metagrad`.

Only Gymnasium (and with it NumPy) is imported here; the environments, and JAX with them, are
imported by Gymnasium from the entry points the first time one is made.
"""

from __future__ import annotations

import multiprocessing

import gymnasium

#: Gymnasium ids: (entry point, vector entry point, episode limit).
ENVIRONMENTS = {
    "metagrad/Navigation2D-v0": ("metagrad.envs:make_navigation", "metagrad.envs:make_navigation_vector", 100),
    "metagrad/Navigation2DCorners-v0": (
        "metagrad.envs:make_navigation_corners", "metagrad.envs:make_navigation_corners_vector", 100),
    "metagrad/TabularMDP-v0": ("metagrad.envs:make_tabular", "metagrad.envs:make_tabular_vector", 20),
}

#: ProMP's MuJoCo locomotion tasks (``metagrad.envs.locomotion``; need the extra ``metagrad[locomotion]``):
#: Gymnasium id (ProMP's class name) -> task name. Horizon 100 (ProMP's ``max_path_length``).
LOCOMOTION = {
    "metagrad/HalfCheetahRandDirec-v0": "halfcheetah-direction",
    "metagrad/AntRandDirec-v0": "ant-direction",
    "metagrad/AntRandGoal-v0": "ant-goal",
    "metagrad/Walker2DRandDirec-v0": "walker2d-direction",
}


def register_environments() -> None:
    """Register every id of `ENVIRONMENTS` and `LOCOMOTION` that Gymnasium does not know yet."""
    for env_id, (entry_point, vector_entry_point, steps) in ENVIRONMENTS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=entry_point, vector_entry_point=vector_entry_point,
                               max_episode_steps=steps)
    for env_id, task in LOCOMOTION.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point="metagrad.envs.locomotion:LocomotionEnv",
                               vector_entry_point="metagrad.envs.locomotion:LocomotionVectorEnv",
                               max_episode_steps=100, kwargs={"task": task})


def avoid_fork_start_method() -> None:
    """Make new processes start by `forkserver` where the platform default is `fork`.

    JAX is multithreaded: a process forked after JAX started can deadlock (it did here:
    `gymnasium.make_vec(..., vectorization_mode="async")` hung in its first `reset`). Python 3.14
    changed the Linux default to `forkserver` for this reason; this applies that default on older
    Pythons. A start method the program already chose (`multiprocessing.set_start_method`) is kept.
    """
    if multiprocessing.get_start_method(allow_none=True) is None and multiprocessing.get_all_start_methods()[0] == "fork":
        multiprocessing.set_start_method("forkserver")
