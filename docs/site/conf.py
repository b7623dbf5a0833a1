# Copyright (c) Ansible Project
# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Sphinx configuration of the bpfd.core docs site. Created with `antsibull-docs sphinx-init
# --use-current --squash-hierarchy` (antsibull-docs 2.28.0), then: project names, MyST for the
# guides in docs/*.md, and intersphinx only when BPFD_DOCS_INTERSPHINX=1 (the inventories are
# fetched from docs.python.org and docs.ansible.com, which a build machine may not reach).

import os

project = 'bpfd.core'
copyright = 'bpfd.core contributors'

title = 'bpfd.core - eBPF program manager for Ansible'
html_short_title = 'bpfd.core'

extensions = ['sphinx.ext.autodoc', 'sphinx.ext.intersphinx', 'sphinx_antsibull_ext', 'myst_parser']
source_suffix = {'.rst': 'restructuredtext', '.md': 'markdown'}

pygments_style = 'ansible'

highlight_language = 'YAML+Jinja'

html_theme = 'sphinx_ansible_theme'
html_show_sphinx = False

display_version = False

html_use_smartypants = True
html_use_modindex = False
html_use_index = False
html_copy_source = False

if os.environ.get('BPFD_DOCS_INTERSPHINX') == '1':
    intersphinx_mapping = {
        'python3': ('https://docs.python.org/3/', None),
        'ansible_devel': ('https://docs.ansible.com/projects/ansible/devel/', None),
    }
else:
    intersphinx_mapping = {}
    # The generated pages refer to Ansible's own docs (action_plugins, common_return_values, ...),
    # which only intersphinx resolves.
    suppress_warnings = ['ref.ref']

default_role = 'any'

nitpicky = True

# The guides link to files of the repository (playbooks, tests) that are not pages of the site.
myst_heading_anchors = 3
# Plain code blocks of the guides are highlighted as YAML+Jinja when they parse as such.
suppress_warnings = globals().get('suppress_warnings', []) + ['myst.xref_missing', 'misc.highlighting_failure']
