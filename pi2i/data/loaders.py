"""Loaders: real logs onto the data contract, never dropping a row silently.

Formats
  * ``taobao``: Taobao UserBehavior CSV, no header: ``user,item,category,behavior,ts`` (ts: epoch seconds).
    ``pv`` is a click (:data:`pi2i.contracts.BEHAVIOR_ALIASES`). ``items.parquet`` gets ``category_id``: one row
    per item, its most frequent category (ties: the smallest id).
  * ``movielens``: ``u.data`` (tab separated) or ``ratings.dat`` (``::``): ``user, item, rating, ts``. A rating
    says the user watched the movie, so every rating becomes a ``click`` event at its timestamp (the rating value
    is validated, then not used). ``items.parquet`` holds the item ids, plus ``category_id`` (first genre) when
    ``u.item`` / ``movies.dat`` sits beside the input; ``users.parquet`` comes from ``u.user`` / ``users.dat``.
  * ``csv``: delimited text with a header row; ``column_map`` maps contract names to source columns
    (``user_id``, ``item_id``, ``ts`` required; ``behavior`` optional — all clicks when absent; side info
    ``category_id``, ``brand_id``, ``seller_id``, ``price`` optional, first value seen per item). A map whose
    sources are all 0-based integers reads a file *without* a header. Fields are not quoted (surrounding quotes
    are stripped; a quoted delimiter counts as an extra field).
  * ``parquet``: the same column map over parquet columns (read in record batches).

How: the file is read in byte blocks of about ``data.chunk_rows`` lines, cut at the last newline; each block is
split into lines and fields and validated with Arrow compute kernels (no per-row Python, except decoding the
raw text of quarantined rows and checking UTF-8 of the rare lines holding non-ASCII bytes). Memory is bounded
by the block; ``events.parquet`` is streamed through a ``ParquetWriter`` and then sorted by (user_id, ts) when it
has at most ``data.sort_max_rows`` rows.

Accounting: ``rows_in`` counts the data lines of the file (a csv header is not a row), and every one is either
kept or written to ``quarantine.parquet`` (``line``: 1-based line number or parquet row number, ``raw``: the
row as text, ``reason``), so ``rows_in == rows_kept + rows_quarantined`` always; ``summary.json`` has the
per-reason counts. Reasons, first match wins: ``invalid_utf8``, ``blank_line``, ``header_row`` (first line of a
headerless format that is not data), ``truncated_line`` (last line, no newline, too few fields),
``missing_fields``, ``extra_fields``, ``empty_field`` (empty / NaN / null), ``non_integer_id``,
``negative_id``, ``id_out_of_range`` (a decimal id beyond int64; every id that fits int64 is kept),
``unknown_behavior``, ``bad_rating``, ``bad_timestamp``, ``ts_out_of_range`` (``data.min_ts`` ..
``data.max_ts``), ``future_ts`` (later than the load time + ``data.max_future_skew_s``: a clock error that would
move the temporal split). A file that is unusable as a whole (missing, empty, wrong delimiter, missing
columns, no usable row) raises :class:`~pi2i.contracts.ContractError` with a one-line message.

Atomic output: everything is written to a staging directory beside ``out_dir`` and moved into place only when
the load succeeds; a failed load removes the staging directory and leaves ``out_dir`` as it was (no partial
``events.parquet``, no ``*.tmp``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pi2i.config import Config
from pi2i.contracts import (
    BEHAVIOR_ALIASES,
    EVENTS_FILE,
    EVENTS_SCHEMA,
    ITEM_SIDE_INFO,
    ITEMS_FILE,
    QUARANTINE_FILE,
    SUMMARY_FILE,
    USERS_FILE,
    ContractError,
    join,
    makedirs,
    resolve,
    write_json,
    write_parquet,
)
from pi2i.data.events import to_iso, to_us

#: ``progress(done, total)``: bytes read (text) or rows (parquet) so far, of ``total`` when known.
Progress = Callable[[int, int | None], None]

QUARANTINE_SCHEMA = pa.schema([
    pa.field("line", pa.int64()), pa.field("raw", pa.string()), pa.field("reason", pa.string()),
])

FORMATS = ("taobao", "movielens", "csv", "parquet")

#: Quarantine reasons in priority order (code = index + 1; 0 = kept).
REASONS = ("invalid_utf8", "blank_line", "header_row", "truncated_line", "missing_fields", "extra_fields",
           "empty_field", "non_integer_id", "negative_id", "id_out_of_range", "unknown_behavior", "bad_rating",
           "bad_timestamp", "ts_out_of_range", "future_ts")
_CODE = {r: i + 1 for i, r in enumerate(REASONS)}
_EMPTY = ["", "nan", "null", "none", "na", "n/a", "\\n"]
_ID_COLS = ("user_id", "item_id")
_INT_SIDE = ("category_id", "brand_id", "seller_id")
_US = 1_000_000
_INT64_MAX = str(np.iinfo(np.int64).max)  # 9223372036854775807: 19 digits
_DELIMS = [",", "\t", ";", "|", "::", " "]


@dataclass
class _Spec:
    """Where each contract column sits in a source row."""

    fmt: str
    delimiter: str
    nfields: int | None                     # expected fields per line (None: from the header)
    columns: dict[str, int | str]           # contract name -> field index (or header name)
    header: bool = False
    ts_unit: str = "s"
    side: list[str] = field(default_factory=list)


def _spec(fmt: str, input_path: str, column_map: dict[str, str] | None, cfg: Config) -> _Spec:
    if fmt == "taobao":
        return _Spec(fmt, cfg.data.delimiter or ",", 5,
                     {"user_id": 0, "item_id": 1, "category_id": 2, "behavior": 3, "ts": 4}, side=["category_id"])
    if fmt == "movielens":
        fs, path = resolve(input_path)
        with fs.open_input_stream(path) as f:
            head = f.read(4096)
        delim = cfg.data.delimiter or ("::" if b"::" in head else "\t")
        return _Spec(fmt, delim, 4, {"user_id": 0, "item_id": 1, "rating": 2, "ts": 3})
    if fmt in ("csv", "parquet"):
        cmap = dict(column_map or {})
        for k in ("user_id", "item_id", "ts"):
            cmap.setdefault(k, k)
        allowed = {"user_id", "item_id", "ts", "behavior", *ITEM_SIDE_INFO}
        bad = sorted(set(cmap) - allowed)
        if bad:
            raise ContractError(f"--map: unknown contract column(s) {bad}; allowed: {sorted(allowed)}")
        positional = all(str(v).isdigit() for v in cmap.values())
        if fmt == "parquet" and positional:
            raise ContractError("parquet input: --map takes column names, not positions")
        cols: dict[str, int | str] = {k: (int(v) if positional else v) for k, v in cmap.items()}
        return _Spec(fmt, cfg.data.delimiter or ",", None, cols, header=not positional, ts_unit=cfg.data.ts_unit,
                     side=[k for k in ITEM_SIDE_INFO if k in cmap])
    raise ContractError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")


# ----------------------------------------------------------------------------------------------- validation
class _Validator:
    """Vectorised checks of one chunk of rows given as string columns; fills reason codes, returns values."""

    def __init__(self, spec: _Spec, cfg: Config, now_us: int) -> None:
        self.spec = spec
        self.min_us = to_us(cfg.data.min_ts)
        self.max_us = to_us(cfg.data.max_ts)
        self.future_us = now_us + round(cfg.data.max_future_skew_s * _US)
        self.ts_unit = spec.ts_unit
        self.aliases = pa.array(list(BEHAVIOR_ALIASES))
        self.canon = pa.array(list(BEHAVIOR_ALIASES.values()))
        self.empty = pa.array(_EMPTY)

    @staticmethod
    def _set(reason: np.ndarray, mask: np.ndarray, name: str) -> None:
        np.copyto(reason, _CODE[name], where=(reason == 0) & mask)

    @staticmethod
    def _decimal(s: pa.Array) -> np.ndarray:
        """Non-empty ASCII decimal strings (any length)."""
        return pc.fill_null(pc.ascii_is_decimal(s), False).to_numpy(zero_copy_only=False)

    @staticmethod
    def _fits_int64(s: pa.Array, decimal: np.ndarray) -> np.ndarray:
        """Of the decimal strings, those whose value is at most 2**63 - 1 (leading zeros allowed)."""
        fits = decimal.copy()
        long = decimal & (pc.binary_length(s).to_numpy(zero_copy_only=False) >= len(_INT64_MAX))
        if long.any():  # rare: 19+ characters; compare the significant digits as strings of equal length
            idx = pa.array(np.flatnonzero(long))
            core = pc.utf8_ltrim(pc.take(s, idx), "0")
            n = pc.binary_length(core).to_numpy(zero_copy_only=False)
            le = pc.less_equal(core, pa.scalar(_INT64_MAX)).to_numpy(zero_copy_only=False)
            fits[long] = (n < len(_INT64_MAX)) | ((n == len(_INT64_MAX)) & le)
        return fits

    def _empty(self, s: pa.Array) -> np.ndarray:
        return pc.is_in(pc.utf8_lower(s), value_set=self.empty).to_numpy(zero_copy_only=False)

    def _int(self, s: pa.Array, reason: np.ndarray) -> np.ndarray:
        """int64 ids; quarantines negative ones, ones beyond int64 and anything that is not a decimal."""
        decimal = self._decimal(s)
        ok = self._fits_int64(s, decimal)
        neg = np.zeros(ok.size, bool)
        if not decimal.all():  # rare: tell negative numbers from other junk
            neg = pc.starts_with(s, "-").to_numpy(zero_copy_only=False) & self._decimal(pc.utf8_slice_codeunits(s, 1))
        self._set(reason, neg, "negative_id")
        self._set(reason, decimal & ~ok, "id_out_of_range")
        self._set(reason, ~decimal & ~neg, "non_integer_id")
        clean = pc.if_else(pa.array(ok), s, "0")
        return pc.cast(clean, pa.int64()).to_numpy(zero_copy_only=False)

    def _ts(self, s: pa.Array, reason: np.ndarray) -> np.ndarray:
        decimal = self._decimal(s)
        numeric = self._fits_int64(s, decimal)
        if self.ts_unit == "auto":
            if numeric.any():
                v = pc.cast(pc.if_else(pa.array(numeric), s, "0"), pa.int64()).to_numpy()[numeric]
                med = float(np.median(v))
                self.ts_unit = "s" if med < 1e11 else "ms" if med < 1e14 else "us"
            elif len(s):
                self.ts_unit = "iso"
        if self.ts_unit == "iso":
            ok = reason == 0
            out = np.zeros(len(s), np.int64)
            bad = np.zeros(len(s), bool)
            try:
                ts = pc.cast(pc.if_else(pa.array(ok), s, "1970-01-01T00:00:00"), pa.timestamp("us", tz="UTC"))
                out = ts.cast(pa.int64()).to_numpy()
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # slow path only for a chunk with bad times
                vals = s.to_pylist()
                for k in np.flatnonzero(ok):
                    try:
                        out[k] = to_us(vals[k])
                    except (ValueError, TypeError):
                        bad[k] = True
            self._set(reason, bad, "bad_timestamp")
        else:
            self._set(reason, decimal & ~numeric, "ts_out_of_range")
            self._set(reason, ~decimal, "bad_timestamp")
            raw = pc.cast(pc.if_else(pa.array(numeric), s, "0"), pa.int64()).to_numpy().copy()
            mult = {"s": _US, "ms": 1_000, "us": 1}[self.ts_unit]
            lim = np.iinfo(np.int64).max // mult
            self._set(reason, raw > lim, "ts_out_of_range")
            out = np.minimum(raw, lim) * mult
        self._set(reason, (out < self.min_us) | (out > self.max_us), "ts_out_of_range")
        self._set(reason, out > self.future_us, "future_ts")
        return out

    def run(self, cols: dict[str, pa.Array], reason: np.ndarray) -> dict[str, np.ndarray | pa.Array]:
        """``cols``: contract name -> trimmed string array (rows with the right field count)."""
        need = [c for c in ("user_id", "item_id", "behavior", "rating", "ts", *_INT_SIDE) if c in cols]
        for c in need:
            self._set(reason, self._empty(cols[c]), "empty_field")
        out: dict[str, np.ndarray | pa.Array] = {}
        for c in _ID_COLS:
            out[c] = self._int(cols[c], reason)
        for c in _INT_SIDE:
            if c in cols:  # side info must be clean ids too
                out[c] = self._int(cols[c], reason)
        if "price" in cols:
            num = pc.match_substring_regex(cols["price"], r"^\d+(\.\d*)?$").to_numpy(zero_copy_only=False)
            out["price"] = pc.cast(pc.if_else(pa.array(num), cols["price"], "nan"), pa.float64()).to_numpy()
        if "behavior" in cols:
            idx = pc.index_in(pc.utf8_lower(cols["behavior"]), value_set=self.aliases)
            self._set(reason, pc.is_null(idx).to_numpy(zero_copy_only=False), "unknown_behavior")
            out["behavior"] = pc.take(self.canon, pc.fill_null(idx, 0))
        else:
            n = len(cols["user_id"])
            out["behavior"] = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int8)),
                                                             pa.array(["click"])).cast(pa.string())
        if "rating" in cols:
            num = pc.match_substring_regex(cols["rating"], r"^\d+(\.\d+)?$").to_numpy(zero_copy_only=False)
            self._set(reason, ~num, "bad_rating")
        out["ts"] = self._ts(cols["ts"], reason)
        return out


# ----------------------------------------------------------------------------------------------- outputs
class _Sink:
    """Streams kept events and quarantined rows to parquet; collects item side info; counts."""

    def __init__(self, out_dir: str, spec: _Spec) -> None:
        makedirs(out_dir)
        self.out_dir = out_dir
        self.spec = spec
        self.fs, self.ev_path = resolve(join(out_dir, EVENTS_FILE))
        _, self.q_path = resolve(join(out_dir, QUARANTINE_FILE))
        self.ev = pq.ParquetWriter(self.ev_path + ".tmp", EVENTS_SCHEMA, filesystem=self.fs)
        self.q = pq.ParquetWriter(self.q_path + ".tmp", QUARANTINE_SCHEMA, filesystem=self.fs)
        self.rows_in = 0
        self.kept = 0
        self.reasons = np.zeros(len(REASONS) + 1, np.int64)
        self.side_parts: list[pa.Table] = []
        self.items_parts: list[np.ndarray] = []
        self.users = np.zeros(0, np.int64)
        self.item_side: pa.Table | None = None     # side info from a sibling file (MovieLens genres)
        self.profiles: pa.Table | None = None      # users.parquet (MovieLens u.user / users.dat)
        self.ts_range = (np.iinfo(np.int64).max, np.iinfo(np.int64).min)
        self.behaviors: dict[str, int] = {}
        self.first_quarantined: tuple[int, str, str] | None = None  # (line, raw, reason): for the error message

    def quarantine(self, lines: np.ndarray, raw: list[str], codes: np.ndarray) -> None:
        if len(lines) == 0:
            return
        names = np.array(("",) + REASONS, dtype=object)[codes]
        if self.first_quarantined is None:
            self.first_quarantined = (int(lines[0]), raw[0], str(names[0]))
        self.q.write_table(pa.table({"line": pa.array(lines, pa.int64()), "raw": pa.array(raw, pa.string()),
                                     "reason": pa.array(names, pa.string())}, schema=QUARANTINE_SCHEMA))
        np.add.at(self.reasons, codes, 1)

    def keep(self, values: dict, mask: np.ndarray) -> None:
        n = int(mask.sum())
        if n == 0:
            return
        m = pa.array(mask)
        beh = values["behavior"]
        table = pa.table({
            "user_id": pa.array(values["user_id"][mask], pa.int64()),
            "item_id": pa.array(values["item_id"][mask], pa.int64()),
            "behavior": (beh.filter(m) if isinstance(beh, (pa.Array, pa.ChunkedArray)) else pa.array(beh[mask])),
            "ts": pa.array(values["ts"][mask], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        }, schema=EVENTS_SCHEMA)
        self.ev.write_table(table)
        self.kept += n
        self.users = np.union1d(self.users, table.column("user_id").to_numpy())
        ts = values["ts"][mask]
        self.ts_range = (min(self.ts_range[0], int(ts.min())), max(self.ts_range[1], int(ts.max())))
        for d in table.column("behavior").value_counts().to_pylist():
            self.behaviors[d["values"]] = self.behaviors.get(d["values"], 0) + d["counts"]
        items = values["item_id"][mask]
        if self.spec.side:
            side = pa.table({"item_id": items, **{c: values[c][mask] for c in self.spec.side}})
            if self.spec.fmt == "taobao":  # most frequent category: count (item, category) pairs
                self.side_parts.append(side.group_by(["item_id", "category_id"], use_threads=False)
                                       .aggregate([("item_id", "count")]))
            else:
                self.side_parts.append(side.group_by("item_id", use_threads=False)
                                       .aggregate([(c, "first") for c in self.spec.side])
                                       .rename_columns(["item_id", *self.spec.side]))
        else:
            self.items_parts.append(np.unique(items))

    def _items(self) -> pa.Table:
        if not self.spec.side:
            ids = np.unique(np.concatenate(self.items_parts)) if self.items_parts else np.zeros(0, np.int64)
            return pa.table({"item_id": pa.array(ids, pa.int64())})
        t = pa.concat_tables(self.side_parts)
        if self.spec.fmt == "taobao":
            t = t.group_by(["item_id", "category_id"], use_threads=False).aggregate([("item_id_count", "sum")])
            t = t.sort_by([("item_id", "ascending"), ("item_id_count_sum", "descending"),
                           ("category_id", "ascending")])
            ids = t.column("item_id").to_numpy()
            first = np.ones(ids.size, bool)
            first[1:] = ids[1:] != ids[:-1]
            t = t.filter(pa.array(first)).select(["item_id", "category_id"])
        else:
            t = (t.group_by("item_id", use_threads=False).aggregate([(c, "first") for c in self.spec.side])
                 .rename_columns(["item_id", *self.spec.side]).sort_by("item_id"))
        return t.cast(pa.schema([pa.field("item_id", pa.int64())]
                                + [pa.field(c, ITEM_SIDE_INFO[c]) for c in self.spec.side]))

    def close(self, input_path: str, cfg: Config, extra: dict) -> dict:
        self.ev.close()
        self.q.close()
        self.fs.move(self.q_path + ".tmp", self.q_path)
        quarantined = int(self.reasons[1:].sum())
        summary = {
            "source": input_path, "format": self.spec.fmt,
            "rows_in": int(self.rows_in), "rows_kept": int(self.kept), "rows_quarantined": quarantined,
            "quarantine_reasons": {r: int(c) for r, c in zip(REASONS, self.reasons[1:]) if c},
            **extra,
        }
        assert summary["rows_in"] == summary["rows_kept"] + quarantined, summary
        if self.kept == 0:  # nothing is written (load() removes the staging dir)
            reasons = ", ".join(f"{r} {c}" for r, c in sorted(summary["quarantine_reasons"].items(),
                                                               key=lambda kv: -kv[1]))
            line, raw, why = self.first_quarantined or (0, "", "none")
            raise ContractError(f"{input_path}: no usable rows ({quarantined} of {self.rows_in} quarantined: "
                                f"{reasons}); e.g. line {line}: {why} {raw[:80]!r}")
        sorted_ = self.kept <= cfg.data.sort_max_rows
        if sorted_:  # the one step that holds all events in memory, bounded by data.sort_max_rows
            events = pq.read_table(self.ev_path + ".tmp", filesystem=self.fs)
            events = events.sort_by([("user_id", "ascending"), ("ts", "ascending")])
            pq.write_table(events, self.ev_path + ".tmp", filesystem=self.fs)
            del events
        self.fs.move(self.ev_path + ".tmp", self.ev_path)
        items = self._items()
        if self.item_side is not None:
            items = items.join(self.item_side, "item_id", join_type="left outer").sort_by("item_id")
        write_parquet(items, join(self.out_dir, ITEMS_FILE))
        if self.profiles is not None:
            write_parquet(self.profiles, join(self.out_dir, USERS_FILE))
            summary["profiles"] = self.profiles.num_rows

        summary.update({
            "sorted": sorted_, "users": int(self.users.size), "items": items.num_rows,
            "behaviors": dict(sorted(self.behaviors.items())),
            "ts_min": to_iso(self.ts_range[0]), "ts_max": to_iso(self.ts_range[1]),
        })
        return summary


# ----------------------------------------------------------------------------------------------- text input
def _blocks(input_path: str, block_bytes: int, progress: Progress | None
            ) -> tuple[int, Iterator[tuple[bytes, bool]]]:
    fs, path = resolve(input_path)
    info = fs.get_file_info(path)
    if info.type.name == "NotFound":
        raise ContractError(f"input not found: {input_path}")
    if info.type.name == "Directory":
        raise ContractError(f"input is a directory, expected a file: {input_path}")
    size = info.size or 0

    def gen() -> Iterator[tuple[bytes, bool]]:
        done = 0
        carry = b""
        with fs.open_input_stream(path) as f:
            while True:
                buf = f.read(block_bytes)
                done += len(buf)
                if progress:
                    progress(done, size)
                if not buf:
                    if carry:
                        yield carry, True
                    return
                buf = carry + buf
                cut = buf.rfind(b"\n")
                if cut < 0:
                    carry = buf
                    continue
                carry = buf[cut + 1:]
                yield buf[:cut + 1], False

    return size, gen()


def _split_lines(block: bytes, final: bool) -> tuple[pa.Array, bool]:
    """Lines of a block as one binary array, and whether the last one is unterminated (end of file).

    Zero-copy: offsets are the newline positions, so line k >= 1 *starts* with its preceding ``\\n`` (trimmed
    later with the ``\\r``) — one vectorised pass instead of a split.
    """
    arr = np.frombuffer(block, np.uint8)
    nl = np.flatnonzero(arr == 0x0A)
    unterminated = final and not block.endswith(b"\n")
    ends = np.append(nl, arr.size) if unterminated else nl
    offsets = np.concatenate([[0], ends]).astype(np.int64)
    lines = pa.LargeBinaryArray.from_buffers(pa.large_binary(), int(ends.size),
                                             [None, pa.py_buffer(offsets), pa.py_buffer(block)])
    return lines, unterminated


def _utf8_bad(block: bytes, lines: pa.Array) -> np.ndarray:
    """Mask of lines holding invalid UTF-8 (only lines with non-ASCII bytes are decoded, in Python)."""
    arr = np.frombuffer(block, np.uint8)
    hi = np.flatnonzero(arr >= 0x80)
    bad = np.zeros(len(lines), bool)
    if hi.size == 0:
        return bad
    nl = np.flatnonzero(arr == 0x0A)
    cand = np.unique(np.searchsorted(nl, hi))
    cand = cand[cand < len(lines)]
    for k in cand.tolist():
        try:
            lines[k].as_py().decode("utf-8")
        except UnicodeDecodeError:
            bad[k] = True
    return bad


def _raw_text(lines: pa.Array, idx: np.ndarray) -> list[str]:
    vals = pc.take(lines, pa.array(idx, pa.int64())).to_pylist()
    return [v.decode("utf-8", errors="backslashreplace").lstrip("\n").rstrip("\r") for v in vals]


def _field_counts(lines: pa.Array, delimiter: str) -> np.ndarray:
    return pc.count_substring(lines, delimiter).to_numpy(zero_copy_only=False).astype(np.int64) + 1


def _fields(good_text: pa.Array, delimiter: str, nfields: int, colpos: dict[str, int]) -> dict[str, pa.Array]:
    """The mapped fields of lines that all have ``nfields`` fields, as whitespace- and quote-trimmed strings
    (the trim also drops the line's leading ``\\n`` and trailing ``\\r``)."""
    fields = pc.split_pattern(good_text, delimiter)
    return {k: pc.utf8_trim(pc.utf8_trim_whitespace(pc.list_element(fields, j)), '"') for k, j in colpos.items()}


def _guess_delimiter(sample: list[str], expected: str, nfields: int | None) -> str | None:
    best, best_n = None, 0
    for d in _DELIMS:
        if d == expected:
            continue
        counts = [len(s.split(d)) for s in sample if s.strip()]
        if not counts:
            continue
        good = sum(c == nfields if nfields else c > 1 for c in counts)
        if good > best_n and good >= 0.8 * len(counts):
            best, best_n = d, good
    return best


def _header_columns(first_line: str, spec: _Spec, input_path: str) -> dict[str, int]:
    names = [x.strip().strip('"').strip() for x in first_line.rstrip("\r").split(spec.delimiter)]
    missing = [v for v in spec.columns.values() if v not in names]
    if missing:
        if all(n.lstrip("+-").replace(".", "", 1).isdigit() for n in names if n):
            raise ContractError(f"{input_path}: csv input seems to have no header row (first line {first_line!r});"
                                " map columns by 0-based position, e.g. --map user_id=0,item_id=1,ts=3")
        guess = _guess_delimiter([first_line], spec.delimiter, None) if len(names) == 1 else None
        hint = f"; looks like delimiter {guess!r} (use --delimiter)" if guess else ""
        raise ContractError(f"{input_path}: missing column(s) {missing} in header {names}{hint}")
    return {k: names.index(str(v)) for k, v in spec.columns.items()}


_ML1M_GENRES = ["Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
                "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
                "Western"]


def _movielens_side(input_path: str) -> tuple[pa.Table | None, pa.Table | None]:
    """Genres (category_id: first genre, 1-based) and user profiles from the files beside the ratings, when
    present: ML-100k ``u.item`` / ``u.user``, ML-1M ``movies.dat`` / ``users.dat`` (latin-1). Side files are
    small and read whole; their malformed lines are skipped (they are not event rows)."""
    import pandas as pd

    if "://" in input_path:
        return None, None
    d = os.path.dirname(os.path.abspath(input_path))
    items = users = None
    opts = {"header": None, "encoding": "latin-1", "on_bad_lines": "skip", "engine": "python"}
    try:
        if os.path.exists(os.path.join(d, "u.item")):
            df = pd.read_csv(os.path.join(d, "u.item"), sep="|", **opts)
            flags = df.iloc[:, 5:24].fillna(0).to_numpy(dtype=np.int64)
            cat = np.where(flags.any(1), flags.argmax(1) + 1, 0)
            items = pa.table({"item_id": pa.array(df[0].to_numpy(np.int64)), "category_id": pa.array(cat)})
        elif os.path.exists(os.path.join(d, "movies.dat")):
            df = pd.read_csv(os.path.join(d, "movies.dat"), sep="::", **opts)
            first = df[2].astype(str).str.split("|").str[0]
            cat = first.map({g: i + 1 for i, g in enumerate(_ML1M_GENRES)}).fillna(0).astype(np.int64)
            items = pa.table({"item_id": pa.array(df[0].to_numpy(np.int64)), "category_id": pa.array(cat)})
        if os.path.exists(os.path.join(d, "u.user")):
            df = pd.read_csv(os.path.join(d, "u.user"), sep="|", **opts)
            users = pa.table({"user_id": df[0].astype(np.int64), "age": df[1].astype(np.int64),
                              "gender": df[2].astype(str), "occupation": df[3].astype(str),
                              "zip": df[4].astype(str)})
        elif os.path.exists(os.path.join(d, "users.dat")):
            df = pd.read_csv(os.path.join(d, "users.dat"), sep="::", **opts)
            users = pa.table({"user_id": df[0].astype(np.int64), "gender": df[1].astype(str),
                              "age": df[2].astype(np.int64), "occupation": df[3].astype(str),
                              "zip": df[4].astype(str)})
    except (ValueError, KeyError, IndexError) as e:
        raise ContractError(f"MovieLens side file beside {input_path} is malformed: {e}") from None
    if items is not None:
        items = items.group_by("item_id", use_threads=False).aggregate([("category_id", "first")]) \
            .rename_columns(["item_id", "category_id"])
    return items, users


def _column_positions(spec: _Spec, lines: pa.Array, input_path: str) -> tuple[dict[str, int], int]:
    """Field index of each contract column, from the header row or the map; also fixes ``spec.nfields``.

    Returns (positions, lines to skip: 1 for a header row)."""
    if spec.header:
        first = lines[0].as_py().decode("utf-8", errors="replace").rstrip("\r")
        colpos = _header_columns(first, spec, input_path)
        spec.nfields = len(first.split(spec.delimiter))
        return colpos, 1
    colpos = {k: int(v) for k, v in spec.columns.items()}
    if spec.nfields is None:  # headerless csv: the first non-blank line sets the field count
        first = next((x.strip() for x in lines.slice(0, 1000).to_pylist() if x.strip()), b"")
        spec.nfields = max(len(first.decode("utf-8", errors="replace").split(spec.delimiter)),
                           max(colpos.values()) + 1)
    return colpos, 0


def _line_reasons(block: bytes, lines_all: pa.Array, start: int, spec: _Spec, unterminated: bool
                  ) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Structural checks of the lines ``lines_all[start:]``: invalid UTF-8, blank, truncated, field count.

    Returns (the lines as text, reason code per line, field count per line)."""
    lines = lines_all.slice(start)
    n = len(lines)
    reason = np.zeros(n, np.int8)
    bad_utf8 = _utf8_bad(block, lines_all)[start:]
    reason[bad_utf8] = _CODE["invalid_utf8"]
    text = pc.cast(pc.if_else(pa.array(bad_utf8), pa.scalar(b"", pa.large_binary()), lines), pa.large_string())
    # lines keep their leading "\n" / trailing "\r": fields are whitespace-trimmed one by one later
    short_idx = np.flatnonzero(pc.binary_length(text).to_numpy(zero_copy_only=False) <= 16)
    blank = np.zeros(n, bool)
    if short_idx.size:
        trimmed = pc.ascii_trim_whitespace(pc.take(text, pa.array(short_idx)))
        blank[short_idx] = pc.binary_length(trimmed).to_numpy(zero_copy_only=False) == 0
    reason[blank & ~bad_utf8] = _CODE["blank_line"]
    nf = _field_counts(text, spec.delimiter)
    return text, reason, nf


def _check_first_block(text: pa.Array, reason: np.ndarray, nf: np.ndarray, spec: _Spec, input_path: str) -> None:
    """A first block where no line has the expected field count means a wrong delimiter: fail naming it. A
    first line of a headerless format that starts with letters is a header row."""
    if (reason == 0).any() and not ((nf == spec.nfields) & (reason == 0)).any():
        sample = [s for s in text.slice(0, 50).to_pylist() if s]
        guess = _guess_delimiter(sample, spec.delimiter, spec.nfields)
        if guess is not None or nf[reason == 0].max() == 1:
            hint = f"looks like delimiter {guess!r}" if guess else "no delimiter found in any line"
            raise ContractError(f"{input_path}: no line has {spec.nfields} {spec.delimiter!r}-separated "
                                f"fields ({spec.fmt} format); {hint}")
    if not spec.header and len(text) and reason[0] == 0:
        f0 = (text[0].as_py() or "").split(spec.delimiter)[0].strip().strip('"')
        if any(ch.isalpha() for ch in f0):
            reason[0] = _CODE["header_row"]


def _field_count_reasons(reason: np.ndarray, nf: np.ndarray, nfields: int, unterminated: bool) -> None:
    """Too few fields: ``truncated_line`` for the file's unterminated last line, else ``missing_fields``; too
    many: ``extra_fields``."""
    short = nf < nfields
    if unterminated and len(reason) and reason[-1] == 0 and short[-1]:
        reason[-1] = _CODE["truncated_line"]
    np.copyto(reason, _CODE["missing_fields"], where=(reason == 0) & short)
    np.copyto(reason, _CODE["extra_fields"], where=(reason == 0) & (nf > nfields))


def _load_text(spec: _Spec, input_path: str, out_dir: str, cfg: Config, progress: Progress | None,
               now_us: int) -> dict:
    """Stream a delimited text file block by block: structure checks, field validation, keep or quarantine."""
    size, blocks = _blocks(input_path, max(1 << 16, cfg.data.chunk_rows * 48), progress)
    if size == 0:
        raise ContractError(f"{input_path}: input file is empty")
    validator = _Validator(spec, cfg, now_us)
    sink: _Sink | None = None
    colpos: dict[str, int] = {}
    line0 = 0  # file line number of the block's first line, minus 1
    for block, final in blocks:
        first_block = sink is None
        if first_block:
            if block.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte-order mark
                block = block[3:]
            if not block.strip():
                raise ContractError(f"{input_path}: input file is empty (only blank lines)")
        lines_all, unterminated = _split_lines(block, final)
        start = 0
        if first_block:
            colpos, start = _column_positions(spec, lines_all, input_path)
            sink = _Sink(out_dir, spec)
            if spec.fmt == "movielens":
                sink.item_side, sink.profiles = _movielens_side(input_path)
        assert sink is not None and spec.nfields is not None
        text, reason, nf = _line_reasons(block, lines_all, start, spec, unterminated)
        if first_block:
            _check_first_block(text, reason, nf, spec, input_path)
        _field_count_reasons(reason, nf, spec.nfields, unterminated)
        good = np.flatnonzero(reason == 0)
        values: dict = {}
        if good.size:
            good_text = text if good.size == len(text) else pc.take(text, pa.array(good))
            sub = np.zeros(good.size, np.int8)
            values = validator.run(_fields(good_text, spec.delimiter, spec.nfields, colpos), sub)
            reason[good] = sub
        q = np.flatnonzero(reason != 0)
        line_no = np.arange(line0 + start + 1, line0 + start + len(text) + 1, dtype=np.int64)
        sink.quarantine(line_no[q], _raw_text(lines_all.slice(start), q), reason[q].astype(np.int64))
        if good.size:
            sink.keep(values, reason[good] == 0)
        sink.rows_in += len(text)
        line0 += len(lines_all)
    assert sink is not None
    return sink.close(input_path, cfg, {"delimiter": spec.delimiter, "ts_unit": validator.ts_unit})


# ----------------------------------------------------------------------------------------------- parquet input
def _load_parquet(spec: _Spec, input_path: str, out_dir: str, cfg: Config, progress: Progress | None,
                  now_us: int) -> dict:
    """Read a parquet file in record batches: the columns as trimmed strings through the same validation."""
    fs, path = resolve(input_path)
    try:
        pf = pq.ParquetFile(path, filesystem=fs)
    except FileNotFoundError:
        raise ContractError(f"input not found: {input_path}") from None
    except (pa.ArrowInvalid, OSError) as e:
        raise ContractError(f"{input_path}: not a readable parquet file ({e})") from None
    names = pf.schema_arrow.names
    missing = [v for v in spec.columns.values() if v not in names]
    if missing:
        raise ContractError(f"{input_path}: missing column(s) {missing}; have {names}")
    if pf.metadata.num_rows == 0:
        raise ContractError(f"{input_path}: parquet file has no rows")
    validator = _Validator(spec, cfg, now_us)
    sink = _Sink(out_dir, spec)
    src_cols = list(dict.fromkeys(spec.columns.values()))
    row0 = 0
    for batch in pf.iter_batches(batch_size=cfg.data.chunk_rows, columns=src_cols):
        n = batch.num_rows
        cols: dict[str, pa.Array] = {}
        for k, src in spec.columns.items():
            a = batch.column(src)
            if k == "ts" and pa.types.is_timestamp(a.type):
                a = pc.cast(a.cast(pa.timestamp("us", tz="UTC")), pa.string())
                validator.ts_unit = "iso"
            elif pa.types.is_floating(a.type) and k != "price":
                f = a.to_numpy(zero_copy_only=False)
                whole = np.isfinite(f) & (f == np.floor(f)) & (np.abs(f) < 2**62)
                a = pc.if_else(pa.array(whole), pc.cast(pc.if_else(pa.array(whole), a, 0.0), pa.int64())
                               .cast(pa.string()), pc.cast(a, pa.string()))
            a = pc.fill_null(pc.cast(a, pa.string()), "")
            cols[k] = pc.utf8_trim_whitespace(a)
        reason = np.zeros(n, np.int8)
        values = validator.run(cols, reason)
        q = np.flatnonzero(reason != 0)
        if q.size:
            parts = [pc.take(cols[k], pa.array(q)).to_pylist() for k in spec.columns]
            raw = [",".join(f"{k}={v}" for k, v in zip(spec.columns, vals)) for vals in zip(*parts)]
            sink.quarantine(row0 + q + 1, raw, reason[q].astype(np.int64))
        sink.keep(values, reason == 0)
        sink.rows_in += n
        row0 += n
        if progress:
            progress(row0, pf.metadata.num_rows)
    return sink.close(input_path, cfg, {"ts_unit": validator.ts_unit})


# ----------------------------------------------------------------------------------------------- staging
def _staging_dir(out_dir: str) -> str:
    """A fresh directory beside ``out_dir`` (same filesystem, so moving out of it is a rename)."""
    base, q, query = out_dir.partition("?")  # URIs may carry options after "?"
    base = base.rstrip("/") or base
    parent, _, name = base.rpartition("/") if "://" in base else (os.path.dirname(os.path.abspath(base)), "",
                                                                   os.path.basename(os.path.abspath(base)))
    return join(parent, f".{name}.staging-{uuid.uuid4().hex[:12]}") + q + query


@contextlib.contextmanager
def atomic_data_dir(out_dir: str) -> Iterator[str]:
    """Yield a fresh staging dir beside ``out_dir`` to write a data dir into; when the block succeeds its contract
    files move into ``out_dir`` (:func:`_commit`); the staging dir is removed either way."""
    staging = _staging_dir(out_dir)
    try:
        yield staging
        _commit(staging, out_dir)
    finally:
        _remove_dir(staging)  # after a failure: all of it; after success: nothing is left there


def _remove_dir(uri: str) -> None:
    fs, path = resolve(uri)
    with contextlib.suppress(FileNotFoundError, OSError):
        fs.delete_dir(path)


def _commit(staging: str, out_dir: str) -> None:
    """Move the staged data dir into place: a rename when a local ``out_dir`` does not exist; else file by file (the
    data files of the contract only, ``summary.json`` last) and stale contract files of a previous load
    removed, so ``out_dir`` never mixes two loads. Other files in ``out_dir`` are left alone."""
    fs, src = resolve(staging)
    _, dst = resolve(out_dir)
    local = isinstance(fs, pafs.LocalFileSystem)
    if local and fs.get_file_info(dst).type == pafs.FileType.NotFound:
        fs.create_dir(str(PurePosixPath(dst).parent), recursive=True)
        fs.move(src, dst)  # one rename: out_dir appears complete or not at all
        return
    fs.create_dir(dst, recursive=True)
    for name in (EVENTS_FILE, ITEMS_FILE, USERS_FILE, QUARANTINE_FILE, SUMMARY_FILE):
        staged, final = f"{src}/{name}", f"{dst}/{name}"
        if fs.get_file_info(staged).type == pafs.FileType.File:
            fs.move(staged, final)
        elif fs.get_file_info(final).type == pafs.FileType.File:
            fs.delete_file(final)
    fs.delete_dir(src)


def load(fmt: str, input_path: str, out_dir: str, column_map: dict[str, str] | None = None,
         cfg: Config | None = None, progress: Progress | None = None, now_us: int | None = None) -> dict:
    """Load ``input_path`` of format ``fmt`` into the data dir ``out_dir``; returns the summary (see module doc).

    ``column_map`` (csv, parquet): contract column -> source column name (or 0-based position for headerless
    csv). ``cfg``: a :class:`pi2i.config.Config` (``data.*`` keys). ``progress(done, total)``: bytes or rows.
    ``now_us``: the load time that ``future_ts`` is measured from (default: now). Atomic (see module doc).
    """
    cfg = cfg or Config()
    started = time.perf_counter()
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise ContractError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    if column_map and fmt in ("taobao", "movielens"):
        raise ContractError(f"--map applies to csv and parquet input, not {fmt}")
    if "://" not in input_path and not os.path.exists(input_path):
        raise ContractError(f"input not found: {input_path}")
    spec = _spec(fmt, input_path, column_map, cfg)
    out_fs, out_path = resolve(out_dir)
    if out_fs.get_file_info(out_path).type == pafs.FileType.File:
        raise ContractError(f"--out {out_dir} is a file, expected a directory")
    now = to_us(dt.datetime.now(dt.UTC)) if now_us is None else int(now_us)
    with atomic_data_dir(out_dir) as staging:
        reader = _load_parquet if fmt == "parquet" else _load_text
        summary = reader(spec, input_path, staging, cfg, progress, now)
        summary["seconds"] = round(time.perf_counter() - started, 3)
        write_json(summary, join(staging, SUMMARY_FILE))
    return summary

