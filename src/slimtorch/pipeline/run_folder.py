"""The layout of a pipeline run folder: file names and the stage records the runner and the report read.

Kept apart from :mod:`slimtorch.pipeline.runner` so the report reads a run without importing the runner
(which writes the report: one direction only, no import cycle).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

RECIPE_FILE = "recipe.yaml"
STAGE_FILE = "stage.json"
TABLE_FILE = "stages.json"
SOURCE_DIR = "00-source"
STAGE_DIR_PATTERN = re.compile(r"^\d\d-[a-z_]+$")


def read_record(stage_dir: Path) -> dict[str, Any] | None:
    """The ``stage.json`` of a complete stage (with ``dir`` set to where it is now), else ``None``."""
    p = stage_dir / STAGE_FILE
    if not p.is_file():
        return None
    try:
        record = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    record["dir"] = str(stage_dir)
    return record


def stage_records(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every complete stage record of a run folder, in stage order."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    dirs = sorted(d for d in run_dir.iterdir() if d.is_dir() and STAGE_DIR_PATTERN.match(d.name))
    return [r for r in (read_record(d) for d in dirs) if r is not None]
