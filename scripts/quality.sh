#!/usr/bin/env bash
# Quality gates of bpfd.core, the ones the best-kept collections run:
#   sanity-2.18 / sanity-2.19  ansible-test sanity --venv, once per supported ansible-core line
#   ansible-lint               production profile on roles/, playbooks/ and the AWX test project
#   docs-lint                  antsibull-docs lint-collection-docs (collection and plugin docs)
#   changelog-lint             antsibull-changelog lint, and CHANGELOG.md generated from the
#                              fragments is current (QUALITY_UPDATE_CHANGELOG=1 rewrites it;
#                              QUALITY_CHANGELOG_STALE=warn only warns)
#   build-install-doc          ansible-galaxy collection build, install the tarball into a scratch
#                              path, ansible-doc of every module and of the role from that copy
#   docs-site                  docs/site/build.sh: the antsibull-docs site with the guides,
#                              warnings as errors
# Every gate runs even when an earlier one failed; the script ends with one line per gate and
# exits 1 when any gate failed (2 on a usage or set-up error).
#
#   scripts/quality.sh                 all gates
#   scripts/quality.sh lint docs-lint  only the named gates
#   QUALITY_KEEP=1 scripts/quality.sh  keep the scratch directory (path printed at the end)
#
# Environment: BPFD_VENV (main venv, ansible-core 2.19 and the linters; default /opt/bpfd-venv),
# BPFD_VENV_218 (venv with ansible-core 2.18; created with pip when missing; default
# /opt/bpfd-venv-218), QUALITY_INSTALL=0 (do not install missing tools, fail instead).
#
# ansible-test needs the collection at .../ansible_collections/bpfd/core: the files git knows
# (tracked, plus untracked ones not ignored, as they are in the work tree) are copied to a
# scratch tree, and every gate runs on that copy, never on the work tree.
# The gates are functions called through run_gate: shellcheck cannot see those calls.
# shellcheck disable=SC2317
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${BPFD_VENV:-/opt/bpfd-venv}
venv218=${BPFD_VENV_218:-/opt/bpfd-venv-218}
install_missing=${QUALITY_INSTALL:-1}
all_gates=(sanity-2.18 sanity-2.19 ansible-lint docs-lint changelog-lint build-install-doc docs-site)
gates=("$@")
[ "${#gates[@]}" -gt 0 ] || gates=("${all_gates[@]}")
for gate in "${gates[@]}"; do
    [[ " ${all_gates[*]} " == *" $gate "* ]] || { echo "quality: unknown gate '$gate' (gates: ${all_gates[*]})" >&2; exit 2; }
done

say() { printf '\n=== quality: %s\n' "$*"; }
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 ANSIBLE_NOCOLOR=1 NO_COLOR=1 PY_COLORS=0
# The scratch copy is the only collection these tools may see.
unset ANSIBLE_COLLECTIONS_PATH ANSIBLE_COLLECTIONS_PATHS

[ -x "$venv/bin/python" ] || { echo "quality: $venv/bin/python not found; run scripts/bootstrap.sh" >&2; exit 2; }
py_version=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

# --- tools -------------------------------------------------------------------------
ensure_tools() {  # venv pip-requirement... : install the requirements when an import fails
    local env=$1; shift
    if "$env/bin/python" - "$@" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import distribution
from packaging.requirements import Requirement
for spec in sys.argv[1:]:
    req = Requirement(spec)
    if not req.specifier.contains(distribution(req.name).version, prereleases=True):
        sys.exit(1)
PY
    then
        return 0
    fi
    [ "$install_missing" = 1 ] || { echo "quality: $env lacks $*" >&2; return 1; }
    echo "quality: installing $* into $env"
    "$env/bin/python" -m pip install -q "$@"
}

if [[ " ${gates[*]} " == *" sanity-2.18 "* ]] && [ ! -x "$venv218/bin/python" ]; then
    [ "$install_missing" = 1 ] || { echo "quality: $venv218 missing" >&2; exit 2; }
    echo "quality: creating $venv218"
    "$(readlink -f "$venv/bin/python")" -m venv "$venv218" || exit 2
fi
setup_ok=1
ensure_tools "$venv" "ansible-core>=2.19,<2.20" "ansible-lint>=25" "antsibull-docs>=2.16" \
    "antsibull-changelog>=0.29" "sphinx>=7" "sphinx-ansible-theme>=0.9" "myst-parser>=2" || setup_ok=0
if [[ " ${gates[*]} " == *" sanity-2.18 "* ]]; then
    ensure_tools "$venv218" "ansible-core>=2.18,<2.19" || setup_ok=0
fi
[ "$setup_ok" = 1 ] || { echo "quality: could not install the tools" >&2; exit 2; }

# --- scratch copy of the collection ----------------------------------------------------
scratch=$(mktemp -d /tmp/bpfd-quality.XXXXXX)
cleanup() {
    if [ "${QUALITY_KEEP:-0}" = 1 ]; then echo "quality: kept $scratch"; else rm -rf "$scratch"; fi
}
trap cleanup EXIT
tree="$scratch/ansible_collections/bpfd/core"
mkdir -p "$tree"
(
    cd "$repo" || exit 1
    git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
        | xargs -0 cp --parents -t "$tree"
) || { echo "quality: could not copy the collection to $tree" >&2; exit 2; }
# ansible-test lists a collection's files with git when the tree is a repository:
# give the copy one, so that only these files count and nothing else is picked up.
(
    cd "$tree" && git init -q && git add -A \
        && git -c user.name=quality -c user.email=quality@localhost commit -qm scratch
) || { echo "quality: git init of the scratch tree failed" >&2; exit 2; }

declare -A result
declare -A seconds
run_gate() {  # name command...
    local name=$1; shift
    say "$name: $*"
    local start=$SECONDS
    if "$@"; then result[$name]=PASS; else result[$name]=FAIL; fi
    seconds[$name]=$((SECONDS - start))
    echo "quality: $name ${result[$name]} (${seconds[$name]}s)"
}

# ansible-test --venv bootstraps pip with a script it downloads from ci-files.testing.ansible.com
# (unreachable from here). It looks in its cache first: a stand-in there installs pip with
# ensurepip, then the pinned packages ansible-test asks for, from the usual package index.
get_pip_standin() {  # venv
    local version cache
    version=$("$1/bin/python" -c 'import re, ansible_test, os.path as p
src = open(p.join(p.dirname(ansible_test.__file__), "_internal", "python_requirements.py")).read()
print(re.search(r"default_packages = dict\(\s*pip=.([0-9.]+).", src).group(1))') || return 1
    cache=~/.ansible/test/cache/get_pip_${version//./_}.py
    [ -f "$cache" ] && return 0
    mkdir -p "$(dirname "$cache")"
    cat >"$cache" <<'PY'
# Stand-in for get-pip.py (written by bpfd.core's scripts/quality.sh): pip from ensurepip,
# then the requirements ansible-test passes (pip==X ...), without get-pip's own flags.
import ensurepip
import subprocess
import sys

ensurepip.bootstrap(upgrade=True)
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
if any(not a.startswith("-") for a in args):
    subprocess.check_call([sys.executable, "-m", "pip", "install"] + args)
PY
}

sanity() {  # venv
    local env=$1
    get_pip_standin "$env" || return 1
    (
        cd "$tree" || exit 1
        PATH="$env/bin:$PATH" "$env/bin/ansible-test" sanity --venv --python "$py_version" --color no
    )
}

lint() {
    (
        cd "$tree" || exit 1
        # --offline: nothing to fetch (no dependencies; Galaxy may be unreachable).
        ANSIBLE_COLLECTIONS_PATH="$scratch" PATH="$venv/bin:$PATH" \
            "$venv/bin/ansible-lint" --offline --profile production --nocolor \
                roles/ playbooks/ tests/awx/project/
    )
}

docs_lint() {
    (
        cd "$tree" || exit 1
        ANSIBLE_COLLECTIONS_PATH="$scratch" PATH="$venv/bin:$PATH" \
            "$venv/bin/antsibull-docs" lint-collection-docs --plugin-docs .
    )
}

changelog_lint() {
    ( cd "$tree" && "$venv/bin/antsibull-changelog" lint ) || return 1
    # CHANGELOG.md is generated: before a version is released, as a preview of it from the
    # fragments (`release` on a throwaway copy); afterwards from changelogs/changelog.yaml.
    local copy="$scratch/changelog/ansible_collections/bpfd/core" version
    mkdir -p "$copy" && cp -a "$tree/." "$copy/" || return 1
    version=$("$venv/bin/python" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["version"])' "$tree/galaxy.yml")
    (
        cd "$copy" || exit 1
        # antsibull-changelog runs ansible-doc (from PATH) on the copy to list new plugins.
        export PATH="$venv/bin:$PATH" ANSIBLE_COLLECTIONS_PATH="$scratch/changelog"
        if "$venv/bin/python" -c 'import sys, yaml; sys.exit(sys.argv[2] not in (yaml.safe_load(open(sys.argv[1])).get("releases") or {}))' \
            changelogs/changelog.yaml "$version"; then
            "$venv/bin/antsibull-changelog" generate
        else
            "$venv/bin/antsibull-changelog" release --version "$version"
        fi
    ) || return 1
    if cmp -s "$copy/CHANGELOG.md" "$repo/CHANGELOG.md"; then
        echo "CHANGELOG.md is current (version $version)"
    elif [ "${QUALITY_UPDATE_CHANGELOG:-0}" = 1 ]; then
        cp "$copy/CHANGELOG.md" "$repo/CHANGELOG.md"
        echo "CHANGELOG.md rewritten (version $version)"
    else
        diff -u "$repo/CHANGELOG.md" "$copy/CHANGELOG.md" | head -40
        echo "CHANGELOG.md is stale: run QUALITY_UPDATE_CHANGELOG=1 scripts/quality.sh changelog-lint"
        [ "${QUALITY_CHANGELOG_STALE:-fail}" = warn ] || return 1
    fi
}

build_install_doc() {
    local out="$scratch/build" installed="$scratch/installed" failed=0
    mkdir -p "$out" "$installed"
    "$venv/bin/ansible-galaxy" collection build --force --output-path "$out" "$tree" || return 1
    local tarball
    tarball=$(ls "$out"/bpfd-core-*.tar.gz) || return 1
    "$venv/bin/ansible-galaxy" collection install --force --offline -p "$installed" "$tarball" || return 1
    local core="$installed/ansible_collections/bpfd/core"
    local unwanted
    unwanted=$(cd "$core" && ls -d tests/output .ci .git bench/results 2>/dev/null)
    if [ -n "$unwanted" ]; then
        echo "build: the tarball holds development files: $unwanted"
        failed=1
    fi
    local module name
    for module in "$core"/plugins/modules/*.py; do
        name=$(basename "$module" .py)
        [ "$name" = __init__ ] && continue
        if ANSIBLE_COLLECTIONS_PATH="$installed" "$venv/bin/ansible-doc" -t module "bpfd.core.$name" \
            >"$scratch/doc-$name.txt" 2>&1 && ! grep -q '^\[WARNING\]\|ERROR' "$scratch/doc-$name.txt"; then
            echo "ansible-doc bpfd.core.$name: ok ($(wc -l <"$scratch/doc-$name.txt") lines)"
        else
            echo "ansible-doc bpfd.core.$name: FAILED"
            cat "$scratch/doc-$name.txt"
            failed=1
        fi
    done
    local role
    for role in "$core"/roles/*/; do
        name=$(basename "$role")
        if ANSIBLE_COLLECTIONS_PATH="$installed" "$venv/bin/ansible-doc" -t role "bpfd.core.$name" \
            >"$scratch/doc-role-$name.txt" 2>&1 && ! grep -q '^\[WARNING\]\|ERROR' "$scratch/doc-role-$name.txt"; then
            echo "ansible-doc -t role bpfd.core.$name: ok ($(wc -l <"$scratch/doc-role-$name.txt") lines)"
        else
            echo "ansible-doc -t role bpfd.core.$name: FAILED"
            cat "$scratch/doc-role-$name.txt"
            failed=1
        fi
    done
    # Every module is in the action group (module_defaults: group/bpfd.core.bpf).
    local missing
    missing=$("$venv/bin/python" - "$core" <<'PY'
import pathlib, sys, yaml
core = pathlib.Path(sys.argv[1])
group = set(yaml.safe_load((core / "meta/runtime.yml").read_text()).get("action_groups", {}).get("bpf", []))
mods = {p.stem for p in (core / "plugins/modules").glob("*.py") if p.stem != "__init__"}
print(" ".join(sorted(mods - group)))
PY
)
    if [ -n "$missing" ]; then
        echo "meta/runtime.yml: action group bpf lacks: $missing"
        failed=1
    fi
    return "$failed"
}

docs_site() {
    # The site is built from the scratch copy, into the scratch directory.
    DOCS_OUT="$scratch/site" BPFD_VENV="$venv" bash "$tree/docs/site/build.sh"
}

for gate in "${gates[@]}"; do
    case $gate in
        sanity-2.18) run_gate "$gate" sanity "$venv218" ;;
        sanity-2.19) run_gate "$gate" sanity "$venv" ;;
        ansible-lint) run_gate "$gate" lint ;;
        docs-lint) run_gate "$gate" docs_lint ;;
        changelog-lint) run_gate "$gate" changelog_lint ;;
        build-install-doc) run_gate "$gate" build_install_doc ;;
        docs-site) run_gate "$gate" docs_site ;;
    esac
done

say summary
status=0
for gate in "${gates[@]}"; do
    printf '  %-18s %s  %4ss\n' "$gate" "${result[$gate]}" "${seconds[$gate]}"
    [ "${result[$gate]}" = PASS ] || status=1
done
if [ "$status" = 0 ]; then echo "quality: all gates passed"; else echo "quality: FAILED"; fi
exit "$status"
