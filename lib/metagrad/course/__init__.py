"""The course machinery: build student notebooks from solutions, check them, grade submissions.

* [`metagrad.course.build`][metagrad.course.build] — `solutions/` → `course/` (solution regions → stubs, outputs cleared).
* [`metagrad.course.checks`][metagrad.course.checks] — one automatic check per exercise, called in the notebooks.
* [`metagrad.course.grade`][metagrad.course.grade] — run student notebooks in fresh kernels and tabulate the checks.
* [`metagrad.course.cli`][metagrad.course.cli] — `metagrad course build | check | grade`.
"""
