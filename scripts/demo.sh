#!/usr/bin/env bash
# The README's first command: set up this machine and run the demo playbook
# from the collection as users get it (built tarball, installed into a scratch
# collections path - nothing is read from the work tree at run time).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${BPFD_VENV:-/opt/bpfd-venv}"
work="${BPFD_DEMO_DIR:-/tmp/bpfd-demo}"

bash "$repo/scripts/bootstrap.sh"
rm -rf "$work" && mkdir -p "$work/collections" "$work/files"

"$venv/bin/ansible-galaxy" collection build --force --output-path "$work" "$repo" >/dev/null
"$venv/bin/ansible-galaxy" collection install --force -p "$work/collections" "$work"/bpfd-core-*.tar.gz >/dev/null

# The tutorial's object: xdp_pass (function "pass"), compiled here once.
"$venv/bin/python" "$repo/tests/fixtures/bpf/build.py" "$work/files" --only xdp_pass >/dev/null
cp "$repo/playbooks/demo.yml" "$work/demo.yml"

cd "$work"
ANSIBLE_COLLECTIONS_PATH="$work/collections" ANSIBLE_NOCOLOR="${ANSIBLE_NOCOLOR:-}" \
  "$venv/bin/ansible-playbook" -i localhost, -c local \
  -e "ansible_python_interpreter=$venv/bin/python" "$@" demo.yml
