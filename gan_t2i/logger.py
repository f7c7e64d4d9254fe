"""One small logging facade: console, JSON-lines files in the run folder, and wandb.

The training loop and the evaluation call only this; wandb is imported here, lazily, and only
when `mode` is not `disabled`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from gan_t2i.utils import append_jsonl

log = logging.getLogger("gan_t2i")


class RunLogger:
    """Writes stats.jsonl / metrics.jsonl in `run_dir` and mirrors everything to wandb."""

    def __init__(self, run_dir: str | Path, *, mode: str = "disabled", project: str = "gan_t2i",
                 name: str | None = None, config: dict[str, Any] | None = None,
                 enabled: bool = True, tags: list[str] | None = None, resume_id: str | None = None):
        self.run_dir = Path(run_dir)
        self.enabled = enabled  # False on DDP ranks other than 0
        self._wandb = None
        if enabled and mode != "disabled":
            self._wandb = self._start_wandb(mode, project, name, config, tags, resume_id)

    def _start_wandb(self, mode: str, project: str, name: str | None,
                     config: dict[str, Any] | None, tags: list[str] | None,
                     resume_id: str | None) -> Any:
        import wandb

        run = wandb.init(project=project, name=name, config=config or {}, mode=mode,
                         dir=str(self.run_dir), tags=tags, id=resume_id, resume="allow")
        return run

    @property
    def wandb_id(self) -> str | None:
        """The wandb run id (so a resumed run logs into the same wandb run)."""
        return getattr(self._wandb, "id", None)

    def stats(self, record: dict[str, Any]) -> None:
        """One training tick: a line in stats.jsonl and a wandb step."""
        if not self.enabled:
            return
        append_jsonl(self.run_dir / "stats.jsonl", record)
        if self._wandb is not None:
            self._wandb.log({f"train/{k}": v for k, v in record.items()},
                            step=int(record.get("nimg", 0)))

    def metric(self, record: dict[str, Any]) -> None:
        """One evaluation result: a line in metrics.jsonl and a wandb value."""
        if not self.enabled:
            return
        append_jsonl(self.run_dir / "metrics.jsonl", record)
        if self._wandb is not None and isinstance(record.get("value"), (int, float)):
            self._wandb.log({f"metrics/{record['metric']}": record["value"]},
                            step=int(record.get("kimg", 0) * 1000))

    def image(self, key: str, path: str | Path, *, nimg: int, caption: str | None = None) -> None:
        """A picture written elsewhere (a sample grid), mirrored to wandb."""
        if self.enabled and self._wandb is not None:
            import wandb

            self._wandb.log({key: wandb.Image(str(path), caption=caption)}, step=nimg)

    def info(self, message: str, *args: Any) -> None:
        """A console line (through logging, so Hydra also keeps it in the run's log file)."""
        if self.enabled:
            log.info(message, *args)

    def close(self) -> None:
        """Finish the wandb run."""
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
