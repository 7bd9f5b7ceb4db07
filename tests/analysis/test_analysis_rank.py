"""Effective rank of matrices with known spectra, and cosine similarity of hidden states."""

import math

import pytest
import torch

from polycom.analysis.trained.model_analysis import cosine_similarity_matrix, effective_rank


def _orthogonal(n: int, gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return q


@pytest.mark.parametrize("n", [1, 7, 64])
def test_identity_has_full_effective_rank(n):
    assert effective_rank(torch.eye(n)) == pytest.approx(n, rel=1e-10)


@pytest.mark.parametrize("shape", [(5, 5), (40, 9), (9, 40)])
def test_rank_one_matrix_has_effective_rank_one(shape):
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(shape[0], 1, generator=gen)
    v = torch.randn(1, shape[1], generator=gen)
    assert effective_rank(u @ v) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
def test_geometric_spectrum_matches_the_formula(q):
    n = 32
    gen = torch.Generator().manual_seed(1)
    s = torch.tensor([q**i for i in range(n)], dtype=torch.float64)
    w = _orthogonal(n, gen) @ torch.diag(s) @ _orthogonal(n, gen).T
    # exp(entropy) of p_i = q^i / sum_j q^j, written out term by term
    total = sum(q**i for i in range(n))
    entropy = -sum((q**i / total) * math.log(q**i / total) for i in range(n))
    assert effective_rank(w) == pytest.approx(math.exp(entropy), rel=1e-9)


def test_effective_rank_is_scale_invariant_and_bounded():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(30, 20, generator=gen)
    er = effective_rank(w)
    assert 1.0 <= er <= 20.0
    assert effective_rank(7.5 * w) == pytest.approx(er, rel=1e-9)
    assert effective_rank(w.to(torch.bfloat16)) == pytest.approx(er, rel=2e-2)


def test_stacked_matrices_give_one_rank_each():
    stack = torch.stack([torch.eye(6), torch.diag(torch.tensor([1.0, 0, 0, 0, 0, 0])), torch.eye(6) * 3])
    assert effective_rank(stack) == pytest.approx([6.0, 1.0, 6.0], rel=1e-9)


def test_effective_rank_bad_input():
    with pytest.raises(ValueError, match="zero matrix"):
        effective_rank(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="matrix"):
        effective_rank(torch.ones(5))
    with pytest.raises(ValueError, match="empty"):
        effective_rank(torch.ones(0, 3))
    with pytest.raises(TypeError, match="torch.Tensor"):
        effective_rank([[1.0]])


def test_cosine_similarity_of_identical_states_is_one():
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(2, 10, 16, generator=gen)
    sim = cosine_similarity_matrix([h, h.clone(), 3.0 * h])
    torch.testing.assert_close(sim, torch.ones(3, 3, dtype=torch.float64), rtol=0, atol=1e-12)


def test_cosine_similarity_against_direct_formula():
    gen = torch.Generator().manual_seed(4)
    a, b = torch.randn(50, 8, generator=gen), torch.randn(50, 8, generator=gen)
    sim = cosine_similarity_matrix([a, b, -a])
    direct = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).mean()
    assert sim[0, 1].item() == pytest.approx(direct.item(), rel=1e-10)
    assert sim[1, 0].item() == pytest.approx(direct.item(), rel=1e-10)
    assert sim[0, 2].item() == pytest.approx(-1.0, abs=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        cosine_similarity_matrix([a, b[:10]])
