"""What the reliability tests saw a user get, collected for docs/reliability.md (scripts/reliability_doc.py).

Each test that provokes a failure calls ``record``; when ``LIT_GPT_RELIABILITY_LOG`` names a file, one JSON line per
case is appended to it. The doc is rendered from these lines, so it shows the messages the code prints today.
"""

from __future__ import annotations

import json
import os
import re
import tempfile

# pytest's per-test folders: /tmp/pytest-of-USER/pytest-N/[popen-gwK/]TESTNAME0/ (popen-gwK: a pytest-xdist worker's)
_TMP = re.compile(re.escape(tempfile.gettempdir()) + r"/pytest-of-[^/]+/pytest-\d+/(popen-gw\d+/)?[^/'\"\s]+/")


def record(row: str, command: str, exit_code: int, message: str) -> None:
    """Note that ``command`` (for the ``row`` of the issue's list) ended with ``exit_code`` and printed ``message``."""
    target = os.environ.get("LIT_GPT_RELIABILITY_LOG")
    if not target:
        return
    entry = {"row": row, "command": _TMP.sub("", command), "exit_code": exit_code, "message": _TMP.sub("", message)}
    with open(target, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, ensure_ascii=False) + "\n")
