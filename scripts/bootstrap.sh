#!/usr/bin/env bash
# Prepare a Debian 12 machine, as root, to develop and test bpfd.core:
#   - Debian packages the product and the tests use (skipped when all are installed),
#   - a Python venv at ${BPFD_VENV:-/opt/bpfd-venv} with tests/requirements.txt, and
#     Debian's bcc (python3-bpfcc, not on PyPI) linked into it for programs from source,
#   - bpffs at /sys/fs/bpf and tracefs at /sys/kernel/tracing (mounted when absent).
# Idempotent and quiet; a failing step prints its output and stops the script.
# Environment: BPFD_VENV (venv path), BPFD_PYTHON (interpreter that creates a new venv).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${BPFD_VENV:-/opt/bpfd-venv}
python=${BPFD_PYTHON:-/usr/bin/python3}

apt_packages=(
    clang llvm libbpf-dev libbpf1 bpftool    # build and inspect eBPF objects
    iproute2 iputils-ping xdp-tools          # netns/veth, traffic, reference objects
    docker-registry                          # local OCI registry for image tests
    openssh-server shellcheck                # fleet hosts' sshd (tests/fleet); ansible-test's shellcheck
    python3-bpfcc                            # programs from C source (bcc)
    "linux-headers-$(dpkg --print-architecture)"  # bcc's kernel headers (tests link them, see
                                             # tests/integration/test_programs_from_source.py)
    python3-venv git
)

say() { printf 'bootstrap: %s\n' "$*"; }
die() { printf 'bootstrap: ERROR: %s\n' "$*" >&2; exit 1; }

# Run a command silently; on failure show everything it printed and stop.
quiet() {
    local out
    out=$(mktemp)
    if ! "$@" >"$out" 2>&1; then
        cat "$out" >&2
        rm -f "$out"
        die "command failed: $*"
    fi
    rm -f "$out"
}

[ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and mounts file systems)"
command -v apt-get >/dev/null || die "this script is for Debian/Ubuntu (apt-get not found)"

# --- Debian packages --------------------------------------------------------------
missing=()
for pkg in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Services (docker-registry) must not start on install: the tests start what they
    # need on loopback themselves. Only when no policy is in place already.
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    quiet apt-get update
    quiet apt-get install -y --no-install-recommends "${missing[@]}"
else
    say "Debian packages present"
fi

# --- Python venv ------------------------------------------------------------------
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
    :
else
    if [ -e "$venv" ]; then
        [ -f "$venv/pyvenv.cfg" ] || die "$venv exists and is not a venv; set BPFD_VENV to another path"
        say "recreating broken venv $venv"
        rm -rf "$venv"
    else
        say "creating venv $venv"
    fi
    command -v "$python" >/dev/null || die "no Python at $python (set BPFD_PYTHON)"
    quiet "$python" -m venv "$venv"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
quiet "$venv/bin/python" -m pip install -r "$repo/tests/requirements.txt"
say "venv $venv: $("$venv/bin/python" -c 'import ansible, pyroute2, pytest, sys; print("python %d.%d.%d" % sys.version_info[:3], "ansible-core", ansible.__version__, "pyroute2", pyroute2.__version__, "pytest", pytest.__version__)')"

# bcc is only packaged by distributions: link Debian's package into the venv (what a
# managed host's venv needs too; the role's bpfd_host_bcc does the same).
bcc_dir=$(/usr/bin/python3 -c 'import bcc, os; print(os.path.dirname(bcc.__file__))' 2>/dev/null) \
    || die "python3-bpfcc is installed but /usr/bin/python3 cannot import bcc"
purelib=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
[ -e "$purelib/bcc" ] || ln -s "$bcc_dir" "$purelib/bcc"
"$venv/bin/python" -c 'import bcc' >/dev/null 2>&1 || die "the venv cannot import bcc through $purelib/bcc"

# --- Pseudo file systems ----------------------------------------------------------
mount_if_absent() {  # fstype path
    if awk -v t="$1" -v p="$2" '$2 == p && $3 == t { found = 1 } END { exit !found }' /proc/mounts; then
        return 0
    fi
    grep -qw "$1" /proc/filesystems || { say "kernel has no $1, not mounting $2"; return 0; }
    quiet mount -t "$1" "$1" "$2"
    say "mounted $1 on $2"
}
mount_if_absent bpf /sys/fs/bpf
mount_if_absent tracefs /sys/kernel/tracing
say "ready"
