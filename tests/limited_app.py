"""``python tests/limited_app.py ARGS``: app.py under a low open-file limit (env ``VLM_TEST_NOFILE``).

Attack tests run the server this way so that a leak of one descriptor per attempt would take
it down within a bounded loop of a few hundred attempts, as 1,024 did in the original report.
"""

from __future__ import annotations

import os
import resource
import runpy
import sys
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app.py"

if __name__ == "__main__":
    limit = int(os.environ["VLM_TEST_NOFILE"])
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    sys.argv[0] = str(APP)
    runpy.run_path(str(APP), run_name="__main__")
