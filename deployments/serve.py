"""One process serving every safeops deployment, for teams without workers.

Same names, parameters and nightly schedule as prefect.yaml (both come from
deployments/catalog.py). Needs PREFECT_API_URL of a running server.

Run:  uv run python deployments/serve.py
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from deployments.catalog import DEPLOYMENTS, NIGHTLY_TIMEZONE  # noqa: E402


def build() -> list[Any]:
    from prefect.schedules import Cron

    out = []
    for spec in DEPLOYMENTS:
        path, func = spec.entrypoint.split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, func)
        out.append(
            flow.to_deployment(
                name=spec.name,
                description=spec.description,
                tags=list(spec.tags),
                parameters=spec.parameters,
                schedules=[Cron(spec.cron, timezone=NIGHTLY_TIMEZONE)] if spec.cron else None,
            )
        )
    return out


if __name__ == "__main__":
    from prefect import serve

    from safeops.core.prefect_env import apply_offline_defaults

    apply_offline_defaults()
    serve(*build())
