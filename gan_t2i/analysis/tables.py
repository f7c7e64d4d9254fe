"""Tables over loaded runs: final and best value of each metric, speed, best checkpoints."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from gan_t2i.analysis.runs import Run

LOWER_IS_BETTER = ("fid", "kid")  # metric name prefixes; every other metric: higher is better


def metric_direction(metric: str) -> str:
    """`min` for distances (fid*, kid*), `max` for accuracies, precision, recall, r_precision."""
    return "min" if metric.lower().startswith(LOWER_IS_BETTER) else "max"


def _matches(name: str, wanted: list[str] | None) -> bool:
    """`shapes_alignment` selects `shapes_alignment/color`; `fid` selects `fid_shapes_oracle`."""
    if not wanted:
        return True
    return any(name == w or name.startswith((w + "/", w + "_")) for w in wanted)


def select_metrics(df: pd.DataFrame, metrics: list[str] | None = None, split: str | list[str] | None = None
                   ) -> pd.DataFrame:
    """Rows of a metrics frame whose metric (exact name or family) and split are wanted."""
    splits = [split] if isinstance(split, str) else split
    keep = pd.Series([_matches(m, metrics) for m in df["metric"]], index=df.index, dtype=bool)
    if splits:
        keep &= df["split"].isin(splits)
    return df[keep]


def best_row(group: pd.DataFrame, direction: str) -> pd.Series:
    """The row of the best value; ties go to the earliest kimg."""
    values = group["value"]
    return group.loc[values.idxmin() if direction == "min" else values.idxmax()]


def evaluations(runs: list[Run], metrics: list[str] | None = None, split: str | list[str] | None = None
                ) -> pd.DataFrame:
    """Every evaluation of every run (one row per run × metric × split × kimg), best marked."""
    frames = []
    for run in runs:
        df = select_metrics(run.metrics, metrics, split).copy()
        if df.empty:
            continue
        df.insert(0, "run", run.name)
        df["direction"] = df["metric"].map(metric_direction)
        df["is_best"] = False
        for _, g in df.groupby(["metric", "split"], sort=False):
            df.loc[best_row(g, metric_direction(g["metric"].iloc[0])).name, "is_best"] = True
        frames.append(df)
    cols = ["run", "metric", "split", "kimg", "value", "ci_low", "ci_high", "chance", "std", "is_best",
            "direction", "num_images", "checkpoint"]
    if not frames:
        return pd.DataFrame(columns=cols)
    return pd.concat(frames, ignore_index=True)[cols]


def metric_table(runs: list[Run], metrics: list[str] | None = None, split: str | list[str] | None = None
                 ) -> pd.DataFrame:
    """Per run × metric × split: the final value (largest kimg) and the best, each with kimg and CI.

    "Best" is the minimum for fid*/kid* and the maximum for everything else; `best_checkpoint` is
    the file holding that state, where one is still on disk.
    """
    rows = []
    for run in runs:
        df = select_metrics(run.metrics, metrics, split)
        for (metric, sp), g in df.groupby(["metric", "split"], sort=True):
            g = g.sort_values("kimg", kind="stable")
            direction = metric_direction(metric)
            final, best = g.iloc[-1], best_row(g, direction)
            ckpt = run.checkpoint_at(float(best["kimg"]), _str_or_none(best["checkpoint"]))
            rows.append({"run": run.name, "metric": metric, "split": sp, "direction": direction,
                         **_prefixed("final", final), **_prefixed("best", best),
                         "best_checkpoint": str(ckpt) if ckpt else None, "num_evals": len(g),
                         "chance": final["chance"]})
    cols = ["run", "metric", "split", "direction", *_prefixed("final", None), *_prefixed("best", None),
            "best_checkpoint", "num_evals", "chance"]
    return pd.DataFrame(rows, columns=cols)


def _prefixed(prefix: str, row: pd.Series | None) -> dict[str, Any]:
    keys = ("value", "kimg", "ci_low", "ci_high")
    return {f"{prefix}_{k}": (None if row is None else row[k]) for k in keys}


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def speed_summary(run: Run) -> dict[str, float]:
    """Median img/s and sec/kimg over ticks, kimg trained, peak memory, wall-clock hours."""
    s = run.stats
    kimg = float(s["kimg"].max()) if "kimg" in s and len(s) else max(run.snapshots, default=math.nan)

    def col(name: str, how: str) -> float:
        if name not in s:
            return math.nan
        v = pd.to_numeric(s[name], errors="coerce").dropna()
        return float(getattr(v, how)()) if len(v) else math.nan

    hours = (col("time", "max") - col("time", "min")) / 3600
    return {"kimg_trained": kimg, "median_img_per_s": col("img_per_s", "median"),
            "median_sec_per_kimg": col("sec_per_kimg", "median"), "peak_mem_mb": col("peak_mem_mb", "max"),
            "hours": hours, "ticks": float(len(s))}


def speed_table(runs: list[Run]) -> pd.DataFrame:
    """`speed_summary` of each run, indexed by run name."""
    df = pd.DataFrame([{"run": r.name, "path": str(r.path), **speed_summary(r)} for r in runs])
    return df.set_index("run")


def best_checkpoints(table: pd.DataFrame) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """From a `metric_table`: run → metric → split → {direction, kimg, value, checkpoint}."""
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for r in table.itertuples(index=False):
        out.setdefault(r.run, {}).setdefault(r.metric, {})[r.split] = {
            "direction": r.direction, "kimg": float(r.best_kimg), "value": float(r.best_value),
            "checkpoint": r.best_checkpoint}
    return out
