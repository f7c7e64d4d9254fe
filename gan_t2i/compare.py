"""`python -m gan_t2i.compare 'runs=[outputs/runs/*]'`: tables and plots that compare runs.

Writes into `out`: `comparison.md` (runs, final and best value of each metric, config
differences, plots), `comparison.csv` (one row per run × metric × split, with speed and the
differing config keys), `evaluations.csv` (every evaluation, best marked), one PNG per metric (a
line per run, a star on each run's best), `training.png` (losses and img/s), and
`best_checkpoints.json` (run → metric → split → kimg, value and checkpoint of the best value).
With one run, the Markdown lists each evaluated kimg, so the run's checkpoints are compared.
Every file is written atomically; nothing is written when no run matches.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from gan_t2i.analysis import (
    Run,
    best_checkpoints,
    config_differences,
    evaluations,
    load_runs,
    metric_table,
    plot_metric,
    plot_stats,
    speed_table,
)
from gan_t2i.cli import task
from gan_t2i.config import to_plain
from gan_t2i.utils import GanT2IError, atomic_path, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

STATS_KEYS = ("loss_D", "loss_G", "D_real", "D_fake", "r1_penalty", "img_per_s")


@dataclass
class CompareConfig:
    """python -m gan_t2i.compare: compare run folders."""

    runs: Any = MISSING  # run folders and/or globs: [outputs/runs/*] or one folder
    out: str = MISSING  # output folder (conf/compare.yaml: outputs/compare/<timestamp>)
    metrics: Any = None  # names or families (fid, shapes_alignment); null: every metric found
    split: Any = None  # a split or a list of splits; null: all


ConfigStore.instance().store(name="compare_schema", node=CompareConfig)


def _as_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    return [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]


def check_selection(runs: list[Run], metrics: list[str] | None, splits: list[str] | None) -> None:
    """A metric or split filter that selects nothing is one clear error, before anything is written."""
    found = pd.concat([r.metrics for r in runs], ignore_index=True)
    if (metrics or splits) and found.empty:
        raise GanT2IError("no metrics.jsonl records in these runs: run python -m gan_t2i.evaluate first")
    if metrics and evaluations(runs, metrics).empty:
        raise GanT2IError(f"no metric matches {metrics}; found: {', '.join(sorted(set(found['metric'])))}")
    if splits and evaluations(runs, metrics, splits).empty:
        raise GanT2IError(f"no {metrics or 'metric'} records for split {splits}; "
                          f"found: {', '.join(sorted(set(found['split'])))}")


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float | int) and not isinstance(value, bool):
        return f"{value:.{digits}g}"
    return str(value).replace("|", "\\|")


def _with_ci(value: float, low: Any, high: Any) -> str:
    ci = f" [{_fmt(low, 3)}, {_fmt(high, 3)}]" if _fmt(low) and _fmt(high) else ""
    return _fmt(value) + ci


def md_table(df: pd.DataFrame, index: bool = False) -> str:
    """A GitHub Markdown table (no tabulate dependency)."""
    if index:
        df = df.reset_index()
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    rows = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


def _summary_md(table: pd.DataFrame) -> pd.DataFrame:
    """Final and best per run × metric × split; the best run of each (metric, split) in bold."""
    rows = []
    for (metric, split), g in table.groupby(["metric", "split"], sort=True):
        top = g["best_value"].min() if g["direction"].iloc[0] == "min" else g["best_value"].max()
        for r in g.itertuples(index=False):
            best = _with_ci(r.best_value, r.best_ci_low, r.best_ci_high)
            if len(g) > 1 and r.best_value == top:
                best = f"**{best}**"
            rows.append({"metric": metric, "split": split, "run": r.run,
                         "final": _with_ci(r.final_value, r.final_ci_low, r.final_ci_high),
                         "final kimg": r.final_kimg, "best": best, "best kimg": r.best_kimg,
                         "chance": r.chance})
    return pd.DataFrame(rows)


def _checkpoints_md(run: Run, evals: pd.DataFrame) -> pd.DataFrame:
    """One run's evaluations: a row per kimg, a column per metric [split]; each column's best in bold."""
    cells = evals.assign(
        column=evals["metric"] + " [" + evals["split"] + "]",
        cell=[f"**{_with_ci(v, lo, hi)}**" if b else _with_ci(v, lo, hi)
              for v, lo, hi, b in zip(evals["value"], evals["ci_low"], evals["ci_high"], evals["is_best"])])
    wide = cells.pivot_table(index="kimg", columns="column", values="cell", aggfunc="last")
    wide = wide.reindex(sorted(wide.columns), axis=1).fillna("")
    recorded = evals.groupby("kimg")["checkpoint"].last()
    files = [run.checkpoint_at(k, r if isinstance(r, str) else None) for k, r in recorded.items()]
    wide.insert(0, "checkpoint", [f.name if f else "(gone)" for f in files])
    return wide


def format_markdown(runs: list[Run], table: pd.DataFrame, evals: pd.DataFrame, speed: pd.DataFrame,
                    diffs: pd.DataFrame, plots: list[str]) -> str:
    """The whole comparison.md."""
    single = len(runs) == 1
    parts = [f"# {'Checkpoints of ' + runs[0].name if single else f'Comparison of {len(runs)} runs'}",
             f"Written {time.strftime('%Y-%m-%d %H:%M:%S')} by `python -m gan_t2i.compare`. Best is the "
             "minimum for fid/kid and the maximum for every other metric; [a, b] is the 95% CI.",
             "## Runs", md_table(speed.round(3), index=True)]
    if table.empty:
        parts += ["## Metrics", "No metrics.jsonl records: run `python -m gan_t2i.evaluate run=<run>`."]
    elif single:
        parts += ["## Each evaluated checkpoint (best of each column in bold)",
                  md_table(_checkpoints_md(runs[0], evals), index=True),
                  "## Final and best", md_table(_summary_md(table))]
    else:
        parts += ["## Metrics: final and best (best run in bold)", md_table(_summary_md(table))]
    parts.append("## Config differences")
    if single:
        parts.append("One run: nothing to compare.")
    elif diffs.empty:
        parts.append("The configs are identical (paths and hydra settings ignored).")
    else:
        parts.append(md_table(diffs, index=True))
    if plots:
        parts += ["## Plots", *[f"![{p}]({p})" for p in plots]]
    return "\n\n".join(parts) + "\n"


def comparison_csv(table: pd.DataFrame, speed: pd.DataFrame, diffs: pd.DataFrame) -> pd.DataFrame:
    """One row per run × metric × split (a run without metrics keeps one row), with speed and config."""
    per_run = speed.join(diffs.T.add_prefix("config.")) if not diffs.empty else speed
    return per_run.reset_index().merge(table, on="run", how="left")[
        ["run", *table.columns[1:], *per_run.columns]]


def plot_file(metric: str) -> str:
    """A metric's PNG name: `shapes_alignment/color` → `shapes_alignment-color.png`."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", metric).strip("-") + ".png"


def _save_figure(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def compare(runs: list[str] | str, out: str | Path, *, metrics: list[str] | None = None,
            split: str | list[str] | None = None) -> Path:
    """Compare run folders (paths or globs) into `out`; returns `out`.

    Everything is computed before the first file is written, so a bad selection writes nothing.
    """
    loaded = load_runs(runs)
    splits = _as_list(split)
    check_selection(loaded, metrics, splits)
    table, evals = metric_table(loaded, metrics, splits), evaluations(loaded, metrics, splits)
    speed, diffs = speed_table(loaded), config_differences(loaded)
    figures = {plot_file(m): plot_metric(loaded, m, splits[0] if splits and len(splits) == 1 else None)
               for m in sorted(set(table["metric"]))}
    if any(not r.stats.empty for r in loaded):
        figures["training.png"] = plot_stats(loaded, [k for k in STATS_KEYS
                                                      if any(k in r.stats for r in loaded)])
    out = Path(out)
    md = format_markdown(loaded, table, evals, speed, diffs, list(figures))
    atomic_write_text(out / "comparison.md", md)
    atomic_write_text(out / "comparison.csv", comparison_csv(table, speed, diffs).to_csv(index=False))
    atomic_write_text(out / "evaluations.csv", evals.to_csv(index=False))
    atomic_write_json(out / "best_checkpoints.json", best_checkpoints(table))
    for name, fig in figures.items():
        _save_figure(fig, out / name)
    log.info("compared %d run(s), %d metric(s)", len(loaded), table["metric"].nunique())
    return out


@hydra.main(version_base="1.3", config_path="../conf", config_name="compare")
@task
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    c = to_plain(cfg)
    runs = _as_list(c["runs"]) or []
    out = compare(runs, c["out"], metrics=_as_list(c["metrics"]), split=c["split"])
    print(f"comparison written to {out}")


if __name__ == "__main__":
    main()
