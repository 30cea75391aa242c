"""The evaluation report a reviewer opens before approving a rollout: one self-contained HTML file + markdown.

Contents: the gate verdict and its reason first, then HR@K curves per method (with the pool ceiling), the
HR@K / recall / NDCG / category-coverage tables, PI2I's lift over classic Swing, the HR-vs-T plot of the Swing
truncation study (when a sweep is given), the training-sample drop rate and a data summary. Plots are
matplotlib (Agg) PNGs inlined as base64; CSS is inline; nothing is fetched when the file is opened.
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from pi2i.contracts import exists, join, read_json, read_parquet, resolve

COLORS = {"popularity": "#9e9e9e", "swing": "#1f77b4", "swing_relaxed": "#17becf", "swing_pool": "#555555",
          "pi2i": "#d62728"}
EXTRA_COLORS = ["#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#ff7f0e"]
METRIC_TITLES = {"hr": "HR@K (paper Eq. 5)", "recall": "Recall@K (pooled over users)", "ndcg": "NDCG@K",
                 "category_coverage": "Category coverage@K (share of the user's test categories in top-K)",
                 "catalog_category_coverage": "Catalog category coverage@K (categories in any top-K)"}


# ----------------------------------------------------------------------------------------------- sweep input
def load_sweep(sweep: Any) -> dict | None:
    """Normalise a Swing truncation sweep to ``{"t": [...], "series": {label: [...]}, "other": {...}}``.

    Accepts the output dir of ``pi2i swing sweep`` (its ``sweep.parquet``: ``T, hr, mean_pool_size, ...``),
    a path (``.json`` / ``.parquet``), a dict, or a list of rows. Rows carry the truncation under one
    of ``t``, ``T``, ``top_t``, ``truncation`` and HR either flat (``hr@100``, ``hr_100``, ``pool_hr``) or
    nested (``{"hr": {"100": v}}``). Every numeric column whose name contains ``hr`` becomes a series.
    """
    if sweep is None:
        return None
    if isinstance(sweep, str):
        path = sweep
        if not path.endswith((".parquet", ".json")):  # the output dir of `pi2i swing sweep`
            path = join(path, "sweep.parquet")
        elif path.endswith(".json") and exists(path[: -len(".json")] + ".parquet"):
            path = path[: -len(".json")] + ".parquet"  # sweep.json is its summary; the rows are beside it
        sweep = read_parquet(path).to_pylist() if path.endswith(".parquet") else read_json(path)
    rows: list[dict]
    if isinstance(sweep, dict):
        for key in ("rows", "results", "sweep", "points"):
            if isinstance(sweep.get(key), list):
                rows = sweep[key]
                break
        else:  # columnar dict {"t": [...], "hr@100": [...]}
            lens = {len(v) for v in sweep.values() if isinstance(v, list)}
            if len(lens) != 1:
                return None
            n = lens.pop()
            rows = [{k: v[i] for k, v in sweep.items() if isinstance(v, list)} for i in range(n)]
    elif isinstance(sweep, list):
        rows = sweep
    else:
        return None
    flat_rows = []
    for r in rows:
        f: dict[str, Any] = {}
        for k, v in r.items():
            if isinstance(v, dict):
                for kk, vv in v.items():
                    f[f"{k}@{kk}"] = vv
            else:
                f[k] = v
        flat_rows.append(f)
    tkey = next((k for k in ("t", "T", "top_t", "truncation") if flat_rows and k in flat_rows[0]), None)
    if tkey is None:
        return None
    flat_rows.sort(key=lambda r: r[tkey])
    t = [r[tkey] for r in flat_rows]
    series, other = {}, {}
    for k in flat_rows[0]:
        if k == tkey:
            continue
        vals = [r.get(k) for r in flat_rows]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            continue
        (series if "hr" in k.lower() else other)[k] = vals
    return {"t": t, "series": series, "other": other}


# ---------------------------------------------------------------------------------------------------- plots
def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _color(name: str, i: int) -> str:
    return COLORS.get(name, EXTRA_COLORS[i % len(EXTRA_COLORS)])


def plot_hr_curves(metrics: dict) -> str:
    ks = metrics["ks"]
    fig, ax = plt.subplots(figsize=(7.5, 4.3))
    for i, (name, m) in enumerate(metrics["methods"].items()):
        ys = [100 * m["hr"][str(k)] for k in ks]
        if name == "swing_pool":
            ax.plot(ks, ys, ls="--", color=_color(name, i), lw=1.2, label="pool ceiling (swing_pool)")
        else:
            ax.plot(ks, ys, marker="o", ms=4, lw=2.4 if name == "pi2i" else 1.6, color=_color(name, i), label=name)
    gk = metrics.get("gate", {}).get("k")
    if gk:
        ax.axvline(gk, color="#bbbbbb", lw=1, ls=":")
        ax.text(gk, ax.get_ylim()[0], f" gate K={gk}", va="bottom", fontsize=8, color="#777777")
    ax.set_xscale("log")
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("K")
    ax.set_ylabel("HR@K (%)")
    ax.set_title("Hit rate at K, same test users for every method")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return _png(fig)


def plot_sweep(sweep: dict, deployed_t: int | None = None, classic_t: int | None = None) -> str:
    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    handles = []
    for i, (label, ys) in enumerate(sweep["series"].items()):
        h, = ax.plot(sweep["t"], [100 * y if y <= 1 else y for y in ys], marker="o", ms=4,
                     label="pool HR" if label == "hr" else label, color=EXTRA_COLORS[i % len(EXTRA_COLORS)])
        handles.append(h)
    size = sweep.get("other", {}).get("mean_pool_size")
    if size:
        ax2 = ax.twinx()
        h, = ax2.plot(sweep["t"], size, ls="--", color="#888888", label="mean pool size (cost)")
        ax2.set_ylabel("mean candidates per user")
        handles.append(h)
    for t, lab in ((classic_t, "classic cut"), (deployed_t, "index T")):
        if t:
            ax.axvline(t, color="#cccccc", lw=1, ls=":")
            ax.text(t, ax.get_ylim()[0], f" {lab}={t}", fontsize=8, color="#777777", va="bottom")
    ax.set_xlabel("truncation T (targets kept per trigger)")
    ax.set_ylabel("HR of the candidate pool (%)")
    ax.set_title("Swing truncation study: HR vs T (paper §4.5, Fig. 4)")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=8, loc="center right")
    return _png(fig)


# ---------------------------------------------------------------------------------------------------- tables
def _pct(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{100 * v:.2f}%"


def _table(metrics: dict, metric: str) -> tuple[list[str], list[list[str]]]:
    ks = metrics["ks"]
    head = ["method"] + [f"@{k}" for k in ks]
    rows = []
    for name, m in metrics["methods"].items():
        if metric in m:
            rows.append([name] + [_pct(m[metric].get(str(k))) for k in ks])
    return head, rows


def _lift_row(metrics: dict) -> list[str] | None:
    m = metrics["methods"]
    if "pi2i" not in m or "swing" not in m:
        return None
    out = ["PI2I vs classic Swing"]
    for k in metrics["ks"]:
        a, b = m["pi2i"]["hr"].get(str(k)), m["swing"]["hr"].get(str(k))
        out.append("–" if not b else f"{100 * (a / b - 1):+.1f}%")
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items() if not isinstance(x, (dict, list)))
    return str(v)


def _drop_rate(samples: dict | None) -> tuple[str, dict]:
    if not samples:
        return "not available (no samples stats given)", {}
    flat = {k: v for k, v in samples.items() if not isinstance(v, (dict, list))}
    rate = next((v for k, v in flat.items() if "drop" in k and "rate" in k), None)
    if rate is None:
        dropped = next((v for k, v in flat.items() if "drop" in k), None)
        total = next((v for k, v in flat.items() if k in ("positions", "total", "candidates_positions")), None)
        if dropped is not None and total:
            rate = dropped / total
    return (_pct(rate) if rate is not None else "not reported"), flat


# ---------------------------------------------------------------------------------------------------- writer
CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;color:#222;
line-height:1.45;padding:0 16px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#666;font-size:12px}
.verdict{padding:14px 18px;border-radius:6px;font-size:15px;margin:16px 0}
.pass{background:#e8f5e9;border:1px solid #66bb6a} .fail{background:#ffebee;border:1px solid #e57373}
.verdict b{font-size:18px}
table{border-collapse:collapse;font-size:13px;margin:8px 0 4px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right} th{background:#f5f5f5}
td:first-child,th:first-child{text-align:left;white-space:nowrap}
tr.pi2i td{font-weight:600;background:#fff8f8}
.note{color:#555;font-size:12.5px;max-width:1000px}
img{max-width:100%;border:1px solid #eee}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:4px 28px;font-size:13px}
.kv td{text-align:left}
"""


def _html_table(head: list[str], rows: list[list[str]], highlight: str = "pi2i") -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    hl = ' class="pi2i"'
    body = "".join(
        f"<tr{hl if r[0] == highlight else ''}>" + "".join(f"<td>{html.escape(c)}</td>" for c in r)
        + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render(metrics: dict) -> tuple[str, str]:
    """(html, markdown) of the report."""
    g = metrics.get("gate", {})
    passed = bool(g.get("passed"))
    data = metrics.get("data", {})
    methods = metrics["methods"]
    ks = metrics["ks"]
    drop, samples_flat = _drop_rate(metrics.get("samples"))
    sweep = metrics.get("sweep")

    gate_rows = [["gate K", str(g.get("k"))], ["PI2I HR", _pct(g.get("pi2i_hr"))],
                 ["classic Swing HR", _pct(g.get("swing_hr"))], ["live version", str(g.get("live_version") or "–")],
                 ["live PI2I HR", _pct(g.get("live_hr"))], ["floor (live × (1 − tolerance))", _pct(g.get("live_floor"))],
                 ["tolerance", f"{100 * g.get('tolerance', 0):.1f}%"]]
    desc_rows = [[n, m.get("description", ""), f"{m.get('mean_list_len', 0):.0f}",
                  f"{m['mean_candidates']:.0f}" if "mean_candidates" in m else "–",
                  f"{m['seconds']:.2f}" if "seconds" in m else "–"] for n, m in methods.items()]
    desc_head = ["method", "what it is", "mean list length", "mean candidates scored", "seconds"]
    data_keys = ["train_events", "test_events", "train_users", "train_items_clicked", "test_users",
                 "test_pairs", "mean_test_items_per_user", "test_users_with_clicks",
                 "test_users_without_train_clicks", "test_pairs_removed_as_seen", "test_users_dropped_all_seen",
                 "sampled_users", "mean_history_len", "mean_triggers", "num_triggers", "history_len",
                 "exclude_seen", "i2i_triggers", "i2i_pairs", "i2i_mean_row", "i2i_max_row", "users_with_empty_pool"]
    data_rows = [[k, _fmt(data[k])] for k in data_keys if k in data]
    lift = _lift_row(metrics)

    tables = []
    for metric in ("hr", "recall", "ndcg", "category_coverage", "catalog_category_coverage"):
        head, rows = _table(metrics, metric)
        if metric != "hr":
            rows = [r for r in rows if r[0] != "swing_pool"]
        if rows:
            if metric == "hr" and lift:
                rows = rows + [lift]
            tables.append((metric, head, rows))

    hr_png = plot_hr_curves(metrics) if ks else None
    sweep_png = (plot_sweep(sweep, data.get("i2i_max_row"), metrics.get("eval_config", {}).get("classic_truncation"))
                 if sweep and sweep.get("series") else None)

    title = "PI2I evaluation report"
    verdict = ("PASS — may roll out" if passed else "FAIL — do not roll out")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{CSS}</style></head><body>",
             (f"<h1>{title}</h1><div class='meta'>created {html.escape(str(metrics.get('created_at')))} · "
              f"{data.get('test_users', '?')} test users · K ladder {ks} · evaluation took "
              f"{metrics.get('seconds', '?')} s</div>"),
             (f"<div class='verdict {'pass' if passed else 'fail'}'><b>Gate: {verdict}</b><br>"
              f"{html.escape(str(g.get('reason', '')))}</div>"),
             _html_table(["gate", "value"], gate_rows),
             "<h2>Hit rate at K</h2>"]
    if hr_png:
        parts.append(f"<img alt='HR@K curves' src='data:image/png;base64,{hr_png}'>")
    parts.append("<p class='note'>HR@K = mean over test users of |top-K ∩ items clicked after the cut| / "
                 "|items clicked after the cut| (paper Eq. 5). Every method sees the same users, the same "
                 "history and the same seen-item exclusion. <i>swing_pool</i> is not a ranking: it is the share "
                 "of test clicks the whole candidate pool (union of the triggers' full Swing rows) contains — "
                 "the ceiling of any re-ranking of the pool, PI2I included (no list is padded with popular items). "
                 "K values larger than the train catalog are dropped. The live-version comparison uses the HR "
                 "the live version recorded on its own test period, not a re-evaluation on these users.</p>")
    for metric, head, rows in tables:
        parts.append(f"<h2>{html.escape(METRIC_TITLES.get(metric, metric))}</h2>" + _html_table(head, rows))
    parts.append("<h2>Methods</h2>" + _html_table(desc_head, desc_rows))
    parts.append("<h2>Swing truncation study (HR vs T)</h2>")
    if sweep_png:
        parts.append(f"<img alt='HR vs T' src='data:image/png;base64,{sweep_png}'>")
        if sweep.get("other"):
            oh = ["T"] + list(sweep["other"])
            orows = [[str(t)] + [_fmt(sweep["other"][k][i]) for k in sweep["other"]] for i, t in enumerate(sweep["t"])]
            parts.append(_html_table(oh, orows))
    else:
        parts.append("<p class='note'>No sweep given (run <code>pi2i swing sweep</code> and pass <code>--sweep</code>).</p>")
    parts.append(f"<h2>Training samples</h2><p>Sample drop rate (next click not in any trigger's row; paper: ~15% "
                 f"on Taobao): <b>{html.escape(drop)}</b></p>")
    if samples_flat:
        parts.append(_html_table(["samples stat", "value"], [[k, _fmt(v)] for k, v in samples_flat.items()], ""))
    model = metrics.get("model")
    if isinstance(model, dict) and model:
        mrows = [[k, _fmt(v)] for k, v in model.items() if not isinstance(v, (dict, list))][:30]
        if mrows:
            parts.append("<h2>Scorer training</h2>" + _html_table(["train metric", "value"], mrows, ""))
    parts.append("<h2>Data</h2>" + _html_table(["quantity", "value"], data_rows, ""))
    inputs = metrics.get("inputs", {})
    parts.append("<h2>Inputs</h2>" + _html_table(["input", "path"], [[k, _fmt(v)] for k, v in inputs.items()], ""))
    parts.append("<p class='meta'>Full numbers: metrics.json next to this file.</p></body></html>")
    page = "\n".join(parts)

    md = [f"# {title}", "", f"**Gate: {verdict}** — {g.get('reason', '')}", "",
          _md_table(["gate", "value"], gate_rows), ""]
    for metric, head, rows in tables:
        md += [f"## {METRIC_TITLES.get(metric, metric)}", "", _md_table(head, rows), ""]
    md += ["## Methods", "", _md_table(desc_head, desc_rows), ""]
    if sweep and sweep.get("series"):
        sh = ["T"] + list(sweep["series"])
        srows = [[str(t)] + [_fmt(sweep["series"][k][i]) for k in sweep["series"]] for i, t in enumerate(sweep["t"])]
        md += ["## Swing truncation study (HR vs T)", "", _md_table(sh, srows), ""]
    md += ["## Training samples", "", f"Sample drop rate: {drop}", "", "## Data", "",
           _md_table(["quantity", "value"], data_rows), ""]
    return page, "\n".join(md)


def write_report(metrics: dict, out_dir: str) -> tuple[str, str]:
    """Write report.html and report.md into ``out_dir``; returns their paths."""
    page, md = render(metrics)
    paths = []
    for name, text in (("report.html", page), ("report.md", md)):
        uri = join(out_dir, name)
        fs, p = resolve(uri)
        with fs.open_output_stream(p) as f:
            f.write(text.encode())
        paths.append(uri)
    return paths[0], paths[1]
