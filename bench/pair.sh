#!/usr/bin/env bash
# Before/after benchmark pair for omnimember: profile_read, points and audience (1,000,000 members).
#
#   bench/pair.sh [options] BEFORE_DIR AFTER_DIR
#   e.g. bench/pair.sh ../omnimember-9bd6195 .   (BEFORE: a git worktree at the baseline, with its own .venv)
#
# For each benchmark it runs BEFORE, then AFTER, back to back, with identical flags, on databases
# prepared beforehand (run each benchmark once from either checkout without --no-write; see docs/benchmarks.md):
#
#   profile_read  bench/profile_read.py --members 100000 --seed 42 --duration 10 --warmup 2
#                 --database-url $PG/bench_profile_read --no-write
#   points        bench/points.py --members 10000 --workers 1 --pool-max 10 --duration 10 --warmup 2
#                 --database-url $PG/bench_points --no-write          (the brand is reset by every run)
#   audience      bench/audience.py --members 1000000 --seed 42 --database-url $PG/bench_audience
#                 --reuse-index --no-write
#
# Each checkout runs its own bench/*.py with its own .venv (the bench scripts start
# CHECKOUT/.venv/bin/omnimember). Output: RESULTS/<bench>-<before|after>.txt (stdout+stderr),
# RESULTS/summary.txt (wall times, exit codes, what was measured) and RESULTS/compare.md (every
# table of the two outputs side by side, with the change in %).
#
# docs/benchmarks.md: every run has --no-write, so no checkout's docs are written. As a second guard,
# AFTER's docs/benchmarks.md is copied to RESULTS/benchmarks.md.orig at the start (BEFORE's to
# RESULTS/benchmarks.before.md.orig); if a run changed it anyway, the changed file is kept as
# RESULTS/benchmarks.md.<bench>-<side>.written and the original is put back.
#
# Options:
#   --only LIST       comma-separated subset of profile_read,points,audience (default: all three, in that order)
#   --results DIR     where outputs go (default $TMPDIR/omnimember-bench-pair)
#   --quick           short settings, to test this script only (figures are NOT comparable with the docs)
#   --refresh-index   audience: rebuild the brand's index in each run (drops --reuse-index; adds ~15 s a run
#                     and reports the refresh time too)
#   --allow-build     run even if a bench database is missing or incomplete (the BEFORE run then builds it:
#                     profile_read ~1 min, audience ~2.5 min; points always resets its own brand)
#   --force           run even when the machine is busy (another process using CPU), or when the two
#                     checkouts have different migrations
#   --after-first     run AFTER before BEFORE for each benchmark (a second pass this way shows any order effect)
#   --before-dbs SUFFIX  BEFORE runs on databases of its own, bench_<bench>SUFFIX (e.g. _before), for a BEFORE
#                     whose migrations differ from AFTER's (each side migrates only its own); they must be
#                     prepared like the others, or pass --allow-build (points needs nothing: it resets its brand)
#   --check           the pre-flight checks only (venvs, imports, wrk, databases, idle machine), no run
#
# Environment: PG_BASE (default postgresql://postgres@127.0.0.1:5432). DATABASE_URL and every
# OMNIMEMBER_* variable are unset for the runs, so both sides see the same settings.
set -uo pipefail

PG_BASE=${PG_BASE:-postgresql://postgres@127.0.0.1:5432}
RESULTS=${TMPDIR:-/tmp}/omnimember-bench-pair
ONLY=profile_read,points,audience
QUICK=0
REUSE_INDEX=1
ALLOW_BUILD=0
FORCE=0
CHECK=0
ORDER="before after"
BEFORE_DBS=

usage() { sed -n '2,/^set -uo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

args=()
while (($#)); do
  case $1 in
    --only) ONLY=$2; shift 2 ;;
    --results) RESULTS=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --refresh-index) REUSE_INDEX=0; shift ;;
    --allow-build) ALLOW_BUILD=1; shift ;;
    --force) FORCE=1; shift ;;
    --check) CHECK=1; shift ;;
    --after-first) ORDER="after before"; shift ;;
    --before-dbs) BEFORE_DBS=$2; shift 2 ;;
    -h|--help) usage 0 ;;
    -*) echo "unknown option $1" >&2; usage ;;
    *) args+=("$1"); shift ;;
  esac
done
((${#args[@]} == 2)) || usage
BEFORE=$(realpath "${args[0]}") || exit 2
AFTER=$(realpath "${args[1]}") || exit 2
IFS=, read -ra BENCHES <<<"$ONLY"
for b in "${BENCHES[@]}"; do
  case $b in profile_read|points|audience) ;; *) echo "--only: unknown benchmark $b" >&2; exit 2 ;; esac
done

for v in $(compgen -e | grep -E '^(OMNIMEMBER_|DATABASE_URL$)'); do
  echo "unsetting $v for the runs"; unset "$v"
done

db_name() {  # db_name BENCH [SIDE]: the side's database of a benchmark
  if [[ ${2:-} == before && -n $BEFORE_DBS ]]; then echo "bench_$1$BEFORE_DBS"; else echo "bench_$1"; fi
}
db_url() { echo "$PG_BASE/$(db_name "$@")"; }

flags_for() {  # flags_for BENCH SIDE: identical for both sides but for the database (--before-dbs)
  local bench=$1 side=$2
  case $bench in
    profile_read)
      local f=(--members 100000 --seed 42 --database-url "$(db_url profile_read "$side")" --no-write)
      if ((QUICK)); then f+=(--duration 3 --warmup 1 --connections 16); else f+=(--duration 10 --warmup 2); fi ;;
    points)
      local f=(--members 10000 --workers 1 --pool-max 10 --database-url "$(db_url points "$side")" --no-write)
      if ((QUICK)); then f+=(--duration 3 --warmup 1); else f+=(--duration 10 --warmup 2); fi ;;
    audience)
      local f=(--members 1000000 --seed 42 --database-url "$(db_url audience "$side")" --no-write)
      ((REUSE_INDEX)) && f+=(--reuse-index)
      ((QUICK)) && f+=(--repeat 20 --warmup 2 --row-repeat 1 --row-budget 5 --export-repeat 3 --http-repeat 1) ;;
  esac
  printf '%s\n' "${f[@]}"
}

die() { echo "bench-pair: $*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# Pre-flight: everything that would make a run fail or the pair unfair, checked before the first run

command -v wrk >/dev/null || die "wrk not found: apt-get install -y wrk"
command -v psql >/dev/null || die "psql not found"
psql "$PG_BASE/postgres" -Atqc 'SELECT 1' >/dev/null || die "PostgreSQL not reachable at $PG_BASE"

for side in BEFORE AFTER; do
  dir=${!side}
  [[ -x $dir/.venv/bin/python && -x $dir/.venv/bin/omnimember ]] || die "$side: $dir/.venv is missing (python3 -m venv .venv && .venv/bin/pip install -e '.[test]')"
  for b in "${BENCHES[@]}"; do [[ -f $dir/bench/$b.py ]] || die "$side: $dir/bench/$b.py missing"; done
  # The bench scripts import the project through the venv's editable install: it must point at this
  # checkout, and every import of the scripts must work (a half-done refactor fails here, not after 5 minutes).
  mods=$(IFS=,; echo "${BENCHES[*]}")
  (cd "$dir" && .venv/bin/python - "$dir" "$mods" <<'PY') || die "$side: the bench scripts do not import in $dir (see above); reinstall its venv (pip install -e '.[test]') or fix the imports"
import importlib, sys
root, mods = sys.argv[1], sys.argv[2].split(",")
sys.path.insert(0, root + "/bench")
for name in mods:
    importlib.import_module(name)
import store
if not store.__file__.startswith(root + "/"):
    sys.exit(f"the venv imports store from {store.__file__}, not from {root}")
PY
done

# The databases are shared by both sides and every run migrates them: a new migration in AFTER would
# change them under BEFORE (and the figures would not be of the same schema).
if [[ -z $BEFORE_DBS ]] && ! diff -q <(cd "$BEFORE/migrations/versions" && ls -- *.py) <(cd "$AFTER/migrations/versions" && ls -- *.py) >/dev/null; then
  echo "WARNING: BEFORE and AFTER have different migrations (migrations/versions): AFTER's runs would migrate the shared bench databases" >&2
  diff <(cd "$BEFORE/migrations/versions" && ls -- *.py) <(cd "$AFTER/migrations/versions" && ls -- *.py) >&2
  ((FORCE)) || die "use databases of their own for AFTER, or pass --force"
fi

db_check() {  # db_check BENCH SIDE: prints a problem, or nothing when the database holds the prepared data
  local bench=$1 url name; url=$(db_url "$1" "$2"); name=$(db_name "$1" "$2")
  local exists; exists=$(psql "$PG_BASE/postgres" -Atqc "SELECT 1 FROM pg_database WHERE datname = '$name'")
  [[ $exists == 1 ]] || { [[ $bench == points ]] || echo "database $name does not exist"; return; }
  case $bench in
    profile_read|audience)
      local want=$([[ $bench == audience ]] && echo 1000000 || echo 100000)
      local n; n=$(psql "$url" -Atqc "SELECT count(*) FROM members m JOIN brands b ON b.id = m.brand_id JOIN groups g ON g.id = b.group_id WHERE g.code = 'demo'" 2>/dev/null)
      [[ $n == "$want" ]] || echo "$name holds ${n:-no} demo members, not $want" ;;
    points) ;;  # reset by every run
  esac
  if [[ $bench == audience ]]; then
    local cur; cur=$(psql "$url" -Atqc "SELECT s.brand_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM audience_changes c WHERE c.brand_id = b.id) FROM brands b LEFT JOIN audience_index_state s ON s.brand_id = b.id WHERE b.code = 'teahouse'" 2>/dev/null)
    [[ $cur == t ]] || echo "$name: the teahouse index is not current (the BEFORE run will rebuild it, ~15 s)"
  fi
}
for b in "${BENCHES[@]}"; do for side in before after; do
  problem=$(db_check "$b" "$side")
  if [[ -n $problem ]]; then
    echo "WARNING: $problem" >&2
    [[ $problem == *"not current"* ]] || ((ALLOW_BUILD)) || die "prepare the data first (run each benchmark once from either checkout without --no-write; see docs/benchmarks.md) or pass --allow-build"
  fi
done; done

busy_check() {  # CPU used by the rest of the machine over 3 s, in cores
  read -r _ a1 a2 a3 _ _ a6 a7 a8 _ < /proc/stat; local t1=$((a1+a2+a3+a6+a7+a8))
  sleep 3
  read -r _ b1 b2 b3 _ _ b6 b7 b8 _ < /proc/stat; local t2=$((b1+b2+b3+b6+b7+b8))
  awk -v d=$((t2 - t1)) -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", d / hz / 3 }'
}
busy=$(busy_check)
echo "machine busy before the runs: $busy cores of $(nproc)"
if awk -v b="$busy" 'BEGIN { exit !(b > 0.25) }'; then
  ps -eo pid,pcpu,etime,args --sort=-pcpu | head -6 | cut -c1-160
  msg="the machine is busy ($busy cores in use by others, see above): the figures would read low and noisy"
  ((FORCE)) || die "$msg; wait for it to finish, or pass --force"
  echo "WARNING: $msg" >&2
fi

if ((CHECK)); then echo "pre-flight checks passed"; exit 0; fi

# ---------------------------------------------------------------------------------------------
# Runs

mkdir -p "$RESULTS"
SUMMARY=$RESULTS/summary.txt
ORIG_AFTER=$RESULTS/benchmarks.md.orig
ORIG_BEFORE=$RESULTS/benchmarks.before.md.orig
cp "$AFTER/docs/benchmarks.md" "$ORIG_AFTER"
cp "$BEFORE/docs/benchmarks.md" "$ORIG_BEFORE"

guard_docs() {  # put a checkout's docs/benchmarks.md back if a run changed it; keep what it wrote
  local dir=$1 orig=$2 tag=$3
  if ! cmp -s "$dir/docs/benchmarks.md" "$orig"; then
    cp "$dir/docs/benchmarks.md" "$RESULTS/benchmarks.md.$tag.written"
    cp "$orig" "$dir/docs/benchmarks.md"
    echo "WARNING: $dir/docs/benchmarks.md was changed during $tag: restored; the changed file is $RESULTS/benchmarks.md.$tag.written" | tee -a "$SUMMARY" >&2
  fi
}

child=
on_signal() {
  echo "bench-pair: interrupted" >&2
  [[ -n $child ]] && kill -TERM "$child" 2>/dev/null && wait "$child" 2>/dev/null
  guard_docs "$AFTER" "$ORIG_AFTER" interrupted-after
  guard_docs "$BEFORE" "$ORIG_BEFORE" interrupted-before
  exit 130
}
trap on_signal INT TERM

{
  echo "bench-pair $(date -u '+%F %T UTC')$( ((QUICK)) && echo '  [--quick: settings too short to compare with the docs]')"
  for side in BEFORE AFTER; do
    dir=${!side}
    echo "$side: $dir at $(git -C "$dir" rev-parse --short HEAD 2>/dev/null) ($(git -C "$dir" status --porcelain 2>/dev/null | wc -l) uncommitted paths)"
  done
  echo "machine busy before the runs: $busy cores"
} | tee "$SUMMARY"

failed=0
pair_start=$SECONDS
for bench in "${BENCHES[@]}"; do
  for side in $ORDER; do
    mapfile -t flags < <(flags_for "$bench" "$side")
    dir=$BEFORE; orig=$ORIG_BEFORE
    [[ $side == after ]] && { dir=$AFTER; orig=$ORIG_AFTER; }
    out=$RESULTS/$bench-$side.txt
    psql "$(db_url "$bench" "$side")" -Atqc CHECKPOINT >/dev/null 2>&1  # no checkpoint left over from the last run's writes
    echo "== $bench $side: (cd $dir && .venv/bin/python bench/$bench.py ${flags[*]})" | tee -a "$SUMMARY"
    start=$SECONDS
    (cd "$dir" && exec .venv/bin/python "bench/$bench.py" "${flags[@]}") >"$out" 2>&1 &
    child=$!
    wait "$child"; rc=$?
    child=
    wall=$((SECONDS - start))
    guard_docs "$dir" "$orig" "$bench-$side"
    ((rc == 0)) || failed=1
    echo "   exit $rc, wall ${wall}s, output $out$( ((rc)) && echo " — FAILED: $(grep -m1 -E 'FAILED|Error|error' "$out" | cut -c1-200)")" | tee -a "$SUMMARY"
  done
done
total=$((SECONDS - pair_start))
echo "total wall time: ${total}s ($((total / 60)) min $((total % 60)) s)" | tee -a "$SUMMARY"

# ---------------------------------------------------------------------------------------------
# Side by side: every markdown table the two outputs print, row by row, BEFORE -> AFTER (change)

python3 - "$RESULTS" "${BENCHES[@]}" >"$RESULTS/compare.md" <<'PY'
import re, sys
from pathlib import Path

results, benches = Path(sys.argv[1]), sys.argv[2:]
SKIP = ("chosen for",)  # the audience's tag choice: data, not a measurement

def tables(text):
    """[(header cells, {row key: cells})] of the markdown tables in a benchmark's output."""
    found, lines = [], text.splitlines()
    i = 0
    while i < len(lines) - 1:
        if lines[i].startswith("| ") and re.match(r"^\|[-:|]+\|$", lines[i + 1].strip()):
            header = [c.strip() for c in lines[i].strip().strip("|").split("|")]
            rows, i = {}, i + 2
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                key = cells[0] + (f" (c={cells[1]})" if len(header) > 1 and header[1] == "conns" else "")
                rows[key] = cells
                i += 1
            found.append((header, rows))
        else:
            i += 1
    return found

def number(cell):
    m = re.fullmatch(r"([\d,]+(?:\.\d+)?)\s*(ms|x|cores)?", cell.strip().strip("*()"))
    return float(m.group(1).replace(",", "")) if m else None

for bench in benches:
    paths = [results / f"{bench}-{side}.txt" for side in ("before", "after")]
    if not all(p.exists() for p in paths):
        continue
    before, after = (tables(p.read_text(errors="replace")) for p in paths)
    print(f"## {bench}\n")
    if not before or not after:
        print("(a run printed no table: see its output)\n")
        continue
    after_by_header = {tuple(h): rows for h, rows in after}
    for header, rows_b in before:
        if header[0] in SKIP:
            continue
        rows_a = after_by_header.get(tuple(header), {})
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for key, cells in rows_b.items():
            other = rows_a.get(key)
            out = []
            for j, cell in enumerate(cells):
                a = other[j] if other and j < len(other) else "?"
                b_num, a_num = number(cell), number(a)
                if j == 0 or (header[1:2] == ["conns"] and j == 1) or cell == a:
                    out.append(cell if cell == a or j == 0 else f"{cell} / {a}")
                elif b_num is not None and a_num is not None and b_num:
                    out.append(f"{cell} → {a} ({(a_num - b_num) / b_num:+.1%})")
                else:
                    out.append(f"{cell} → {a}")
            print("| " + " | ".join(out) + " |")
        print()
PY
echo "side by side: $RESULTS/compare.md (BEFORE → AFTER, change in %); wall times: $SUMMARY"
exit "$failed"
