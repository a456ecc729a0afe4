"""The MAML run configuration: [`MAMLConfig`][metagrad.maml.config.MAMLConfig] (validated on construction), the task families it names
([`make_env`][metagrad.maml.config.make_env], [`sample_tasks`][metagrad.maml.config.sample_tasks]) and the names it accepts (`ENVS`, `OUTERS`,
`LOOP_ESTIMATORS`, `OBJECTIVES`)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from metagrad import critics as critics_lib
from metagrad import outer as outer_lib
from metagrad.policies import TabularSoftmax, default_policy

#: Environments of :class:`MAMLConfig`.
ENVS = ("navigation", "navigation-corners", "tabular")
#: Outer optimisers.
OUTERS = ("pg", "promp", "trpo")
#: Inner estimators handled by the loop itself, on top of the estimator registry.
LOOP_ESTIMATORS = ("fomaml", "emaml", "maml")
#: Sampling schemes of a task's batch: a fixed number of episodes (the default), or ProMP's fixed number of
#: environment steps ([`metagrad.rollout.sample_steps`][metagrad.rollout.sample_steps]).
SAMPLINGS = ("episodes", "steps")
#: Objective forms: the paper's estimators, or ProMP's reduce_mean form (see the module docstring).
OBJECTIVES = ("paper", "promp")


def valid_inner_estimators() -> list[str]:
    """Every accepted `inner_estimator`: the registry's names plus `fomaml`, `emaml`, `maml`."""
    from metagrad import estimators

    return sorted(set(estimators.valid_names()) | set(LOOP_ESTIMATORS))


@dataclasses.dataclass(frozen=True)
class MAMLConfig:
    """Everything that defines a MAML run (frozen and hashable; invalid values raise `ValueError`).

    Defaults follow ProMP where Tang et al. are silent: 40 tasks, 20 trajectories per task, horizon 100,
    γ = 0.99, a Gaussian MLP 64×64, inner step η = 0.1, outer Adam 1e-3, 5 ProMP steps with ε = 0.3,
    TRPO KL radius 0.01, the linear feature baseline.

    Attributes:
      env: `"navigation"` (MAML's goals in a square), `"navigation-corners"` (ProMP's four corners,
        Fig. 1d), `"tabular"` (random MDPs, `num_states` × `num_actions`, tabular softmax policy) or
        `None`: your own environment, passed as `env=` to [`MAML`][metagrad.maml.loop.MAML] / [`train`][metagrad.maml.loop.train]
        ([`metagrad.envs.protocol`][metagrad.envs.protocol]); a named family together with `env=` is refused.
      hidden_sizes: the default MLP policy's hidden layers (a custom `policy=` refuses a non-default value).
      inner_estimator: see [`valid_inner_estimators`][metagrad.maml.config.valid_inner_estimators]; `inner_options` its keyword options as
        `((name, value), ...)`.
      inner_step_size: η > 0; inner_steps: K ≥ 0. The step size that works depends on `objective`: the
        paper's surrogates sum Γ_t Â_t over the T steps of a trajectory with raw advantages, ProMP's take a
        `reduce_mean` over all N·T samples of normalised advantages, so the same update needs an η about T ×
        (advantage scale) times smaller with `"paper"` than with `"promp"` (ProMP's η = 0.1 for navigation is
        a `"promp"` value; `examples/maml_bring_your_own.py` sets its `"paper"` η for T = 20).
      outer: `"pg"`, `"promp"` or `"trpo"`; outer_estimator: the surrogate J_out (a registry name).
      outer_lr: the Adam step of `"pg"` and `"promp"`; TRPO has no learning rate (its step is set by
        `max_kl`), so `outer="trpo"` refuses a non-default `outer_lr`.
      cg_subsample: TRPO only, opt-in approximation (default 1: exact, ProMP's `subsample_factor=1.` in
        `optimizers/conjugate_gradient_optimizer.py`). A fraction f < 1 computes the conjugate gradient's
        Fisher-vector products, and the step length's xᵀFx, on ⌈f·M⌉ of the M tasks (evenly spaced in the
        meta-batch; tasks are drawn i.i.d., so a uniform sample), each task's product still exact through its
        inner steps; the meta-gradient and the line search (objective and KL) use every task. Cost of the CG part
        ∝ f (see `benchmarks/maml.py`). Refused with another outer step.
      critic: `"linear"`, `"none"` or `"exact"` (tabular only); `None`: exact for tabular, else linear. A custom
        `critic=` function (see [`MAML`][metagrad.maml.loop.MAML]) needs it left at `None`.
      num_tasks, num_trajectories, horizon: M tasks × N trajectories × T steps per batch.
      sampling: `"episodes"` (default; pytorch-maml-rl's and this library's scheme, kept for the navigation and
        tabular tasks, which never terminate early): N episodes of horizon T per task. `"steps"`: ProMP's
        `MetaSampler` — N environments per task (ProMP's `envs_per_task` default, `rollouts_per_meta_task`) each
        stepped for T steps' worth of episodes with auto-reset (an episode ends on termination or after T
        steps), so a task gets ≥ N·T valid steps (ProMP's `rollouts_per_meta_task · max_path_length`) in more,
        shorter episodes on terminating tasks (Ant, Walker2d); see [`metagrad.rollout.sample_steps`][metagrad.rollout.sample_steps].
      max_episodes: rows of a `"steps"` batch (episodes per task it can hold); `None`: 4·N (ours: ProMP's path
        lists are unbounded). Episodes beyond it are left out and counted in the metric `dropped_steps`, with a
        warning. Refused with `sampling="episodes"`.
      num_iterations: meta-iterations of [`train`][metagrad.maml.loop.train]; checkpoint_every: iterations per jitted
        `lax.scan` chunk (and between checkpoints).
      shard: shard the meta-batch over `jax.devices()`.
    """

    env: str | None = "navigation"
    num_states: int = 10
    num_actions: int = 5
    hidden_sizes: tuple[int, ...] = (64, 64)
    inner_estimator: str = "maml"
    inner_options: tuple = ()
    inner_step_size: float = 0.1
    inner_steps: int = 1
    outer: str = "pg"
    outer_estimator: str = "taypo1"
    outer_lr: float = 1e-3
    promp_steps: int = 5
    clip_eps: float = 0.3
    kl_coef: float = 5e-4
    max_kl: float = 0.01
    cg_iterations: int = 10
    cg_damping: float = 1e-5
    backtrack_steps: int = 15
    backtrack_ratio: float = 0.8
    cg_subsample: float = 1.0
    critic: str | None = None
    num_tasks: int = 40
    num_trajectories: int = 20
    horizon: int = 100
    gamma: float = 0.99
    num_iterations: int = 100
    checkpoint_every: int = 10
    shard: bool = True
    objective: str = "paper"
    sampling: str = "episodes"
    max_episodes: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        object.__setattr__(self, "inner_options", tuple(tuple(kv) for kv in dict(self.inner_options).items()))
        if self.env is not None and self.env not in ENVS:
            raise ValueError(f"Unknown env {self.env!r}; valid envs are {list(ENVS)} or None (pass your own `env=`).")
        if self.outer not in OUTERS:
            raise ValueError(f"Unknown outer optimiser {self.outer!r}; valid ones are {list(OUTERS)}.")
        valid = valid_inner_estimators()
        if self.inner_estimator not in valid:
            raise ValueError(f"Unknown inner estimator {self.inner_estimator!r}; valid estimators are {valid}.")
        from metagrad import estimators

        if self.outer_estimator not in estimators.valid_names():
            raise ValueError(
                f"Unknown outer estimator {self.outer_estimator!r}; valid estimators are {estimators.valid_names()}."
            )
        critic = self.critic if self.critic is not None else ("exact" if self.env == "tabular" else "linear")
        if critic not in critics_lib.CRITICS:
            raise ValueError(f"Unknown critic {critic!r}; valid critics are {list(critics_lib.CRITICS)}.")
        if critic == "exact" and self.env != "tabular":
            raise ValueError("critic='exact' needs env='tabular' (exact values exist only for tabular tasks).")
        object.__setattr__(self, "critic", critic)
        for name in ("inner_step_size", "outer_lr", "max_kl", "clip_eps", "backtrack_ratio"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
                raise ValueError(f"`{name}` must be a positive step size / coefficient; got {value!r}.")
        if not self.backtrack_ratio < 1:
            raise ValueError(f"`backtrack_ratio` must lie in (0, 1); got {self.backtrack_ratio}.")
        for name in ("num_tasks", "num_trajectories", "horizon", "num_iterations", "checkpoint_every",
                     "promp_steps", "cg_iterations", "backtrack_steps", "num_states", "num_actions"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer (batch / iteration size); got {value!r}.")
        if isinstance(self.inner_steps, bool) or not isinstance(self.inner_steps, (int, np.integer)) or self.inner_steps < 0:
            raise ValueError(f"`inner_steps` must be a non-negative integer; got {self.inner_steps!r}.")
        gamma = self.gamma
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float, np.number)) or not 0 <= gamma < 1:
            raise ValueError(f"`gamma` must be a discount in [0, 1); got {self.gamma}.")
        for name in ("kl_coef", "cg_damping"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not (
                np.isfinite(value) and value >= 0
            ):
                raise ValueError(f"`{name}` must be a non-negative finite number; got {value!r}.")
        value = self.cg_subsample
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not 0 < value <= 1:
            raise ValueError(f"`cg_subsample` must be a fraction in (0, 1]; got {value!r}.")
        if self.outer != "trpo" and value != 1:
            raise ValueError(f"`cg_subsample` = {value} is used only by outer='trpo'; leave it at 1.")
        default_lr = type(self).__dataclass_fields__["outer_lr"].default
        if self.outer == "trpo" and self.outer_lr != default_lr:
            raise ValueError(f"`outer_lr` = {self.outer_lr} is unused by outer='trpo' (its step is set by `max_kl`); "
                             f"leave it at {default_lr}.")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"Unknown `sampling` {self.sampling!r}; valid schemes are {list(SAMPLINGS)}.")
        if self.max_episodes is not None:
            if self.sampling != "steps":
                raise ValueError(f"`max_episodes` = {self.max_episodes!r} is used only by sampling='steps'; "
                                 "leave it None.")
            value = self.max_episodes
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"`max_episodes` must be a positive integer or None; got {value!r}.")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"Unknown objective {self.objective!r}; valid forms are {list(OBJECTIVES)}.")
        if self.objective == "promp":
            for field, name in (("inner_estimator", self.inner_estimator), ("outer_estimator", self.outer_estimator)):
                if name != "emaml" and name not in outer_lib.PROMP_FORM_ESTIMATORS:
                    raise ValueError(f"`{field}` = {name!r} has no ProMP-form surrogate (objective='promp'); "
                                     f"valid: {list(outer_lib.PROMP_FORM_ESTIMATORS) + ['emaml']}.")

    @property
    def episode_rows(self) -> int:
        """Rows N of a task's batch: `num_trajectories`, or `max_episodes` (default 4·N) with sampling='steps'."""
        if self.sampling == "episodes":
            return self.num_trajectories
        return self.max_episodes if self.max_episodes is not None else 4 * self.num_trajectories

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["hidden_sizes"] = list(self.hidden_sizes)
        out["inner_options"] = [list(kv) for kv in self.inner_options]
        return out

    @classmethod
    def from_json(cls, data: dict) -> "MAMLConfig":
        data = dict(data)
        data.setdefault("objective", "paper")  # checkpoints written before the field existed
        data.setdefault("sampling", "episodes")
        data.setdefault("max_episodes", None)
        data.setdefault("cg_subsample", 1.0)
        data["hidden_sizes"] = tuple(data["hidden_sizes"])
        data["inner_options"] = tuple(tuple(kv) for kv in data["inner_options"])
        return cls(**data)


def make_env(config: MAMLConfig):
    """`(env, policy)` of a named task family: the `FuncEnv` whose `params` are the tasks, and the policy
    (tabular softmax, or [`metagrad.policies.default_policy`][metagrad.policies.default_policy] of the environment's spaces and `hidden_sizes`)."""
    from metagrad.envs import Navigation2D, TabularMDPEnv

    if config.env is None:
        raise ValueError("`MAMLConfig.env` is None (your own environment): pass it as `env=` to MAML / train.")
    if config.env == "tabular":
        return TabularMDPEnv(config.num_states, config.num_actions), TabularSoftmax(config.num_states, config.num_actions)
    env = Navigation2D("square" if config.env == "navigation" else "corners")
    return env, default_policy(env.observation_space, env.action_space, config.hidden_sizes)


def sample_tasks(config: MAMLConfig, key: jax.Array, n: int):
    """`n` tasks of the config's family, stacked along a leading axis (goals `[n, 2]` or MDPs)."""
    env, _ = make_env(config)
    if config.env == "tabular":
        return env.sample_tasks(key, n, gamma=config.gamma)
    return env.sample_tasks(key, n)
