"""Library tests run in float64: every estimator is compared with the exact oracle at that precision.

The suite is dominated by XLA compilation of many small programs, so tests compile with LLVM's
optimisations off (about 2× faster overall here); benchmarks and the CLI keep the default level.
"""

import os

if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

# The suite never reads or writes the user's persistent compilation cache (metagrad/_cache.py): every test
# compiles what it runs, whatever ran before (tests of the cache itself set their own directory).
os.environ.setdefault("METAGRAD_NO_CACHE", "1")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
