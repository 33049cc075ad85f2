"""reports/: records -> tidy frame -> paper tables, figures, one HTML file (byte-reproducible)."""

from __future__ import annotations

import json
import re
import shutil
import statistics
from pathlib import Path

import pandas as pd
import pytest
from report_fixtures import (
    FAILED_AXES,
    MISSING_OVERRIDES,
    PROTOCOL,
    dit_fid,
    fpdm_fid,
    job_id,
    paired_sweep,
    record,
    write_fixture_sweeps,
    write_sweep,
)

from reports.build import build_report, main
from reports.callback import ReportCallback
from reports.collect import collect, load_sweeps
from reports.figures import pareto_front
from reports.render import metrics_table, summary_markdown
from reports.tables import build_tables, get_table, register_table


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("reports")
    a, b = write_fixture_sweeps(base / "sweeps")
    out1 = build_report([a, b], base / "out1")
    out2 = build_report([a, b], base / "out2")
    return {"base": base, "a": a, "b": b, "html": out1, "out1": out1.parent, "out2": out2.parent}


def _table(built, name: str) -> pd.DataFrame:
    return pd.read_csv(built["out1"] / "tables" / f"{name}.csv")


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values)


def test_jobs_frame_has_one_row_per_job_with_status_and_provenance(built):
    df = collect([built["a"], built["b"]])
    assert list(df["job_id"]) == sorted(df["job_id"])
    assert df["job_id"].is_unique
    counts = df["status"].value_counts().to_dict()
    assert counts == {"ok": 34, "failed": 1, "missing": 1}
    missing = df[df["status"] == "missing"].iloc[0]
    assert missing["job_id"] == job_id(MISSING_OVERRIDES) and "sweep_plan.json" in missing["reason"]
    assert missing["overrides"] == " ".join(MISSING_OVERRIDES)
    failed = df[df["status"] == "failed"].iloc[0]
    assert "out of memory" in failed["reason"] and failed["budget_blocks"] == FAILED_AXES["budget_blocks"]
    for col in (
        "model",
        "budget_blocks",
        "iters_per_step",
        "reuse",
        "fid",
        "params_total",
        "git_sha",
        "protocol_label",
        "config_hash",
        "key_train",
        "trace_nfe",
    ):
        assert col in df.columns, col
    assert set(df.attrs["axes"]) >= {"model", "seed", "solver"} and "fid" in df.attrs["metrics"]
    assert df["params_total"].dtype == "Int64"  # ints stay exact in CSVs
    jobs_csv = (built["out1"] / "tables" / "jobs.csv").read_text()
    assert str(built["base"]) not in jobs_csv  # only sweep-relative paths: a moved sweep rebuilds
    assert ",300000," in jobs_csv


def test_only_tables_whose_axes_the_records_hold(built):
    names = {p.stem for p in (built["out1"] / "tables").glob("*.csv")}
    assert {"table1_budget", "table5_schedule", "solvers", "reuse", "jobs"} <= names
    # One data set, one depth, no training method axis: those tables would say nothing.
    assert not names & {"table2_datasets", "depth", "table34_training"}


def test_table1_reports_best_setting_mean_and_std_over_seeds(built):
    t = _table(built, "table1_budget").set_index(["budget_blocks", "model"])
    mean, std = _mean_std([dit_fid(12, "ddim", s) for s in (0, 1)])
    assert t.loc[(12, "dit"), "FID ddim"] == pytest.approx(mean)
    assert t.loc[(12, "dit"), "FID ddim std"] == pytest.approx(std, rel=1e-5)
    # FPDM at 24 blocks with DDPM: the best of its settings is the increasing schedule, 4 iterations.
    best = _mean_std([fpdm_fid(24, "ddpm", 4, s, schedule="increasing") for s in (0, 1)])[0]
    assert t.loc[(24, "fpdm"), "FID ddpm"] == pytest.approx(best)
    assert "ddpm: iters_per_step=4" in t.loc[(24, "fpdm"), "best setting"]
    assert "schedule=increasing" in t.loc[(24, "fpdm"), "best setting"]
    assert t.loc[(24, "dit"), "Params (M)"] == pytest.approx(0.3)
    assert t.loc[(24, "fpdm"), "Train memory (MiB)"] == pytest.approx(4.0)


def test_schedule_reuse_and_solver_tables(built):
    t5 = _table(built, "table5_schedule").set_index(["budget_blocks", "sampler", "schedule"])
    assert t5.loc[(24, "ddpm", "increasing"), "FID @ iters 2"] == pytest.approx(
        statistics.mean(fpdm_fid(24, "ddpm", 2, s, "increasing") for s in (0, 1))
    )
    reuse = _table(built, "reuse").set_index(["budget_blocks", "sampler", "iters_per_step"])
    assert reuse.loc[(24, "ddpm", 2), "FID reuse off"] == pytest.approx(
        statistics.mean(fpdm_fid(24, "ddpm", 2, s, reuse=False) for s in (0, 1))
    )
    assert pd.isna(reuse.loc[(12, "ddim", 2), "FID reuse off"])  # never run: empty, not invented
    solvers = _table(built, "solvers").set_index(["budget_blocks", "sampler", "solver"])
    row = solvers.loc[(24, "ddpm", "anderson")]
    assert row["Evaluations / image"] == 20  # 5 steps x 4 iterations, from the solver trace
    assert row["Final residual"] == pytest.approx(statistics.mean(0.05 * 0.5**i for i in range(5)), rel=1e-5)
    assert row["Wall time / image (s)"] == pytest.approx(0.012 * 24)


def test_two_builds_are_byte_identical(built):
    f1, f2 = _files(built["out1"]), _files(built["out2"])
    assert f1.keys() == f2.keys()
    assert {
        "figures/fid_vs_budget.png",
        "figures/pareto.png",
        "figures/residual_per_timestep.png",
        "figures/memory_breakdown.png",
        "figures/fid_vs_iters.png",
    } <= f1.keys()
    assert {
        "figures/pareto.svg",
        "figures/pareto.pdf",
        "tables/table1_budget.md",
        "tables/table1_budget.tex",
        "tables/models.csv",
        "tables/models.md",
        "tables/models.tex",
    } <= f1.keys()  # paper formats too
    assert any(k.startswith("figures/optuna_history") for k in f1) and any(
        k.startswith("figures/optuna_importance") for k in f1
    )
    for k in f1:
        assert f1[k] == f2[k], k
    assert b"Software" not in f1["figures/pareto.png"]  # no matplotlib version in the PNG


def test_moved_sweeps_rebuild_identically_and_sweeps_merge(built, tmp_path):
    moved = tmp_path / "elsewhere"
    for src in (built["a"], built["b"]):
        shutil.copytree(src, moved / src.name)
    out_moved = build_report([moved / "sweepA", moved / "sweepB"], tmp_path / "o1", figures=False)
    out_orig = build_report([built["a"], built["b"]], tmp_path / "o2", figures=False)
    assert _files(out_moved.parent) == _files(out_orig.parent)
    orig_tables = _files(built["out1"] / "tables")
    assert _files(out_moved.parent / "tables") == orig_tables
    assert set(pd.read_csv(out_moved.parent / "tables" / "jobs.csv")["sweep"]) == {"sweepA", "sweepB"}


def test_html_has_toc_protocol_grids_problems_and_provenance(built):
    html = built["html"].read_text()
    assert 'href="#tables"' in html and 'href="#t-table1_budget"' in html and 'id="provenance"' in html
    # the protocol is stated once, at the top, and no table or figure repeats it in a box
    top = html[html.index("<h1>") : html.index('<nav class="toc">')]
    assert html.count(f"Protocol</b> (every FID below): {PROTOCOL['label']}") == 1 and "Protocol</b>" in top
    assert 'class="protocol"' not in html
    assert 'href="#reading"' in html and "How to read this report" in html
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert html.count("data:image/png;base64,") >= 7 + 17  # figures + one grid per setting (17 settings)
    problems = html[html.index('id="problems"') : html.index('id="provenance"')]
    assert job_id(MISSING_OVERRIDES) in problems and "CUDA out of memory" in problems
    assert "traceback" in problems
    prov = html[html.index('id="provenance"') :]
    assert "0123abcd" in prov and "2.14.1" in prov and "threads=2" in prov


def test_optuna_trials_drop_absolute_run_dirs(built):
    trials = pd.read_csv(built["out1"] / "tables" / "optuna_trials__sweepB.csv")
    assert list(trials["run"][:2]) == ["job0", "job1"] and "run_dir" not in trials


def test_protocols_are_never_mixed(tmp_path):
    other = dict(PROTOCOL, num_samples=1000, label="FID-1k, digits-cnn, vs train split")
    recs = []
    for label, proto in (("a", PROTOCOL), ("b", other)):
        for budget in (12, 24):
            axes = {"model": "dit", "sampler": "ddpm", "budget_blocks": budget, "seed": 0, "tag": label}
            recs.append(
                record(axes, {"fid": dit_fid(budget, "ddpm", 0) + (100 if label == "b" else 0)}, protocol=proto)
            )
    html = build_report([write_sweep(tmp_path / "s", recs)], tmp_path / "o", figures=False).read_text()
    t1 = pd.read_csv(tmp_path / "o" / "tables" / "table1_budget.csv")
    assert sorted(set(t1["protocol"])) == sorted([PROTOCOL["label"], other["label"]])
    by = t1.set_index(["protocol", "budget_blocks"])["FID ddpm"]
    assert by[(other["label"], 12)] == pytest.approx(dit_fid(12, "ddpm", 0) + 100)
    assert by[(PROTOCOL["label"], 12)] == pytest.approx(dit_fid(12, "ddpm", 0))
    assert "FID-1k, digits-cnn" in html and "num_samples: 1000" in html


def test_hostile_strings_are_escaped(tmp_path):
    evil = "<script>alert('x')</script>$\\frac{"
    axes = {"model": evil, "sampler": "ddpm", "budget_blocks": 12, "seed": 0, "<b>key</b>": "v"}
    ok = record(axes, {"fid": 10.0, "flops_per_image": 1e6}, protocol=dict(PROTOCOL, label=evil))
    ok["artifacts"] = {"grid": "../../../../etc/passwd"}  # outside the sweep: never embedded
    ok2 = record(dict(axes, budget_blocks=24), {"fid": 5.0, "flops_per_image": 2e6}, protocol=dict(PROTOCOL))
    bad = record(dict(axes, seed=1), None, status="failed", reason=f"boom {evil}")
    sweep = write_sweep(tmp_path / "s", [ok, ok2, bad], planned_extra=[[f"model={evil}"]])
    html = build_report([sweep], tmp_path / "o").read_text()  # figures too: '$' must not break math text
    assert "<script" not in html.lower() and "<b>key</b>" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html and "&lt;b&gt;key&lt;/b&gt;" in html
    assert "root:" not in html
    names = sorted(p.name for p in (tmp_path / "o" / "figures").iterdir())
    assert "fid_vs_budget__FID-64-digits-cnn-vs-train-split-" in " ".join(names)  # one file per protocol
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+", n) for n in names), names  # no record text in file names


def test_dataset_depth_and_training_tables(tmp_path):
    recs = []
    for data, bonus in (("digits", 0.0), ("faces", 50.0)):
        for model in ("dit", "fpdm"):
            for pre in (1, 2) if model == "fpdm" else (None,):
                for method in ("sjfb", "jfb") if model == "fpdm" else (None,):
                    axes = {
                        "model": model,
                        "data": data,
                        "budget_blocks": 12,
                        "seed": 0,
                        "pre_depth": pre,
                        "post_depth": pre,
                        "train_method": method,
                    }
                    fid = bonus + (30 if model == "dit" else 10 + pre) + (500 if method == "jfb" else 0)
                    recs.append(record(axes, {"fid": fid, "train_time_s": 60.0}))
    data = load_sweeps([write_sweep(tmp_path / "s", recs)])
    tables = {t.name: t.frame for t in build_tables(data.jobs)}
    assert {"table1_budget", "table2_datasets", "depth", "table34_training"} <= set(tables)
    t2 = tables["table2_datasets"].set_index("data")
    assert t2.loc["faces", "FID dit"] == 80 and t2.loc["faces", "FID fpdm"] == 61  # best: pre=1, sjfb
    depth = tables["depth"].set_index(["data", "pre_depth"])
    assert depth.loc[("digits", 2), "FID"] == 12
    train = tables["table34_training"].set_index(["data", "train_method"])
    assert train.loc[("digits", "jfb"), "FID"] == 511 and train.loc[("digits", "sjfb"), "Train time (s)"] == 60


def test_unreadable_and_duplicate_records(tmp_path):
    rec = record({"model": "dit", "budget_blocks": 12, "seed": 0}, {"fid": 1.0})
    a = write_sweep(tmp_path / "a", [dict(rec, status="failed", reason="first try died")])
    b = write_sweep(tmp_path / "b", [rec])
    (b / "torn").mkdir()
    (b / "torn" / "record.json").write_text('{"job_id": "x", "status": ')
    df = collect([a, b])
    assert df.set_index("job_id").loc[rec["job_id"], "status"] == "ok"  # the re-run wins
    torn = df.set_index("job_id").loc["torn"]
    assert torn["status"] == "failed" and "unreadable record.json" in torn["reason"]


def test_same_base_names_get_distinct_sweep_labels(tmp_path):
    r1 = record({"model": "dit", "budget_blocks": 12, "seed": 0}, {"fid": 1.0})
    r2 = record({"model": "dit", "budget_blocks": 24, "seed": 0}, {"fid": 2.0})
    d1 = write_sweep(tmp_path / "x" / "run", [r1])
    d2 = write_sweep(tmp_path / "y" / "run", [r2])
    data = load_sweeps([d1, d2])
    assert sorted(data.jobs["sweep"]) == ["run", "run#2"] and set(data.roots) == {"run", "run#2"}


def test_console_tables():
    df = pd.DataFrame({"job_id": ["j1"], "status": ["ok"], "fid": [12.3456], "params_total": [86500256]})
    df.attrs["axes"], df.attrs["metrics"] = [], ["fid", "params_total"]
    text = summary_markdown(df)
    assert text.splitlines()[0] == "| job_id | status | fid | params_total |" and "12.35" in text
    assert "86,500,256" in text
    m = metrics_table({"fid": 3.5, "block_passes_per_image": 140})
    assert m.splitlines()[2] == "| block_passes_per_image | 140 |"


def test_pareto_front_is_the_non_dominated_set():
    pts = pd.DataFrame({"x": [1, 2, 3, 4, 2.5], "y": [10, 8, 9, 3, 8]})
    front = pareto_front(pts, "x", "y")
    assert list(zip(front["x"], front["y"])) == [(1, 10), (2, 8), (4, 3)]


def test_registry_errors_name_the_valid_choices():
    with pytest.raises(KeyError, match="table1_budget"):
        get_table("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_table("table1_budget", ("model",), title="dup")(lambda df: df)


def test_cli(built, tmp_path, capsys):
    assert main([str(built["a"]), str(built["b"]), "--out", str(tmp_path), "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "report.html").is_file() and "| job_id | status |" in out
    assert main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # default output directory is the first sweep directory
    solo = write_sweep(tmp_path / "solo", [record({"model": "dit", "budget_blocks": 12, "seed": 0}, {"fid": 1.0})])
    assert main([str(solo), "--quiet", "--no-figures"]) == 0 and (solo / "report.html").is_file()
    assert json.loads((solo / "sweep_plan.json").read_text())  # inputs untouched


def test_hydra_callback_builds_at_multirun_end_and_never_raises(tmp_path, caplog):
    from omegaconf import OmegaConf

    solo = write_sweep(tmp_path / "solo", [record({"model": "dit", "budget_blocks": 12, "seed": 0}, {"fid": 1.0})])
    ReportCallback(figures=False).on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(solo)}}}))
    assert (solo / "report.html").is_file()
    ReportCallback().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "gone")}}}))
    assert "report build failed" in caplog.text


# ----------------------------------------------------------------------------- paper formats (issue 10)
PAPER_TABLES = ("table1_budget", "table5_schedule", "solvers", "reuse", "models")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:e[+-]?\d+)?")


def _csv_display(csv: pd.DataFrame) -> list[str]:
    """The columns a paper table shows: ``X std`` (and ``X lo`` / ``X hi``) fold into ``X``."""
    return [c for c in csv.columns if not (c.endswith((" std", " lo", " hi")) and c.rsplit(" ", 1)[0] in csv.columns)]


def _close(shown: str, value: float) -> bool:
    """The shown number is ``value`` rounded to the digits shown (half a unit of the last one)."""
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    return abs(float(shown.replace(",", "")) - value) <= 0.5 * 10.0**-decimals * (1 + 1e-9)


def _assert_cells_match(csv: pd.DataFrame, header: list[str], rows: list[list[str]], pm: str) -> None:
    """Every shown cell holds the CSV's value to the digits it shows (std after ``pm``), text as is,
    NaN as an empty cell; headers are named for readers (``column_label``)."""
    from reports.render import column_label

    cols = _csv_display(csv)
    assert header == [column_label(c) for c in cols]
    assert len(rows) == len(csv) and all(len(r) == len(cols) for r in rows), rows
    for r, (_, row) in zip(rows, csv.iterrows()):
        for cell, c in zip(r, cols):
            value, std = row[c], row.get(f"{c} std")
            if pd.isna(value):
                assert cell == "", (c, cell)
            elif pd.api.types.is_number(value) and not pd.api.types.is_bool(value):
                numbers = _NUMBER.findall(cell)
                assert _close(numbers[0], float(value)), (c, cell, value)
                if f"{c} std" in csv.columns and not pd.isna(std):
                    assert pm in cell and _close(numbers[1], float(std)), (c, cell, std)
                else:
                    assert len(numbers) == 1 and pm not in cell, (c, cell)
            else:
                assert cell == str(value), (c, cell, value)


def _latex_unescape(text: str) -> str:
    return re.sub(r"\\([&%$#_{}])", r"\1", text.strip())


def _latex_rows(tex: str) -> tuple[list[str], list[list[str]]]:
    body = tex[tex.index("\\toprule") + len("\\toprule") : tex.index("\\bottomrule")]
    head, rows = body.split("\\midrule")

    def split(line):
        return [_latex_unescape(c) for c in re.split(r"(?<!\\)&", line.strip().removesuffix("\\\\"))]

    return split(head), [split(ln) for ln in rows.strip().splitlines() if ln.strip()]


def _markdown_rows(md: str) -> tuple[list[str], list[list[str]]]:
    def split(line):
        cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
        return [c.strip().replace("\\|", "|").replace("\\\\", "\\") for c in cells]

    lines = md.strip().splitlines()
    assert re.fullmatch(r"\|(:?-+:?\|)+", lines[1].replace(" ", "")), lines[1]  # the pipe-table rule line
    return split(lines[0]), [split(ln) for ln in lines[2:]]


@pytest.mark.parametrize("name", PAPER_TABLES)
def test_latex_tables_use_booktabs_and_hold_the_csv_numbers(built, name):
    tex = (built["out1"] / "tables" / f"{name}.tex").read_text()
    assert tex.index("\\toprule") < tex.index("\\midrule") < tex.index("\\bottomrule")
    assert "\\hline" not in tex and f"\\label{{tab:{name}}}" in tex
    header, rows = _latex_rows(tex)
    _assert_cells_match(_table(built, name), header, rows, pm="$\\pm$")


@pytest.mark.parametrize("name", PAPER_TABLES)
def test_markdown_tables_parse_to_the_csv_cells(built, name):
    header, rows = _markdown_rows((built["out1"] / "tables" / f"{name}.md").read_text())
    _assert_cells_match(_table(built, name), header, rows, pm="±")


def test_markdown_escapes_pipes_inside_cells(built):
    md = (built["out1"] / "tables" / "table1_budget.md").read_text()
    assert (
        "ddim: iters_per_step=4, reuse=on, schedule=constant, solver=picard (chosen on the evaluated images) \\| ddpm:"
        in md
    )


def test_the_best_setting_per_cell_is_chosen_on_held_out_images_where_every_setting_has_them():
    """The paper tables' "best setting" picks by selection FID when it can, and says which images
    chose it (the one chosen on the evaluated images would be the other row here)."""
    import pandas as pd

    from reports.tables import best_per_cell

    df = pd.DataFrame(
        {
            "job_id": ["a", "b", "c"],
            "model": ["fpdm"] * 3,
            "budget_blocks": [60, 60, 60],
            "schedule": ["constant", "increasing", "decreasing"],
            "fid": [1.0, 1.2, 1.1],
            "selection_fid": [2.2, 2.0, 2.1],
        }
    )
    df.attrs.update(axes=["model", "budget_blocks", "schedule"], metrics=["fid", "selection_fid"])
    best = best_per_cell(df, ["budget_blocks"])
    assert best["schedule"].tolist() == ["increasing"] and best["fid"].tolist() == [1.2]
    assert best["setting"].iloc[0] == "schedule=increasing (chosen on held-out images)"
    without = df.drop(columns=["selection_fid"])
    without.attrs = dict(df.attrs)
    best = best_per_cell(without, ["budget_blocks"])
    assert best["setting"].iloc[0] == "schedule=constant (chosen on the evaluated images)"


def test_per_model_table_counts_params_flops_and_training_memory_once_per_model(tmp_path):
    other = dict(PROTOCOL, num_samples=1000, label="FID-1k, digits-cnn, vs train split")
    recs = []
    for model, params, flops, mem in (("dit", 300_000, 2.5e8, 3 * 2**20), ("fpdm", 90_000, 1.5e8, 2**20)):
        for budget, proto in ((12, PROTOCOL), (24, other)):
            recs.append(
                record(
                    {"model": model, "preset": "tiny", "budget_blocks": budget, "seed": 0},
                    {
                        "fid": 10.0 + budget,
                        "params_total": params,
                        "flops_per_forward": flops,
                        "train_mem_total_bytes": mem,
                    },
                    protocol=proto,
                )
            )
    data = load_sweeps([write_sweep(tmp_path / "s", recs)])
    (t,) = [t for t in build_tables(data.jobs) if t.name == "models"]  # once, not once per protocol
    assert t.protocol == {}
    got = t.frame.set_index("model")
    assert list(got.columns) == ["preset", "Params (M)", "GFLOPs / forward", "Train memory (MiB)"]
    assert got.loc["dit", "Params (M)"] == pytest.approx(0.3) and got.loc["fpdm", "GFLOPs / forward"] == 0.15
    assert got.loc["dit", "Train memory (MiB)"] == 3 and got.loc["fpdm", "Train memory (MiB)"] == 1


def test_figures_come_as_svg_and_pdf_and_the_html_links_every_file(built):
    out = built["out1"]
    pngs = sorted((out / "figures").glob("*.png"))
    assert len(pngs) >= 7
    for png in pngs:
        svg, pdf = png.with_suffix(".svg").read_bytes(), png.with_suffix(".pdf").read_bytes()
        assert b"<svg" in svg and b"<dc:date>" not in svg and b"Matplotlib v" not in svg
        assert pdf.startswith(b"%PDF") and b"CreationDate" not in pdf
    html = built["html"].read_text()
    links = re.findall(r'href="([^"#][^"]*)"', html)
    links = [u for u in links if not u.startswith("data:")]
    for name in PAPER_TABLES:
        assert {f"tables/{name}.{ext}" for ext in ("csv", "md", "tex")} <= set(links), name
    for png in pngs:
        assert {f"figures/{png.stem}.{ext}" for ext in ("png", "svg", "pdf")} <= set(links), png.name
    assert all((out / u).is_file() for u in links), [u for u in links if not (out / u).is_file()]


def test_fid_axes_carry_the_protocol_label(built):
    from reports.figures import get_figure

    data = load_sweeps([built["a"], built["b"]])
    rows = data.jobs[data.jobs["status"] == "ok"]
    label = "FID (digits-cnn, 64)"  # short: the fixture's extractor and images per FID
    for name, xlabel in (
        ("fid_vs_budget", "block budget per image (block-matched, paper Sec. 4.2)"),  # no sample.match: blocks
        ("fid_vs_iters", "iterations per step"),
        ("pareto", "FLOPs per image"),
    ):
        fig = get_figure(name).fn(data, rows)
        assert fig.axes[0].get_ylabel() == label and fig.axes[0].get_xlabel() == xlabel, name
        # and in the written file (matplotlib keeps each text as a comment beside its glyph paths)
        assert f"<!-- {label} -->" in (built["out1"] / "figures" / f"{name}.svg").read_text()


def test_seed_aggregation_of_a_wide_frame_prints_no_pandas_performance_warnings():
    """A real jobs frame holds over 100 metric columns; converting them one by one split it into a
    block per column, and every later insert warned (a dozen PerformanceWarnings in the main job's
    console). The metrics are converted in one step, and the result is unchanged."""
    import warnings

    from reports.tables import aggregate_seeds, best_per_cell

    n_metrics = 150
    df = pd.DataFrame({"model": ["dit", "dit", "fpdm", "fpdm"], "seed": [0, 1, 0, 1]})
    warnings.simplefilter("ignore", pd.errors.PerformanceWarning)  # building it fragments it, on purpose
    for j in range(n_metrics):  # as reports.collect types them: one column at a time
        df[f"m{j:03d}"] = pd.Series([j, j + 1.0, 2 * j, 2 * j + 1.0], dtype="float64")
    df["fid"] = pd.Series([3.0, 5.0, 1.0, 2.0], dtype="float64")
    df.attrs.update(axes=["model", "seed"], metrics=[*(f"m{j:03d}" for j in range(n_metrics)), "fid"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.PerformanceWarning)
        agg = aggregate_seeds(df)
        best = best_per_cell(df, ["model"])
    assert agg.set_index("model")["fid"].to_dict() == {"dit": 4.0, "fpdm": 1.5}
    assert agg.set_index("model")["m010 std"].round(6).to_dict() == {"dit": 0.707107, "fpdm": 0.707107}
    assert list(agg["n"]) == [2, 2] and set(best["model"]) == {"dit", "fpdm"}


# ----------------------------------------------------------------------------- a report for a co-author
def test_values_are_rounded_to_their_interval():
    """The Particle Data Group's rule, worked by hand: the half-width's three leading digits 100-354
    keep two significant digits, 355-949 one, 950-999 round up to 1000 and keep two."""
    from reports.render import fmt_interval, fmt_std, interval_decimals

    assert interval_decimals(0.24, 0.57) == 2  # half-width 0.165: "165" -> two digits, 0.17
    assert interval_decimals(11.9, 12.7) == 1  # 0.4: "400" -> one digit, 0.4
    assert interval_decimals(20.03, 25.89) == 1  # 2.93: "293" -> two digits, 2.9
    assert interval_decimals(43.67, 63.72) == 0  # 10.025: "100" -> two digits, 10
    assert interval_decimals(0.0, 1.94) == 1  # 0.97: "970" -> 1.0
    assert interval_decimals(100, 190) == -1  # 45: "450" -> one digit, tens
    assert interval_decimals(1.0, 1.0) is None and interval_decimals(float("nan"), 1.0) is None
    assert fmt_interval(0.4012, 0.2391, 0.5688, signed=True) == "+0.40 [+0.24, +0.57]"
    assert fmt_interval(12.3456, 11.94, 12.74) == "12.3 [11.9, 12.7]"  # not 12.35 against +/-0.4
    assert fmt_interval(-0.004, -0.5, 0.5) == "0.0 [-0.5, 0.5]"  # 0.5: "500" -> one digit; no minus zero
    assert fmt_interval(0.0, 0.0, 0.0) == "0 [0, 0]"  # no width: as is
    assert fmt_std(200.5, 0.7071) == "200.5 ± 0.7" and fmt_std(5.0, 0.0) == "5 ± 0"


def test_the_report_opens_with_the_best_fid_per_model_when_nothing_is_paired(built):
    """The fixture keeps no features, so no paired comparison: the headline falls back to each
    model's best FID. By hand (report_fixtures): DiT's best is 200*12/24 + seed at 24 blocks with
    DDIM, seeds 0 and 1 -> 100.5 +/- 0.71; FPDM's is 120*12/24 + seed (4 iterations, DDIM) -> 60.5."""
    html = built["html"].read_text()
    first = html[html.index("</h1>") + 5 :].lstrip()
    assert first.startswith('<p class="headline"><b>'), first[:200]
    assert first[23 : first.index("</b>")] == (
        "Best FID per model (FID-64, digits-cnn, vs train split), not a paired comparison: "
        "DiT 100.5 ± 0.7 at 24 blocks; FPDM 60.5 ± 0.7 at 24 blocks."
    )


LONG_LABEL = (
    "FID-300, digits-cnn, vs train split; protocol digits: epsilon, no zero-SNR, linspace, learned sigma "
    "(hybrid), mse none, EMA warm-up, clip official"
)
CI = {"dit": (-0.5, 0.25), "fpdm": (-0.2, 0.3)}  # each record's interval around its FID


def _paired_jobs() -> list:
    """DiT and FPDM at 60 and 120 blocks, with intervals, KID, precision and recall: FPDM's features
    sit closer to the reference at 60 blocks (shift 0.3 vs 1.0) and equal DiT's at 120."""
    jobs = []
    for budget in (60, 120):
        for model in ("dit", "fpdm"):
            fid = 5.0 if model == "dit" else 3.0 + budget / 120
            lo, hi = CI[model]
            metrics = {
                "fid": fid,
                "fid_ci_low": fid + lo,
                "fid_ci_high": fid + hi,
                "kid_mean": 0.012,
                "kid_std": 0.002,
                "precision": 0.7,
                "recall": 0.6,
            }
            shift = 0.3 if (model, budget) == ("fpdm", 60) else 1.0
            axes = {"model": model, "data": "digits", "sampler": "ddim", "budget_blocks": budget, "seed": 0}
            jobs.append((axes, metrics, shift, {}))
    return jobs


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    base = tmp_path_factory.mktemp("paired")
    sweep = paired_sweep(base / "s", _paired_jobs())
    for path in sweep.glob("*/record.json"):  # the label a real job writes: FID part; diffusion part
        rec = json.loads(path.read_text())
        rec["protocol"] = dict(rec["protocol"], label=LONG_LABEL, num_samples=300)
        path.write_text(json.dumps(rec))
    html = build_report([sweep], base / "o")
    return {"sweep": sweep, "html": html.read_text(), "out": base / "o"}


def test_the_report_opens_with_the_fpdm_vs_dit_difference_and_its_interval(paired):
    """One computed sentence: the accounting, the difference per budget with its interval (rounded
    to it), the verdict after Holm, whether the rulers agree; all read from the comparison's CSV."""
    from reports.render import fmt_interval

    html = paired["html"]
    first = html[html.index("</h1>") + 5 :].lstrip()
    sentence = first[first.index("<b>") + 3 : first.index("</b>")].replace("&#x27;", "'")
    t = pd.read_csv(paired["out"] / "tables" / "significance_fpdm_vs_dit.csv").set_index("budget_blocks")
    assert t.loc[60, "claim"] == "better" and t.loc[120, "claim"] == "tie"  # shift 0.3 < 1.0; equal
    d60 = fmt_interval(t.loc[60, "dFID"], t.loc[60, "dFID lo"], t.loc[60, "dFID hi"], signed=True)
    assert sentence.startswith(
        "Block-matched (the paper's accounting, Sec. 4.2), FPDM − DiT FID (digits-cnn, 95% interval): "
        f"{d60} at 60 blocks (FPDM better, adjusted p "
    ), sentence
    assert "; 0 [0, 0] at 120 blocks (a tie, adjusted p 1); both rulers agree; Holm over the 2 comparisons" in sentence
    assert html.count(LONG_LABEL) == 1  # the protocol, once


def test_fid_figures_shade_each_lines_interval_and_keep_a_short_axis_label(paired):
    from reports.figures import get_figure

    data = load_sweeps([paired["sweep"]])
    fig = get_figure("fid_vs_budget").fn(data, data.jobs[data.jobs["status"] == "ok"])
    ax = fig.axes[0]
    assert ax.get_ylabel() == "FID (digits-cnn, 300)"
    bands = {c.get_gid(): c for c in ax.collections if str(c.get_gid()).startswith("fid-interval-")}
    assert sorted(bands) == ["fid-interval-0", "fid-interval-1"]  # one per model (dit, fpdm)
    y = bands["fid-interval-0"].get_paths()[0].vertices[:, 1]
    assert y.min() == pytest.approx(5.0 - 0.5) and y.max() == pytest.approx(5.0 + 0.25)  # DiT: FID 5, [-0.5, +0.25]
    y = bands["fid-interval-1"].get_paths()[0].vertices[:, 1]
    assert y.min() == pytest.approx(3.5 - 0.2) and y.max() == pytest.approx(4.0 + 0.3)  # FPDM at 60 and 120
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    box = ax.yaxis.label.get_window_extent(renderer)
    assert 0 <= box.y0 and box.y1 <= fig.bbox.height and 0 <= box.x0, "the FID axis label is clipped"
    svg = (paired["out"] / "figures" / "fid_vs_budget.svg").read_text()
    assert 'id="fid-interval-0"' in svg
    assert 'alt="FID vs budget; shaded bands: 95% bootstrap intervals over images"' in paired["html"]


def test_kid_precision_and_recall_have_a_table_and_intervals_share_a_cell(paired):
    q = pd.read_csv(paired["out"] / "tables" / "quality.csv").set_index(["budget_blocks", "model"])
    assert q.loc[(60, "dit"), "KID"] == pytest.approx(0.012) and q.loc[(60, "dit"), "KID std"] == pytest.approx(0.002)
    assert q.loc[(120, "fpdm"), "Precision"] == pytest.approx(0.7) and q.loc[(120, "fpdm"), "Recall"] == 0.6
    assert q.loc[(60, "fpdm"), "FID lo"] == pytest.approx(3.3)
    tex = (paired["out"] / "tables" / "table1_budget.tex").read_text()
    header, rows = _latex_rows(tex)
    assert header[:3] == ["Budget (blocks / image)", "Model", "FID (DDIM)"] and "\\caption{" in tex
    # FID 5 with [4.5, 5.25]: half-width 0.375 -> "375": one digit, 0.4 -> one decimal
    assert rows[0][:3] == ["60", "dit", "5.0 [4.5, 5.2]"]
    assert "Brackets: 95\\% bootstrap interval" in tex and not any(h.endswith((" lo", " hi")) for h in header)
    qtex = (paired["out"] / "tables" / "quality.tex").read_text()
    qhead, qrows = _latex_rows(qtex)
    assert qhead[2:6] == ["FID", "KID", "Precision", "Recall"]
    assert qrows[0][3] == "0.0120 $\\pm$ 0.0020"  # KID 0.012 +/- 0.002: "200" -> two digits


def test_the_real_vs_real_line_needs_only_the_matched_value():
    """Records with the real-vs-real FID at matched sizes but no reference-halves estimate: the
    report states the matched value (it used to raise KeyError while formatting the halves)."""
    from reports.conclusions import floor_html

    text = floor_html(
        "FID-100, digits-cnn; protocol digits: epsilon",
        {"noise_floor_matched": 0.5, "noise_floor_n": 100, "noise_floor_ref_n": 1000},
    )
    assert "sets of 100 and 1,000 images" in text and "give 0.5." in text and "halves" not in text
    assert "protocol digits" not in text  # the protocol's diffusion part is stated once, at the top


def test_table5_under_flop_matching_is_one_fid_column_not_a_pivot_per_derived_iteration_count():
    """FLOP-matched plans derive one mean iteration count per budget (2.083 at 60, 2.125 at 120): a
    pivot on it would give one column per budget, each holding one cell."""
    import pandas as pd

    from reports.tables import table5_schedule, value_label

    df = pd.DataFrame(
        {
            "job_id": list("abcd"),
            "model": ["fpdm"] * 4,
            "budget_blocks": [60, 60, 120, 120],
            "schedule": ["constant", "cosine"] * 2,
            "iters_per_step": [25 / 12, 25 / 12, 2.125, 2.125],
            "fid": [1.3, 1.2, 1.1, 1.0],
        }
    )
    df.attrs.update(axes=["model", "budget_blocks", "schedule", "iters_per_step"], metrics=["fid"])
    out = table5_schedule(df)
    assert [c for c in out.columns if str(c).startswith("FID")] == ["FID", "FID std"]  # no column per budget
    assert out["Iterations / step (mean)"].tolist() == ["2.083", "2.083", "2.125", "2.125"]
    assert value_label(25 / 12) == "2.083" and value_label(4.0) == "4" and value_label(True) == "on"
