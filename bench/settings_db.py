"""The project's settings with the database entry overridden from ``BENCH_DB`` (JSON), for the bridge benchmark's
connection experiments only, e.g. prepared statements and no per-request health check::

    python -m bench.bridge --only postgresql --bridge-env DJANGO_SETTINGS_MODULE=bench.settings_db \
        --bridge-env 'BENCH_DB={"CONN_HEALTH_CHECKS": false,
                                "OPTIONS": {"server_side_binding": true, "prepare_threshold": 5}}'

(DATABASE_URL cannot say ``server_side_binding``: Django wants the boolean True, the URL gives a string.)
"""

import json
import os

from fabomatic.settings import *  # noqa: F403
from fabomatic.settings import DATABASES

_override = json.loads(os.environ.get("BENCH_DB", "{}"))
DATABASES["default"] = {
    **DATABASES["default"],
    **{k: v for k, v in _override.items() if k != "OPTIONS"},
    "OPTIONS": {**DATABASES["default"].get("OPTIONS", {}), **_override.get("OPTIONS", {})},
}
