"""Fusion modules over any number of feature vectors, and the classifiers on top of them.

Every fusion is `Fusion(dims, num_labels, classifier, width, dropout)` with
`forward(xs: list of [B, D_i] tensors) -> logits [B, num_labels]`; one feature vector is the
unimodal ablation. `classifier(in_dim)` builds the classifier a fusion puts on its fused
vector. Optional `prepare(xs) -> xs`: a parameter-free first step that training runs once per
epoch instead of once per step (concat's concatenation). A new fusion is one class here plus
one entry in FUSIONS.
"""

from __future__ import annotations

import torch
from torch import nn


class Dropout(nn.Module):
    """Dropout with masks drawn from a pool, not afresh at every step.

    torch's CPU Bernoulli draw for a 512 x 1664 batch costs ~3x the first matmul on this CPU.
    Here `pool` masks are drawn once per fit; a batch takes a window of consecutive masks at a
    random offset. Batches are random rows, so the row <-> mask pairing is still random at every
    step."""

    def __init__(self, p: float, pool: int = 4096):
        super().__init__()
        self.p, self.pool, self.masks = p, pool, None

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        if self.masks is None or self.masks.shape[1] != x.shape[1] or len(self.masks) < len(x):
            self.masks = (torch.rand(max(self.pool, len(x)), x.shape[1]) >= self.p).to(x.dtype) / (1 - self.p)
        start = int(torch.randint(len(self.masks) - len(x) + 1, ()))
        return x * self.masks[start:start + len(x)]


# --- classifiers: fused vector -> logits -------------------------------------------------------

def linear(in_dim: int, num_labels: int, width: int, dropout: float) -> nn.Module:
    return nn.Linear(in_dim, num_labels)


def mlp(in_dim: int, num_labels: int, width: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.Linear(in_dim, width), nn.GELU(), Dropout(dropout), nn.Linear(width, num_labels))


CLASSIFIERS = {"linear": linear, "mlp": mlp}


# --- fusions ------------------------------------------------------------------------------------

class Concat(nn.Module):
    """Concatenate the encoders' (standardised) vectors, dropout, classifier.

    The study's head also had a ReLU after the concatenation (`concat_relu`). On standardised
    features a ReLU zeroes half of every feature's range: on the real slice it cost 0.007
    sample-F1 and took twice the epochs, so the default concat leaves it out."""

    relu = False

    def __init__(self, dims, num_labels, classifier, width, dropout):
        super().__init__()
        self.drop = Dropout(dropout)
        self.cls = classifier(sum(dims))

    def prepare(self, xs):  # parameter-free, so training runs it once per epoch, not per step
        x = torch.cat(xs, dim=1)
        return [x.relu_() if self.relu else x]

    def forward(self, xs):
        return self.cls(self.drop(xs[0]))


class ConcatReLU(Concat):
    """The study's head exactly: concatenate, ReLU, dropout, classifier (linear in the study)."""

    relu = True


class Late(nn.Module):
    """Late fusion: one classifier per encoder, their logits averaged."""

    def __init__(self, dims, num_labels, classifier, width, dropout):
        super().__init__()
        self.drop = nn.ModuleList(Dropout(dropout) for _ in dims)
        self.cls = nn.ModuleList(classifier(d) for d in dims)

    def forward(self, xs):
        return torch.stack([c(drop(x)) for c, drop, x in zip(self.cls, self.drop, xs)]).mean(0)


class Gated(nn.Module):
    """Gated multimodal unit (Arevalo et al. 2017): h = sum_i z_i * tanh(W_i x_i).

    The gates z (per encoder and unit) are computed from all the inputs, so each image decides
    how much to trust its caption. Logits are produced for encoders 2..M against a fixed 0 for
    the first, then a softmax: for two encoders that is the paper's sigmoid gate, at half the
    cost of one logit per encoder."""

    def __init__(self, dims, num_labels, classifier, width, dropout):
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(d, width) for d in dims)
        self.gate = nn.Linear(sum(dims), width * (len(dims) - 1)) if len(dims) > 1 else None
        self.drop = Dropout(dropout)
        self.cls = classifier(width)

    def forward(self, xs):
        h = torch.stack([torch.tanh(p(x)) for p, x in zip(self.proj, xs)], dim=1)  # [B, M, W]
        if self.gate is None:
            return self.cls(self.drop(h[:, 0]))
        g = self.gate(torch.cat(xs, dim=1)).view(len(h), -1, h.shape[2])
        z = torch.cat([torch.zeros_like(g[:, :1]), g], dim=1).softmax(dim=1)
        return self.cls(self.drop((z * h).sum(1)))


class Bilinear(nn.Module):
    """Low-rank bilinear fusion (Kim et al. 2017; with the constant 1 appended to each projection
    as in tensor fusion, Liu et al. 2018): h = prod_i (1 + tanh(U_i x_i)), rank = width.

    A full bilinear map of 1280x384 inputs would need 1280*384*width weights; the Hadamard
    product of low-rank projections keeps the multiplicative interaction at a linear cost. The
    appended 1 keeps each encoder's own term (an image label the caption does not name); without
    it the product can only say "both" and learns slowly."""

    def __init__(self, dims, num_labels, classifier, width, dropout):
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(d, width) for d in dims)
        self.drop = nn.ModuleList(Dropout(dropout) for _ in dims)
        self.norm = nn.LayerNorm(width)
        self.cls = classifier(width)

    def forward(self, xs):
        h = 1.0
        for p, drop, x in zip(self.proj, self.drop, xs):
            h = h * (1 + torch.tanh(p(drop(x))))
        return self.cls(self.norm(h))


class Attention(nn.Module):
    """Each encoder a token (projected to a common width, plus a learned encoder embedding), one
    pre-norm transformer layer over the tokens, their outputs averaged and classified.

    The token width is capped at 128: tokens of width 512 would cost ~10x the whole MLP head."""

    def __init__(self, dims, num_labels, classifier, width, dropout, heads=4, max_width=128):
        super().__init__()
        w = min(width, max_width)
        self.proj = nn.ModuleList(nn.Sequential(Dropout(dropout), nn.Linear(d, w)) for d in dims)
        self.embed = nn.Parameter(torch.zeros(len(dims), w))
        nn.init.normal_(self.embed, std=0.02)
        self.layer = nn.TransformerEncoderLayer(w, heads, dim_feedforward=2 * w, dropout=0.1,
                                                batch_first=True, norm_first=True)
        self.norm = nn.LayerNorm(w)
        self.cls = classifier(w)

    def forward(self, xs):
        tokens = torch.stack([p(x) for p, x in zip(self.proj, xs)], dim=1) + self.embed
        return self.cls(self.norm(self.layer(tokens).mean(1)))


FUSIONS = {"concat": Concat, "concat_relu": ConcatReLU, "late": Late, "gated": Gated, "bilinear": Bilinear, "attention": Attention}
