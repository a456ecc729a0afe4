"""Library tests run in float64: every estimator is compared with the exact oracle at that precision."""

import jax

jax.config.update("jax_enable_x64", True)
