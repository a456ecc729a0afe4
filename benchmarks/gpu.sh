#!/usr/bin/env bash
# One command for a machine with a GPU (issue 12 §2):
#
#   benchmarks/gpu.sh            # full: test suite, reproduce at N = 100000, Fig. 1d at the paper's protocol,
#                                # MAML throughput + task scaling; writes the "## GPU run (benchmarks/gpu.sh)"
#                                # section of benchmarks/RESULTS.md and benchmarks/gpu/* figures
#   benchmarks/gpu.sh --smoke    # the same steps at a tiny size (runs on a CPU in about a minute; writes
#                                # only under --out, never benchmarks/RESULTS.md)
#
# Options: --smoke, --out DIR (default benchmarks/gpu, or a temporary folder with --smoke),
#          --nav-iterations N (Fig. 1d iterations; default: the protocol's), --skip-tests.
# Run from anywhere; it runs in the repository root with PYTHONPATH=lib. Each step's wall time is recorded.
# The target "≤ 8 minutes on a GPU" has not been measured: no GPU was lent when this script was written.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT/lib${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python}"

SMOKE=0
OUT=""
NAV_ITERATIONS=""
SKIP_TESTS=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --smoke) SMOKE=1; shift ;;
    --out) OUT="${2:?--out needs a folder}"; shift 2 ;;
    --nav-iterations) NAV_ITERATIONS="${2:?--nav-iterations needs a positive integer}"; shift 2 ;;
    --skip-tests) SKIP_TESTS=1; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "benchmarks/gpu.sh: error: unknown option '$1' (expected --smoke, --out DIR, --nav-iterations N, --skip-tests)" >&2; exit 2 ;;
  esac
done
if [[ -n "$NAV_ITERATIONS" && ! "$NAV_ITERATIONS" =~ ^[1-9][0-9]*$ ]]; then
  echo "benchmarks/gpu.sh: error: --nav-iterations must be a positive integer; got '$NAV_ITERATIONS'" >&2; exit 2
fi
if [[ -z "$OUT" ]]; then
  if [[ $SMOKE == 1 ]]; then OUT="$(mktemp -d)"; else OUT="$ROOT/benchmarks/gpu"; fi
fi
mkdir -p "$OUT"
RESULTS="$ROOT/benchmarks/RESULTS.md"
[[ $SMOKE == 1 ]] && RESULTS="$OUT/RESULTS.md"
TIMES="$OUT/times.tsv"
: > "$TIMES"

step() {  # step NAME COMMAND...: run, log to $OUT/NAME.log, record the wall time and exit status
  local name="$1"; shift
  local tic rc
  tic=$EPOCHREALTIME
  echo "== $name: $*" >&2
  set +e
  "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  set -e
  printf '%s\t%s\t%d\t%s\n' "$name" "$(awk -v a="$tic" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')" \
    "$rc" "$*" >> "$TIMES"
  tail -n 5 "$OUT/$name.log" >&2
  return 0
}

step device "$PYTHON" -c "import jax; print(jax.default_backend(), jax.devices())"

if [[ $SKIP_TESTS == 0 ]]; then
  if [[ $SMOKE == 1 ]]; then  # one float64 oracle test file (conftest enables x64) as the smoke
    step tests "$PYTHON" -m pytest tests/test_exact.py -x -q -p no:cacheprovider -k "hessian_is_symmetric"
  else                        # the whole suite, float64 oracle tests included, on the default (GPU) backend
    step tests "$PYTHON" -m pytest tests -q -p no:cacheprovider
  fi
fi

if [[ $SMOKE == 1 ]]; then
  step reproduce "$PYTHON" -m metagrad reproduce --num-trajectories 20 --sweep 10,20 --epsilons 0.0,0.5 --trials 2 \
    --order 2 --quiet --out "$OUT/reproduce"
  step nav2d "$PYTHON" -m metagrad maml-nav2d --methods ProMP --num-tasks 2 --num-trajectories 2 --horizon 5 \
    --inner-steps 1 --iterations "${NAV_ITERATIONS:-2}" --seeds 2 --no-progress --out "$OUT/maml_nav2d"
  # benchmarks/maml.py's smallest size takes minutes on a CPU: the smoke times the same quantity (one compiled
  # meta-iteration vs the number of tasks) at a tiny size through the public API.
  step maml_benchmark "$PYTHON" - <<'PY'
import time, jax, jax.numpy as jnp
from metagrad import maml
for m in (1, 2):
    cfg = maml.MAMLConfig(env="navigation", outer="pg", inner_estimator="taypo2", hidden_sizes=(4,), num_tasks=m,
                          num_trajectories=2, horizon=5, checkpoint_every=1, shard=False)
    init, chunk = maml.make_train(cfg)
    state = init(jax.random.PRNGKey(0))
    jax.block_until_ready(chunk(state, jnp.arange(1)))
    tic = time.perf_counter(); jax.block_until_ready(chunk(state, jnp.arange(1, 2)))
    print(f"{m} task(s): {time.perf_counter() - tic:.4f} s per meta-iteration (compiled)")
PY
else
  step reproduce "$PYTHON" -m metagrad reproduce --num-trajectories 100000 --quiet --out "$OUT/reproduce"
  # Checkpointed and resumable: rerunning the script continues the Fig. 1d run where it stopped (docs/fig1d.md).
  step nav2d "$PYTHON" -m metagrad maml-nav2d --no-progress --out "$OUT/maml_nav2d" \
    --checkpoint-dir "$OUT/maml_nav2d/checkpoints" --resume ${NAV_ITERATIONS:+--iterations "$NAV_ITERATIONS"}
  step maml_benchmark "$PYTHON" benchmarks/maml.py --scaling --fig1d --write
fi

# Locomotion on MJX (needs the extra metagrad[locomotion]; docs/locomotion.md): env steps/s at B = 800 and 8192,
# default vs capped solver iterations, and (full run only) seconds per ProMP meta-iteration at the paper's protocol
# for the four tasks; the full run rewrites the two "## Locomotion" sections of RESULTS.md.
if [[ $SMOKE == 1 ]]; then
  step locomotion "$PYTHON" benchmarks/locomotion.py --tasks halfcheetah-direction --batches 8 --fast-batches 8 \
    --steps 2 --repeats 1 --no-write
else
  step locomotion "$PYTHON" benchmarks/locomotion.py \
    --meta-tasks halfcheetah-direction,ant-direction,ant-goal,walker2d-direction
fi

"$PYTHON" - "$OUT" "$RESULTS" "$SMOKE" <<'EOF'
"""Write the '## GPU run (benchmarks/gpu.sh)' section of RESULTS.md (other sections untouched)."""
import json, os, re, sys

out, results, smoke = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
rows = [line.rstrip("\n").split("\t") for line in open(os.path.join(out, "times.tsv")) if line.strip()]
device = open(os.path.join(out, "device.log")).read().strip().splitlines()[-1] if os.path.exists(os.path.join(out, "device.log")) else "?"
rel = lambda p: os.path.relpath(p, os.path.dirname(os.path.abspath(results)))  # noqa: E731
lines = ["## GPU run (benchmarks/gpu.sh)", "",
         f"{'SMOKE size (not a measurement)' if smoke else 'Full size'}; JAX backend and devices: `{device}`.", "",
         "| step | wall time (s) | exit status | command |", "|---|---:|---:|---|"]
lines += [f"| {name} | {seconds} | {rc} | `{command}` |" for name, seconds, rc, command in rows]
lines.append(f"| total | {sum(float(r[1]) for r in rows):.1f} | | |")
tests = os.path.join(out, "tests.log")
if os.path.exists(tests):
    summary = [l for l in open(tests).read().splitlines() if re.search(r"\d+ (passed|failed)", l)]
    lines += ["", f"- Tests: {summary[-1] if summary else 'no summary line (see tests.log)'}."]
nav = os.path.join(out, "maml_nav2d", "maml_nav2d.json")
if os.path.exists(nav):
    data = json.load(open(nav))
    lines += ["", f"- Fig. 1d (`{data['settings']['command_line'] or 'maml-nav2d'}`; paper protocol: "
              f"{data['settings']['paper_protocol']}): ![Fig. 1d]({rel(os.path.join(out, 'maml_nav2d', 'maml_nav2d.png'))})",
              "", "| method | post-adaptation, first 5 its | post-adaptation, last 5 its | wall s |", "|---|---:|---:|---:|"]
    for m, s in data["summary"].items():
        lines.append(f"| {m} | {s['initial_post'][0]:.3f} ± {s['initial_post'][1]:.3f} | "
                     f"{s['final_post'][0]:.3f} ± {s['final_post'][1]:.3f} | {data['wall_time_s']['per_method'][m]:.1f} |")
repro = os.path.join(out, "reproduce")
if os.path.isdir(repro):
    figures = sorted(f for f in os.listdir(repro) if f.endswith(".png"))
    lines += ["", "- reproduce figures: " + ", ".join(f"[{f}]({rel(os.path.join(repro, f))})" for f in figures)]
lines += ["", "- MAML throughput and task scaling: the `## MAML (benchmarks/maml.py)` section (rewritten by "
          "`benchmarks/maml.py --scaling --write` in the same run)." if not smoke else
          "- MAML benchmark (smoke): one compiled meta-iteration for 1 and 2 tasks through the public API "
          "(benchmarks/maml.py itself takes minutes on a CPU; the full run calls it).", ""]
section = "\n".join(lines)
text = open(results).read() if os.path.exists(results) else "# Benchmark results\n"
pattern = re.compile(r"^## GPU run \(benchmarks/gpu\.sh\)\n.*?(?=^## |\Z)", re.S | re.M)
text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section + "\n"
open(results, "w").write(text)
print(section)
EOF
echo "benchmarks/gpu.sh: wrote $RESULTS and $OUT" >&2
awk -F'\t' '$3 != 0 {bad=1; print "benchmarks/gpu.sh: step " $1 " failed (exit " $3 "), see its log" > "/dev/stderr"} END {exit bad}' "$TIMES"
