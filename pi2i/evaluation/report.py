"""The evaluation report a reviewer opens before approving a rollout: one self-contained HTML file + markdown.

Contents: the gate verdict and its reason first, the candidate against the live version re-scored on the same
users, HR@K of every method on one plot (set-valued methods — the pool ceiling — dashed), relevance vs HR,
the metric tables (HR, recall, NDCG, tail HR, relevance, category coverage), the candidate's lift over classic
Swing, the HR-vs-T plot of the Swing truncation study (when a sweep is given), the training-sample drop rate
and a data summary. Each section is one small function returning ``(html, markdown)``. Plots are matplotlib
(Agg) PNGs inlined as base64; CSS is inline; nothing is fetched when the file is opened.
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
import pyarrow as pa

from pi2i.contracts import exists, join, read_json, read_parquet, resolve

COLORS = {"popularity": "#9e9e9e", "swing": "#1f77b4", "pool": "#555555", "pi2i": "#d62728", "live": "#ff7f0e"}
EXTRA_COLORS = ["#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#ff7f0e"]
METRIC_TITLES = {"hr": "HR@K (paper Eq. 5)", "ranked_hr": "HR@K of set-valued methods taken as rankings",
                 "recall": "Recall@K (pooled over users)", "ndcg": "NDCG@K",
                 "tail_hr": "Tail HR@K (test clicks on long-tail items only)",
                 "relevance": "Relevance@K (share of the top-K in a category of the user's recent items)",
                 "coverage": "Category coverage@K (share of the user's test categories in top-K)",
                 "catalog_coverage": "Catalog category coverage@K (categories in any top-K)"}
TABLE_METRICS = ("hr", "ranked_hr", "recall", "ndcg", "tail_hr", "relevance", "coverage", "catalog_coverage")


# ----------------------------------------------------------------------------------------------- sweep input
def load_sweep(sweep: Any) -> dict | None:
    """Normalise a Swing truncation sweep to ``{"t": [...], "series": {label: [...]}, "other": {...}}``.

    Accepts the output dir of ``pi2i swing sweep`` (its ``sweep.parquet``: ``T, hr, mean_pool_size, ...``),
    that table itself, a path (``.json`` / ``.parquet``), a dict, or a list of rows. Rows carry the truncation under one
    of ``t``, ``T``, ``top_t``, ``truncation`` and HR either flat (``hr@100``, ``hr_100``, ``pool_hr``) or
    nested (``{"hr": {"100": v}}``). Every numeric column whose name contains ``hr`` becomes a series.
    """
    if sweep is None:
        return None
    if isinstance(sweep, pa.Table):
        sweep = sweep.to_pylist()
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
    series: dict[str, list] = {}
    other: dict[str, list] = {}
    for k in flat_rows[0]:
        if k == tkey:
            continue
        vals = [r.get(k) for r in flat_rows]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            continue
        (series if "hr" in k.lower() else other)[k] = vals
    return {"t": t, "series": series, "other": other}


# ---------------------------------------------------------------------------------------------------- plots
def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _color(name: str, i: int) -> str:
    return COLORS.get(name, EXTRA_COLORS[i % len(EXTRA_COLORS)])


def _log_k_axis(ax: Any, ks: list[int]) -> None:
    ax.set_xscale("log")
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("K")
    ax.grid(alpha=0.3)


def plot_hr_curves(metrics: dict) -> str:
    """HR@K of every method on one plot; set-valued methods (a pool's ceiling) dashed."""
    ks = metrics["ks"]
    candidate = metrics.get("gate", {}).get("candidate", "pi2i")
    fig, ax = plt.subplots(figsize=(7.5, 4.3))
    for i, (name, m) in enumerate(metrics["methods"].items()):
        ys = [100 * (m["hr"].get(str(k)) or 0.0) for k in ks]
        if "ranked_hr" in m:
            ax.plot(ks, ys, ls="--", color=_color(name, i), lw=1.2, label=f"{name} (ceiling)")
        else:
            ax.plot(ks, ys, marker="o", ms=4, lw=2.4 if name == candidate else 1.6, color=_color(name, i),
                    label=name)
    gk = metrics.get("gate", {}).get("k")
    if gk:
        ax.axvline(gk, color="#bbbbbb", lw=1, ls=":")
        ax.text(gk, ax.get_ylim()[0], f" gate K={gk}", va="bottom", fontsize=8, color="#777777")
    _log_k_axis(ax, ks)
    ax.set_ylabel("HR@K (%)")
    ax.set_title("Hit rate at K, same test users for every method")
    ax.legend(fontsize=8, loc="upper left")
    return _png(fig)


def plot_relevance_vs_hr(metrics: dict, k: int) -> str | None:
    """One point per method at K: HR@K (x) against relevance@K (y) — the MTMH trade-off."""
    pts = [(n, m["hr"].get(str(k)), m["relevance"].get(str(k))) for n, m in metrics["methods"].items()
           if "relevance" in m and "ranked_hr" not in m]
    pts = [(n, x, y) for n, x, y in pts if x is not None and y is not None and not math.isnan(y)]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    for i, (n, x, y) in enumerate(pts):
        ax.scatter([100 * x], [100 * y], s=60, color=_color(n, i), zorder=3)
        ax.annotate(n, (100 * x, 100 * y), textcoords="offset points", xytext=(6, 4), fontsize=9)
    ax.set_xlabel(f"HR@{k} (%)")
    ax.set_ylabel(f"relevance@{k} (%)")
    ax.set_title(f"Relevance vs hit rate at K={k}")
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_candidate_vs_live(metrics: dict) -> str | None:
    """HR@K of the candidate and of the live version re-scored on the same users."""
    g = metrics.get("gate", {})
    live = (g.get("live") or {}).get("hr")
    cand = metrics["methods"].get(g.get("candidate", ""), {}).get("hr")
    if not live or not cand:
        return None
    ks = [k for k in metrics["ks"] if str(k) in live and str(k) in cand]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.plot(ks, [100 * cand[str(k)] for k in ks], marker="o", color=COLORS["pi2i"], lw=2.2,
            label=f"candidate ({g['candidate']})")
    ax.plot(ks, [100 * live[str(k)] for k in ks], marker="s", color=COLORS["live"], lw=1.6,
            label=f"live {g.get('live_version')} ({g['live'].get('method')})")
    _log_k_axis(ax, ks)
    ax.set_ylabel("HR@K (%)")
    ax.set_title("Candidate vs live version, re-scored on the same test users")
    ax.legend(fontsize=8, loc="upper left")
    return _png(fig)


def plot_sweep(sweep: Any, deployed_t: int | None = None, classic_t: int | None = None,
               title: str = "Swing truncation study: HR vs T (paper §4.5, Fig. 4)") -> bytes:
    """The Swing truncation study as PNG bytes: pool HR (left axis) and mean pool size (right) against T.

    ``sweep`` is anything :func:`load_sweep` accepts (the sweep table of :mod:`pi2i.ibs.sweep` included)."""
    sw = load_sweep(sweep) if not (isinstance(sweep, dict) and "series" in sweep) else sweep
    if sw is None:
        raise ValueError("not a Swing truncation sweep (needs a T column and HR values)")
    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    handles = []
    for i, (label, ys) in enumerate(sw["series"].items()):
        h, = ax.plot(sw["t"], [100 * y if y <= 1 else y for y in ys], marker="o", ms=4,
                     label="pool HR" if label == "hr" else label, color=EXTRA_COLORS[i % len(EXTRA_COLORS)])
        handles.append(h)
    ax.set_xscale("log")
    size = sw.get("other", {}).get("mean_pool_size")
    if size:
        ax2 = ax.twinx()
        h, = ax2.plot(sw["t"], size, ls="--", color="#888888", label="mean pool size (cost)")
        ax2.set_ylabel("mean candidates per user")
        handles.append(h)
    for t, lab in ((classic_t, "classic cut"), (deployed_t, "index T")):
        if t:
            ax.axvline(t, color="#cccccc", lw=1, ls=":")
            ax.text(t, ax.get_ylim()[0], f" {lab}={t}", fontsize=8, color="#777777", va="bottom")
    ax.set_xlabel("truncation T (targets kept per trigger)")
    ax.set_ylabel("HR of the candidate pool (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(handles=handles, fontsize=8, loc="center right")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


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
    cand = metrics.get("gate", {}).get("candidate", "pi2i")
    if cand not in m or "swing" not in m or cand == "swing":
        return None
    out = [f"{cand} vs classic Swing"]
    for k in metrics["ks"]:
        a, b = m[cand]["hr"].get(str(k)), m["swing"]["hr"].get(str(k))
        out.append("–" if not b or a is None else f"{100 * (a / b - 1):+.1f}%")
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
tr.hl td{font-weight:600;background:#fff8f8}
.note{color:#555;font-size:12.5px;max-width:1000px}
img{max-width:100%;border:1px solid #eee}
"""
TITLE = "PI2I evaluation report"
Section = tuple[str, str]  # (html, markdown)


def _html_table(head: list[str], rows: list[list[str]], highlight: str = "") -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body = "".join(
        f"<tr{' class=hl' if highlight and r[0] == highlight else ''}>"
        + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _img(png: str | None, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{png}'>" if png else ""


def _table_section(title: str, head: list[str], rows: list[list[str]], highlight: str = "",
                   note: str = "") -> Section:
    n = f"<p class='note'>{html.escape(note)}</p>" if note else ""
    return (f"<h2>{html.escape(title)}</h2>{_html_table(head, rows, highlight)}{n}",
            f"## {title}\n\n{_md_table(head, rows)}\n" + (f"\n{note}\n" if note else ""))


def _verdict_section(metrics: dict) -> Section:
    g = metrics.get("gate", {})
    passed = bool(g.get("passed"))
    verdict = "PASS — may roll out" if passed else "FAIL — do not roll out"
    data = metrics.get("data", {})
    diff = g.get("live_diff") or {}
    rows = [["gate K", str(g.get("k"))], ["candidate method", str(g.get("candidate"))],
            ["candidate HR", _pct(g.get("candidate_hr"))], ["classic Swing HR", _pct(g.get("swing_hr"))],
            ["live version", str(g.get("live_version") or "–")],
            ["live HR, re-scored on these users", _pct(g.get("live_hr"))],
            ["paired difference (candidate − live)", _pct(diff.get("mean"))],
            ["its 95% interval", f"{_pct(diff.get('ci95_low'))} … {_pct(diff.get('ci95_high'))}"
             if diff.get("ci95_low") is not None else "–"],
            ["tolerance (relative to live)", f"{100 * g.get('tolerance', 0):.1f}%"]]
    page = (f"<h1>{TITLE}</h1><div class='meta'>created {html.escape(str(metrics.get('created_at')))} · "
            f"{data.get('test_users', '?')} test users · K ladder {metrics['ks']} · evaluation took "
            f"{metrics.get('seconds', '?')} s</div>"
            f"<div class='verdict {'pass' if passed else 'fail'}'><b>Gate: {verdict}</b><br>"
            f"{html.escape(str(g.get('reason', '')))}</div>" + _html_table(["gate", "value"], rows))
    md = f"# {TITLE}\n\n**Gate: {verdict}** — {g.get('reason', '')}\n\n{_md_table(['gate', 'value'], rows)}\n"
    return page, md


def _live_section(metrics: dict) -> Section:
    g = metrics.get("gate", {})
    live = g.get("live") or {}
    if not live.get("hr"):
        why = live.get("error") or "no live version in the registry (or no --registry given)"
        return f"<h2>Candidate vs live version</h2><p class='note'>{html.escape(why)}</p>", ""
    cand = metrics["methods"].get(g.get("candidate", ""), {}).get("hr", {})
    ks = [k for k in metrics["ks"] if str(k) in live["hr"]]
    head = ["version"] + [f"@{k}" for k in ks]
    rows = [[f"candidate ({g.get('candidate')})"] + [_pct(cand.get(str(k))) for k in ks],
            [f"live {live['version']} ({live.get('method')})"] + [_pct(live["hr"].get(str(k))) for k in ks]]
    page, md = _table_section("Candidate vs live version (same test users)", head, rows)
    return page.replace("</h2>", "</h2>" + _img(plot_candidate_vs_live(metrics), "candidate vs live"), 1), md


def _hr_section(metrics: dict) -> Section:
    png = plot_hr_curves(metrics) if metrics["ks"] else None
    gk = metrics.get("gate", {}).get("k") or (metrics["ks"][-1] if metrics["ks"] else None)
    rel = plot_relevance_vs_hr(metrics, gk) if gk else None
    padded = metrics.get("data", {}).get("pad_with_popular")
    note = ("HR@K = mean over test users of |top-K ∩ items clicked after the cut| / |items clicked after the "
            "cut| (paper Eq. 5). Every method sees the same users, the same history and the same seen-item "
            "exclusion. " + ("A list shorter than K is padded with popular unseen items, as serving pads it. "
                             if padded else "No list is padded with popular items. ") +
            "A dashed line is a set-valued method: the share of test clicks its whole candidate pool holds — the "
            "ceiling of any re-ranking of that pool. K values larger than the train catalog are dropped.")
    page = f"<h2>Hit rate at K</h2>{_img(png, 'HR@K curves')}{_img(rel, 'relevance vs HR')}<p class='note'>" \
           f"{html.escape(note)}</p>"
    return page, ""


def _metric_sections(metrics: dict) -> list[Section]:
    cand = metrics.get("gate", {}).get("candidate", "pi2i")
    out = []
    for metric in TABLE_METRICS:
        head, rows = _table(metrics, metric)
        if metric not in ("hr", "ranked_hr"):  # a set's ceiling is HR only
            rows = [r for r in rows if "ranked_hr" not in metrics["methods"][r[0]]]
        lift = _lift_row(metrics) if metric == "hr" else None
        if rows:
            out.append(_table_section(METRIC_TITLES.get(metric, metric), head, rows + ([lift] if lift else []),
                                      cand))
    return out


def _paired_section(metrics: dict) -> Section:
    """The candidate minus every other method at every K on the same users, with a 95% interval: whether a gap
    between two rows of the HR table is more than sampling noise."""
    paired = metrics.get("paired") or {}
    vs = paired.get("vs") or {}
    ks = [k for k in metrics["ks"] if str(k) in vs]
    if not ks:
        return "", ""
    cand = paired.get("candidate", "pi2i")
    head = ["method"] + [f"@{k}" for k in ks]
    rows = []
    for name in vs[str(ks[0])]:
        cells = []
        for k in ks:
            d = vs[str(k)].get(name) or {}
            if d.get("mean") is None:
                cells.append("–")
                continue
            sig = "*" if d["ci95_low"] > 0 or d["ci95_high"] < 0 else ""
            cells.append(f"{100 * d['mean']:+.2f}{sig} ({100 * d['ci95_low']:+.2f} … {100 * d['ci95_high']:+.2f})")
        rows.append([name] + cells)
    note = (f"HR@K of {cand} minus the method's, in points, averaged over the same test users, with the normal 95% "
            "interval of that mean; * = the interval excludes 0.")
    return _table_section(f"{cand} minus each method, paired over the same users", head, rows, note=note)


def _segments_section(metrics: dict) -> Section:
    """HR@gate K by recency segment: does a method hold up when the last click left the user's usual category?"""
    seg = metrics.get("segments")
    k = metrics.get("gate", {}).get("k")
    if not seg or not k:
        return "", ""
    names = list(seg["users"])
    head = ["method"] + [f"{n.replace('_', ' ')} ({seg['users'][n]} users)" for n in names]
    rows = [[m] + [_pct(v[n].get(str(k))) for n in names] for m, v in seg["hr"].items()]
    note = (f"HR@{k} of the users whose last click is (or is not) in the dominant category of their last "
            "sampling.seq_len clicks: recency vs stability of the history.")
    return _table_section(f"HR@{k} by recency segment", head, rows, note=note)


def _methods_section(metrics: dict) -> Section:
    head = ["method", "what it is", "mean list length", "mean candidates scored", "pool HR", "seconds"]
    rows = [[n, m.get("description", ""), f"{m.get('mean_list_len', 0):.0f}",
             f"{m['mean_candidates']:.0f}" if "mean_candidates" in m else "–", _pct(m.get("pool_hr")),
             f"{m['seconds']:.2f}" if "seconds" in m else "–"] for n, m in metrics["methods"].items()]
    return _table_section("Methods", head, rows)


def _sweep_section(metrics: dict) -> Section:
    sweep = metrics.get("sweep")
    if not sweep or not sweep.get("series"):
        none = ("<h2>Swing truncation study (HR vs T)</h2><p class='note'>No sweep given (run <code>pi2i swing "
                "sweep</code> and pass <code>--sweep</code>).</p>")
        return none, ""
    png = base64.b64encode(plot_sweep(sweep, metrics.get("data", {}).get("i2i_max_row"),
                                      metrics.get("eval_config", {}).get("classic_truncation"))).decode()
    page = f"<h2>Swing truncation study (HR vs T)</h2>{_img(png, 'HR vs T')}"
    if sweep.get("other"):
        oh = ["T"] + list(sweep["other"])
        page += _html_table(oh, [[str(t)] + [_fmt(sweep["other"][k][i]) for k in sweep["other"]]
                                 for i, t in enumerate(sweep["t"])])
    sh = ["T"] + list(sweep["series"])
    srows = [[str(t)] + [_fmt(sweep["series"][k][i]) for k in sweep["series"]] for i, t in enumerate(sweep["t"])]
    return page, f"## Swing truncation study (HR vs T)\n\n{_md_table(sh, srows)}\n"


def _training_section(metrics: dict) -> Section:
    drop, flat = _drop_rate(metrics.get("samples"))
    page = (f"<h2>Training samples</h2><p>Sample drop rate (next click not in any trigger's row; paper: ~15% "
            f"on Taobao): <b>{html.escape(drop)}</b></p>")
    if flat:
        page += _html_table(["samples stat", "value"], [[k, _fmt(v)] for k, v in flat.items()])
    for name, model in (metrics.get("models") or {}).items():
        rows = [[k, _fmt(v)] for k, v in model.items() if not isinstance(v, (dict, list))][:30]
        if rows:
            page += f"<h2>Training of {html.escape(name)}</h2>" + _html_table(["train metric", "value"], rows)
    return page, f"## Training samples\n\nSample drop rate: {drop}\n"


DATA_KEYS = ["train_events", "test_events", "train_users", "train_items_clicked", "test_users", "test_pairs",
             "test_pairs_long_tail", "long_tail_items_share", "mean_test_items_per_user", "test_users_with_clicks",
             "test_users_without_train_clicks", "test_pairs_removed_as_seen", "test_users_dropped_all_seen",
             "sampled_users", "mean_history_len", "num_triggers", "history_len", "exclude_seen", "pad_with_popular",
             "i2i_triggers",
             "i2i_pairs", "i2i_mean_row", "i2i_max_row"]


def _data_section(metrics: dict) -> Section:
    data = metrics.get("data", {})
    page, md = _table_section("Data", ["quantity", "value"], [[k, _fmt(data[k])] for k in DATA_KEYS if k in data])
    inputs = metrics.get("inputs", {})
    page += "<h2>Inputs</h2>" + _html_table(["input", "path"], [[k, _fmt(v)] for k, v in inputs.items()])
    return page, md


def render(metrics: dict) -> tuple[str, str]:
    """(html, markdown) of the report: the sections in reading order."""
    sections = [_verdict_section(metrics), _live_section(metrics), _hr_section(metrics),
                *_metric_sections(metrics), _paired_section(metrics), _segments_section(metrics), _methods_section(metrics), _sweep_section(metrics),
                _training_section(metrics), _data_section(metrics)]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{TITLE}</title><style>{CSS}</style>"
            "</head><body>" + "\n".join(p for p, _ in sections)
            + "<p class='meta'>Full numbers: metrics.json next to this file.</p></body></html>")
    return page, "\n".join(m for _, m in sections if m)


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
