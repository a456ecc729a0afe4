"""Generate the student notebooks (`course/`) from the solution notebooks (`solutions/`).

`solutions/NN_name.ipynb` is the source of truth: it holds exercises *and* their solutions, with
outputs. The student version `course/NN_name.ipynb` is derived from it by three rules:

1. **Solution regions.** Every region between a line `### BEGIN SOLUTION` and a line
   `### END SOLUTION` (nbgrader's markers) is replaced, at the indentation of the `BEGIN` line, by:

   ```
   # YOUR CODE HERE
   raise NotImplementedError("Exercise: implement `<name>`")
   ```

   where `<name>` is the function whose body holds the region. Keep the `def` line (and the
   docstring) outside the region, so the stub stays valid Python.
2. **Outputs.** Outputs of every code cell *from the first exercise cell on* are cleared: everything
   after an exercise may depend on the student's code, while the outputs before it (set-up, first
   demonstrations) stay as a guide. Cells tagged `clear-output` are cleared wherever they are.
3. **Execution state.** Execution counts and the per-cell `execution` timing metadata are removed.
4. **Access.** A first markdown cell with "Open in Colab" and Binder badges, and, right before the first
   code cell, a cell that installs the library when it is not importable (on Colab) and does nothing
   otherwise. Both are made from one setting, `Repository` in `[project.urls]` of `pyproject.toml`
   ([`repository_url`][metagrad.course.build.repository_url]), so a fork changes one line. The install cell installs the release the
   notebook was built with: the tag `v<version>` of that repository, `version` in `[project]` of
   `pyproject.toml` ([`project_version`][metagrad.course.build.project_version]), never the moving head of a branch.
5. **Claims inventory.** `solutions/claims/NN.json` (one file per notebook, a list of rows
   `{"cell", "statement", "guard", "evidence"}`: the cell id, the quantitative statement, the assertion or seed
   loop in that cell that guards it, and the measured value ± standard error with its seeds) is rendered into
   `course/CLAIMS.md` ([`claims_markdown`][metagrad.course.build.claims_markdown]).
6. **Grading metadata.** `metadata.metagrad` records the notebook id (`"00"`), and on each exercise
   cell (`{"exercise": [names]}`) and each check cell (`{"check": name}`): the grader
   ([`metagrad.course.grade`][metagrad.course.grade]) takes the exercises and checks from the course notebook, not from a
   submission.

The build is strict about solution markers: a line that mentions `BEGIN SOLUTION` / `END SOLUTION`
but is not exactly one of the two markers (`### BEGIN SOLUTION:`, `# BEGIN SOLUTION`, a marker after
code), and any marker in a markdown or raw cell, is a [`BuildError`][metagrad.course.build.BuildError], because the build could not
know what to remove. It refuses to write into its own source folder.

The build is deterministic: the same solutions give byte-identical course notebooks (nbformat's
sorted-key JSON with one-space indentation, UTF-8, a final newline). [`stale`][metagrad.course.build.stale] lists what differs
between `course/` and what [`build`][metagrad.course.build.build] would write; `metagrad course check` and the tests use it.
"""

from __future__ import annotations

import copy
import re
from importlib import metadata as _metadata
from pathlib import Path

import nbformat

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
CLEAR_TAG = "clear-output"
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"

_DEF = re.compile(r"^\s*def\s+([A-Za-z_][A-Za-z0-9_]*)\s*\(")
# Anything that looks like a marker: "BEGIN SOLUTION" with any case, spacing, punctuation around it.
_NEAR_MARKER = re.compile(r"(BEGIN|END)[\s_-]*SOLUTION", re.IGNORECASE)
_CHECK_CALL = re.compile(r"\bchecks\.check_([A-Za-z0-9_]+)\s*\(")
_GITHUB = re.compile(r"^https://github\.com/([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+?)(?:\.git)?/?$")
_VERSION = re.compile(r"\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?")  # a release number (PEP 440), the tag v<version>
BRANCH = "main"
COURSE_DIR = "course"  # where the student notebooks live in the repository (badge links point there)


class BuildError(ValueError):
    """A solution notebook is malformed (e.g. unmatched solution markers)."""


def strip_solutions(source: str, *, where: str = "cell") -> tuple[str, int]:
    """Replace each solution region of `source` by a `NotImplementedError` stub.

    Returns `(new_source, number_of_regions)`. Raises [`BuildError`][metagrad.course.build.BuildError] naming `where` when a
    `BEGIN` has no matching `END` (or the other way round), or when regions are nested.
    """
    lines = source.split("\n")
    out: list[str] = []
    regions = 0
    inside = False
    last_def = None
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if _NEAR_MARKER.search(line) and stripped not in (BEGIN, END):
            raise BuildError(
                f"{where}, line {number}: {stripped!r} is not a solution marker the build understands; "
                f"write exactly `{BEGIN}` or `{END}` on a line of its own."
            )
        if stripped == BEGIN:
            if inside:
                raise BuildError(f"{where}, line {number}: nested `{BEGIN}`.")
            inside = True
            regions += 1
            indent = line[: len(line) - len(line.lstrip())]
            what = f"implement `{last_def}`" if last_def else "fill in this cell"
            out.append(f"{indent}# YOUR CODE HERE")
            out.append(f'{indent}raise NotImplementedError("Exercise: {what}")')
            continue
        if stripped == END:
            if not inside:
                raise BuildError(f"{where}, line {number}: `{END}` without a matching `{BEGIN}`.")
            inside = False
            continue
        if inside:
            continue
        match = _DEF.match(line)
        if match:
            last_def = match.group(1)
        out.append(line)
    if inside:
        raise BuildError(f"{where}: `{BEGIN}` without a matching `{END}`.")
    return "\n".join(out), regions


def _reject_markers_outside_code(cell, where: str) -> None:
    for number, line in enumerate(cell.source.split("\n"), start=1):
        if _NEAR_MARKER.search(line):
            raise BuildError(
                f"{where}, line {number}: solution marker in a {cell.cell_type} cell; only code cells can "
                f"hold `{BEGIN}` ... `{END}` regions."
            )


def student_notebook(
    nb: nbformat.NotebookNode, *, name: str = "notebook", repository: str | None = None, version: str | None = None
) -> nbformat.NotebookNode:
    """The student version of a solution notebook (see the module docstring for the rules).

    `repository` is the GitHub address for the badges and the install cell; `None` leaves both out.
    `version` is the release the install cell installs (default: [`project_version`][metagrad.course.build.project_version]).
    """
    nb = copy.deepcopy(nb)
    nb.metadata.pop("widgets", None)  # saved widget state can hold values computed by the solutions
    seen_exercise = False
    for index, cell in enumerate(nb.cells):
        cell.metadata.pop("execution", None)
        cell.metadata.pop("metagrad", None)
        where = f"{name}, cell {index}"
        if cell.cell_type != "code":
            _reject_markers_outside_code(cell, where)
            continue
        names = _region_names(cell.source)
        source, regions = strip_solutions(cell.source, where=where)
        if regions:
            seen_exercise = True
            cell.source = source
            cell.metadata["metagrad"] = {"exercise": names}
        else:
            checked = _CHECK_CALL.findall(cell.source)
            if checked:
                cell.metadata["metagrad"] = {"check": checked[0]}
        if seen_exercise or CLEAR_TAG in cell.metadata.get("tags", []):
            cell.outputs = []
        cell.execution_count = None
    notebook_id = name[:2] if name[:2].isdigit() else name
    nb.metadata["metagrad"] = {"notebook": notebook_id}
    if repository is not None:
        first_code = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), len(nb.cells))
        nb.cells.insert(first_code, install_cell(repository, project_version() if version is None else version))
        nb.cells.insert(0, badge_cell(repository, name))
    return nb


def _region_names(source: str) -> list[str]:
    """Names of the functions holding the solution regions of one cell (`cell` for a region outside a def)."""
    names, last_def = [], None
    for line in source.split("\n"):
        match = _DEF.match(line)
        if match:
            last_def = match.group(1)
        if line.strip() == BEGIN:
            names.append(last_def or "cell")
    return names


def _github(repository: str) -> tuple[str, str]:
    match = _GITHUB.match(repository.strip())
    if not match:
        raise BuildError(
            f"repository address {repository!r} ([project.urls] Repository in pyproject.toml) must look like "
            "https://github.com/OWNER/REPO: the Colab and Binder links are made from it."
        )
    return match.group(1), match.group(2)


def badge_cell(repository: str, name: str) -> nbformat.NotebookNode:
    """Markdown cell with "Open in Colab" and Binder badges for `course/<name>` of `repository`."""
    owner, repo = _github(repository)
    colab = f"https://colab.research.google.com/github/{owner}/{repo}/blob/{BRANCH}/{COURSE_DIR}/{name}"
    binder = f"https://mybinder.org/v2/gh/{owner}/{repo}/{BRANCH}?urlpath=lab/tree/{COURSE_DIR}/{name}"
    cell = nbformat.v4.new_markdown_cell(
        f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab}) "
        f"[![Binder](https://mybinder.org/badge_logo.svg)]({binder})"
    )
    cell.metadata["metagrad"] = {"access": "badges"}
    cell.id = "metagrad-badges"  # fixed ids: the same solutions give the same bytes
    return cell


README_START = "<!-- badges:start: written by `metagrad course build` from [project.urls] Repository in pyproject.toml -->"
README_END = "<!-- badges:end -->"


def readme_badges(repository: str, first_notebook: str) -> str:
    """The README's badge block: Colab opens `first_notebook`, Binder opens the course folder in JupyterLab."""
    owner, repo = _github(repository)
    colab = f"https://colab.research.google.com/github/{owner}/{repo}/blob/{BRANCH}/{COURSE_DIR}/{first_notebook}"
    binder = f"https://mybinder.org/v2/gh/{owner}/{repo}/{BRANCH}?urlpath=lab/tree/{COURSE_DIR}"
    return (
        f"{README_START}\n"
        f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab}) "
        f"[![Binder](https://mybinder.org/badge_logo.svg)]({binder})\n"
        f"{README_END}"
    )


def updated_readme(text: str, repository: str, first_notebook: str) -> str | None:
    """`text` with its badge block (between `README_START` and `README_END`) rewritten;
    `None` when the README has no such block."""
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return None
    return text[:start] + readme_badges(repository, first_notebook) + text[end + len(README_END):]


def install_requirement(repository: str, version: str) -> str:
    """The pip requirement of release `version`: the tag `v<version>` of `repository`."""
    _github(repository)
    if not _VERSION.fullmatch(version):
        raise BuildError(f"version {version!r} ([project] version in pyproject.toml) is not a release number like 0.1.0.")
    return f"metagrad@git+{repository.strip()}@v{version}"


def install_source(repository: str, version: str) -> str:
    """Source of the install cell: `pip install` of release `version` only when metagrad is not importable.

    `importlib.util.find_spec` does not import the package (so the next cell can still switch JAX to
    float64 before any array exists); `%pip` installs into the running kernel's environment.
    """
    return (
        f"# On Colab (or anywhere metagrad is not installed) this installs metagrad {version}, the release\n"
        "# this notebook was written for; where metagrad is importable (a local install, Binder) it does nothing.\n"
        "import importlib.util\n"
        "\n"
        'if importlib.util.find_spec("metagrad") is None:\n'
        f'    get_ipython().run_line_magic("pip", "install --quiet {install_requirement(repository, version)}")'
    )


def install_cell(repository: str, version: str) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(install_source(repository, version))
    cell.metadata["metagrad"] = {"access": "install"}
    cell.id = "metagrad-install"
    return cell


def _pyproject(solutions: Path | None) -> tuple[Path, dict] | None:
    """`(path, [project] table)` of the `pyproject.toml` next to `solutions/` (or of this source tree)."""
    candidates = []
    if solutions is not None:
        candidates.append(Path(solutions).resolve().parent / "pyproject.toml")
    candidates.append(Path(__file__).resolve().parents[3] / "pyproject.toml")
    for path in candidates:
        if path.is_file():
            import tomllib

            return path, tomllib.loads(path.read_text(encoding="utf-8")).get("project", {})
    return None


def project_version(solutions: Path | None = None) -> str:
    """The release the course is built for: `version` in `[project]` of the `pyproject.toml` next to
    `solutions/` (or of this source tree), else the installed package's version."""
    found = _pyproject(solutions)
    if found is not None:
        path, project = found
        if "version" not in project:
            raise BuildError(f"{path} has no `version` in [project].")
        return project["version"]
    return _metadata.version("metagrad")


def repository_url(solutions: Path | None = None) -> str:
    """The repository address: `Repository` in `[project.urls]` of the `pyproject.toml` next to
    `solutions/` (or of this source tree), else the installed package's metadata."""
    found = _pyproject(solutions)
    if found is not None:
        path, project = found
        if "Repository" in project.get("urls", {}):
            return project["urls"]["Repository"]
        raise BuildError(f"{path} has no `Repository` in [project.urls].")
    try:
        for entry in _metadata.metadata("metagrad").get_all("Project-URL") or []:
            label, _, url = entry.partition(",")
            if label.strip().lower() == "repository":
                return url.strip()
    except _metadata.PackageNotFoundError:
        pass
    raise BuildError("no repository address: set `Repository` in [project.urls] of pyproject.toml.")


def solution_lines(nb: nbformat.NotebookNode) -> list[str]:
    """The stripped, non-empty lines inside the solution regions of a notebook (for leak tests)."""
    lines = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        inside = False
        for line in cell.source.split("\n"):
            stripped = line.strip()
            if stripped in (BEGIN, END):
                inside = stripped == BEGIN
            elif inside and stripped:
                lines.append(stripped)
    return lines


def exercise_names(nb: nbformat.NotebookNode) -> list[str]:
    """Names of the functions holding solution regions, in order."""
    names = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        last_def = None
        for line in cell.source.split("\n"):
            match = _DEF.match(line)
            if match:
                last_def = match.group(1)
            if line.strip() == BEGIN and last_def:
                names.append(last_def)
    return names


def render(nb: nbformat.NotebookNode) -> bytes:
    """Deterministic bytes of a notebook."""
    return (nbformat.writes(nb, version=4).rstrip("\n") + "\n").encode("utf-8")


def solution_notebooks(solutions: Path) -> list[Path]:
    return sorted(Path(solutions).glob(NOTEBOOK_GLOB))


def expected_outputs(solutions: Path, *, repository: str | None = None) -> dict[str, bytes]:
    """File name -> bytes that [`build`][metagrad.course.build.build] writes for every notebook in `solutions`.

    `repository` defaults to [`repository_url`][metagrad.course.build.repository_url]; the install cells install [`project_version`][metagrad.course.build.project_version].
    """
    repository = repository_url(solutions) if repository is None else repository
    version = project_version(solutions)
    out = {}
    for path in solution_notebooks(solutions):
        nb = nbformat.read(path, as_version=4)
        out[path.name] = render(student_notebook(nb, name=path.name, repository=repository, version=version))
    return out


def _refuse_own_source(solutions: Path, course: Path) -> None:
    src, dst = Path(solutions).resolve(), Path(course).resolve()
    if src == dst or src.is_relative_to(dst) or dst.is_relative_to(src):
        raise BuildError(
            f"--course {course} and --solutions {solutions} overlap: the build would overwrite or delete the "
            "solution notebooks it reads. Write the student notebooks to a separate folder."
        )


def execute_solutions(solutions: Path, *, cell_timeout: int = 600, kernel_name: str = "python3") -> list[Path]:
    """Re-run every solution notebook top to bottom in a fresh kernel and store its new outputs.

    Use after changing a notebook or the library. Timing metadata are not recorded, so re-running
    unchanged code on the same library gives the same bytes. Raises on the first failing cell.
    """
    from nbclient import NotebookClient

    written = []
    for path in solution_notebooks(Path(solutions)):
        nb = nbformat.read(path, as_version=4)
        metadata = copy.deepcopy(nb.metadata)  # the kernel would add its version: keep files machine-independent
        NotebookClient(
            nb,
            timeout=cell_timeout,
            kernel_name=kernel_name,
            record_timing=False,
            resources={"metadata": {"path": str(path.parent.resolve())}},
        ).execute()
        nb.metadata = metadata
        data = render(nb)
        if path.read_bytes() != data:
            path.write_bytes(data)
            written.append(path)
    return written


CLAIMS_DIR = "claims"
CLAIMS_FILE = "CLAIMS.md"
CLAIM_FIELDS = ("cell", "statement", "guard", "evidence")


def load_claims(solutions: Path) -> dict[str, list[dict]]:
    """Notebook number -> its claim rows, from `solutions/claims/NN.json`; {} when there is no claims folder.

    Raises [`BuildError`][metagrad.course.build.BuildError] naming the file for a row that is not an object with exactly the fields
    `CLAIM_FIELDS` (strings; `cell` may also be an integer index).
    """
    import json

    out = {}
    for path in sorted((Path(solutions) / CLAIMS_DIR).glob("[0-9][0-9].json")):
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise BuildError(f"{path}: not valid JSON ({err}).") from err
        if not isinstance(rows, list):
            raise BuildError(f"{path}: expected a list of claim rows, got {type(rows).__name__}.")
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or set(row) != set(CLAIM_FIELDS):
                raise BuildError(f"{path}, row {i}: a claim row has exactly the fields {', '.join(CLAIM_FIELDS)}.")
            if not all(isinstance(row[k], str) and row[k].strip() for k in CLAIM_FIELDS[1:]) or not isinstance(row["cell"], (str, int)):
                raise BuildError(f"{path}, row {i}: statement, guard and evidence must be non-empty strings.")
        out[path.stem] = rows
    return out


def claims_markdown(solutions: Path) -> str | None:
    """`course/CLAIMS.md`: every claim row of `solutions/claims/*.json` as one table per notebook; None if none.

    The file sits in the student folder and its rows state the results that the notebooks ask students to predict
    or derive, so each notebook's table is inside a collapsed `<details>` block (a blank line after `<summary>`, so
    that GitHub and Jupyter render the Markdown table inside it), under a warning.
    """
    claims = load_claims(solutions)
    if not claims:
        return None
    names = {p.name[:2]: p.name for p in solution_notebooks(solutions)}

    def cell(text) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = [
        "# Claims inventory",
        "",
        f"Generated by `metagrad course build` from `solutions/{CLAIMS_DIR}/NN.json`; do not edit by hand.",
        "Each row is a statement a notebook makes about a number, an ordering, a sign or a speed; the guard is the",
        "assertion or seed loop in that cell (run by nbval) that fails if the statement stops being true.",
        "",
        "> **Spoilers.** These rows state the answers to the notebooks' predictions and derive-it exercises. Open a",
        "> notebook's block only after you have finished that notebook.",
    ]
    for number, rows in claims.items():
        lines += [
            "",
            f"## {names.get(number, number)}",
            "",
            f"<details><summary>Notebook {number} — open after you have finished it</summary>",
            "",
            "| cell | statement | guard | evidence |",
            "|---|---|---|---|",
        ]
        for row in rows:
            lines.append(
                f"| {cell(row['cell'])} | {cell(row['statement'])} | `{cell(row['guard']).replace('`', '')}` | {cell(row['evidence'])} |"
            )
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def build(solutions: Path, course: Path, *, repository: str | None = None) -> list[Path]:
    """Write `course/NN_name.ipynb` for every `solutions/NN_name.ipynb`; remove stale course notebooks.

    Only files changed on disk are rewritten. Returns the paths written or removed. Every notebook is
    converted before anything is written, so a malformed one leaves `course/` as it was.
    """
    solutions, course = Path(solutions), Path(course)
    _refuse_own_source(solutions, course)
    expected = expected_outputs(solutions, repository=repository)
    if not expected:
        raise BuildError(f"no notebooks matching {NOTEBOOK_GLOB} in {solutions}.")
    course.mkdir(parents=True, exist_ok=True)
    touched = []
    for name, data in expected.items():
        target = course / name
        if not target.exists() or target.read_bytes() != data:
            target.write_bytes(data)
            touched.append(target)
    for path in sorted(course.glob(NOTEBOOK_GLOB)):
        if path.name not in expected:
            path.unlink()
            touched.append(path)
    claims = claims_markdown(solutions)
    if claims is not None:
        target = course / CLAIMS_FILE
        if not target.exists() or target.read_text(encoding="utf-8") != claims:
            target.write_text(claims, encoding="utf-8")
            touched.append(target)
    return touched


def stale(solutions: Path, course: Path, *, repository: str | None = None) -> list[str]:
    """Human-readable problems: course notebooks missing, out of date, or without a solution notebook."""
    solutions, course = Path(solutions), Path(course)
    _refuse_own_source(solutions, course)
    expected = expected_outputs(solutions, repository=repository)
    problems = []
    for name, data in expected.items():
        target = course / name
        if not target.exists():
            problems.append(f"{target} is missing")
        elif target.read_bytes() != data:
            problems.append(f"{target} differs from what `metagrad course build` writes from {solutions / name}")
    for path in sorted(course.glob(NOTEBOOK_GLOB)):
        if path.name not in expected:
            problems.append(f"{path} has no solution notebook in {solutions}")
    claims = claims_markdown(solutions)
    target = course / CLAIMS_FILE
    if claims is not None and (not target.exists() or target.read_text(encoding="utf-8") != claims):
        problems.append(f"{target} differs from what `metagrad course build` writes from {solutions / CLAIMS_DIR}")
    return problems
