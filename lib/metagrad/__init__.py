"""metagrad: derivative estimators for meta-RL as differentiated off-policy evaluation.

Tang, Kozuno, Rowland, Munos, Valko. "Unifying Gradient Estimators for Meta-Reinforcement Learning via
Off-Policy Evaluation", NeurIPS 2021 (arXiv:2106.13125).

Importing the package registers its Gymnasium environments (`metagrad/TabularMDP-v0`,
`metagrad/Navigation2D-v0`, `metagrad/Navigation2DCorners-v0`; see [`metagrad.envs`][metagrad.envs]); it imports
Gymnasium, not JAX.
"""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("metagrad")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.1.0"

from metagrad._registration import register_environments as _register_environments

_register_environments()
from metagrad._cache import DIRECTORY as _cache_directory  # noqa: E402,F401  JAX's persistent compilation cache
