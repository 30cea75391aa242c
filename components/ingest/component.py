"""Ingest: snapshot the day's raw data into the run, and materialize it into the Feast feature store."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Metrics, Output

from components.image import PINNED_IMAGE


@dsl.component(base_image=PINNED_IMAGE, install_kfp_package=False)
def ingest(run_date: str, data_uri: str, feature_repo: str, feature_store_yaml: str, data: Output[Dataset],
           features: Output[Artifact], stats: Output[Metrics]):
    """Copy ``data_uri`` (a data dir of the contract) into ``data`` and run ``pi2i.data.features.ingest`` on it.

    ``run_date`` is an input so KFP's cache key changes every day. ``feature_repo`` is the Feast repository
    template ('' skips Feast); its working copy (offline parquet, registry, local online store) is the
    ``features`` artifact. ``feature_store_yaml`` swaps in another store config (e.g. the Redis one)."""
    import pyarrow.parquet as pq

    from components._common import DATA_FILES, copy_tree, flat_metrics
    from pi2i.contracts import join, open_input

    copied = copy_tree(data_uri, data.path, DATA_FILES)
    if "events.parquet" not in copied:
        raise FileNotFoundError(f"{data_uri} holds no events.parquet (a pi2i data dir is expected)")
    data.metadata.update({"run_date": run_date, "source": data_uri, "files": copied})
    with open_input(join(data.path, "events.parquet")) as f:
        stats.log_metric("events", float(pq.ParquetFile(f).metadata.num_rows))
    if feature_repo:
        from pi2i.data.features import ingest as feast_ingest

        summary = feast_ingest(data.path, repo_path=feature_repo, work_dir=features.path,
                               store_yaml=feature_store_yaml or None)
        features.metadata.update({"views": summary.get("views", []), "repo": summary.get("repo", "")})
        for k, v in flat_metrics({"rows": summary.get("rows", {}),
                                  "timings_s": summary.get("timings_s", {})}).items():
            stats.log_metric(f"feast.{k}", v)
