"""Builds the seams (traffic, metrics) from settings; fails fast on an unknown name.

It lives beside the app factory, outside the implementations, so no backend module
imports another and a misspelled backend never falls back to a default.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from gate.local.deployer import LocalDeployer, LocalSettings
from gate.local.router_client import LocalRouter
from gate.providers.base import MetricsProvider
from gate.providers.prometheus import PrometheusProvider
from gate.providers.scrape import ScrapeProvider
from gate.settings import GateSettings
from gate.store import SQLiteStore
from gate.traffic.base import Deployer, Router


def check_traffic_settings(settings: GateSettings) -> None:
    """What :func:`make_traffic` would refuse, checked before anything is built, so that a
    gate refused at start leaves nothing behind (no store file, no run folder)."""
    if settings.traffic_backend == "local" and settings.router_token is None:
        raise ValueError("the local backend needs GATE_ROUTER_TOKEN (the router's token)")
    if settings.traffic_backend not in ("local", "kserve"):
        raise ValueError(
            f"unknown traffic backend {settings.traffic_backend!r}; choose local or kserve"
        )


def make_traffic(settings: GateSettings, store: SQLiteStore) -> tuple[Router, Deployer]:
    check_traffic_settings(settings)
    if settings.traffic_backend == "local":
        assert settings.router_token is not None  # (checked above)
        deployer = LocalDeployer(
            LocalSettings(
                run_dir=Path(settings.run_dir),
                predictor_args=tuple(shlex.split(settings.canary_args)),
                predictor_args_by_model={
                    model: tuple(shlex.split(args))
                    for model, args in settings.canary_args_by_model.items()
                },
            ),
            store,
        )
        router = LocalRouter(
            settings.router_admin_url, settings.router_token.get_secret_value(), store
        )
        return router, deployer
    from gate.traffic.kserve import KServeTrafficBackend  # (only "kserve" is left)

    backend = KServeTrafficBackend.from_settings(settings, store)
    return backend, backend


def make_provider(
    name: str, prometheus_url: str = "", queries: dict[str, str] | None = None
) -> MetricsProvider:
    """Fails fast on an unknown name: a typo must not fall back to a default."""
    if name == "scrape":
        return ScrapeProvider()
    if name == "prometheus":
        if not prometheus_url:
            raise ValueError("the prometheus provider needs GATE_PROMETHEUS_URL")
        return PrometheusProvider(prometheus_url, queries)
    raise ValueError(f"unknown metrics provider {name!r}; choose scrape or prometheus")
