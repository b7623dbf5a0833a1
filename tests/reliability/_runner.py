# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""One Manager call in a process of its own, as one module run is.

    python _runner.py '{"op": "present", "kwargs": {...}, "go": "/path/of/a/barrier"}'

The layout comes from BPFD_BPFFS_DIR / BPFD_RUN_DIR / BPFD_LIB_DIR, a crash point
from BPFD_CRASH_AT (the Manager SIGKILLs this process there). Errors become a
result the way plugins/module_utils/_module.run turns them into fail_json:
BpfdError -> {"failed": true, "msg": ...}; anything else -> "unexpected error"
plus the traceback. The result also carries how long this run waited for the host
lock and when it held it (CLOCK_MONOTONIC, comparable across processes).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback


def main() -> int:
    request = json.loads(sys.argv[1])
    from ansible_collections.bpfd.core.plugins.module_utils import _state
    from ansible_collections.bpfd.core.plugins.module_utils._errors import BpfdError
    from ansible_collections.bpfd.core.plugins.module_utils._manager import Manager, ProgramSpec

    if request.get("go"):  # a start barrier (after the imports): concurrent runs start at once
        with open("%s.ready.%d" % (request["go"], os.getpid()), "w"):
            pass
        while not os.path.exists(request["go"]):
            time.sleep(0.002)
    started = time.monotonic()

    timings: dict = {"started": started}
    original = _state.StateStore.locked

    @contextlib.contextmanager
    def locked(self):
        with original(self) as store:
            timings.setdefault("lock_waits", []).append(self.lock_wait_seconds)
            timings.setdefault("lock_acquired", []).append(time.monotonic())
            try:
                yield store
            finally:
                timings.setdefault("lock_released", []).append(time.monotonic())

    _state.StateStore.locked = locked

    op, kwargs = request["op"], request.get("kwargs", {})
    manager = Manager()
    try:
        if op == "present":
            result = manager.present(ProgramSpec(**kwargs), check_mode=request.get("check_mode", False))
        elif op == "chain":
            kwargs = dict(kwargs, specs=[ProgramSpec(**s) for s in kwargs["specs"]])
            result = manager.chain(**kwargs)
        elif op == "absent":
            result = manager.absent(**kwargs)
        elif op == "list":
            result = manager.list(**kwargs)
        else:
            raise SystemExit("unknown op %s" % op)
    except BpfdError as exc:
        result = dict(exc.details, failed=True, msg=exc.msg)
    except Exception as exc:  # what _module.run reports as a bug of ours
        result = {"failed": True, "msg": "unexpected error in bpfd.core: %s" % exc,
                  "exception": traceback.format_exc()}
    timings["ended"] = time.monotonic()
    result["_timings"] = timings
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
