"""Gymnasium environments whose task is a parameter pytree (``jax.vmap`` over tasks is a meta-batch)."""

from metagrad.envs.tabular import TabularMDPEnv

__all__ = ["TabularMDPEnv"]
