#!/usr/bin/env bash
# Times the README's two commands as a new user meets them: a fresh clone of this checkout,
# a fresh venv, an empty home directory (no pip cache, no llm-infer cache, no Ray token).
#
#   benchmarks/fresh_install.sh            # the main command (install + generate), then a warm rerun
#   benchmarks/fresh_install.sh --tests    # also the test command (dev extras + the whole suite; long)
#
# Writes benchmarks/results/fresh_install.json (seconds per phase).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
run_tests=0
[[ "${1:-}" == "--tests" ]] && run_tests=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/llm-infer"
mkdir -p "$work/home"
export HOME="$work/home"
unset LLM_INFER_HOME PIP_CACHE_DIR
cd "$work/llm-infer"

now() { date +%s.%N; }
secs() { python3 -c "print(round($2 - $1, 1))"; }

t0=$(now)
python3 -m venv .venv
source .venv/bin/activate
t1=$(now)
pip install -q torch==2.13.0 -e . 2>&1 | grep -v "^WARNING: Location" || true
t2=$(now)
llm-infer generate --prompt "Explain KV caching in two sentences." | tee "$work/answer.txt"
t3=$(now)
llm-infer generate --prompt "Explain KV caching in two sentences." > /dev/null
t4=$(now)
env_report=$(llm-infer env --json)

tests_s=None
if [[ $run_tests == 1 ]]; then
  t5=$(now)
  pip install -q torch==2.13.0 -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
  t6=$(now)
  python -m pytest -q
  t7=$(now)
  tests_s="{\"install_dev\": $(secs "$t5" "$t6"), \"pytest\": $(secs "$t6" "$t7")}"
fi

mkdir -p "$repo/benchmarks/results"
python3 - "$repo/benchmarks/results/fresh_install.json" <<EOF
import json, sys
report = json.loads('''$env_report''')
json.dump({
    "machine": {"cpu": report["device"]["cpu"], "cores": report["device"]["cores"],
                "python": report["python"]["version"], "torch": report["packages"]["torch"]},
    "kernels": report["kernels"]["cpu (bf16, fp32)"]["set"],
    "venv_s": $(secs "$t0" "$t1"),
    "pip_install_s": $(secs "$t1" "$t2"),
    "first_generate_s": $(secs "$t2" "$t3"),
    "readme_main_command_s": $(secs "$t1" "$t3"),
    "warm_generate_s": $(secs "$t3" "$t4"),
    "tests": $tests_s,
}, open(sys.argv[1], "w"), indent=2)
print(open(sys.argv[1]).read())
EOF
