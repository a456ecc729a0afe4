"""pytest configuration for the solution notebooks, which nbval executes (`--nbval-lax`, see pyproject).

stderr is not compared: JAX and XLA may log platform warnings there (e.g. "no GPU found") that have
nothing to do with the numbers a cell demonstrates. (All cells of one notebook share one kernel, so under
pytest-xdist they must stay on one worker: pyproject sets ``--dist loadfile``.)
"""


def pytest_collectstart(collector):
    if collector.path.suffix == ".ipynb" and hasattr(collector, "skip_compare"):
        collector.skip_compare = (*collector.skip_compare, "stderr")
