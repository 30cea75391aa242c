"""The Ray steps on a real two-node Ray cluster (``ray start --head`` + ``ray start --address``), with every
input and output in an S3-compatible object store on loopback: what a KubeRay RayJob does on a cluster.

* Swing ``--workers 2`` through ``RAY_ADDRESS`` is bit-identical to the single-process build, run from the CLI
  and as the swing step's RayJob entrypoint;
* Ray Train with ``train.num_workers = 2`` (one worker per node), run as the train step's RayJob entrypoint,
  reads its samples from ``s3://`` and reaches the validation HR of the in-process run within noise;
* object-store failures are one-line errors (exit 2).

No API server exists here: :func:`kuberay_submitter` stands in for KubeRay's part (schema check, then the
entrypoint as the driver on the cluster); everything below it is real.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from pi2i import contracts

pytestmark = pytest.mark.cluster
PI2I = str(Path(sys.executable).with_name("pi2i"))
RAYJOB_SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "k8s" / "schemas" / "rayjob-v1.json").read_text())


def pi2i(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    out = subprocess.run([PI2I, *args], capture_output=True, text=True, timeout=timeout, env=os.environ.copy(),
                         check=False)
    assert out.returncode == 0, f"pi2i {' '.join(args)} -> {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def kuberay_submitter(manifest: dict) -> dict:
    """What KubeRay does with a RayJob, minus the pods: check it against our ray.io/v1 schema, then run its
    entrypoint as the driver on the Ray cluster (``RAY_ADDRESS``), as the submitter's ``ray job submit`` would."""
    import jsonschema

    jsonschema.Draft202012Validator(RAYJOB_SCHEMA).validate(manifest)
    argv = shlex.split(manifest["spec"]["entrypoint"])
    assert not [a for a in argv if a.startswith(("/", "file:"))], argv  # nothing only this machine can read
    out = subprocess.run([PI2I, *argv[1:]], capture_output=True, text=True, timeout=900, env=os.environ.copy(),
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return {"jobStatus": "SUCCEEDED", "jobDeploymentStatus": "Complete"}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    from pi2i.data.synthetic import generate_preset

    d = tmp_path_factory.mktemp("tiny")
    generate_preset("tiny", str(d), seed=0)
    return d


def test_cluster_has_two_nodes(ray_env):
    import ray

    ray.init(address=ray_env.address, log_to_driver=False)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert len(nodes) == 2
    assert {r for n in nodes for r in n["Resources"]} >= {"head", "node2"}


def test_swing_two_workers_on_two_nodes_is_bit_identical(ray_env, s3_store, tiny_data, tmp_path):
    """Events and index live in the object store; the 2-worker build runs its tasks on both nodes."""
    from pi2i.config import SwingConfig
    from pi2i.ibs.swing import run_swing

    events = s3_store.uri("swing", "events.parquet")
    contracts.copy_file(str(tiny_data / contracts.EVENTS_FILE), events)
    out = s3_store.uri("swing", "i2i_w2.parquet")
    pi2i("swing", "--events", events, "--out", out, "--workers", "2", "--top-t", "200", "--no-progress")
    stats = contracts.read_json(out + ".stats.json")
    assert stats["workers"] == 2

    ref = str(tmp_path / "i2i_w1.parquet")
    run_swing(str(tiny_data / contracts.EVENTS_FILE), ref, SwingConfig(top_t=200), workers=1)
    got, want = contracts.read_i2i(out), contracts.read_i2i(ref)
    assert got.num_rows == want.num_rows > 0
    assert got.equals(want)  # bit-identical: same rows, same float32 scores, same ranks


TRAIN = {"epochs": 2, "max_batches_per_epoch": 0, "seed": 0}


def _train(samples: str, out: str, num_workers: int, storage: str, tmp_path: Path) -> dict:
    cfg = {"train": {**TRAIN, "num_workers": num_workers, "storage_path": storage}}
    cfg_path = tmp_path / f"train-{num_workers}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    pi2i("train", "--samples", samples, "--out", out, "--config", str(cfg_path))
    return contracts.read_json(contracts.join(out, "train_metrics.json"))


def test_ray_train_two_workers_reads_samples_from_the_object_store(ray_env, s3_store, tiny_data, tmp_path):
    """Samples are written to s3:// and nowhere else; the train step's RayJob runs 2 Ray Train workers (one per
    node, 1 CPU each) that read them and checkpoint to s3://; the validation HR matches the in-process run
    within noise."""
    from components._common import run_ray_step
    from pi2i.config import SwingConfig
    from pi2i.ibs.swing import run_swing

    i2i = s3_store.uri("train", "i2i.parquet")
    run_swing(str(tiny_data / contracts.EVENTS_FILE), i2i, SwingConfig(top_t=200), workers=1)
    events = s3_store.uri("train", "data", "events.parquet")
    contracts.copy_tree(str(tiny_data), s3_store.uri("train", "data"))
    samples = s3_store.uri("train", "samples")
    pi2i("samples", "--events", events, "--i2i", i2i, "--out", samples)
    assert not contracts.is_local(samples)

    ref = _train(samples, str(tmp_path / "model-0"), 0, str(tmp_path / "ckpt"), tmp_path)
    # the train step as the pipeline runs it with compute='rayjob': `pi2i prs train` as the RayJob's
    # entrypoint, config staged in s3://, model written to s3:// and copied into the step's artifact dir
    staging, artifact = s3_store.uri("train", "model-2"), tmp_path / "artifact"
    run_ray_step("train", "rayjob", lambda: pytest.fail("must not run in-process"),
                 ["pi2i", "prs", "train", "--samples", samples, "--out", staging, "--config", "{config}"],
                 staging, str(artifact), "pi2i", "run-1", runner=kuberay_submitter, gpus_per_worker=0,
                 config={"train": {**TRAIN, "num_workers": 2, "storage_path": s3_store.uri("train", "ckpt")}})
    got = contracts.read_json(str(artifact / "train_metrics.json"))
    # 2 workers x 1 CPU on a cluster of two 1-CPU nodes: one worker per node
    assert got["num_workers"] == 2 and ref["num_workers"] == 0
    hr_ref, hr_got = _val_hr(ref), _val_hr(got)
    print(f"validation HR@10: in-process {hr_ref:.4f}, 2 workers on 2 nodes {hr_got:.4f}")
    assert hr_ref > 0.2, ref
    assert abs(hr_got - hr_ref) <= 0.1, (hr_got, hr_ref)
    assert contracts.isfile(s3_store.uri("train", "model-2", "model.safetensors"))
    assert contracts.listdir(s3_store.uri("train", "ckpt"))  # Ray Train persisted its checkpoints in s3://


def _val_hr(metrics: dict) -> float:
    """Validation HR@10 of the best epoch (``train_metrics.json``)."""
    assert "best" in metrics, json.dumps(metrics)[:500]
    return float(metrics["best"]["val_hr10"])


def test_object_store_errors_are_one_line_and_exit_2(s3_store, tiny_data, tmp_path):
    """Missing bucket, unreachable endpoint, missing credentials: exit 2, one line naming the URI."""
    events = str(tiny_data / contracts.EVENTS_FILE)
    cases = {
        "bucket": ({}, ["swing", "--events", events, "--out", "s3://no-such-bucket/i2i.parquet"],
                   "s3://no-such-bucket/i2i.parquet", "does not exist"),
        "endpoint": ({"AWS_ENDPOINT_URL": "http://127.0.0.1:9"},
                     ["swing", "--events", s3_store.uri("x", "events.parquet"), "--out", str(tmp_path / "o")],
                     s3_store.uri("x", "events.parquet"), "unreachable"),
        "credentials": ({"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""},
                        ["swing", "--events", s3_store.uri("x", "events.parquet"), "--out", str(tmp_path / "o")],
                        s3_store.uri("x", "events.parquet"), "credentials"),
    }
    for name, (env, args, uri, what) in cases.items():
        out = subprocess.run([PI2I, *args], capture_output=True, text=True, timeout=120,
                             env={**os.environ, **env}, check=False)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2, (name, out.stderr[-2000:])
        assert len(lines) == 1 and uri in lines[0] and what in lines[0], (name, lines)
        assert s3_store.env["AWS_SECRET_ACCESS_KEY"] not in out.stderr + out.stdout


def test_filesystem_layer_round_trips_and_never_half_writes(s3_store):
    base = s3_store.uri("fs")
    t = pa.table({"a": [1, 2, 3]})
    contracts.write_parquet(t, contracts.join(base, "d", "t.parquet"))
    contracts.write_json({"k": 1}, contracts.join(base, "d", "sub", "m.json"))
    assert contracts.listdir(contracts.join(base, "d")) == ["sub", "t.parquet"]
    assert contracts.read_parquet(contracts.join(base, "d", "t.parquet")).equals(t)
    assert contracts.copy_tree(contracts.join(base, "d"), contracts.join(base, "e")) == ["sub", "t.parquet"]
    with contracts.local_copy(contracts.join(base, "e")) as local:
        assert sorted(os.listdir(local)) == ["sub", "t.parquet"]
        assert json.loads(Path(local, "sub", "m.json").read_text()) == {"k": 1}
    with pytest.raises(RuntimeError), contracts.open_output(contracts.join(base, "half.bin")) as f:
        f.write(b"partial")
        raise RuntimeError("writer died")
    assert not contracts.exists(contracts.join(base, "half.bin"))
    contracts.rm_tree(contracts.join(base, "e"))
    assert not contracts.exists(contracts.join(base, "e"))
    with pytest.raises(contracts.ContractError, match="s3://no-such-bucket/x.json: the bucket"):
        contracts.write_json({}, "s3://no-such-bucket/x.json")


def test_swing_step_as_a_rayjob_entrypoint_on_the_cluster(ray_env, s3_store, tiny_data, tmp_path):
    """compute='rayjob' for real, short of an API server: the swing step's RayJob (validated against our
    ray.io/v1 schema) has its entrypoint run the way KubeRay's submitter runs it — a driver on the Ray cluster
    (RAY_ADDRESS), the node environment carrying the object-store credentials — reading the training events,
    the staged config and writing the index all in s3://; the step then copies the output into the KFP
    artifact dir. Equal to the in-process build."""
    from components._common import run_ray_step
    from pi2i.config import SwingConfig
    from pi2i.ibs.swing import run_swing

    train_uri, staging = s3_store.uri("rayjob", "train"), s3_store.uri("rayjob", "staging", "run-1", "swing")
    contracts.copy_tree(str(tiny_data), train_uri)

    artifact = tmp_path / "artifact"
    status = run_ray_step(
        "swing", "rayjob", lambda: pytest.fail("must not run in-process"),
        ["pi2i", "swing", "--events", contracts.join(train_uri, "events.parquet"),
         "--out", contracts.join(staging, "i2i_table.parquet"), "--config", "{config}", "--no-progress"],
        staging, str(artifact), "pi2i", "run-1", config={"swing": {"top_t": 200, "workers": 2}},
        runner=kuberay_submitter)
    assert status["jobStatus"] == "SUCCEEDED"
    assert contracts.read_json(contracts.join(staging, "i2i_table.parquet.stats.json"))["workers"] == 2

    ref = str(tmp_path / "ref.parquet")
    run_swing(str(tiny_data / contracts.EVENTS_FILE), ref, SwingConfig(top_t=200), workers=1)
    assert contracts.read_i2i(str(artifact / "i2i_table.parquet")).equals(contracts.read_i2i(ref))
