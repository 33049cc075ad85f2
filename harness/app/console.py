"""A small plain-text table of job records, printed after a single run."""

from __future__ import annotations

COLUMNS = (
    ("job_id", None),
    ("status", None),
    ("model", "axes"),
    ("sampler", "axes"),
    ("budget_blocks", "axes"),
    ("steps", "axes"),
    ("iters_per_step", "axes"),
    ("fid", "metrics"),
    ("kid_mean", "metrics"),
    ("params_total", "metrics"),
    ("block_passes_per_image", "metrics"),
    ("time_per_image_s", "metrics"),
)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def console_table(records: list[dict]) -> str:
    rows = []
    for rec in records:
        rows.append([_fmt(rec.get(k) if where is None else (rec.get(where) or {}).get(k)) for k, where in COLUMNS])
    header = [k for k, _ in COLUMNS]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    protocol = next((rec.get("protocol", {}).get("label") for rec in records if rec.get("protocol")), None)
    if protocol:
        lines.append(f"({protocol})")
    return "\n".join(lines)
