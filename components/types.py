"""Custom artifact types (recorded in MLMD like the standard ones)."""
from tfx.types.artifact import Artifact
from tfx.types.system_artifacts import Dataset


class ItemCatalog(Artifact):
    """The item table: `items.parquet` (item_id int64, embedding list<float32> content vector,
    interests list<int32>) and `interests.json` (interest id -> name)."""
    TYPE_NAME = "pinrank.ItemCatalog"
    TYPE_ANNOTATION = Dataset


class ItemEmbeddings(Artifact):
    """Frozen PinSage-analogue item embeddings: `item_embeddings.npz` with
    item_id [N] int64, embedding [N, D] float32, interests [N, K] int32 padded with -1,
    plus `meta.json` (dim, method, counts)."""
    TYPE_NAME = "pinrank.ItemEmbeddings"
    TYPE_ANNOTATION = Dataset


class RawData(Artifact):
    """The input files a run ingests, where they already are (imported, not copied): a
    directory of MovieLens-100K atomic files (`movielens-100k`), of ratings.csv + movies.csv
    (`movielens-csv`), or a canonical dataset written by `pinrank data` (`canonical`). Custom
    properties: `format`, and `fingerprint` (sha256 of the files' contents, or the canonical
    dataset's own), so changed files at the same path are a new artifact."""
    TYPE_NAME = "pinrank.RawData"
    TYPE_ANNOTATION = Dataset


class EventLog(Artifact):
    """The canonical dataset (components/data/events.py: `events/` shards, `items.parquet`,
    optional impressions and user attributes, `DATASET.json`), built by DatasetGen from a
    RawData artifact or generated (synthetic)."""
    TYPE_NAME = "pinrank.EventLog"
    TYPE_ANNOTATION = Dataset


class UserEmbeddingSnapshot(Artifact):
    """A daily user-embedding snapshot (serving/batch_embeddings.py). The snapshot itself stays
    where the online path reads it, `<snapshot_root>/<as_of>/`; this artifact records it:
    `snapshot.json` (its path and manifest) in the artifact's URI and custom properties
    snapshot_uri, as_of, embedded, carried, total, full_refresh, model_fingerprint,
    model_version, dataset_fingerprint."""
    TYPE_NAME = "pinrank.UserEmbeddingSnapshot"
    TYPE_ANNOTATION = Dataset
