"""The one machine-readable line every bench script ends with.

``emit(bench, figures)`` prints one JSON object on one line (the last line
of the script's output), so runs can be compared by a script::

    python bench/topic_throughput.py | tail -1 | jq .publish_rate

The object carries the bench name, the UTC time, the machine (CPUs and the
load average at the end of the run: benches on a shared machine are only
comparable at similar load) and the bench's own figures. Non-finite floats
become ``null`` so that the line is strict JSON.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time


def _clean(value):
    if isinstance(value, float):
        return round(value, 4) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def machine() -> dict:
    return {"cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(), "host": platform.node()}


def emit(bench: str, figures: dict) -> None:
    doc = {"bench": bench, "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": machine(), **figures}
    print(json.dumps(_clean(doc), sort_keys=False, allow_nan=False), flush=True)
