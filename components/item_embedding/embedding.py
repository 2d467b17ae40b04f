"""Item embedding math (no TFX, no Beam): co-engagement PPMI factorisation + content projection.

Every function is deterministic for fixed inputs and seed. `build_item_embeddings` is the whole
recipe; the ItemEmbeddingGen component only gathers the per-user item sets and writes the result.

Recipe (see also the ItemEmbeddingGen module docstring):

1. Incidence X [users, items] (binary): user u engaged positively with item i in TRAINING data.
   Items engaged by fewer than `min_count` training users are dropped from X (they become cold).
2. Co-engagement C = X^T X with a zero diagonal: C[i, j] = number of training users who engaged
   with both i and j (i != j). Sparse, symmetric, exact integer counts.
3. PPMI with context smoothing alpha (Levy, Goldberg & Dagan 2015), shift 0:
     PMI(i, j) = log( P(i, j) / (P(i) * P_alpha(j)) )
     P(i, j) = C[i, j] / D,  P(i) = C[i, :].sum() / D,  D = C.sum(),
     P_alpha(j) = c_j^alpha / sum_k c_k^alpha,  c_j = C[:, j].sum()
   PPMI = max(PMI, 0) on the non-zeros of C (zeros of C stay zero).
4. Truncated SVD of PPMI restricted to items with a non-zero row: PPMI ~ U S V^T, k = cf_dim
   capped by the matrix (k < min(shape) for ARPACK, <= min(shape) dense). Item vectors are
   U * sqrt(S) (symmetric weighting), components sorted by singular value, sign fixed so that each
   column's largest-magnitude entry is positive, then rows are L2-normalised. Items with no CF
   signal (not engaged, below min_count, no co-engagement, or a numerically zero row) get zeros.
5. Content part (dim - cf_dim dims): the catalog content vector, projected by a fixed seeded
   Gaussian matrix when it is wider than the content part, zero-padded when narrower, then
   L2-normalised (an all-zero / missing content vector stays zero).
6. Final = concat(cf, content), each part scaled to norm 1/sqrt(P) where present, P = number of
   parts with dims > 0 (so 1/sqrt(2) each normally). A warm item with content has norm 1, a cold
   one norm 1/sqrt(2); dot products therefore weigh the two views equally.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from pinrank.pipeline import features
from pinrank.pipeline.config import ItemEmbeddingConfig

PPMI_ALPHA = 0.75  # context-distribution smoothing (Levy et al. 2015); 1.0 disables it
PPMI_SHIFT = 0.0  # log k shift (SGNS negatives analogue); 0 = plain PPMI
DENSE_SVD_MAX = 1024  # matrices with min(shape) <= this use an exact dense SVD (LAPACK)
_ZERO_NORM = 1e-9

METHOD = (
    "cf: PPMI (alpha={alpha}, shift=0) of the training-user item co-engagement matrix, truncated "
    "SVD U*sqrt(S), L2-normalised, zeros for cold items; content: catalog embedding, seeded "
    "Gaussian random projection or zero-padding, L2-normalised; concat with each part scaled "
    "to norm 1/sqrt({parts})"
)


def _incidence(user_item_sets: Sequence[Sequence[int] | np.ndarray], n_items: int) -> sp.csr_matrix:
    """Binary users x items CSR matrix from per-user lists of item *indices* (dups ignored)."""
    rows: List[np.ndarray] = []
    cols: List[np.ndarray] = []
    for u, items in enumerate(user_item_sets):
        idx = np.unique(np.asarray(items, dtype=np.int64))
        if idx.size and (idx[0] < 0 or idx[-1] >= n_items):
            raise ValueError(f"item index out of range [0, {n_items}) for user row {u}")
        rows.append(np.full(idx.size, u, dtype=np.int64))
        cols.append(idx)
    n_users = len(user_item_sets)
    if not rows:
        return sp.csr_matrix((0, n_items), dtype=np.float64)
    r, c = np.concatenate(rows), np.concatenate(cols)
    return sp.csr_matrix((np.ones(r.size), (r, c)), shape=(n_users, n_items), dtype=np.float64)


def cooccurrence(user_item_sets: Sequence[Sequence[int] | np.ndarray], n_items: int) -> sp.csr_matrix:
    """Item x item co-engagement counts: C[i, j] = #users whose set holds both i and j (i != j).

    `user_item_sets` holds item *indices* in [0, n_items). Returns a symmetric float64 CSR matrix
    with a zero diagonal and explicit zeros removed.
    """
    x = _incidence(user_item_sets, n_items)
    c = (x.T @ x).tocsr()
    c = (c - sp.diags(c.diagonal(), format="csr")).tocsr()
    c.eliminate_zeros()
    c.sort_indices()
    return c


def ppmi(counts: sp.spmatrix, alpha: float = PPMI_ALPHA, shift: float = PPMI_SHIFT) -> sp.csr_matrix:
    """Positive PMI of a co-occurrence count matrix, with context smoothing `alpha`.

    PMI(i, j) = log C[i,j] - log rowsum_i - log P_alpha(j) - shift, P_alpha(j) = c_j^a / sum c^a,
    kept where > 0. All-zero input gives an all-zero output.
    """
    c = sp.csr_matrix(counts, dtype=np.float64)
    c.eliminate_zeros()
    if c.nnz == 0:
        return sp.csr_matrix(c.shape, dtype=np.float64)
    if c.data.min() < 0:
        raise ValueError("co-occurrence counts must be non-negative")
    row_sum = np.asarray(c.sum(axis=1)).ravel()
    col_sum = np.asarray(c.sum(axis=0)).ravel()
    col_alpha = np.power(col_sum, alpha, where=col_sum > 0, out=np.zeros_like(col_sum))
    p_ctx = col_alpha / col_alpha.sum()
    coo = c.tocoo()
    pmi = np.log(coo.data) - np.log(row_sum[coo.row]) - np.log(p_ctx[coo.col]) - shift
    keep = pmi > 0
    out = sp.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=c.shape)
    out.sort_indices()
    return out


def _fix_signs(u: np.ndarray) -> np.ndarray:
    """Make each column's largest-|.| entry positive (SVD vectors are defined up to sign)."""
    if u.size == 0:
        return u
    pivot = u[np.argmax(np.abs(u), axis=0), np.arange(u.shape[1])]
    return u * np.where(pivot < 0, -1.0, 1.0)


def factorise(matrix: sp.spmatrix, k: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Rank-k item vectors U * sqrt(S) of a (PPMI) matrix, components by decreasing singular value.

    Returns (vectors [n_rows, k] float64, singular values [k]); when the matrix supports fewer
    than k components (small or rank-deficient), the missing columns / values are zero.
    Dense LAPACK SVD when min(shape) <= DENSE_SVD_MAX, else ARPACK `svds` with a seeded v0.
    Rows are NOT normalised here.
    """
    n_rows, n_cols = matrix.shape
    out = np.zeros((n_rows, k), dtype=np.float64)
    svals = np.zeros(k, dtype=np.float64)
    small = min(n_rows, n_cols)
    if k <= 0 or small == 0 or matrix.nnz == 0:
        return out, svals
    if small <= DENSE_SVD_MAX:
        u, s, _ = np.linalg.svd(matrix.toarray(), full_matrices=False)
        k_eff = min(k, s.size)
        u, s = u[:, :k_eff], s[:k_eff]
    else:
        k_eff = min(k, small - 1)
        v0 = np.random.default_rng(seed).standard_normal(small)
        u, s, _ = svds(sp.csr_matrix(matrix, dtype=np.float64), k=k_eff, v0=v0,
                       solver="arpack", random_state=seed)
        order = np.argsort(-s, kind="stable")
        u, s = u[:, order], s[order]
    # Components beyond the numerical rank carry arbitrary directions: drop them.
    tol = s.max(initial=0.0) * max(matrix.shape) * np.finfo(np.float64).eps
    s = np.where(s > tol, s, 0.0)
    u = _fix_signs(u) * np.sqrt(s)[None, :]
    out[:, :k_eff] = u
    svals[:k_eff] = s
    return out, svals


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation; rows with norm <= 1e-9 become exactly zero."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    ok = norm > _ZERO_NORM
    return np.where(ok, x / np.where(ok, norm, 1.0), 0.0)


def content_projection(content: np.ndarray, out_dim: int, seed: int = 0) -> np.ndarray:
    """Map content vectors [N, E] to [N, out_dim], L2-normalised.

    E > out_dim: a fixed Gaussian random projection R [E, out_dim], R_ij ~ N(0, 1/out_dim) from
    `np.random.default_rng(seed)` (depends only on E, out_dim and seed). E <= out_dim: zero-padded.
    """
    content = np.asarray(content, dtype=np.float64)
    if content.ndim != 2:
        raise ValueError(f"content must be [N, E], got shape {content.shape}")
    n, e = content.shape
    if out_dim <= 0:
        return np.zeros((n, 0), dtype=np.float64)
    if e > out_dim:
        proj = np.random.default_rng(seed).normal(0.0, 1.0 / np.sqrt(out_dim), size=(e, out_dim))
        mapped = content @ proj
    else:
        mapped = np.zeros((n, out_dim), dtype=np.float64)
        mapped[:, :e] = content
    return l2_normalise(mapped)


def content_matrix(items_df: pd.DataFrame) -> np.ndarray:
    """Catalog `embedding` column -> [N, E] float64 (missing / empty rows are zeros)."""
    vecs = [np.asarray(v if v is not None else [], dtype=np.float64).ravel()
            for v in items_df["embedding"]]
    e = max((v.size for v in vecs), default=0)
    out = np.zeros((len(vecs), e), dtype=np.float64)
    for i, v in enumerate(vecs):
        if v.size not in (0, e):
            raise ValueError(f"item {items_df['item_id'].iloc[i]}: content dim {v.size} != {e}")
        out[i, :v.size] = v
    if not np.isfinite(out).all():
        raise ValueError("catalog content embeddings contain non-finite values")
    return out


def interests_matrix(items_df: pd.DataFrame) -> np.ndarray:
    """Catalog `interests` column -> [N, K] int32 padded with -1 (K >= 1)."""
    lists = [np.asarray(v if v is not None else [], dtype=np.int32).ravel()
             for v in items_df["interests"]]
    k = max([1] + [v.size for v in lists])
    out = np.full((len(lists), k), -1, dtype=np.int32)
    for i, v in enumerate(lists):
        out[i, :v.size] = v
    return out


def sorted_catalog(items_df: pd.DataFrame) -> pd.DataFrame:
    """The catalog sorted by item_id; rejects duplicate ids."""
    missing = set(features.ITEM_COLUMNS) - set(items_df.columns)
    if missing:
        raise ValueError(f"items table lacks columns {sorted(missing)}")
    df = items_df.sort_values("item_id", kind="stable").reset_index(drop=True)
    ids = df["item_id"].to_numpy(dtype=np.int64)
    if ids.size and (np.diff(ids) == 0).any():
        dup = ids[1:][np.diff(ids) == 0][:5].tolist()
        raise ValueError(f"duplicate item_id in catalog, e.g. {dup}")
    return df


def build_item_embeddings(user_item_sets: Iterable[Sequence[int]], items_df: pd.DataFrame,
                          cfg: ItemEmbeddingConfig, alpha: float = PPMI_ALPHA,
                          ) -> Tuple[np.ndarray, np.ndarray, Dict]:
    """The full recipe. `user_item_sets`: one sequence of catalog item *ids* per training user.

    Returns (item_id [N] int64 sorted, embedding [N, cfg.dim] float32, meta dict).
    Ids absent from the catalog are ignored (counted in meta).
    """
    if cfg.dim <= 0 or not 0 <= cfg.cf_dim <= cfg.dim:
        raise ValueError(f"need dim > 0 and 0 <= cf_dim <= dim, got dim={cfg.dim}, "
                         f"cf_dim={cfg.cf_dim}")
    df = sorted_catalog(items_df)
    ids = df["item_id"].to_numpy(dtype=np.int64)
    n = ids.size
    content_dim = cfg.dim - cfg.cf_dim

    # Item ids -> catalog row indices.
    sets_idx: List[np.ndarray] = []
    unknown: set = set()
    n_users = 0
    for items in user_item_sets:
        n_users += 1
        arr = np.unique(np.asarray(list(items), dtype=np.int64))
        pos = np.minimum(np.searchsorted(ids, arr), max(n - 1, 0))
        hit = ids[pos] == arr if n else np.zeros(arr.size, dtype=bool)
        unknown.update(arr[~hit].tolist())
        sets_idx.append(pos[hit])

    # min_count: items engaged by fewer training users are treated as cold.
    support = np.zeros(n, dtype=np.int64)
    for s in sets_idx:
        support[s] += 1
    eligible = support >= max(cfg.min_count, 1)
    sets_idx = [s[eligible[s]] for s in sets_idx]

    counts = cooccurrence(sets_idx, n)
    pmi = ppmi(counts, alpha=alpha)
    active = np.flatnonzero(np.diff(pmi.indptr) > 0)  # items with a non-zero PPMI row
    sub = pmi[active][:, active] if active.size else sp.csr_matrix((0, 0))
    vecs, svals = factorise(sub, cfg.cf_dim, seed=cfg.seed)
    cf = np.zeros((n, cfg.cf_dim), dtype=np.float64)
    cf[active] = l2_normalise(vecs)
    warm = np.linalg.norm(cf, axis=1) > 0

    content_in = content_matrix(df)
    content = content_projection(content_in, content_dim, seed=cfg.seed)
    has_content = np.linalg.norm(content, axis=1) > 0

    parts = int(cfg.cf_dim > 0) + int(content_dim > 0)
    scale = 1.0 / np.sqrt(parts)
    emb = np.concatenate([cf * scale, content * scale], axis=1).astype(np.float32)

    meta = {
        "dim": cfg.dim,
        "cf_dim": cfg.cf_dim,
        "content_dim": content_dim,
        "content_input_dim": int(content_in.shape[1]),
        "content_mapping": ("random_projection" if content_in.shape[1] > content_dim
                            else "zero_pad") if content_dim else "none",
        "method": METHOD.format(alpha=alpha, parts=parts),
        "ppmi_alpha": alpha,
        "ppmi_shift": PPMI_SHIFT,
        "min_count": cfg.min_count,
        "seed": cfg.seed,
        "n_items": int(n),
        "n_train_users": n_users,
        "n_train_users_with_positives": int(sum(1 for s in sets_idx if s.size)),
        "n_unknown_train_items": len(unknown),
        "n_items_below_min_count": int(((support > 0) & ~eligible).sum()),
        "n_cooccurrence_pairs": int(counts.nnz),
        "n_ppmi_nonzeros": int(pmi.nnz),
        "svd_rank": int((svals > 0).sum()),
        "singular_values": [round(float(v), 6) for v in svals],
        "n_items_with_cf_signal": int(warm.sum()),
        "n_cold_items": int(n - warm.sum()),
        "n_items_without_content": int(n - has_content.sum()) if content_dim else int(n),
    }
    return ids, emb, meta
