"""Read run folders into pandas for notebooks and `python -m gan_t2i.compare`.

    from gan_t2i.analysis import load_runs, metric_table, plot_metric
    runs = load_runs("outputs/runs/*")
    metric_table(runs, metrics=["fid"])
"""

from gan_t2i.analysis.plots import plot_metric, plot_stats
from gan_t2i.analysis.runs import (
    Run,
    config_differences,
    flatten,
    load_run,
    load_runs,
    read_config,
    read_metrics,
    read_stats,
)
from gan_t2i.analysis.tables import (
    best_checkpoints,
    evaluations,
    metric_direction,
    metric_table,
    select_metrics,
    speed_summary,
    speed_table,
)

__all__ = [
    "Run",
    "best_checkpoints",
    "config_differences",
    "evaluations",
    "flatten",
    "load_run",
    "load_runs",
    "metric_direction",
    "metric_table",
    "plot_metric",
    "plot_stats",
    "read_config",
    "read_metrics",
    "read_stats",
    "select_metrics",
    "speed_summary",
    "speed_table",
]
