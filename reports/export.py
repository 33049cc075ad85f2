"""Tables as text people paste into papers and READMEs: Markdown (pipe tables, through pandas'
``to_markdown``, i.e. tabulate) and LaTeX (booktabs ``\\toprule``/``\\midrule``/``\\bottomrule``,
through pandas' ``Styler.to_latex``, i.e. jinja2).

Both show the cells the HTML report shows (``render.display_frame``: ``X``, ``X lo``/``X hi`` and
``X std`` merged into ``value [lo, hi]`` or ``mean ± std``, rounded to that interval or spread;
headers named for readers with their units, ``render.column_label``), escape record text for their
format, and depend on the table alone, so two builds give the same bytes.
"""

from __future__ import annotations

import pandas as pd

from reports.render import display_frame


def _pipe_escape(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|")


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub pipe table; numeric columns right-aligned, ``|`` in cells escaped as ``\\|``."""
    disp, numeric = display_frame(frame, labelled=True)
    disp = disp.map(_pipe_escape)
    disp.columns = [_pipe_escape(c) for c in disp.columns]
    if disp.empty and not len(disp.columns):
        return ""
    # disable_numparse: tabulate must not re-format the already formatted numbers
    text = disp.to_markdown(
        index=False, tablefmt="pipe", disable_numparse=True, colalign=["right" if n else "left" for n in numeric]
    )
    return text + "\n"


def latex_table(frame: pd.DataFrame, caption: str | None = None, label: str | None = None) -> str:
    """A booktabs ``tabular`` (in a ``table`` float when ``caption`` is given); ``±`` as ``$\\pm$``.
    The caption says what the brackets and ``±`` mean when the table has them.

    Needs ``\\usepackage{booktabs}`` in the document."""
    disp, numeric = display_frame(frame, labelled=True)
    styler = disp.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    if caption:
        caption = " ".join([caption, *interval_notes(frame)])
    tex = styler.to_latex(
        hrules=True,
        column_format="".join("r" if n else "l" for n in numeric),
        caption=_latex_text(caption) if caption else None,
        label=label,
        position_float="centering" if caption else None,
    )
    return tex.replace("±", r"$\pm$")


def interval_notes(frame: pd.DataFrame) -> list[str]:
    """What a table's brackets and ``±`` mean, for its caption."""
    cols = set(map(str, frame.columns))
    notes = []
    if any(c.endswith(" lo") and c[:-3] in cols for c in cols):
        notes.append(
            "Brackets: 95% bootstrap interval over the evaluated images, to whose precision values are rounded."
        )
    if any(c.endswith(" std") and c[:-4] in cols for c in cols - {"KID std"}):
        notes.append("±, sd: standard deviation over seeds.")
    if "KID std" in cols:  # reports.tables.quality
        notes.append("KID ±: standard deviation over KID subsets.")
    return notes


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _latex_text(text: str) -> str:
    """Caption text with LaTeX's special characters escaped (cells are escaped by the Styler)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))
