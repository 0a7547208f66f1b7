"""What the figures were measured on: they mean little without it."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from cascadeq.infra.connection import connect


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(url: str) -> dict[str, Any]:
    import onnxruntime  # noqa: PLC0415
    import psutil  # noqa: PLC0415 - the bench extra

    r = connect(url)
    server: Any = r.info("server")
    r.close()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "redis_server": str(server["redis_version"]),
    }
