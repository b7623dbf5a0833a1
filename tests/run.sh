#!/usr/bin/env bash
# Run the bpfd.core test suite with the project's venv.
#   tests/run.sh [pytest args...]        e.g. tests/run.sh -k role -x, tests/run.sh tests/unit
#   JUNIT_XML=out.xml tests/run.sh       also keep the JUnit report (or pass --junitxml=...)
# Ends with one line "N passed, N failed, N skipped" and exits with pytest's status;
# "no tests collected" (pytest status 5) counts as a failure.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2

venv=${BPFD_VENV:-/opt/bpfd-venv}
python="$venv/bin/python"
[ -x "$python" ] || { echo "tests/run.sh: $python not found; run scripts/bootstrap.sh first" >&2; exit 2; }

# The summary is computed from a JUnit report: the caller's if it asked for one.
junit=${JUNIT_XML:-}
targets=(tests)  # unless the arguments name test files or directories themselves
for arg in "$@"; do
    [ -e "${arg%%::*}" ] && targets=()
    case $arg in
        --junitxml=* | --junit-xml=*) junit=${arg#*=} ;;
        --junitxml | --junit-xml) echo "tests/run.sh: write --junitxml=PATH (with '=')" >&2; exit 2 ;;
    esac
done
tmp_junit=""
if [ -z "$junit" ]; then
    tmp_junit=$(mktemp --suffix=.xml)
    junit=$tmp_junit
fi
trap '[ -n "$tmp_junit" ] && rm -f "$tmp_junit"' EXIT
rm -f "$junit"

"$python" -m pytest "${targets[@]}" -q -ra -p no:cacheprovider --junitxml="$junit" "$@"
status=$?

if [ "$status" -eq 5 ]; then
    echo "tests/run.sh: FAILURE: pytest collected no tests (exit status 5)" >&2
fi

"$python" - "$junit" <<'PY' || echo "0 passed, 0 failed, 0 skipped"
import sys
import xml.etree.ElementTree as ET

try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError) as exc:
    print("tests/run.sh: no JUnit report (%s)" % exc, file=sys.stderr)
    sys.exit(1)
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
total = failed = skipped = 0
for suite in suites:
    total += int(suite.get("tests", 0))
    failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    skipped += int(suite.get("skipped", 0))
print("%d passed, %d failed, %d skipped" % (total - failed - skipped, failed, skipped))
PY
exit "$status"
