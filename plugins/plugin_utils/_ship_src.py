# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Controller side of every program module: ship O(src) to the managed host,
then run the module there with the shipped copy."""

from __future__ import annotations

import os

from ansible.errors import AnsibleError
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase


class ShipSrcAction(ActionBase):
    TRANSFERS_FILES = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars or {})
        module_args = self._task.args.copy()
        src = module_args.get("src")
        try:
            if src is not None:
                try:
                    local = self._find_needle("files", src)
                except AnsibleError as exc:
                    result.update(failed=True, msg=to_text(exc))
                    return result
                remote = self._connection._shell.join_path(self._connection._shell.tmpdir,
                                                           os.path.basename(local))
                self._transfer_file(local, remote)
                self._fixup_perms2((self._connection._shell.tmpdir, remote))
                module_args["src"] = remote
            result.update(self._execute_module(module_name=self._task.resolved_action or self._task.action, module_args=module_args,
                                               task_vars=task_vars))
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return result
