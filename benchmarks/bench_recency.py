"""Recency vs stability of the PI2I scorer, measured on a split (the data behind ``model.stability``).

The test users, their test sets and histories are the evaluation's own (:func:`pi2i.evaluation.evaluate.
prepare_users`: seen items excluded, repeat clicks out of the test sets), so HR@K at the trained weight equals
``pi2i evaluate``'s wherever the pool fills the list (lists are not padded with popular items here). Users are grouped as the report groups them (:func:`recency_segments`: is the last click in
the history's dominant category?). For each ``stability`` weight (:meth:`pi2i.prs.scoring.Scorer.adjust`) it
reports, per group and overall, HR@K and the share of the top-``--k-share`` in the last click's category. It
also replays issue 13's probe: one extra click on an item of a category the history does not hold (seeded), then
the share of the top-``--k-click`` in that category and how much of the list before the click survives it. The
default of ``model.stability`` is the weight with the best overall HR@``--k-main``.

    .venv/bin/python benchmarks/bench_recency.py --split S --model M --i2i I --out F.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pi2i.config import load_config
from pi2i.contracts import join
from pi2i.evaluation.evaluate import prepare_users, read_inputs, recency_segments
from pi2i.evaluation.gate import paired_difference
from pi2i.prs.scoring import Scorer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", required=True, help="split dir with train/ and test/")
    ap.add_argument("--model", required=True)
    ap.add_argument("--i2i", required=True)
    ap.add_argument("--weights", default="0,0.25,0.5,1,2")
    ap.add_argument("--ks", default="20,50,100")
    ap.add_argument("--k-main", type=int, default=100)
    ap.add_argument("--k-share", type=int, default=20)
    ap.add_argument("--k-click", type=int, default=10, help="list length of the one-click probe")
    ap.add_argument("--reference", type=float, default=0.5, help="weight every other one is paired against")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    ks = [int(k) for k in a.ks.split(",")]
    cfg = load_config()
    inputs = read_inputs(join(a.split, "train"), join(a.split, "test"), a.i2i)
    users = prepare_users(inputs.train, inputs.test, cfg)
    scorer = Scorer.load(a.model, inputs.i2i)
    info = scorer.info
    hist = [users.history.row(r) for r in range(len(users))]
    t_ptr, t_items = users.test
    targets = [set(t_items[t_ptr[r]:t_ptr[r + 1]].tolist()) for r in range(len(users))]
    segment = recency_segments(users.history, inputs.categories(), cfg.sampling.seq_len)
    if segment is None:
        raise SystemExit("bench_recency needs item categories (items.parquet with category_id)")
    last_cat = np.array([info.lookup(h[-1:])[0][0, 0] for h, _ in hist])
    rng = np.random.default_rng(0)
    clicked = one_click_probe(hist, info, rng)
    probe = [j for j, c in enumerate(clicked) if c is not None]
    result: dict = {"users": len(users), "share_last_click_in_dominant_category": float((segment == 1).mean()),
                    "probe_users": len(probe), "weights": {}}
    per_user: dict[float, dict[int, np.ndarray]] = {}  # weight -> K -> HR@K of each user
    for w in [float(x) for x in a.weights.split(",")]:
        scorer.stability = w
        recs = scorer.recommend_many(hist, max(ks), exclude_seen=True, explain=False)
        row: dict = {}
        for name, mask in (("all", np.ones(len(users), bool)), ("last_in_dominant", segment == 1),
                           ("last_off_dominant", segment == 0)):
            idx = np.flatnonzero(mask)
            if not len(idx):
                continue
            for k in ks:
                hits = np.array([len(targets[j] & set(recs[j].items[:k].tolist())) / len(targets[j]) for j in idx])
                row[f"{name}.hr.{k}"] = float(np.mean(hits))
                if name == "all":
                    per_user.setdefault(w, {})[k] = hits
            row[f"{name}.share_last_category.{a.k_share}"] = float(np.mean(
                [share(info, recs[j].items[:a.k_share], last_cat[j]) for j in idx]))
        if probe:
            after = scorer.recommend_many([clicked[j][0] for j in probe], a.k_click, exclude_seen=True,
                                          explain=False)
            row[f"one_click.share_clicked_category.{a.k_click}"] = float(np.mean(
                [share(info, r.items, clicked[j][1]) for j, r in zip(probe, after)]))
            row[f"one_click.kept.{a.k_click}"] = float(np.mean(
                [len(set(recs[j].items[:a.k_click].tolist()) & set(r.items.tolist())) / a.k_click
                 for j, r in zip(probe, after)]))
        result["weights"][str(w)] = row
        print(json.dumps({"stability": w, **{k: round(v, 4) for k, v in row.items()}}), flush=True)
    if a.reference in per_user:  # HR@K minus the reference weight's, paired over the same users
        ref = per_user[a.reference]
        for w, hr in per_user.items():
            d = {k: paired_difference(hr[k], ref[k]) for k in ks}
            result["weights"][str(w)]["paired_vs_reference"] = d
            print(json.dumps({"stability": w, "minus": a.reference, **{
                f"hr.{k}": f"{d[k]['mean']:+.4f} ± {1.96 * d[k]['se']:.4f}" for k in ks}}, ensure_ascii=False))
    best = max(result["weights"], key=lambda w: result["weights"][w][f"all.hr.{a.k_main}"])
    result["best_stability"] = float(best)
    print(json.dumps({"best_stability": float(best)}))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2))


def share(info, items: np.ndarray, category: int) -> float:
    """Share of ``items`` whose category is ``category`` (0 for an empty list)."""
    return float((info.lookup(items)[0][:, 0] == category).mean()) if len(items) else 0.0


def one_click_probe(hist: list, info, rng: np.random.Generator) -> list:
    """Per user: (history + one click on a random item of a category absent from it, that category), or None."""
    side = info.lookup(info.item_ids)[0][:, 0]
    out: list = []
    for h, t in hist:
        absent = np.flatnonzero((side >= 0) & ~np.isin(side, info.lookup(h)[0][:, 0]))
        if not len(absent) or not len(t):
            out.append(None)
            continue
        pick = rng.choice(absent)
        out.append(((np.append(h, info.item_ids[pick]), np.append(t, t[-1] + 1)), int(side[pick])))
    return out


if __name__ == "__main__":
    main()
