import math

import pytest
import torch
import torch.nn.functional as F

from dalab.errors import DalabError
from dalab.methods import DANN, Batch, NoGRL, SourceOnly, TargetOnly, domain_adversarial_loss, make_method
from dalab.models import DANNNet


def test_domain_loss_on_hand_made_logits():
    d = torch.tensor([10.0, -10.0, 0.0, -10.0])  # two source, two target
    loss, acc = domain_adversarial_loss(d, n_source=2)
    sp = F.softplus
    # -log sigmoid(10) for source label 1; -log sigmoid(-10) = softplus(10) for the wrong source;
    # log 2 for logit 0 with label 0; -log(1 - sigmoid(-10)) = softplus(-10) for the target.
    expected = (sp(torch.tensor(-10.0)) + sp(torch.tensor(10.0)) + math.log(2) + sp(torch.tensor(-10.0))) / 4
    assert torch.isclose(loss, expected)
    # only the source logit -10 is wrong; logit 0 (p = 0.5, not > 0.5) counts as target: 3 of 4 right
    assert acc.item() == 0.75


def _batch(n=8, p=0.5):
    torch.manual_seed(0)
    return Batch(torch.rand(n, 3, 28, 28), torch.randint(0, 10, (n,)), torch.rand(n, 3, 28, 28),
                 torch.randint(0, 10, (n,)), p=p)


def test_dann_loss_is_task_plus_domain_and_reverses_feature_gradient():
    torch.manual_seed(0)
    model = DANNNet()
    b = _batch()
    loss, logs = DANN(lambda_max=1.0, schedule="constant").loss(model, b)
    assert torch.isclose(loss, logs["task_loss"] + logs["domain_loss"])
    assert logs["lambda"].item() == 1.0
    # gradient of the domain term alone w.r.t. the features' first conv is reversed vs no-GRL
    def feat_grad(method):
        model.zero_grad()
        _, lg = method.loss(model, b)
        f = model.features(torch.cat([b.xs, b.xt]))
        d = model.domain_logits(f, method.current_lambda(b.p) * (1 if method.reverse else -1))
        dl, _ = domain_adversarial_loss(d, len(b.xs))
        dl.backward()
        return model.features_net.net[0].weight.grad.clone(), model.domain_head.net[0].weight.grad.clone()
    g_rev, h_rev = feat_grad(DANN(1.0, "constant"))
    g_plain, h_plain = feat_grad(NoGRL(1.0, "constant"))
    assert torch.allclose(g_rev, -g_plain, atol=1e-6)
    assert torch.allclose(h_rev, h_plain)  # the domain head itself always minimises


def test_dann_lambda_follows_schedule():
    m = DANN(lambda_max=0.5, schedule="ganin", gamma=10)
    assert m.current_lambda(0.0) == 0.0
    assert math.isclose(m.current_lambda(1.0), 0.5 * (2 / (1 + math.exp(-10)) - 1))


def test_source_only_ignores_target_and_target_only_uses_target_labels():
    model = DANNNet()
    b = _batch()
    loss, _ = SourceOnly().loss(model, b)
    assert torch.isclose(loss, F.cross_entropy(model(b.xs), b.ys))
    loss_t, _ = TargetOnly().loss(model, b)
    assert torch.isclose(loss_t, F.cross_entropy(model(b.xt), b.yt))
    assert TargetOnly.uses_target_labels and not DANN.uses_target_labels and not SourceOnly.uses_target


def test_make_method_unknown_name():
    with pytest.raises(DalabError, match="unknown method"):
        make_method("nope")
    assert make_method("dann", lambda_max=0.3, unrelated=5).lambda_max == 0.3
