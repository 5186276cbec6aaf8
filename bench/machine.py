"""The header every benchmark json starts with: date, machine, load average at start and end."""

from __future__ import annotations

import os
import platform
from datetime import date


def run_header(load_start: tuple[float, float, float]) -> dict:
    """Date, machine facts and the load averages (1, 5, 15 min) at the start and now."""
    return {
        "date": date.today().isoformat(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
    }
