"""Atomic loads into an object store (moto's S3 server on loopback): the staged data dir is moved into place
file by file, a failed load leaves the previous data dir intact, nothing of a staging dir remains."""

from __future__ import annotations

import pyarrow.fs as pafs
import pytest

from pi2i import contracts
from pi2i.contracts import ContractError
from pi2i.data.loaders import load

pytestmark = pytest.mark.cluster
GOOD = "1,100,10,pv,1511544070\n1,101,10,cart,1511544080\n2,100,11,buy,1511544090\n"


def _names(uri: str) -> list[str]:
    fs, path = contracts.resolve(uri)
    return sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)))


def test_load_into_s3_is_atomic(s3_store, tmp_path):
    src = tmp_path / "a.csv"
    src.write_text(GOOD)
    out = s3_store.uri("loads", "d")
    s = load("taobao", str(src), out)
    assert s["rows_kept"] == 3
    assert _names(out) == ["events.parquet", "items.parquet", "quarantine.parquet", "summary.json"]
    assert contracts.read_events(contracts.join(out, "events.parquet")).num_rows == 3
    bad = tmp_path / "x.csv"
    bad.write_text("1,2,3,zz,1511544070\n")
    with pytest.raises(ContractError, match="no usable rows"):
        load("taobao", str(bad), out)
    assert contracts.read_json(contracts.join(out, "summary.json"))["rows_kept"] == 3
    assert _names(s3_store.uri("loads")) == ["d"]  # no .d.staging-*
