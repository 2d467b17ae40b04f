"""Pure item-embedding math used by the ItemEmbeddingGen component (no TFX / Beam imports)."""
from pinrank.components.item_embedding.embedding import (
    build_item_embeddings,
    content_projection,
    cooccurrence,
    factorise,
    interests_matrix,
    ppmi,
)

__all__ = ["build_item_embeddings", "content_projection", "cooccurrence", "factorise",
           "interests_matrix", "ppmi"]
