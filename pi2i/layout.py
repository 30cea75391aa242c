"""What every artifact directory contains: the ONE place for its file names (DESIGN.md "contracts").

Code never spells these names itself; it joins a directory with a constant from here (via
``pi2i.contracts.join``, so ``s3://`` URIs work). The tuples list what a complete directory holds.

data dir ``D`` (``pi2i data load`` / ``split``)::

    events.parquet  items.parquet  users.parquet  quarantine.parquet  summary.json

i2i artifact: one file ``i2i_table.parquet`` (+ ``i2i_table.parquet.stats.json`` beside it).

samples dir (``pi2i samples``)::

    clicks/{user_ids,user_ptr,items,ts}.npy  samples/{user,pos,cands}.npy
    i2i_table.parquet  items.parquet  popularity.parquet  histories.parquet  stats.json  meta.json

model dir ``M`` (``pi2i train``; self-contained, what serving loads)::

    method.json  config.json  model.safetensors  vocab.parquet
    items.parquet  popularity.parquet  histories.parquet  train_metrics.json  history.json

version dir ``registry/<version>/`` (``pi2i versions publish``)::

    i2i_table.parquet  model/  metrics.json  MANIFEST.json

registry root: ``<version>/...``, ``CURRENT`` (the live version id), ``HISTORY.jsonl`` (promotes/rollbacks).
"""

from __future__ import annotations

from pi2i.contracts import EVENTS_FILE, ITEMS_FILE, QUARANTINE_FILE, SUMMARY_FILE, USERS_FILE

# ------------------------------------------------------------------ data dir (names from pi2i.contracts)
DATA_DIR_FILES = (EVENTS_FILE, ITEMS_FILE, USERS_FILE, QUARANTINE_FILE, SUMMARY_FILE)

# ------------------------------------------------------------------ i2i artifact
I2I_FILE = "i2i_table.parquet"
STATS_SUFFIX = ".stats.json"  # run statistics beside an i2i table: ``<i2i>.stats.json``

# ------------------------------------------------------------------ files shared by samples and model dirs
POPULARITY_FILE = "popularity.parquet"  # item_id, count: most clicked first
HISTORIES_FILE = "histories.parquet"  # user_id, items, ts: each user's last clicks, oldest first

# ------------------------------------------------------------------ samples dir
SAMPLES_SUBDIR = "samples"
CLICKS_SUBDIR = "clicks"
SAMPLES_STATS_FILE = "stats.json"
SAMPLES_META_FILE = "meta.json"
#: what a model dir copies from its samples dir (serving and the fallbacks read them from the model dir)
SERVING_INPUT_FILES = (ITEMS_FILE, POPULARITY_FILE, HISTORIES_FILE)
SAMPLES_DIR_FILES = (SAMPLES_SUBDIR, CLICKS_SUBDIR, I2I_FILE, ITEMS_FILE, POPULARITY_FILE, HISTORIES_FILE,
                     SAMPLES_STATS_FILE, SAMPLES_META_FILE)

# ------------------------------------------------------------------ model dir
METHOD_FILE = "method.json"  # method, format_version, code_version, config (pi2i.methods.save_manifest)
MODEL_CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
VOCAB_FILE = "vocab.parquet"
TRAIN_METRICS_FILE = "train_metrics.json"
TRAIN_HISTORY_FILE = "history.json"  # per-epoch training metrics
MODEL_DIR_FILES = (METHOD_FILE, MODEL_CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE, ITEMS_FILE, POPULARITY_FILE,
                   HISTORIES_FILE, TRAIN_METRICS_FILE, TRAIN_HISTORY_FILE)

# ------------------------------------------------------------------ version dir / registry root
MODEL_SUBDIR = "model"
METRICS_FILE = "metrics.json"  # evaluation + gate verdict (``pi2i evaluate``)
MANIFEST_FILE = "MANIFEST.json"  # sha256 and size of every other file
VERSION_DIR_FILES = (I2I_FILE, MODEL_SUBDIR, METRICS_FILE, MANIFEST_FILE)
CURRENT_FILE = "CURRENT"
HISTORY_LOG_FILE = "HISTORY.jsonl"
