"""Offline, no-telemetry process defaults.

Nothing in this project may reach a model hub or a telemetry endpoint at run time. Without
``HF_HUB_OFFLINE=1`` a tokenizer lookup retries for minutes and then silently returns a
2-token vocabulary (measured, ../shared/research/install.md §3), so offline is the default.
Values already set by the user win (``setdefault``), so a GPU user may opt in to downloads.
"""

from __future__ import annotations

import os

OFFLINE_DEFAULTS: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
}


def apply_offline_defaults(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Set every offline/telemetry default that the caller has not set; return what was set."""
    env = os.environ if environ is None else environ
    applied = {}
    for key, value in OFFLINE_DEFAULTS.items():
        if key not in env:
            env[key] = value
            applied[key] = value
    return applied
