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
