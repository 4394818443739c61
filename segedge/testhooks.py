"""Named pause points for interruption tests: a test stops a real process at an exact step instead of sleeping.

With SEGEDGE_TEST_PAUSE=<point> (comma-separated points allowed) and SEGEDGE_TEST_PAUSE_FILE=<path>, the process
writes <path> (containing the point name) when it reaches <point> and then waits until the test deletes the file
(then it carries on) or kills the process. Without the variables `pause_point` is a dictionary lookup.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PAUSE_ENV = "SEGEDGE_TEST_PAUSE"
PAUSE_FILE_ENV = "SEGEDGE_TEST_PAUSE_FILE"


def pause_point(name: str) -> None:
    """Pause here when a test asked for `name` (see module docstring); otherwise return at once."""
    wanted = os.environ.get(PAUSE_ENV)
    if not wanted or name not in wanted.split(","):
        return
    flag = Path(os.environ.get(PAUSE_FILE_ENV) or f"segedge-pause-{os.getpid()}")
    flag.write_text(name)
    while flag.exists():  # the test deletes the file to let the process go on, or kills it
        time.sleep(0.02)
