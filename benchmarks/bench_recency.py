"""Recency vs stability of the PI2I scorer, measured on a split (the data behind ``model.stability``).

Test users are grouped by whether their last history click is in their history's dominant category. For each
``stability`` weight (:meth:`pi2i.prs.scoring.Scorer.adjust`) it reports, per group and overall, HR@K of the
test clicks and the share of the top-``--k-share`` that falls in the last click's category (how far one click
moves the list). The default of ``model.stability`` is the weight with the best overall HR@``--k-main``.

    .venv/bin/python benchmarks/bench_recency.py --split S --model M --i2i I --out F.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pi2i.contracts import join, read_events
from pi2i.data.events import recent_histories
from pi2i.ibs.i2i import I2IIndex
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
    ap.add_argument("--max-users", type=int, default=2000)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    ks = [int(k) for k in a.ks.split(",")]
    train = read_events(join(a.split, "train", "events.parquet"))
    test = read_events(join(a.split, "test", "events.parquet"))
    tu = test.column("user_id").to_numpy()
    ti = test.column("item_id").to_numpy()
    users, indptr, items, ts = recent_histories(train, 50, users=np.unique(tu))
    keep = np.flatnonzero(np.diff(indptr) > 0)
    rng = np.random.default_rng(0)
    if len(keep) > a.max_users:
        keep = np.sort(rng.choice(keep, a.max_users, replace=False))
    scorer = Scorer.load(a.model, I2IIndex.load(a.i2i))
    info = scorer.info
    hist = [(items[indptr[r]:indptr[r + 1]], ts[indptr[r]:indptr[r + 1]]) for r in keep]
    cats = [info.lookup(h)[0][:, 0] for h, _ in hist]
    last_cat = np.array([c[-1] for c in cats])
    dominant = np.array([np.bincount(c[c >= 0]).argmax() if (c >= 0).any() else -1 for c in cats])
    in_dom = (last_cat == dominant) & (last_cat >= 0)
    targets = [set(ti[tu == users[r]].tolist()) for r in keep]
    result: dict = {"users": len(keep), "share_last_click_in_dominant_category": float(in_dom.mean()),
                    "weights": {}}
    for w in [float(x) for x in a.weights.split(",")]:
        scorer.stability = w
        recs = scorer.recommend_many(hist, max(ks), exclude_seen=True)
        row: dict = {}
        for name, mask in (("all", np.ones(len(keep), bool)), ("last_in_dominant", in_dom),
                           ("last_off_dominant", ~in_dom)):
            idx = np.flatnonzero(mask)
            if not len(idx):
                continue
            for k in ks:
                hits = [len(targets[j] & set(recs[j].items[:k].tolist())) / max(len(targets[j]), 1) for j in idx]
                row[f"{name}.hr.{k}"] = float(np.mean(hits))
            share = [float((info.lookup(recs[j].items[:a.k_share])[0][:, 0] == last_cat[j]).mean())
                     if len(recs[j].items) else 0.0 for j in idx]
            row[f"{name}.share_last_category.{a.k_share}"] = float(np.mean(share))
        result["weights"][str(w)] = row
        print(json.dumps({"stability": w, **{k: round(v, 4) for k, v in row.items()}}), flush=True)
    best = max(result["weights"], key=lambda w: result["weights"][w][f"all.hr.{a.k_main}"])
    result["best_stability"] = float(best)
    print(json.dumps({"best_stability": float(best)}))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
