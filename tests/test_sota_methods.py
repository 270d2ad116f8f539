"""Losses of CDAN(+E), MCC, VADA / DIRT-T, mean teacher / FixMatch on hand-made tensors,
plus a one-epoch smoke run of each on the tiny fixture."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dalab.errors import DalabError
from dalab.methods import (CDAN, CDANE, DIRTT, MCC, VADA, AdaMatch, Batch, FixMatch, MeanTeacher,
                           domain_adversarial_loss)
from dalab.methods.cdan import entropy_weights, multilinear_map, weighted_domain_loss
from dalab.methods.consistency import (augment, class_balance_loss, confident_squared_difference,
                                       random_affine)
from dalab.methods.losses import entropy, kl_logits, vat_loss
from dalab.methods.mcc import mcc_loss
from dalab.models import DANNNet
from dalab.models.nets import instance_normalize
from dalab.training import TrainConfig, Trainer, load_model


def _batch(n=8, p=0.5):
    torch.manual_seed(0)
    return Batch(torch.rand(n, 3, 28, 28), torch.randint(0, 10, (n,)), torch.rand(n, 3, 28, 28), p=p)


# ---------------------------------------------------------------- shared pieces
def test_entropy_and_kl_on_hand_made_logits():
    z = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])  # p = (.5,.5), (.75,.25)
    h = entropy(z)
    assert torch.allclose(h, torch.tensor([math.log(2), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))]))
    kl = kl_logits(z[1:], z[:1])
    assert torch.isclose(kl, torch.tensor([0.75 * math.log(1.5) + 0.25 * math.log(0.5)])).all()
    assert kl_logits(z, z).abs().max() < 1e-7


def test_vat_finds_the_adversarial_pixel():
    # logits depend on one pixel only: the worst perturbation of radius eps moves that pixel by
    # +-eps (both signs give the same KL at p = (.5, .5), and power iteration fixes no sign)
    w = 4.0

    def model(x):
        v = x[:, 0, 0, 0] - 0.5
        return torch.stack([w * v, torch.zeros_like(v)], 1)

    x = torch.full((3, 3, 4, 4), 0.5)
    torch.manual_seed(1)
    eps = 0.3
    got = vat_loss(model, x, model(x), eps=eps)
    e = torch.zeros_like(x)
    e[:, 0, 0, 0] = eps
    best = kl_logits(model(x), model(x + e)).mean()
    assert torch.isclose(got, best, rtol=1e-3)
    assert torch.isclose(best, kl_logits(model(x), model(x - e)).mean())


def test_instance_normalize_standardises_each_image_channel():
    x = torch.rand(4, 3, 28, 28) * 0.3 + 0.2
    y = instance_normalize(x)
    assert y.mean((-2, -1)).abs().max() < 1e-5
    assert (y.var((-2, -1), unbiased=False) - 1).abs().max() < 5e-3  # eps = 1e-5 vs var 0.0075
    assert torch.isfinite(instance_normalize(torch.zeros(1, 3, 5, 5))).all()  # constant image


# ---------------------------------------------------------------- CDAN
def test_multilinear_map_is_the_flattened_outer_product():
    f = torch.tensor([[1.0, 2.0]])
    g = torch.tensor([[0.25, 0.75]])
    assert torch.equal(multilinear_map(f, g), torch.tensor([[0.25, 0.5, 0.75, 1.5]]))


def test_entropy_weights_and_weighted_domain_loss():
    logits = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    w = entropy_weights(logits, n_source=2)
    # source: uniform -> 1 + 1/2 ; confident -> ~ 1 + 1 ; each domain sums to one
    assert torch.isclose(w[:2].sum(), torch.tensor(1.0)) and torch.isclose(w[2:].sum(), torch.tensor(1.0))
    assert torch.isclose(w[0] / w[1], torch.tensor(1.5 / (1 + math.exp(-entropy(logits[1:2]).item()))))
    assert torch.allclose(w[2:], torch.full((3,), 1 / 3))
    d = torch.tensor([2.0, -1.0, 0.5, -3.0])
    plain, _ = domain_adversarial_loss(d, 2)
    assert torch.isclose(weighted_domain_loss(d, 2), plain)
    one_hot = torch.tensor([0.0, 1.0, 0.0, 0.0])  # all weight on the second source logit
    assert torch.isclose(weighted_domain_loss(d, 2, one_hot), F.softplus(torch.tensor(1.0)))


@pytest.mark.parametrize("cls,random_dim", [(CDAN, 0), (CDANE, 0), (CDAN, 64)])
def test_cdan_loss_is_task_plus_conditional_domain_loss(cls, random_dim):
    torch.manual_seed(0)
    model = DANNNet()
    m = cls(lambda_max=1.0, schedule="constant", random_dim=random_dim)
    m.setup(model, torch.device("cpu"))
    assert m.disc[0].in_features == (random_dim or 7680)
    b = _batch()
    loss, logs = m.loss(model, b)
    assert torch.isclose(loss, logs["task_loss"] + logs["domain_loss"])
    # the GRL: the discriminator minimises the domain loss, the features maximise it
    loss.backward()
    g_feat_adv = model.features_net.net[0].weight.grad.clone()
    model.zero_grad()
    f = model.features(torch.cat([b.xs, b.xt]))
    F.cross_entropy(model.classify(f[:8]), b.ys).backward()
    g_feat_task = model.features_net.net[0].weight.grad.clone()
    model.zero_grad(); m.zero_grad()
    f = model.features(torch.cat([b.xs, b.xt]))
    g = F.softmax(model.classify(f).detach(), 1)
    dom = weighted_domain_loss(m.disc(m.conditioning(f, g)).squeeze(-1), 8,
                               entropy_weights(model.classify(f), 8) if m.entropy_conditioning else None)
    dom.backward()
    assert torch.allclose(g_feat_adv, g_feat_task - model.features_net.net[0].weight.grad, atol=1e-5)


# ---------------------------------------------------------------- MCC
def test_mcc_loss_on_hand_made_logits():
    # confident and class-separated: no confusion
    assert mcc_loss(100 * torch.eye(10), temperature=1.0) < 1e-6
    # uniform predictions: every column of C is uniform, off-diagonal mass (C-1)/C
    assert torch.isclose(mcc_loss(torch.zeros(6, 10)), torch.tensor(0.9))
    # two classes, T = 1, by hand with numpy
    z = torch.tensor([[math.log(4.0), 0.0], [0.0, math.log(1.5)]])  # p = (.8,.2), (.4,.6)
    y = np.array([[0.8, 0.2], [0.4, 0.6]])
    h = -(y * np.log(y)).sum(1)
    w = 1 + np.exp(-h)
    w = 2 * w / w.sum()
    c = (y * w[:, None]).T @ y
    c = c / c.sum(0, keepdims=True)
    expected = (c.sum() - np.trace(c)) / 2
    assert abs(mcc_loss(z, temperature=1.0).item() - expected) < 1e-6


def test_mcc_method_adds_mu_times_the_target_confusion():
    torch.manual_seed(0)
    model = DANNNet()
    b = _batch()
    loss, logs = MCC(temperature=2.5, mu=2.0).loss(model, b)
    assert torch.isclose(loss, logs["task_loss"] + 2.0 * logs["mcc_loss"])
    assert torch.isclose(logs["mcc_loss"], mcc_loss(model(b.xt), 2.5))


# ---------------------------------------------------------------- VADA / DIRT-T
def test_vada_loss_decomposes():
    torch.manual_seed(0)
    model = DANNNet()
    b = _batch()
    loss, logs = VADA(lambda_d=0.1, lambda_s=0.0, lambda_t=0.5).loss(model, b)
    assert torch.isclose(loss, logs["task_loss"] + logs["domain_loss"]
                         + 0.5 * (logs["target_entropy"] + logs["vat_target"]), atol=1e-6)
    assert torch.isclose(logs["target_entropy"], entropy(model(b.xt)).mean(), atol=1e-6)
    assert logs["vat_target"] >= 0 and logs["vat_source"] == 0
    loss0, logs0 = VADA(lambda_d=0.1, lambda_s=0.0, lambda_t=0.0).loss(model, b)
    assert torch.isclose(loss0, logs0["task_loss"] + logs0["domain_loss"])


def test_dirtt_teacher_starts_equal_and_is_refreshed():
    torch.manual_seed(0)
    model = DANNNet()
    m = DIRTT(beta=1.0, lambda_t=0.1)
    m.setup(model, torch.device("cpu"))
    b = _batch()
    loss, logs = m.loss(model, b)
    assert logs["teacher_kl"].abs() < 1e-6
    assert torch.isclose(loss, 0.1 * (logs["target_entropy"] + logs["vat_target"]) + logs["teacher_kl"], atol=1e-6)
    with torch.no_grad():
        model.label_head.net[-1].bias.copy_(torch.arange(10.0))
    assert m.loss(model, b)[1]["teacher_kl"] > 1e-3
    assert m.on_epoch_start(model, 0, None) == {}
    m.on_epoch_start(model, 1, None)
    assert m.loss(model, b)[1]["teacher_kl"].abs() < 1e-6
    assert not any(q.requires_grad for q in m.teacher.parameters())


# ---------------------------------------------------------------- consistency
def test_augmentations_are_batched_tensor_ops():
    x = (torch.rand(16, 3, 28, 28) * 255).to(torch.uint8)
    for s in ("none", "weak", "strong"):
        y = augment(x, s)
        assert y.shape == (16, 3, 28, 28) and y.dtype == torch.float32
        assert y.min() >= 0 and y.max() <= 1
    xf = x.float() / 255
    assert torch.allclose(random_affine(xf, 0.0, 0.0, 0.0), xf, atol=1e-5)  # identity warp
    a, b = augment(x, "strong"), augment(x, "strong")
    assert not torch.allclose(a, b)
    # translation by exactly one pixel to the right (normalised units 2/W)
    img = torch.zeros(1, 1, 8, 8)
    img[0, 0, 3, 3] = 1.0
    theta = torch.tensor([[[1.0, 0.0, -2.0 / 8], [0.0, 1.0, 0.0]]])
    moved = F.grid_sample(img, F.affine_grid(theta, [1, 1, 8, 8], align_corners=False), align_corners=False)
    assert moved[0, 0, 3, 4] > 0.99


def test_confidence_masked_consistency_and_class_balance():
    s = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    t = torch.tensor([[0.99, 0.01], [0.6, 0.4]])
    loss, mask = confident_squared_difference(s, t, threshold=0.968)
    assert torch.equal(mask, torch.tensor([1.0, 0.0]))
    assert torch.isclose(loss, torch.tensor((0.49 ** 2 + 0.49 ** 2) / 2))
    u = torch.full((4, 10), 0.1)
    assert torch.isclose(class_balance_loss(u), -(0.1 * math.log(0.1) + 0.9 * math.log(0.9)) * torch.ones(()))
    assert class_balance_loss(torch.tensor([[1.0, 0.0]] * 3)) > class_balance_loss(torch.full((3, 2), 0.5))


def test_mean_teacher_ema_update_and_loss():
    torch.manual_seed(0)
    model = DANNNet(batch_norm=True)
    m = MeanTeacher(ema=0.9, threshold=0.0)
    m.setup(model, torch.device("cpu"))
    t0 = [q.clone() for q in m.teacher.parameters()]
    with torch.no_grad():
        for q in model.parameters():
            q.add_(1.0)
    m.after_step(model)
    for q0, qt, qs in zip(t0, m.teacher.parameters(), model.parameters()):
        assert torch.allclose(qt, 0.9 * q0 + 0.1 * qs, atol=1e-6)
    for tb, sb in zip(m.teacher.buffers(), model.buffers()):
        assert torch.equal(tb, sb)
    loss, logs = m.loss(model, _batch())
    assert logs["confident_frac"] == 1.0  # threshold 0: everything counts
    assert torch.isclose(loss, logs["task_loss"] + 3.0 * logs["consistency_loss"] + 0.005 * logs["class_balance"])


def test_fixmatch_threshold_one_means_no_pseudo_labels():
    torch.manual_seed(0)
    model = DANNNet()
    loss, logs = FixMatch(threshold=1.0).loss(model, _batch())
    assert logs["confident_frac"] == 0 and torch.isclose(loss, logs["task_loss"])
    loss, logs = FixMatch(threshold=0.0).loss(model, _batch())
    assert logs["confident_frac"] == 1 and logs["pseudo_loss"] > 0


def test_nonsaturating_domain_game_splits_the_gradients():
    """Shu et al.'s form: the head learns only from the BCE on detached features, the features only
    from the flipped-label BCE through a frozen head; the latter's gradient is -d/df log D(f)."""
    from dalab.methods.dann import nonsaturating_domain_losses
    from dalab.models.nets import DomainHead

    torch.manual_seed(0)
    head = DomainHead(6, hidden=5)
    f = torch.randn(8, 6, requires_grad=True)
    loss_d, loss_f, acc = nonsaturating_domain_losses(head, f, 4)
    g_head = torch.autograd.grad(loss_f, list(head.parameters()), allow_unused=True)
    assert all(g is None for g in g_head)  # the feature loss never moves the discriminator
    (g_f_from_d,) = torch.autograd.grad(loss_d, f, allow_unused=True)
    assert g_f_from_d is None  # the discriminator loss never moves the features
    (g_f,) = torch.autograd.grad(loss_f, f)
    d = head(f)
    flipped = torch.tensor([0.0] * 4 + [1.0] * 4)
    (want,) = torch.autograd.grad(F.binary_cross_entropy_with_logits(d, flipped), f)
    assert torch.allclose(g_f, want)
    labels = 1 - flipped
    assert torch.isclose(loss_d, F.binary_cross_entropy_with_logits(d, labels))
    assert acc == ((d > 0).float() == labels).float().mean()


def test_vada_adversary_option():
    torch.manual_seed(0)
    model = DANNNet(batch_norm=True, input_norm="instance")
    loss, logs = VADA(adversary="non-saturating", lambda_t=0.0).loss(model, _batch())
    assert torch.isfinite(loss) and 0 <= logs["domain_acc"] <= 1
    loss.backward()
    assert all(q.grad is not None for q in model.domain_head.parameters())
    with pytest.raises(ValueError, match="adversary"):
        VADA(adversary="wasserstein")


def test_distribution_alignment_restores_the_source_proportions():
    from dalab.methods.consistency import distribution_alignment

    q = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.7, 0.3]])  # target leans to class 0 (mean 0.75)
    ps = torch.tensor([[0.5, 0.5]] * 4)                                  # the source is balanced
    a = distribution_alignment(q, ps)
    assert torch.allclose(a.sum(1), torch.ones(4))
    # each row times (0.5/0.75, 0.5/0.25) then renormalised: 0.9 -> 0.6/(0.6+0.2) = 0.75
    assert torch.isclose(a[0, 0], torch.tensor(0.75)) and torch.isclose(a[2, 0], torch.tensor(1 / 3))
    assert torch.allclose(distribution_alignment(q, q), q)  # already aligned: unchanged


def test_adamatch_threshold_warmup_and_loss():
    from dalab.methods.consistency import warmup_weight

    assert warmup_weight(0.0) == 0.0 and warmup_weight(0.25) == pytest.approx(0.5)
    assert warmup_weight(0.5) == 1.0 and warmup_weight(0.9) == 1.0
    torch.manual_seed(0)
    model = DANNNet(batch_norm=True, input_norm="instance")
    b = _batch()
    loss0, logs = AdaMatch().loss(model, Batch(b.xs, b.ys, b.xt, p=0.0))  # mu = 0: source terms only
    assert torch.isclose(loss0, logs["task_loss"])
    loss, logs = AdaMatch(tau=0.0).loss(model, Batch(b.xs, b.ys, b.xt, p=0.75))
    assert logs["confident_frac"] == 1 and logs["pseudo_loss"] > 0  # tau 0: every target image counts
    assert torch.isclose(loss, logs["task_loss"] + logs["pseudo_loss"])
    # the bar is relative: tau times the mean top source confidence of this batch
    _, logs = AdaMatch(tau=0.9).loss(model, Batch(b.xs, b.ys, b.xt, p=0.75))
    assert 0 < logs["threshold"] < 0.9
    loss.backward()
    assert all(q.grad is not None for q in model.features_net.parameters())


# ---------------------------------------------------------------- on the shared trainer
def cfg(tiny, **kw):
    base = dict(epochs=1, batch_size=64, data_dir=str(tiny), precision="fp32", seed=1, limit_train=256,
                optimizer="adam")
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("method,extra", [("cdan", {"input_norm": "none"}), ("cdan+e", {"batch_norm": False}),
                                          ("vada", {"input_norm": "instance"}), ("mcc", {}),
                                          ("mean-teacher", {"batch_norm": True, "input_norm": "instance"}),
                                          ("fixmatch", {"batch_norm": False, "input_norm": "none"}),
                                          ("adamatch", {})])
def test_new_methods_train_one_epoch(tiny_data, tmp_path, method, extra):
    s = Trainer(cfg(tiny_data, method=method, **extra), tmp_path / "r", progress=False).fit()
    assert s["status"] == "completed" and 0 <= s["target_test_acc"] <= 1
    model, conf = load_model(tmp_path / "r" / "model.pt")
    assert conf["input_norm"] == extra.get("input_norm", TrainConfig().input_norm)
    assert conf["batch_norm"] == extra.get("batch_norm", TrainConfig().batch_norm)
    assert model.features_net.input_norm == conf["input_norm"]


def test_dirtt_refines_a_vada_model_and_method_args_are_checked(tiny_data, tmp_path):
    Trainer(cfg(tiny_data, method="vada", input_norm="instance"), tmp_path / "vada", progress=False).fit()
    s = Trainer(cfg(tiny_data, method="dirt-t", input_norm="instance", epochs=2,
                    init_from=str(tmp_path / "vada" / "model.pt"), method_args={"beta": 0.5}),
                tmp_path / "dirtt", progress=False).fit()
    assert s["status"] == "completed" and s["method_params"]["beta"] == 0.5
    with pytest.raises(DalabError, match="takes no"):
        Trainer(cfg(tiny_data, method="dirt-t", method_args={"betta": 0.5}), None, progress=False)
    with pytest.raises(DalabError, match="bad hyper-parameter value"):
        Trainer(cfg(tiny_data, method="dirt-t", method_args={"beta": "abc"}), None, progress=False)
