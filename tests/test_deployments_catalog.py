"""prefect.yaml, serve.py and the flows agree; every UI parameter is described."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from deployments.catalog import DEPLOYMENTS
from deployments.render import render

ROOT = Path(__file__).resolve().parent.parent


def test_prefect_yaml_is_rendered_from_the_catalog() -> None:
    assert (ROOT / "prefect.yaml").read_text() == render(), (
        "prefect.yaml is stale: run `uv run python -m deployments.render`"
    )


@pytest.mark.parametrize("spec", DEPLOYMENTS, ids=lambda s: f"{s.flow_name}/{s.name}")
def test_every_parameter_has_a_description_and_no_secret(spec: object) -> None:
    path, func = spec.entrypoint.split(":")  # type: ignore[attr-defined]
    flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), func)
    assert flow.name == spec.flow_name  # type: ignore[attr-defined]
    properties = flow.parameters.properties
    for name, schema in properties.items():
        assert schema.get("description"), f"{flow.name}.{name} has no description"
        assert not any(word in name for word in ("url", "password", "secret", "key")), name
    for name in spec.parameters:  # type: ignore[attr-defined]
        assert name in properties, f"{flow.name} has no parameter {name}"
    if "dry_run" in properties:
        assert spec.parameters["dry_run"] is True  # type: ignore[attr-defined]
