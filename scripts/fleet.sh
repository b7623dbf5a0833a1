#!/usr/bin/env bash
# The fleet simulation at full size: 20 hosts on this machine, each with its own network and
# mount namespace (own bpffs, /run, /var/lib/bpfd) and its own sshd, driven by Ansible over
# SSH with the collection as users get it (built tarball, installed into a scratch path).
#   scripts/fleet.sh                      20 hosts, forks 10, serial [1, 5]
#   scripts/fleet.sh --hosts 8 --forks 8  smaller
#   scripts/fleet.sh --keep               keep the fleet up for a look around (Enter ends it)
# Steps and checks (tests/fleet/fleet.py, docs/fleet.md): a strict rollout that stops at the
# broken host's batch, a tolerant one that goes on, a repair, the no-op re-run, the report
# play and two ad-hoc commands; then everything is removed, also on failure or Ctrl-C.
# Ends with the wall time of each step; exits non-zero when a check failed.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${BPFD_VENV:-/opt/bpfd-venv}"

[ "$(id -u)" -eq 0 ] || { echo "fleet.sh: run as root (namespaces, mounts, sshd)" >&2; exit 2; }
if [ ! -x /usr/sbin/sshd ] || [ ! -x "$venv/bin/python" ]; then
    bash "$repo/scripts/bootstrap.sh"
fi

work=$(mktemp -d /tmp/bpfd-fleet-collection.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$venv/bin/ansible-galaxy" collection build --force --output-path "$work" "$repo" >/dev/null
ANSIBLE_COLLECTIONS_PATH="$work/collections" "$venv/bin/ansible-galaxy" collection install --force --offline -p "$work/collections" \
    "$work"/bpfd-core-*.tar.gz >/dev/null

# Not exec: the trap above removes the scratch collection afterwards.
"$venv/bin/python" "$repo/tests/fleet/fleet.py" --collections-path "$work/collections" "$@"
