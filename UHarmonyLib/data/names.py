"""The names that end up in file and folder names or model cards, with their rules, spelled once.

Standard library only: `federated certs` and the Slicer panel use them without torch.
"""

from __future__ import annotations

import re

# a file or folder name prefix (synthetic sites' files, federated keys, state folders and bundles): no spaces
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
PLAIN_NAME_RULE = "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
# a site of a dataset or a model card (add-site, train, evaluate): spaces allowed, never a path
SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}")
SITE_NAME_RULE = "use 1-64 letters, digits, spaces, '.', '_' or '-', starting with a letter or digit"
