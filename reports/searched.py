"""Which trial a searched schedule came from, as the report names it.

A ``sample.schedule=density`` job whose knots were taken from an Optuna study (``sample.search``,
harness/app/searched.py) records ``search`` (study, trial number, its objective value, knots);
``reports.collect`` keeps the trial and value as the columns ``search_trial`` and ``search_value``.
Wherever the report names a schedule (the schedule shapes figure, the paired comparison against
constant) the density member then reads e.g. ``density (trial 7: 12.3)``, so a reader sees which
member of the search was compared. Schedules without a recorded trial keep their plain name.
"""

from __future__ import annotations

import pandas as pd

SEARCH_COLUMNS = {"trial": "search_trial", "value": "search_value"}  # record["search"] key -> column


def search_columns(record: dict) -> dict:
    """The report columns of a record's ``search`` field (none when the job ran no searched knots)."""
    search = record.get("search")
    if not isinstance(search, dict):
        return {}
    return {col: search.get(key) for key, col in SEARCH_COLUMNS.items()}


def _label(schedule, trial, value) -> str | None:
    if schedule is None or (not isinstance(schedule, str) and pd.isna(schedule)):
        return None
    if trial is None or pd.isna(trial):
        return str(schedule)
    tail = "" if value is None or pd.isna(value) else f": {float(value):.4g}"
    return f"{schedule} (trial {int(trial)}{tail})"


def schedule_label(rows: pd.DataFrame) -> pd.Series:
    """Each row's schedule name, with the study trial it came from where one is recorded."""
    trial = rows["search_trial"] if "search_trial" in rows else pd.Series(None, index=rows.index, dtype=object)
    value = rows["search_value"] if "search_value" in rows else pd.Series(None, index=rows.index, dtype=object)
    labels = [_label(s, t, v) for s, t, v in zip(rows["schedule"], trial, value)]
    return pd.Series(labels, index=rows.index, dtype=object)
