"""The filesystem layer (pi2i.contracts) on local paths: the same calls the object-store tests make on s3://
(tests/cluster/), here without a server — whole-or-nothing writes, copies between trees, errors naming the URI,
and s3:// configured from the environment only."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pi2i import contracts as c


def test_writes_land_whole_or_not_at_all(tmp_path):
    target = str(tmp_path / "d" / "t.parquet")
    c.write_parquet(pa.table({"a": [1, 2]}), target)
    with pytest.raises(RuntimeError), c.open_output(target) as f:
        f.write(b"garbage")
        raise RuntimeError("writer died")
    assert c.read_parquet(target).column("a").to_pylist() == [1, 2]  # the old file, untouched
    assert os.listdir(tmp_path / "d") == ["t.parquet"]  # no temp file left behind
    assert oct(os.stat(target).st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_copy_tree_local_copy_listdir_rm_tree(tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    c.write_json({"k": 1}, c.join(src, "sub", "m.json"))
    with c.open_output(c.join(src, "a.npy")) as f:
        np.save(f, np.arange(4))
    assert c.copy_tree(src, dst) == ["a.npy", "sub"]
    assert c.copy_tree(src, str(tmp_path / "only"), names=["sub"]) == ["sub"]
    assert c.listdir(dst) == ["a.npy", "sub"] and c.isdir(dst) and c.isfile(c.join(dst, "a.npy"))
    with c.open_input(c.join(dst, "a.npy")) as f:
        assert np.load(f).tolist() == [0, 1, 2, 3]
    with c.local_copy(c.join(dst, "sub", "m.json")) as p:
        assert json.loads(Path(p).read_text()) == {"k": 1}
    with c.local_output_dir(str(tmp_path / "lib")) as d:
        Path(d, "w.bin").write_bytes(b"x")
    assert c.read_bytes(str(tmp_path / "lib" / "w.bin")) == b"x"
    c.rm_tree(dst)
    assert not c.exists(dst)


@pytest.mark.parametrize("call", [
    lambda d: c.read_parquet(f"{d}/missing.parquet"),
    lambda d: c.read_json(f"{d}/missing.json"),
    lambda d: c.listdir(f"{d}/missing"),
    lambda d: c.copy_tree(f"{d}/missing", f"{d}/out"),
    lambda d: c.local_copy(f"{d}/missing").__enter__(),
])
def test_errors_are_contract_errors_naming_the_uri(tmp_path, call):
    with pytest.raises(c.ContractError, match=str(tmp_path / "missing")):
        call(str(tmp_path))


def test_s3_credentials_come_from_the_environment_only(monkeypatch, tmp_path):
    for k in c.S3_ENV + ("AWS_WEB_IDENTITY_TOKEN_FILE",):
        monkeypatch.delenv(k, raising=False)
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "credentials").write_text("[default]\naws_access_key_id=FROMFILE\naws_secret_access_key=x\n")
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(c.ContractError, match=r"s3://bucket/x: missing object-store credentials"):
        c.exists("s3://bucket/x")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    fs, path = c.resolve("s3://bucket/x/y.parquet")
    assert path == "bucket/x/y.parquet" and type(fs).__name__ == "S3FileSystem"
    with pytest.raises(c.ContractError, match=r"cannot reach s3://bucket/x: object-store endpoint unreachable"):
        c.exists("s3://bucket/x")


def test_join_parent_basename():
    assert c.join("s3://b/reg", "v1", "model") == "s3://b/reg/v1/model"
    assert c.parent("s3://b/reg/v1/") == "s3://b/reg" and c.basename("s3://b/reg/v1/") == "v1"
    assert c.join("/a", "b") == "/a/b" and c.parent("/a/b") == "/a"
