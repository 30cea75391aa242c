"""The registry's object-store code path against a real S3 endpoint (moto): versions written in place with the
MANIFEST last, the best-effort lease keeping HISTORY and CURRENT in step for concurrent promotes, gc of an
incomplete version, and the start-up fallback."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pyarrow.fs as pafs
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the registry test helpers
from test_registry import _artifacts, _assert_history_consistent

from pi2i.publish import registry as reg

pytestmark = pytest.mark.cluster


def test_s3_registry_publish_promote_rollback_and_gc(s3_store, tmp_path: Path) -> None:
    art = _artifacts(tmp_path / "art")
    r = s3_store.uri("registry-" + tmp_path.name)
    a = reg.publish(r, *art)
    b = reg.publish(r, *art)
    assert reg.list_versions(r) == [a, b] and reg.current(r) == a and reg.verify(r, b)["files"] == 5
    threads = [threading.Thread(target=reg.promote, args=(r, b if i % 2 == 0 else a, False)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _assert_history_consistent(r, 1 + 6)
    assert reg.rollback(r) == reg._stack(r)[-1]
    fs, root = reg._root(r)
    incomplete = f"{root}/v20000101-000000-deadbeef"
    with fs.open_output_stream(incomplete + "/i2i_table.parquet") as f:  # a writer killed before its MANIFEST
        f.write(b"partial")
    assert reg.gc(r) == [] and reg.gc(r, ttl_s=0) == [incomplete]
    assert fs.get_file_info(incomplete).type == pafs.FileType.NotFound
    assert reg.resolve_serving_version(r).version == reg.current(r)
    fs.delete_file(f"{root}/{reg.CURRENT_FILE}")
    fb = reg.resolve_serving_version(r)
    assert fb.fallback and fb.version == reg._stack(r)[-1] and "CURRENT is missing" in fb.reason
