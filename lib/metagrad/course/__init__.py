"""The course machinery: build student notebooks from solutions, check them, grade submissions.

* :mod:`metagrad.course.build` — ``solutions/`` → ``course/`` (solution regions → stubs, outputs cleared).
* :mod:`metagrad.course.checks` — one automatic check per exercise, called in the notebooks.
* :mod:`metagrad.course.grade` — run student notebooks in fresh kernels and tabulate the checks.
* :mod:`metagrad.course.cli` — ``metagrad course build | check | grade``.
"""
