"""`metagrad reproduce`: the paper's tabular study (Tang et al. 2021, Fig. 1a–c) and what lies beyond it.

Protocol (the settings of the authors' released code by default). Each trial draws

* a random MDP (20 states, 5 actions, Dirichlet(0.001) transitions, rewards U[0, 1), start state 0, γ = 0.8),
* a random deterministic policy π_d, and the target π_ε = (1 − ε) μ + ε π_d for the uniform behaviour μ,
  with logits θ = log π_ε (so ε is the "off-policyness"),
* a noisy critic V = V^μ + σ · (‖V^μ‖₂ / |X|) · z, z ~ N(0, I) per state (σ = `noise`),
* N trajectories of T = 20 steps from μ, bootstrapped with V at the last state.

For every estimator the batch-mean derivative estimates (off-policy: log μ is the behaviour's) are compared
with the exact derivatives of J(θ) ([`metagrad.exact`][metagrad.exact], float64) by the Pearson correlation of the
flattened arrays and by the relative error ‖D̂ − D‖ / ‖D‖; the figure shows mean ± standard error over trials.

Panels: (a) gradient accuracy vs ε at N = 1000; (b) Hessian accuracy vs ε at N = 1000; (c) Hessian accuracy vs
N at ε = 0.5. Beyond the paper (`beyond.png`): (d) third-derivative accuracy vs ε; (e) on the same
trajectories, the relative difference of the DR and TayPO-2 Hessian estimates vs ε (zero on-policy, where the
two estimators have the same Hessian, then separating); (f) Hessian relative error vs ε. Panel (d) needs
`--order 3`; without it `beyond.png` holds (e) and (f).

Trajectories come from μ whatever ε is, so each trial samples them once and every ε and N reuses them
(common random numbers: differences between ε are not sampling noise). The N-sweep uses prefixes of one
batch of `max(sweep)` trajectories.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

#: Registry name → label naming the OPE estimate and the prior-work estimator it recovers (Table 1).
ESTIMATOR_LABELS = {
    "is": "Step-wise IS (DiCE)",
    "dr": "Doubly robust (Loaded DiCE)",
    "vtrace": "Truncated DR (V-trace)",
    "taypo1": "TayPO-1 (LVC)",
    "taypo2": "TayPO-2 (second-order)",
    "taypo3": "TayPO-3",
}
DEFAULT_ESTIMATORS = tuple(ESTIMATOR_LABELS)
DEFAULT_THIRD_ORDER_ESTIMATORS = ("is", "dr", "taypo1", "taypo2", "taypo3")


@dataclass(frozen=True)
class ReproduceConfig:
    """Settings of the study; the defaults reproduce the paper (released-code settings)."""

    states: int = 20
    actions: int = 5
    dirichlet: float = 0.001
    gamma: float = 0.8
    horizon: int = 20
    epsilons: tuple[float, ...] = (0.0, 0.2, 0.5, 0.8)
    num_trajectories: int = 1000
    sweep: tuple[int, ...] = (10, 30, 100, 300, 1000, 3000)
    sweep_epsilon: float = 0.5
    trials: int = 10
    noise: float = 1.0
    seed: int = 0
    estimators: tuple[str, ...] = DEFAULT_ESTIMATORS
    order: int = 2
    third_order_estimators: tuple[str, ...] = DEFAULT_THIRD_ORDER_ESTIMATORS
    third_order_trajectories: int = 1000
    progress: bool = field(default=True, compare=False)

    def validate(self) -> "ReproduceConfig":
        """Raise `ValueError` naming the option and the expected form for any bad setting."""
        from metagrad.estimators import get, valid_names

        def positive_int(name, value):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer; got {value!r}.")

        def finite(name, value):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
                raise ValueError(f"--{name} must be a finite number; got {value!r}.")
            return value

        for name in ("states", "actions", "horizon", "num_trajectories", "trials", "third_order_trajectories"):
            positive_int(name, getattr(self, name))
        if self.actions < 2:
            raise ValueError(f"--actions must be at least 2 (a deterministic π_d needs a choice); got {self.actions}.")
        if self.trials < 2:
            raise ValueError(f"--trials must be at least 2 (the results are mean ± standard error over trials); "
                             f"got {self.trials}.")
        if not self.sweep:
            raise ValueError("--sweep needs at least one number of trajectories.")
        for n in self.sweep:
            positive_int("sweep", n)
        for eps in (*self.epsilons, self.sweep_epsilon):
            if not (isinstance(eps, (float, int)) and 0.0 <= eps < 1.0):
                raise ValueError(
                    f"off-policyness ε (--epsilons, --sweep-epsilon) must lie in [0, 1); got {eps!r} "
                    "(ε = 1 makes π deterministic, so θ = log π is infinite)."
                )
        if not self.epsilons:
            raise ValueError("--epsilons needs at least one value in [0, 1).")
        for name in ("epsilons", "sweep"):
            values = list(getattr(self, name))
            if len(set(values)) != len(values):
                raise ValueError(f"--{name} lists a value more than once: {', '.join(map(str, values))}.")
        if not 0.0 <= finite("gamma", self.gamma) < 1.0:
            raise ValueError(f"--gamma must be a discount in [0, 1); got {self.gamma}.")
        if not finite("dirichlet", self.dirichlet) >= 1e-30:  # metagrad.mdp.MIN_DIRICHLET (no JAX import here)
            raise ValueError(f"--dirichlet must be at least 1e-30 (smaller concentrations overflow the sampled "
                             f"transitions to NaN); got {self.dirichlet}.")
        if not 0 <= finite("noise", self.noise) <= MAX_NOISE:
            raise ValueError(
                f"--noise must lie in [0, {MAX_NOISE:g}] (critic noise in units of ‖V^μ‖₂/|X|; the paper uses "
                f"1; far larger values overflow the float32 estimates); got {self.noise}."
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or not 0 <= self.seed < 2**63:
            raise ValueError(f"--seed must be an integer in [0, 2**63 - 1] (a JAX PRNGKey seed); got {self.seed!r}.")
        if self.order not in (1, 2, 3):
            raise ValueError(f"--order must be 1, 2 or 3 (the highest derivative to estimate); got {self.order}.")
        if not self.estimators:
            raise ValueError("--estimators needs at least one estimator.")
        if self.order >= 3 and not self.third_order_estimators:
            raise ValueError("--third-order-estimators needs at least one estimator with --order 3.")
        lists = (("--estimators", self.estimators), ("--third-order-estimators", self.third_order_estimators))
        for option, names in lists:
            for name in names:
                try:
                    estimator = get(name)
                except ValueError:
                    raise ValueError(f"unknown estimator {name!r} in {option}; valid names: {', '.join(valid_names())} "
                                     "and taypo<K> for any K ≥ 1.") from None
                try:
                    estimator.resolve({})
                except ValueError as err:  # e.g. 'taypo' without its order
                    raise ValueError(f"estimator {name!r} in {option} cannot run without options ({err}); for "
                                     "TayPO-K write taypo<K>, e.g. taypo4.") from None
            if len(set(names)) != len(names):
                raise ValueError(f"{option} lists an estimator more than once: {', '.join(names)}.")
        return self

    def memory_estimate(self) -> int:
        """A lower bound on the bytes the run holds at once (its largest arrays), for refusing runs that cannot fit.

        P = states · actions parameters; the exact Hessians (float64) of every trial and ε, the trajectories,
        the per-trajectory Hessians [N, T, T] and the Hessian accumulators of every prefix size; with
        `order = 3` the exact third derivatives [P, P, P] and the per-trajectory [N, T, T, T] ones.
        """
        p, t, trials = self.states * self.actions, self.horizon, self.trials
        n_eps = len(set((*self.epsilons, self.sweep_epsilon)))
        sizes = len(set(self.sweep) | {self.num_trajectories})
        n_max = max(*self.sweep, self.num_trajectories, self.third_order_trajectories if self.order >= 3 else 1)
        total = trials * n_max * (t + 1) * 25  # observations, actions, rewards, log-probs, flags
        if self.order >= 2:
            total += trials * n_eps * p * p * (8 + 4) + n_max * t * t * 4 * 3 + sizes * p * p * 4 * 3
        if self.order >= 3:
            total += trials * len(self.epsilons) * p**3 * 8 + self.third_order_trajectories * t**3 * 4 * 3 + p**3 * 4 * 3
        return int(total)


#: Largest accepted ``--noise`` (see :meth:`ReproduceConfig.validate`).
MAX_NOISE = 1e6


# --------------------------------------------------------------------------------------------------------
# The computation (JAX). Imports are local so that `metagrad --help` stays fast.


def _trial_data(key, config: ReproduceConfig, num_trajectories: int):
    """One trial: MDP, deterministic π_d, noisy critic and trajectories from the uniform behaviour."""
    import jax
    import jax.numpy as jnp

    from metagrad.mdp import policy_evaluation, random_mdp
    from metagrad.rollout import sample, tabular_softmax_policy

    k_mdp, k_det, k_noise, k_traj = jax.random.split(key, 4)
    s, a = config.states, config.actions
    mdp = random_mdp(k_mdp, s, a, gamma=config.gamma, dirichlet=config.dirichlet)
    deterministic = jax.random.randint(k_det, (s,), 0, a)
    behaviour = jnp.full((s, a), 1.0 / a, mdp.rewards.dtype)
    v_mu, _ = policy_evaluation(mdp, behaviour)
    scale = config.noise * jnp.linalg.norm(v_mu) / s
    critic = v_mu + scale * jax.random.normal(k_noise, (s,), v_mu.dtype)
    batch = sample(k_traj, mdp, tabular_softmax_policy, jnp.zeros((s, a)), num_trajectories, config.horizon)
    return mdp, deterministic, critic, batch


def _target_logits(deterministic, epsilon, num_actions):
    """θ = log π_ε with π_ε = (1 − ε) μ + ε π_d and μ uniform."""
    import jax
    import jax.numpy as jnp

    pi = (1.0 - epsilon) / num_actions + epsilon * jax.nn.one_hot(deterministic, num_actions)
    return jnp.log(pi)


def _metrics(estimate, exact):
    """(Pearson correlation, relative error) of flattened arrays, computed in float64."""
    import jax.numpy as jnp

    x = estimate.ravel().astype(exact.dtype)
    y = exact.ravel()
    xc, yc = x - x.mean(), y - y.mean()
    corr = jnp.sum(xc * yc) / jnp.sqrt(jnp.sum(xc**2) * jnp.sum(yc**2))
    rel = jnp.linalg.norm(x - y) / jnp.linalg.norm(y)
    return corr, rel


def _objective(names: tuple[str, ...], index, gamma: float):
    """The per-trajectory objective of estimator `names[index]`, selected by `lax.switch`.

    `index` may be traced (it is not batched), so one compiled program serves every estimator: far less
    compilation than one program per estimator.
    """
    import jax

    from metagrad.estimators import trajectory_objective

    branches = [
        (lambda log_pi, rewards, values, log_mu, name=name: trajectory_objective(name, log_pi, log_mu, rewards, values, gamma))
        for name in names
    ]

    def fn(log_pi, rewards, values, log_mu):
        return jax.lax.switch(index, branches, log_pi, rewards, values, log_mu)

    return fn


def _first_order_zeroed(estimates, names: tuple[str, ...], index):
    """Set the derivatives above the first to zero for first-order estimators (`fomaml`).

    The chain-rule assembly differentiates the per-trajectory surrogate, and first-order MAML's surrogate is
    MAML's: its higher derivatives are zero by definition ([`metagrad.prior.first_order`][metagrad.prior.first_order]), not
    MAML's. `index` may be traced (the `lax.switch` index of `_objective`).
    """
    import jax.numpy as jnp

    from metagrad.estimators import get

    keep = jnp.asarray([not get(name).first_order_only for name in names])[index]
    return (estimates[0], *(jnp.where(keep, d, jnp.zeros_like(d)) for d in estimates[1:]))


def _estimate(fn, config, logits, batch, critic, weights, order):
    """Batch-weighted derivative estimates of orders 1..order, float32, by the chain-rule assembly."""
    import jax.numpy as jnp

    from metagrad.tabular import derivatives

    f32 = jnp.float32
    states, actions = batch.observations[:, :-1], batch.actions
    log_mu = jnp.full(actions.shape, -jnp.log(config.actions), f32)  # the uniform behaviour
    values = critic.astype(f32)[batch.observations]
    args = (batch.rewards.astype(f32), values, log_mu)
    return derivatives(fn, logits.astype(f32), states, actions, args, weights=weights.astype(f32), order=order)


@dataclass(frozen=True)
class _Programs:
    """The jitted programs of panels (a)–(c) and the layout of their outputs (see `_programs`)."""

    keys: object  # [trials] PRNG keys, one per trial
    devices: tuple  # the devices `panels` runs on (its mesh over trials); `prepare` runs on the first
    prepare: object  # keys → trial data and exact derivatives, vmapped over trials and ε
    panels: object  # (estimator index, data…) → (ε metrics, top-order estimates, sweep metrics), see `_programs`
    sizes: list  # the prefix sizes N of the sweep metrics (panel c), ascending
    order: int  # highest derivative order of panels (a)–(c): min(config.order, 2)


def _programs(config: ReproduceConfig) -> _Programs:
    """Build (not run) the two jitted programs of panels (a)–(c).

    One batch per trial serves every panel, cut into chunks of `num_trajectories` = N trajectories (the
    last one padded with zero-weight copies). One *work item* is an estimate from one chunk at one ε with
    the prefix weightings of every size of the sweep (batch means of the first n trajectories, restricted to
    the chunk): the items are chunk 0 at every ε of `config.epsilons` (panels a, b: the weighting of size
    N) and, for panel (c), chunk 0 and every further chunk at `sweep_epsilon` only, whose estimates sum to
    the sweep's batch means (the estimates are linear in the weights). Every item has the same shapes, so
    one traced `_estimate` serves them all (a `lax.map`), and `lax.switch` over the estimator index lets
    one compiled program serve every estimator. Chunks keep the per-trajectory Hessians ([N, T, T]) small.

    `panels(index, logits, batch, critic, exact)` returns, for estimator `config.estimators[index]`:
    `ab [trials, len(epsilons), order, (corr, rel)]`, the top-order estimates at N
    `[trials, len(epsilons), ...]` and `sweep [trials, len(sizes), order, (corr, rel)]` at `sweep_epsilon`.
    """
    import jax
    import jax.numpy as jnp

    from metagrad import exact
    from metagrad._cache import source_fingerprint

    keys = jax.random.split(jax.random.PRNGKey(config.seed), config.trials)
    sizes = sorted(set(config.sweep) | {config.num_trajectories})
    n_max = max(sizes[-1], config.third_order_trajectories if config.order >= 3 else 1)
    all_eps = _all_epsilons(config)
    eps = jnp.asarray(all_eps, jnp.float64)
    chunk, n_eps, e_sweep = config.num_trajectories, len(config.epsilons), all_eps.index(config.sweep_epsilon)
    row_ab = sizes.index(chunk)
    n_chunks = -(-sizes[-1] // chunk)
    # Trajectory indices [chunks, N] (padding wraps round; it has zero weight) and weights [chunks, sizes, N].
    index = np.arange(n_chunks * chunk).reshape(n_chunks, chunk)
    size = np.asarray(sizes)[None, :, None]
    weights = np.where(index[:, None, :] < size, 1.0 / size, 0.0)
    index = index % n_max
    # Work items (ε index, chunk): chunk 0 at every ε of the ε panels, then the sweep's remaining items.
    items = [(e, 0) for e in range(n_eps)] + ([(e_sweep, 0)] if e_sweep >= n_eps else [])
    sweep_items = [e_sweep] + list(range(len(items), len(items) + n_chunks - 1))
    items += [(e_sweep, j) for j in range(1, n_chunks)]
    item_eps, item_chunk = (jnp.asarray(np.array(items)[:, k]) for k in (0, 1))
    index, weights = jnp.asarray(index), jnp.asarray(weights)
    order = min(config.order, 2)

    def prepare(keys):
        """Trial data and exact derivatives (float64), vmapped over trials and ε."""

        def one(key):
            mdp, det, critic, batch = _trial_data(key, config, n_max)
            logits = jax.vmap(lambda e: _target_logits(det, e, config.actions))(eps)
            exact_derivs = [jax.vmap(lambda th: exact.derivative(mdp, th, k))(logits) for k in range(1, order + 1)]
            return dict(mdp=mdp, critic=critic, batch=batch, logits=logits, exact=exact_derivs)

        return jax.vmap(one)(keys)

    def panels(index_fn, logits, batch, critic, exact_derivs):
        """Metrics of estimator `config.estimators[index_fn]` for every trial (see the layout above)."""
        fn = _objective(config.estimators, index_fn, config.gamma)

        def metrics(est, ex):  # est: orders 1..order, each [rows, ...]; ex: the exact derivatives
            per_order = [jax.vmap(lambda e, d=d: jnp.stack(_metrics(e, d)))(e_k) for e_k, d in zip(est, ex)]
            return jnp.stack(per_order, axis=1)

        def per_trial(args):
            th, b, c, ex = args

            def item(e, j):  # one chunk at one ε: estimates of every order, each [sizes, ...]
                part = jax.tree_util.tree_map(lambda x: jnp.take(x, index[j], axis=0), b)
                return _first_order_zeroed(_estimate(fn, config, th[e], part, c, weights[j], order), config.estimators, index_fn)

            est = jax.lax.map(lambda a: item(*a), (item_eps, item_chunk))  # each [items, sizes, ...]
            ab = jax.vmap(lambda *a: metrics(*a)[row_ab])([e[:n_eps] for e in est], [d[:n_eps] for d in ex])
            swept = [e[sweep_items[0]] for e in est]
            for k in sweep_items[1:]:
                swept = [s + e[k] for s, e in zip(swept, est)]
            return ab, est[-1][:n_eps, row_ab], metrics(swept, [d[e_sweep] for d in ex])

        return jax.lax.map(per_trial, (logits, batch, critic, exact_derivs))

    # Named after metagrad's sources, so that JAX's compilation cache misses whenever the executable cache does
    # (after a change to the sources) and the compiled programs can be stored there (`_cache.executable`).
    version = source_fingerprint()[:12]
    prepare.__name__ = prepare.__qualname__ = f"reproduce_prepare_{version}"
    panels.__name__ = panels.__qualname__ = f"reproduce_panels_{version}"
    # Trials are independent: shard them over the visible devices (several CPU devices, see `main`, or GPUs).
    devices = jax.devices()
    count = max(k for k in range(1, len(devices) + 1) if config.trials % k == 0)
    devices = tuple(devices[:count])
    if count > 1:
        from jax.sharding import Mesh, PartitionSpec

        mesh = Mesh(np.array(devices), ("trials",))
        trial_axis = PartitionSpec("trials")
        panels = jax.shard_map(panels, mesh=mesh, in_specs=(PartitionSpec(), *[trial_axis] * 4), out_specs=trial_axis,
                                 check_vma=False)
    return _Programs(keys, devices, jax.jit(prepare), jax.jit(panels), sizes, order)


#: XLA options for compiling ``prepare``. It runs for ~0.1 s, but its compilation (the Dirichlet sampler, the
#: rollout scan, the exact derivatives) was the command's largest: LLVM's level 1 and XLA's classic CPU
#: emitters compile it with 2.3–2.5 s of CPU instead of 6.7 s, at the same run time and with bit-identical
#: outputs (measured on the default command and the Fig. 1a–b protocol, jaxlib 0.9.2; benchmarks/RESULTS.md). The panels program keeps XLA's defaults (its run time
#: would grow).
PREPARE_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1, "xla_cpu_use_fusion_emitters": False}


def compile_prepare(lowered):
    """Compile the lowered `prepare` program with `PREPARE_COMPILER_OPTIONS` (XLA's defaults where this
    XLA does not know one of them)."""
    try:
        return lowered.compile(PREPARE_COMPILER_OPTIONS)
    except Exception as err:  # noqa: BLE001 - re-raised unless it is an unknown option
        if "No such compile option" not in str(err):
            raise
        return lowered.compile()


def _all_epsilons(config: ReproduceConfig) -> tuple[float, ...]:
    """The ε values evaluated: `config.epsilons` then the sweep's ε if it is not among them."""
    return tuple(dict.fromkeys((*config.epsilons, config.sweep_epsilon)))


def _executable_tags(programs: _Programs, config: ReproduceConfig) -> dict:
    """The executable cache's `(tag, devices)` of the two programs (the options, `progress` aside)."""
    tag = f"metagrad reproduce {dataclasses.replace(config, progress=True)!r}"
    return {"prepare": (tag + " prepare", programs.devices[:1]), "panels": (tag + " panels", programs.devices)}


def _compile_note(programs: _Programs, config: ReproduceConfig) -> str:
    """What the first, uncounted step of the progress line is doing: compiling, or loading from the cache."""
    from metagrad._cache import has_executable

    if all(has_executable(*tag) for tag in _executable_tags(programs, config).values()):
        return "loading the compiled estimators from the cache…"
    return "compiling the estimators (first run only, ~10 s)…"


def _prepare_and_compile(programs: _Programs, config: ReproduceConfig):
    """`(trial data, compiled panels program)`: the panels program compiles in a second thread meanwhile.

    XLA compiles outside Python's global lock, so on two or more cores the two largest compilations of the
    command overlap instead of adding up (the panels program needs only the shapes of the trial data). Both
    programs come from the executable cache when a previous run with the same options stored them
    (`metagrad._cache.executable`: no tracing, no compilation).
    """
    import concurrent.futures

    import jax

    from metagrad._cache import executable, has_executable

    tags = _executable_tags(programs, config)
    # Trace `prepare` once, here, before the second thread needs its output shapes (it then finds the trace).
    lowered = None if has_executable(*tags["prepare"]) else programs.prepare.lower(programs.keys)

    def build_panels():
        shapes = jax.eval_shape(programs.prepare, programs.keys)
        args = (shapes["logits"], shapes["batch"], shapes["critic"], shapes["exact"])
        return programs.panels.lower(0, *args).compile()

    def build_prepare():
        return compile_prepare(lowered or programs.prepare.lower(programs.keys))

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        compiled = pool.submit(executable, *tags["panels"], build_panels)
        prepare = executable(*tags["prepare"], build_prepare)
        data = jax.block_until_ready(prepare(programs.keys))
        return data, compiled.result()


def run(config: ReproduceConfig) -> dict:
    """Run the study and return every number (the content of `figure1.json`)."""
    import jax
    import jax.numpy as jnp

    from metagrad import exact
    from metagrad.progress import Progress

    config.validate()
    jax.config.update("jax_enable_x64", True)
    t_start = time.perf_counter()
    programs = _programs(config)
    sizes, order_ab, names = programs.sizes, programs.order, config.estimators
    units = 1 + len(names) + (len(config.third_order_estimators) if config.order >= 3 else 0)

    results: dict = {"panels": {}}
    with Progress(units, "reproduce", note=_compile_note(programs, config), enabled=config.progress) as bar:
        data, panels = _prepare_and_compile(programs, config)
        bar.update(1, "trial data + exact derivatives")

        ab, sweep = {}, {}
        for index, name in enumerate(names):
            metrics, top, swept = panels(index, data["logits"], data["batch"], data["critic"], data["exact"])
            metrics = np.asarray(metrics)  # [trials, ε, order, (corr, rel)]
            ab[name] = {"grad_corr": metrics[:, :, 0, 0], "grad_rel": metrics[:, :, 0, 1]}
            if order_ab == 2:
                ab[name]["hess_corr"] = metrics[:, :, 1, 0]
                ab[name]["hess_rel"] = metrics[:, :, 1, 1]
                ab[name]["hessian"] = np.asarray(top)
                sweep[name] = np.asarray(swept)[:, [sizes.index(n) for n in config.sweep], 1, :]
            bar.update(1, name)

        # Panel (d): third derivatives vs ε, one (trial, ε) at a time: the per-trajectory T³ tensors and the
        # exact third derivative (10⁴ tangents through the solve) are too large to vmap in 1.5 GB.
        third = {}
        if config.order >= 3:
            names3 = config.third_order_estimators
            n3 = config.third_order_trajectories
            w3 = jnp.full((n3,), 1.0 / n3)
            batch_3 = jax.tree_util.tree_map(lambda x: x[:, :n3], data["batch"])
            logits_3 = data["logits"][:, : len(config.epsilons)]
            exact3 = jax.jit(
                lambda mdps, logits: jax.lax.map(
                    lambda a: jax.lax.map(lambda th: exact.derivative(a[0], th, 3), a[1]), (mdps, logits)
                )
            )(data["mdp"], logits_3)

            @jax.jit
            def panel_d(index, logits, batch, critic, exact3):
                fn = _objective(names3, index, config.gamma)

                def per_trial(args):
                    th, b, c, d3 = args
                    per_eps = lambda t, d: jnp.stack(  # noqa: E731
                        _metrics(_first_order_zeroed(_estimate(fn, config, t, b, c, w3, 3), names3, index)[2], d))
                    return jax.lax.map(lambda a: per_eps(*a), (th, d3))

                return jax.lax.map(per_trial, (logits, batch, critic, exact3))

            for index, name in enumerate(names3):
                third[name] = np.asarray(panel_d(index, logits_3, batch_3, data["critic"], exact3))
                bar.update(1, f"{name}: third order")

    elapsed = time.perf_counter() - t_start
    results["panels"] = _summarise(config, ab, sweep, third)
    results["settings"] = {k: v for k, v in dataclasses.asdict(config).items() if k != "progress"}
    results["settings"]["behaviour"] = "uniform"
    results["settings"]["critic"] = "V^mu + noise * ||V^mu||_2/|X| * N(0, I)"
    from metagrad.cli import environment_info

    results["environment"] = environment_info()
    results["elapsed_seconds"] = elapsed
    results["labels"] = {name: ESTIMATOR_LABELS.get(name, name) for name in config.estimators}
    return results


def _mean_se(values: np.ndarray) -> tuple[list, list]:
    """Mean and standard error over trials (axis 0); `None` where a trial's value is undefined (NaN).

    A correlation is undefined when the estimate is constant (first-order MAML's zero Hessian); it is
    reported as `None` (JSON `null`, "n/a" in the table), never as a number. `--trials` ≥ 2 is
    enforced, so the standard error always exists.
    """
    values = np.asarray(values, dtype=np.float64)
    mean = values.mean(axis=0)
    se = values.std(axis=0, ddof=1) / np.sqrt(values.shape[0])
    return _nan_to_none(mean), _nan_to_none(se)


def _nan_to_none(array) -> list:
    return [None if np.isnan(x) else x for x in np.asarray(array, np.float64).ravel().tolist()] if np.ndim(array) \
        else (None if np.isnan(array) else float(array))


def _summarise(config, ab, sweep, third) -> dict:
    """Mean ± s.e. over trials (and every trial's value) for each panel and estimator."""
    panels: dict = {}

    def add(panel, x_name, x, metric_name, name, values):
        mean, se = _mean_se(values)
        entry = panels.setdefault(panel, {"x_name": x_name, "x": list(x), "estimators": {}})
        if metric_name != "correlation" and not np.all(np.isfinite(values)):
            raise FloatingPointError(f"{panel}: the {metric_name} of {name} is not finite (NaN or inf).")
        trials = np.asarray(values, np.float64)
        entry["estimators"].setdefault(name, {})[metric_name] = {
            "mean": mean,
            "se": se,
            "trials": [_nan_to_none(row) for row in trials],
        }

    for name, out in ab.items():
        add("a_gradient_vs_epsilon", "epsilon", config.epsilons, "correlation", name, out["grad_corr"])
        add("a_gradient_vs_epsilon", "epsilon", config.epsilons, "relative_error", name, out["grad_rel"])
        if "hess_corr" in out:
            add("b_hessian_vs_epsilon", "epsilon", config.epsilons, "correlation", name, out["hess_corr"])
            add("b_hessian_vs_epsilon", "epsilon", config.epsilons, "relative_error", name, out["hess_rel"])
    for name, arr in sweep.items():
        add("c_hessian_vs_trajectories", "num_trajectories", config.sweep, "correlation", name, arr[..., 0])
        add("c_hessian_vs_trajectories", "num_trajectories", config.sweep, "relative_error", name, arr[..., 1])
    for name, arr in third.items():
        add("d_third_vs_epsilon", "epsilon", config.epsilons, "correlation", name, arr[..., 0])
        add("d_third_vs_epsilon", "epsilon", config.epsilons, "relative_error", name, arr[..., 1])
    if "dr" in ab and "taypo2" in ab and "hessian" in ab["dr"]:
        h_dr = np.asarray(ab["dr"]["hessian"], np.float64)
        h_t2 = np.asarray(ab["taypo2"]["hessian"], np.float64)
        axes = tuple(range(2, h_dr.ndim))
        diff = np.sqrt(((h_dr - h_t2) ** 2).sum(axes) / (h_dr**2).sum(axes))
        add("e_dr_vs_taypo2", "epsilon", config.epsilons, "relative_difference", "dr_vs_taypo2", diff)
    return panels


# --------------------------------------------------------------------------------------------------------
# Outputs: table, JSON, figures.


def format_table(results: dict) -> str:
    """A plain-text table of mean ± s.e. correlations for every panel."""
    lines = []
    titles = {
        "a_gradient_vs_epsilon": "(a) gradient: correlation with the exact ∇J",
        "b_hessian_vs_epsilon": "(b) Hessian: correlation with the exact ∇²J",
        "c_hessian_vs_trajectories": "(c) Hessian correlation vs number of trajectories",
        "d_third_vs_epsilon": "(d) third derivative: correlation with the exact ∇³J",
        "e_dr_vs_taypo2": "(e) ‖Ĥ_DR − Ĥ_TayPO-2‖ / ‖Ĥ_DR‖ on the same trajectories",
    }
    for key, panel in results["panels"].items():
        lines.append(titles.get(key, key))
        x_name = "ε" if panel["x_name"] == "epsilon" else "N"
        header = f"  {'estimator':<30}" + "".join(f"{x_name + '=' + _fmt_x(x):>17}" for x in panel["x"])
        lines.append(header)
        for name, metrics in panel["estimators"].items():
            metric = metrics.get("correlation") or metrics.get("relative_difference")
            label = ESTIMATOR_LABELS.get(name, "DR vs TayPO-2" if name == "dr_vs_taypo2" else name)
            if name == "dr_vs_taypo2":
                cells = "".join(f"{m:>17.2e}" for m in metric["mean"])
            else:
                cells = "".join(f"{'n/a':>17}" if m is None else f"{m:>9.3f} ± {s:<5.3f}"
                                for m, s in zip(metric["mean"], metric["se"]))
            lines.append(f"  {label:<30}{cells}")
        lines.append("")
    return "\n".join(lines)


def _fmt_x(x) -> str:
    return f"{x:g}"


#: Fixed margins of both 1×3 figures (15 × 4.4 in): what ``tight_layout`` chose, without its text measuring,
#: which took a third of the plotting time.
_LAYOUT = dict(left=0.045, right=0.99, bottom=0.22, top=0.83, wspace=0.26)


def plot(results: dict, out_dir: str) -> list[str]:
    """Write `figure1.png` (panels a–c, as in the paper) and `beyond.png` (those of panels d–f computed).

    A figure has one axes per panel with data (none left empty) and a title naming what it draws.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metagrad import plotting

    panels = results["panels"]
    settings = results["settings"]

    def draw(ax, key, metric, title, ylabel, logx=False, logy=False):
        panel = panels[key]
        for name, metrics in panel["estimators"].items():
            if metric not in metrics:
                continue
            mean = np.asarray(metrics[metric]["mean"], dtype=float)  # None (undefined) → NaN: not drawn
            se = np.asarray(metrics[metric]["se"], dtype=float)
            label = ESTIMATOR_LABELS.get(name, name)
            style = plotting.style(name)  # one colour and marker per estimator across every figure
            ax.errorbar(panel["x"], mean, yerr=se, marker=style["marker"], ms=4, capsize=3, label=label,
                        color=style["color"])
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("off-policyness ε" if panel["x_name"] == "epsilon" else "number of trajectories N")
        ax.set_ylabel(ylabel)
        if logx:
            ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)

    def draw_identity(ax, key, *_):
        metric = panels[key]["estimators"]["dr_vs_taypo2"]["relative_difference"]
        ax.errorbar(panels[key]["x"], metric["mean"], yerr=metric["se"], marker="o", capsize=3, color="k")
        ax.set_yscale("log")
        ax.set_title("(e) same trajectories: DR vs TayPO-2 Hessians", fontsize=10)
        ax.set_xlabel("off-policyness ε")
        ax.set_ylabel("‖Ĥ_DR − Ĥ_TayPO-2‖ / ‖Ĥ_DR‖")
        ax.grid(alpha=0.3)

    def figure(specs, title, name):
        """One figure of the panels of `specs` whose data exist (no empty axes); `None` if none do."""
        specs = [spec for spec in specs if spec[1] in panels]
        if not specs:
            return None
        fig, axes = plt.subplots(1, len(specs), figsize=(5 * len(specs), 4.4), squeeze=False)
        legend = {}  # every estimator drawn, once
        for ax, (drawer, *args) in zip(axes[0], specs):
            drawer(ax, *args)
            for handle, label in zip(*ax.get_legend_handles_labels()):
                legend.setdefault(label, handle)
        columns = max(1, min(len(legend), 2 * len(specs) + 1))  # what fits the figure's width in one row
        rows = -(-len(legend) // columns)
        if legend:
            fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=columns, fontsize=9,
                       frameon=False)
        fig.suptitle(title([spec[1] for spec in specs]), fontsize=11)
        fig.subplots_adjust(**{**_LAYOUT, "left": _LAYOUT["left"] * 3 / len(specs),
                               "bottom": _LAYOUT["bottom"] + 0.06 * (rows - 1)})
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path

    n = settings["num_trajectories"]
    figure1 = figure(
        [(draw, "a_gradient_vs_epsilon", "correlation", f"(a) gradient, N = {n}", "correlation with exact ∇J"),
         (draw, "b_hessian_vs_epsilon", "correlation", f"(b) Hessian, N = {n}", "correlation with exact ∇²J"),
         (draw, "c_hessian_vs_trajectories", "correlation", f"(c) Hessian, ε = {settings['sweep_epsilon']:g}",
          "correlation with exact ∇²J", True)],
        lambda _: (f"Derivative estimates vs the exact derivatives: {settings['states']} states, "
                   f"{settings['actions']} actions, T = {settings['horizon']}, {settings['trials']} trials "
                   "(mean ± s.e.)"),
        "figure1.png",
    )
    beyond = None
    if any(k in panels for k in ("d_third_vs_epsilon", "e_dr_vs_taypo2")):
        beyond = figure(
            [(draw, "d_third_vs_epsilon", "correlation", f"(d) third derivative, N = "
              f"{settings['third_order_trajectories']}", "correlation with exact ∇³J"),
             (draw_identity, "e_dr_vs_taypo2"),
             (draw, "b_hessian_vs_epsilon", "relative_error", f"(f) Hessian error, N = {n}", "‖Ĥ − H‖ / ‖H‖",
              False, True)],
            _beyond_title, "beyond.png",
        )
    return [path for path in (figure1, beyond) if path]


def _beyond_title(keys) -> str:
    """The title of `beyond.png`, naming only the panels drawn."""
    parts = {"d_third_vs_epsilon": "third derivatives", "e_dr_vs_taypo2": "the on-policy identity DR = TayPO-2",
             "b_hessian_vs_epsilon": "Hessian errors"}
    named = [parts[k] for k in keys]
    listed = named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]
    return f"Beyond the paper: {listed}"


# --------------------------------------------------------------------------------------------------------
# Command line.


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. 0,0.2,0.5; got {text!r}")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 10,100,1000; got {text!r}")


def _name_list(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def register(subparsers) -> None:
    """Add the `reproduce` subcommand."""
    d = ReproduceConfig()
    p = subparsers.add_parser(
        "reproduce",
        help="run the paper's tabular study (Fig. 1a-c) and the beyond-the-paper panels",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--states", type=int, default=d.states, help="number of states |X| (the paper's text uses 10)")
    p.add_argument("--actions", type=int, default=d.actions, help="number of actions")
    p.add_argument("--horizon", type=int, default=d.horizon, help="trajectory length T")
    p.add_argument("--gamma", type=float, default=d.gamma, help="discount γ")
    p.add_argument("--dirichlet", type=float, default=d.dirichlet, help="Dirichlet concentration of transitions")
    p.add_argument("--epsilons", type=_float_list, default=d.epsilons, help="off-policyness values ε in [0, 1)")
    p.add_argument("--num-trajectories", type=int, default=d.num_trajectories, help="N for the ε panels")
    p.add_argument("--sweep", type=_int_list, default=d.sweep, help="values of N for panel (c)")
    p.add_argument("--sweep-epsilon", type=float, default=d.sweep_epsilon, help="ε for panel (c)")
    p.add_argument("--trials", type=int, default=d.trials, help="independent trials (new MDP, π_d, critic, data), ≥ 2")
    p.add_argument("--noise", type=float, default=d.noise, help="critic noise, in units of ‖V^μ‖₂/|X|")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (same seed, same numbers)")
    p.add_argument("--estimators", type=_name_list, default=d.estimators, help="registry names, comma-separated")
    p.add_argument("--order", type=int, default=d.order, help="highest derivative order (3 adds panel d)")
    p.add_argument(
        "--third-order-estimators", type=_name_list, default=d.third_order_estimators, help="estimators for panel (d)"
    )
    p.add_argument("--third-order-trajectories", type=int, default=d.third_order_trajectories, help="N for panel (d)")
    p.add_argument("--device", choices=("cpu", "gpu", "auto"), default="auto", help="JAX platform to run on")
    p.add_argument("--out", default="results/reproduce", help="output folder for figures and JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=main)


def _check_options(args) -> ReproduceConfig:
    """Every option checked before any computation; `OptionError` names the bad one."""
    from metagrad._validation import OptionError, check_memory, check_out_dir

    config = ReproduceConfig(
        states=args.states, actions=args.actions, horizon=args.horizon, gamma=args.gamma, dirichlet=args.dirichlet,
        epsilons=args.epsilons, num_trajectories=args.num_trajectories, sweep=args.sweep,
        sweep_epsilon=args.sweep_epsilon, trials=args.trials, noise=args.noise, seed=args.seed,
        estimators=args.estimators, order=args.order, third_order_estimators=args.third_order_estimators,
        third_order_trajectories=args.third_order_trajectories, progress=not args.quiet,
    )
    try:
        config.validate()
    except ValueError as err:
        raise OptionError(str(err)) from None
    check_out_dir("--out", args.out)
    check_memory("--states, --actions, --horizon, --trials, --num-trajectories, --sweep and --order",
                 config.memory_estimate())
    return config


def main(args) -> int:
    """Entry point of `metagrad reproduce`: options checked, then the study run, then the files written."""
    import jax

    from metagrad._validation import check_device, write_json_atomic

    config = _check_options(args)
    # Trials are sharded over devices (see `_programs`): on a CPU, expose one XLA device per core. This
    # must precede JAX's backend start-up; if something already started it, one device is used.
    try:
        jax.config.update("jax_num_cpu_devices", len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                          else os.cpu_count() or 1)
    except RuntimeError:
        pass
    check_device("--device", args.device)
    try:
        results = run(config)
    except FloatingPointError as err:
        print(f"metagrad reproduce: error: {err} No file was written.", file=sys.stderr)
        return 1
    results["command"] = " ".join(["metagrad", *getattr(args, "argv", ["reproduce"])])
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "figure1.json")
    write_json_atomic(json_path, results)
    paths = plot(results, args.out)
    print(format_table(results))
    print(f"wrote {', '.join([*paths, json_path])} in {results['elapsed_seconds']:.1f} s")
    return 0
