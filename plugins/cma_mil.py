"""CMA-MIL: cross-magnification attention for multi-scale multiple-instance learning.

After the reference implementation (rashikabagri/CMAMIL) with its defects repaired; the math is in
docs/training-mil.md. Per magnification s (coarse to fine, two or more):

    Z_s = ReLU(H_s W_s)                                   per-scale adaptor
    U_s = LayerNorm(Z_s + softmax(Q_s K_tᵀ/√d) V_t)       cross-attention from scale s to the next scale t
                                                          (cyclic: 5x→10x, 10x→20x, 20x→5x)
    a = gated attention(U_s) (shared), α = softmax(a), s_i = W_cls u_i (shared)
    ℓ_s = Σ_i s_i w_i / Σ_i w_i,  w = exp(α) ("repo") or exp(a) ("exp_raw")
    logits = Σ_s softmax(ω)_s ℓ_s + b

Instance supervision ranks each stream's instances by their weighted class-y score and pseudo-labels the
top and bottom k. `cross_attention="local"` restricts each tile to its parent/children through the bag's
parent map, linear in bag size; "dense" lets every tile attend to every tile of the next scale, through
`scaled_dot_product_attention` (memory-efficient kernels) and optional query chunks.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from cmamil.aggregators import AggregatorOutput, Bag
from cmamil.magnification import magnification_order
from cmamil.models import small_variant
from cmamil.notices import notice
from cmamil.plugins._attention import GatedAttention
from cmamil.plugins._instance import InstanceSupervised, instance_loss

__all__ = ["CMAMIL", "CrossAttention", "ancestors", "cma_mil", "dense_attention", "local_attention"]

WEIGHTINGS = ("repo", "exp_raw")
CROSS_ATTENTION = ("dense", "local")


def dense_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk_size: int | None = None
) -> torch.Tensor:
    """softmax(q kᵀ/√d) v for (n, d) queries over (m, d) keys, `chunk_size` queries at a time if given."""
    if chunk_size is None or q.shape[0] <= chunk_size:
        return F.scaled_dot_product_attention(q[None], k[None], v[None])[0]
    return torch.cat(
        [F.scaled_dot_product_attention(c[None], k[None], v[None])[0] for c in q.split(chunk_size)]
    )


def local_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, owner: torch.Tensor, keys_are_children: bool
) -> torch.Tensor:
    """Attention restricted to parent/child pairs, linear in bag size.

    With `keys_are_children`, `owner[j]` is the query row that key j belongs to (its ancestor at the
    query's scale, -1 for none) and each query attends over its own keys only; otherwise `owner[i]` is
    query i's single key (its ancestor at the key's scale), whose value it takes. A query without keys
    gets zeros.
    """
    out = q.new_zeros(q.shape[0], v.shape[1])
    valid = owner >= 0
    if not keys_are_children:
        out[valid] = v[owner[valid]]
        return out
    rows, k, v = owner[valid], k[valid], v[valid]
    scores = (q[rows] * k).sum(-1) / math.sqrt(q.shape[1])
    peak = q.new_full((q.shape[0],), -math.inf).scatter_reduce(0, rows, scores.detach(), "amax")
    weights = torch.exp(scores - peak[rows])
    total = q.new_zeros(q.shape[0]).index_add(0, rows, weights)
    out = out.index_add(0, rows, weights[:, None] * v)
    return out / total.clamp_min(torch.finfo(total.dtype).tiny)[:, None]


class CrossAttention(nn.Module):
    """CA(X, Y) = LayerNorm(X + softmax(Q Kᵀ/√d) V): single head, no output projection, post-norm residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        owner: torch.Tensor | None = None,
        keys_are_children: bool = True,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """(n, d) queries from `x` attend over (m, d) `y`: densely, or locally when `owner` links are given."""
        q, k, v = self.query(x), self.key(y), self.value(y)
        if owner is None:
            mixed = dense_attention(q, k, v, chunk_size)
        else:
            mixed = local_attention(q, k, v, owner, keys_are_children)
        return self.norm(x + mixed)


def ancestors(bag: Bag, fine: str, coarse: str) -> torch.Tensor:
    """Row of each `fine` instance's ancestor at the coarser `coarse` (-1 for none), composing the bag's links."""
    chain = bag.magnifications
    top, level = chain.index(coarse), chain.index(fine)
    index = _parents(bag, chain, level)
    for step in range(level - 1, top, -1):
        up = _parents(bag, chain, step)
        index = torch.where(index >= 0, up[index.clamp_min(0)], index)
    return index


def _parents(bag: Bag, chain: tuple[str, ...], level: int) -> torch.Tensor:
    """Parent rows of `chain[level]` in `chain[level - 1]`, checked to lie in range."""
    mag, coarser = chain[level], chain[level - 1]
    parent = bag.parents.get(mag)
    n_coarse = bag.features[coarser].shape[0]
    if parent is None or not bool((parent >= 0).any()):
        raise ValueError(
            f"cross_attention='local' needs parent links from {mag} to {coarser}, and bag '{bag.bag_id}' has "
            "none (image sets, or features without nested grids); use cross_attention='dense'"
        )
    if parent.shape[0] != bag.features[mag].shape[0] or int(parent.max()) >= n_coarse:
        raise ValueError(f"bag '{bag.bag_id}': parent links of {mag} do not match the {n_coarse} rows of {coarser}")
    return parent.long()


class CMAMIL(InstanceSupervised):
    """Cross-magnification attention MIL over two or more magnifications, with instance supervision."""

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        magnifications: tuple[str, ...],
        *,
        dim: int = 128,
        dropout: float = 0.2,
        k_sample: int = 8,
        bag_weight: float = 0.7,
        bag_loss: str = "ce",
        inst_loss: str = "svm",
        subtyping: bool = False,
        attn_weighting: str = "repo",
        cross_attention: str = "dense",
        chunk_size: int | None = None,
        reference_layout: bool = True,
    ) -> None:
        super().__init__(num_classes, bag_loss, inst_loss, bag_weight, k_sample, subtyping)
        self.magnifications = magnification_order(magnifications)
        if len(self.magnifications) < 2:
            raise ValueError(
                f"cma_mil needs two or more magnifications, got {', '.join(magnifications) or 'none'}; "
                "use abmil or clam_sb for single-magnification bags"
            )
        if attn_weighting not in WEIGHTINGS:
            raise ValueError(f"attn_weighting '{attn_weighting}' is not one of {', '.join(WEIGHTINGS)}")
        if cross_attention not in CROSS_ATTENTION:
            raise ValueError(f"cross_attention '{cross_attention}' is not one of {', '.join(CROSS_ATTENTION)}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if dim < 2 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dim must be >= 2 and dropout in [0, 1), got dim={dim}, dropout={dropout}")
        if num_classes >= 3 and not subtyping:
            notice(f"cma_mil with {num_classes} classes: subtyping is off, as in the reference code, so the instance "
                   "loss trains only the bag's own class's instance classifier; --model-option subtyping=true also "
                   "teaches every other class's classifier that its top tiles in the bag are negatives")
        self.attn_weighting = attn_weighting
        self.cross_attention = cross_attention
        self.chunk_size = chunk_size
        streams = len(self.magnifications)
        self.adaptors = nn.ModuleList(nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU()) for _ in range(streams))
        self.cross = nn.ModuleList(CrossAttention(dim) for _ in range(streams))
        self.attention = GatedAttention(dim, dim // 2, dropout)
        self.instance_scores = nn.Linear(dim, num_classes)
        self.instance_classifiers = nn.ModuleList(nn.Linear(dim, 2) for _ in range(num_classes))
        self.stream_weights = nn.Parameter(torch.ones(streams))
        self.bias = nn.Parameter(torch.zeros(num_classes))
        # The reference implementation builds a bag classifier that its forward never uses; keeping it (no
        # gradient ever reaches it) reproduces the reference parameter count, 363,982 for E=512, d=128, C=2.
        self.classifiers = nn.Linear(dim, num_classes) if reference_layout else None

    def forward(self, bag: Bag, label: torch.Tensor | None = None) -> AggregatorOutput:
        """Bag logits (1, C), softmax attention per magnification, and the instance loss when `label` is given."""
        mags = self.magnifications
        missing = [m for m in mags if m not in bag.features or bag.features[m].shape[0] == 0]
        if missing:
            raise ValueError(f"bag '{bag.bag_id}' has no instances at {', '.join(missing)}")
        z = [adaptor(bag.features[m]) for adaptor, m in zip(self.adaptors, mags)]
        streams = []
        for i, ca in enumerate(self.cross):
            j = (i + 1) % len(mags)
            if self.cross_attention == "dense":
                streams.append(ca(z[i], z[j], chunk_size=self.chunk_size))
            elif j > i:
                streams.append(ca(z[i], z[j], owner=ancestors(bag, mags[j], mags[i]), keys_are_children=True))
            else:
                streams.append(ca(z[i], z[j], owner=ancestors(bag, mags[i], mags[j]), keys_are_children=False))
        stream_logits, attention, inst_losses = [], {}, []
        # the instance loss is computed only when it is trained (bag_weight 1 leaves the bag loss alone)
        y = None if label is None or self.bag_weight == 1.0 else int(label.reshape(-1)[0])
        for mag, u in zip(mags, streams):
            raw = self.attention(u)
            alpha = torch.softmax(raw, dim=0)
            weights = torch.exp(alpha) if self.attn_weighting == "repo" else torch.exp(raw - raw.max().detach())
            attributes = self.instance_scores(u) * weights[:, None]
            stream_logits.append(attributes.sum(0) / weights.sum())
            attention[mag] = alpha
            if y is not None:
                inst_losses.append(
                    instance_loss(
                        u, attributes.detach(), self.instance_classifiers, y, self.k_sample,
                        self.inst_loss_fn, self.subtyping, weights,
                    )
                )
        fusion = torch.softmax(self.stream_weights, dim=0)
        logits = (fusion[:, None] * torch.stack(stream_logits)).sum(0) + self.bias
        aux = torch.stack(inst_losses).mean() if inst_losses else None
        return AggregatorOutput(logits=logits[None], attention=attention, aux_loss=aux)


@small_variant(dim=16, k_sample=2)
def cma_mil(*, in_dim: int, num_classes: int, magnifications: tuple[str, ...], **options) -> CMAMIL:
    """CMA-MIL (363,982 parameters for in_dim 512, dim 128, two classes, three magnifications)."""
    return CMAMIL(in_dim, num_classes, magnifications, **options)
