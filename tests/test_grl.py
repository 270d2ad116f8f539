import math

import pytest
import torch

from dalab.models import GradientReversal, LambdaSchedule, ganin_lambda, grad_reverse


@pytest.mark.parametrize("lam", [0.0, 0.1, 1.0, 3.5])
def test_grl_forward_identity_backward_negated(lam):
    torch.manual_seed(0)
    x = torch.randn(5, 7, requires_grad=True, dtype=torch.float64)
    w = torch.randn(5, 7, dtype=torch.float64)
    y = grad_reverse(x, lam)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    assert torch.equal(x.grad, -lam * w)


def test_grl_module_lambda_settable_and_zero_blocks_gradient():
    m = GradientReversal(2.0)
    x = torch.ones(3, requires_grad=True)
    m(x).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -2.0))
    m.lambd = 0.0
    x.grad = None
    m(x).sum().backward()
    assert torch.equal(x.grad, torch.zeros(3))


def test_grl_negative_lambda_gives_plain_gradient():
    x = torch.ones(3, requires_grad=True)
    (GradientReversal(-0.5)(x) * 4).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), 2.0))


def test_grl_matches_manual_chain_through_network():
    torch.manual_seed(1)
    lin, head = torch.nn.Linear(4, 3), torch.nn.Linear(3, 1)
    x = torch.randn(6, 4)
    head(grad_reverse(lin(x), 0.7)).sum().backward()
    g_rev = lin.weight.grad.clone()
    lin.zero_grad()
    head.zero_grad()
    head(lin(x)).sum().backward()
    assert torch.allclose(g_rev, -0.7 * lin.weight.grad)


def test_ganin_schedule_values():
    assert ganin_lambda(0.0) == 0.0
    assert math.isclose(ganin_lambda(1.0), 2 / (1 + math.exp(-10)) - 1)
    assert math.isclose(ganin_lambda(0.5, lambda_max=2.0), 2.0 * (2 / (1 + math.exp(-5)) - 1))
    assert math.isclose(ganin_lambda(0.1, gamma=2.0), 2 / (1 + math.exp(-0.2)) - 1)
    assert ganin_lambda(-1) == 0.0 and ganin_lambda(2) == ganin_lambda(1)
    vals = [ganin_lambda(p / 10) for p in range(11)]
    assert vals == sorted(vals)


def test_lambda_schedule_kinds():
    assert LambdaSchedule(0.3, "constant")(0.0) == 0.3
    assert LambdaSchedule(0.3, "constant")(0.9) == 0.3
    assert LambdaSchedule(1.0, "ganin", 10)(0.5) == ganin_lambda(0.5)
    with pytest.raises(ValueError, match="unknown lambda schedule 'nope'"):
        LambdaSchedule(1.0, "nope")(0.5)
