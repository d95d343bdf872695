"""Starting the manager's metrics: the no-op recorder, or prometheus_client's server.

Apart from metrics.py because it is the one place that loads metrics_prom, which imports
metrics.py itself: kept here, the import graph stays acyclic (tests/test_architecture.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from evicctl.manager.metrics import NULL, Recorder

if TYPE_CHECKING:
    from evicctl.config import ManagerConfig


def start_metrics(rt, tiers, config: ManagerConfig) -> Recorder:
    """NULL unless config.metrics_port is set; else a recorder serving /metrics on
    config.metrics_bind (port 0: any free port, see `.url`). Raises
    metrics.MetricsServerError when it cannot listen."""
    if config.metrics_port is None:
        return NULL
    from evicctl.manager.metrics_prom import serve

    return serve(rt, tiers, config.metrics_bind, int(config.metrics_port))
