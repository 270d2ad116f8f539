"""Segmentation methods (advent, minent, adaptseg, fda, cbst, dacs, mic, daformer): the maths on hand-made
tensors, pixel sizes scaled to the image, then two optimisation steps of each on a tiny dummy segmentation network."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dalab.methods import Batch, make_method
from dalab.methods.adaptseg import fc_discriminator, output_space_adversarial
from dalab.methods.advent import entropy_loss, self_information
from dalab.methods.cbst import CBST, cbst_pseudo_labels, class_balanced_thresholds, pseudo_label_loss
from dalab.methods.consistency import ema_update
from dalab.methods.dacs import class_mix, mixed_loss, random_class_mask
from dalab.methods.fda import charbonnier_entropy, fda_source_to_target, low_frequency_window
from dalab.models.batchnorm import DomainBatchNorm2d
from dalab.models.grl import grad_reverse
from dalab.models.nets import to_unit_float
from dalab.tasks import IGNORE, task_loss, upsample_to

SEG_METHODS = ("advent", "minent", "adaptseg", "fda", "cbst", "dacs", "mic", "daformer")


class TinySegNet(nn.Module):
    """The segmentation interface in miniature: features at H/4, per-domain batch norm."""

    def __init__(self, num_classes: int = 5, width: int = 8):
        super().__init__()
        self.num_classes = num_classes
        self.enc = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), DomainBatchNorm2d(width), nn.ReLU(),
                                 nn.Conv2d(width, width, 3, 2, 1), DomainBatchNorm2d(width), nn.ReLU())
        self.head = nn.Conv2d(width, num_classes, 1)
        self.dom = nn.Conv2d(width, 1, 1)

    def features(self, x):
        return self.enc((to_unit_float(x) - 0.5) / 0.5)

    def classify(self, f):
        return self.head(f)

    def domain_logits(self, f, lam=1.0):
        return self.dom(grad_reverse(f, lam))

    def forward(self, x):
        return upsample_to(self.classify(self.features(x)), x.shape[-2:])


def _images(n, h=16, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)


def _labels(n, k=5, h=16, w=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n, h, w), generator=g).to(torch.uint8)
    y[:, :2] = IGNORE  # a band of unscored pixels
    return y


# ------------------------------------------------------------------ ADVENT: entropy maps
def test_self_information_and_entropy_loss_values():
    big = -1e4  # probability 0 without -inf
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [math.log(0.5), math.log(0.5), big, big]]).T
    logits = logits.reshape(1, 4, 1, 2)  # one image, K = 4, two pixels
    info = self_information(logits)
    assert info.shape == (1, 4, 1, 2)
    # uniform: -1/4 log(1/4) / log 4 = 1/4 per class; (1/2, 1/2, 0, 0): 1/2 * log 2 / log 4 = 1/4 twice
    assert torch.allclose(info[0, :, 0, 0], torch.full((4,), 0.25))
    assert torch.allclose(info[0, :, 0, 1], torch.tensor([0.25, 0.25, 0.0, 0.0]))
    assert torch.isclose(entropy_loss(logits), torch.tensor((1.0 + 0.5) / 2))


# ------------------------------------------------------------------ the discriminator game
def test_fc_discriminator_is_fully_convolutional():
    d = fc_discriminator(19, ndf=4)
    assert d(torch.rand(2, 19, 64, 128)).shape == (2, 1, 4, 8)
    assert d(torch.rand(2, 19, 16, 32)).shape == (2, 1, 1, 2)
    convs = [m for m in d if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8, 16, 32, 1]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) for c in convs[:4])


def test_discriminator_loss_trains_only_d_and_adversarial_loss_only_the_segmenter():
    torch.manual_seed(0)
    disc = fc_discriminator(4, ndf=4)
    ms = torch.rand(2, 4, 16, 32, requires_grad=True)
    mt = torch.rand(2, 4, 16, 32, requires_grad=True)
    loss_d, adv, _ = output_space_adversarial(disc, ms, mt)
    with torch.no_grad():  # signs: D labels source 1, target 0; the adversarial loss labels target 1
        ds, dt = disc(ms), disc(mt)
        expected_d = (F.softplus(-ds).sum() + F.softplus(dt).sum()) / (ds.numel() + dt.numel())
        assert torch.isclose(loss_d, expected_d) and torch.isclose(adv, F.softplus(-dt).mean())
    loss_d.backward(retain_graph=True)
    assert ms.grad is None and mt.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in disc.parameters())
    disc.zero_grad(set_to_none=True)
    adv.backward()
    assert all(p.grad is None for p in disc.parameters())
    assert ms.grad is None and mt.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["advent", "adaptseg"])
def test_adversarial_methods_leak_nothing_from_d_into_the_segmenter(name):
    """With the adversarial and entropy weights at 0, the segmenter's gradient is the task loss's."""
    torch.manual_seed(0)
    model, b = TinySegNet(), Batch(_images(2), _labels(2), _images(2, seed=3))
    m = make_method(name, lambda_adv=0.0, lambda_ent=0.0, ndf=4)
    m.setup(model, torch.device("cpu"))
    torch.manual_seed(1)
    loss, logs = m.loss(model, b)
    loss.backward()
    g_method = [p.grad.clone() for p in model.head.parameters()]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.disc.parameters())
    model.zero_grad()
    torch.manual_seed(1)
    from dalab.methods.dann import logits_per_domain
    ls, _ = logits_per_domain(model, b.xs, b.xt)
    task_loss(ls, b.ys).backward()
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(g_method, model.head.parameters()))
    assert torch.isclose(logs["task_loss"], task_loss(ls, b.ys).detach())


# ------------------------------------------------------------------ FDA
def test_fda_with_a_window_of_zero_gives_the_source_back():
    xs, xt = _images(2), _images(2, seed=5)
    # floor(0.01 * 16) = 0: nothing swapped
    assert torch.equal(fda_source_to_target(xs, xt, 0.01), xs.float())
    assert torch.equal(fda_source_to_target(xs, xt, 0.0), xs.float())


def test_fda_swaps_low_frequency_amplitude_and_keeps_phase():
    xs, xt = _images(2, 32, 48).double(), _images(1, 32, 48, seed=5).double()
    beta = 0.1  # b = floor(3.2) = 3
    out = fda_source_to_target(xs, xt, beta, clip=False).double()
    win = low_frequency_window(32, 48, 3)
    assert int(win.sum()) == 7 * 7
    assert torch.equal(win, torch.roll(win.flip(0, 1), (1, 1), (0, 1)))  # symmetric in +-k: real output
    fo, fs, ft = torch.fft.fft2(out), torch.fft.fft2(xs), torch.fft.fft2(xt)
    scale = fs.abs().max()
    # inside the window the amplitude is the target's (the one target image serves both sources)
    assert torch.allclose(fo.abs()[..., win], ft.abs().expand_as(fs)[..., win], atol=1e-5 * scale)
    assert torch.allclose(fo.abs()[..., ~win], fs.abs()[..., ~win], atol=1e-5 * scale)
    strong = (fs.abs() > 1e-3 * scale) & (fo.abs() > 1e-3 * scale)
    phase_o, phase_s = fo / fo.abs(), fs / fs.abs()
    assert torch.allclose(phase_o[strong], phase_s[strong], atol=1e-3)
    clipped = fda_source_to_target(xs, xt, beta)
    assert clipped.min() >= 0 and clipped.max() <= 255 and clipped.dtype == torch.float32


def test_charbonnier_entropy_values():
    eps, eta = 1e-3, 2.0
    uniform = torch.zeros(1, 5, 2, 2)
    assert torch.isclose(charbonnier_entropy(uniform, eta, eps), torch.tensor((1.0 + eps ** 2) ** eta))
    sure = torch.zeros(1, 5, 2, 2)
    sure[:, 0] = 100.0
    assert charbonnier_entropy(sure, eta, eps) < 1e-11


# ------------------------------------------------------------------ CBST
def _cbst_probs():
    p = torch.tensor([[0.90, 0.05, 0.05], [0.80, 0.10, 0.10], [0.70, 0.10, 0.20], [0.50, 0.05, 0.45],
                      [0.02, 0.95, 0.03], [0.30, 0.50, 0.20], [0.30, 0.25, 0.45], [0.35, 0.25, 0.40]])
    p = torch.cat([p, torch.zeros(8, 1)], 1)  # a fourth class that is never predicted
    return p.T.reshape(1, 4, 2, 4)  # (B, K, H, W)


def test_cbst_thresholds_are_per_class_quantiles():
    p = _cbst_probs()
    conf, pred = p.max(1)
    thr = class_balanced_thresholds(conf, pred, 4, portion=0.5)
    # class 0: confidences .9 .8 .7 .5 -> 2nd largest; class 1: .95 .5 -> largest; class 2: .45 .4
    assert torch.allclose(thr, torch.tensor([0.80, 0.95, 0.45, 1.0]))
    thr_small = class_balanced_thresholds(conf, pred, 4, portion=0.25)  # floor(.25 * 2) = 0 for classes 1, 2
    assert torch.allclose(thr_small, torch.tensor([0.90, 1.0, 1.0, 1.0]))


def test_cbst_labels_take_the_class_normalised_argmax():
    p = _cbst_probs()
    conf, pred = p.max(1)
    labels = cbst_pseudo_labels(p, class_balanced_thresholds(conf, pred, 4, 0.5))
    # pixel 3 is predicted 0 (0.5 < k_0) but 0.45 / k_2 = 1: CBST labels it 2
    assert labels.dtype == torch.uint8
    assert labels.flatten().tolist() == [0, 0, IGNORE, 2, 1, IGNORE, 2, IGNORE]


def test_pseudo_label_loss_ignores_unlabelled_pixels():
    logits = torch.randn(2, 5, 4, 4, requires_grad=True)
    y = torch.randint(0, 5, (2, 4, 4)).to(torch.uint8)
    y[0] = IGNORE
    loss = pseudo_label_loss(logits, y)
    loss.backward()
    assert logits.grad[0].abs().sum() == 0 and logits.grad[1].abs().sum() > 0
    assert torch.isclose(loss, F.cross_entropy(logits[1:], y[1:].long()))
    none = pseudo_label_loss(logits, torch.full_like(y, IGNORE))
    assert none.item() == 0.0


def test_cbst_relabels_after_warmup_and_resumes_its_labels():
    torch.manual_seed(0)
    model, xt = TinySegNet(), _images(5, seed=7)
    m = CBST(warmup_epochs=1, predict_batch=2)
    assert m.on_epoch_start(model, 0, xt) == {} and len(m.pl_labels) == 0
    logs = m.on_epoch_start(model, 1, xt)
    assert logs["cbst_portion"] == pytest.approx(0.2) and 0.0 < logs["pl_coverage"] <= 1.0
    assert m.pl_labels.shape == (5, 16, 32) and m.pl_labels.dtype == torch.uint8
    assert m.portion(3) == pytest.approx(0.3) and m.portion(100) == pytest.approx(0.5)
    assert model.training  # back in training mode after predicting
    fresh = CBST()
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh.pl_labels, m.pl_labels) and torch.equal(fresh.thresholds, m.thresholds)


# ------------------------------------------------------------------ DACS
def test_class_mix_on_hand_made_tensors():
    xs = torch.full((1, 3, 2, 3), 10, dtype=torch.uint8)
    xt = torch.full((1, 3, 2, 3), 200, dtype=torch.uint8)
    ys = torch.tensor([[[0, 1, IGNORE], [1, 2, 2]]], dtype=torch.uint8)
    yt = torch.tensor([[[5, 5, 5], [6, 6, 6]]], dtype=torch.uint8)
    x, y, m = class_mix(xs, ys, xt, yt, lambda labels: labels == 1)
    assert m.tolist() == [[[False, True, False], [True, False, False]]]
    assert x.dtype == torch.uint8 and (x[:, :, m[0]] == 10).all() and (x[:, :, ~m[0]] == 200).all()
    assert y.tolist() == [[[5, 1, 5], [1, 6, 6]]]


def test_random_class_mask_pastes_whole_classes_never_ignore():
    ys = torch.tensor([[[0, 1, IGNORE, 2], [1, 2, 2, IGNORE]],
                       [[3, 3, 0, 1], [2, 1, 0, 3]]], dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        m = random_class_mask(ys, g)
        assert not m[ys == IGNORE].any()
        for i, n_classes in ((0, 3), (1, 4)):
            chosen = ys[i][m[i]].unique().tolist()
            assert len(chosen) == math.ceil(n_classes / 2)
            assert torch.equal(m[i], torch.isin(ys[i], torch.tensor(chosen, dtype=torch.uint8)))
    a = random_class_mask(ys, torch.Generator().manual_seed(3))
    assert torch.equal(a, random_class_mask(ys, torch.Generator().manual_seed(3)))


def test_mixed_loss_weights_target_pixels_and_ignores_unlabelled_ones():
    logits = torch.zeros(1, 4, 2, 2, requires_grad=True)
    y = torch.tensor([[[0, 1], [2, IGNORE]]], dtype=torch.uint8)
    m = torch.tensor([[[True, False], [False, False]]])
    loss = mixed_loss(logits, y, m, 0.5)
    # CE = log 4 at the 3 labelled pixels; weights 1 (source), .5, .5, ignored -> 0; mean over 4 pixels
    assert torch.isclose(loss, torch.tensor((1.0 + 0.5 + 0.5) * math.log(4) / 4))
    loss.backward()
    assert logits.grad[0, :, 1, 1].abs().sum() == 0 and logits.grad[0, :, 0, 0].abs().sum() > 0


def test_ema_update_and_dacs_teacher_warmup():
    s, t = nn.Linear(2, 2), nn.Linear(2, 2)
    expected = [0.99 * a + 0.01 * b for a, b in zip(t.parameters(), s.parameters())]
    ema_update(t, s, 0.99)
    assert all(torch.allclose(a, b) for a, b in zip(t.parameters(), expected))
    model = TinySegNet()
    m = make_method("dacs")
    m.setup(model, torch.device("cpu"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    m.after_step(model)  # first step: alpha = min(1 - 1/1, 0.99) = 0, the teacher becomes the student
    assert all(torch.equal(a, b) for a, b in zip(m.teacher.parameters(), model.parameters()))
    assert int(m.ema_steps) == 1


# ------------------------------------------------------------------ two steps of each method
@pytest.mark.parametrize("name", SEG_METHODS)
def test_segmentation_method_takes_two_finite_steps(name):
    torch.manual_seed(0)
    model = TinySegNet()
    m = make_method(name, ndf=4)
    assert m.tasks == ("segmentation",) and not m.uses_target_labels
    dev = torch.device("cpu")
    m.to(dev)
    m.setup(model, dev)
    xt_all = _images(6, seed=9)
    m.on_epoch_start(model, 1, xt_all)  # cbst: after its one warm-up epoch, labels the target set
    opt = torch.optim.SGD(list(model.parameters()) + list(m.parameters()), lr=0.01, momentum=0.9)
    for step in range(2):
        idx = torch.tensor([step, step + 2, step + 4])
        b = Batch(_images(3, seed=step), _labels(3, seed=step), xt_all[idx], p=step / 2, idx_t=idx)
        loss, logs = m.loss(model, b)
        assert torch.isfinite(loss) and {"task_loss", "train_acc"} <= set(logs)
        assert all(v.dim() == 0 and not v.requires_grad for v in logs.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for p in list(model.enc.parameters()) + list(model.head.parameters()):
            assert p.grad is not None and torch.isfinite(p.grad).all()
        if getattr(m, "disc", None) is not None:
            assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.disc.parameters())
        opt.step()
        m.after_step(model)
    if name == "cbst":
        assert logs["pl_loss"] > 0


# ------------------------------------------------------------------ DACS's strong augmentation
def test_colour_jitter_identity_factors_and_grey_images():
    from dalab.methods.dacs import colour_jitter
    x = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    one, zero = torch.ones(2), torch.zeros(2)
    assert torch.allclose(colour_jitter(x, one, one, one, zero), x, atol=1e-5)
    assert torch.allclose(colour_jitter(x, one, one, one, one), x, atol=1e-5)  # a full turn of hue
    grey = torch.rand(2, 1, 5, 7).expand(2, 3, 5, 7)
    # hue and saturation leave grey pixels grey and unchanged
    assert torch.allclose(colour_jitter(grey, one, one, 1.2 * one, 0.2 * one), grey, atol=1e-5)
    y = colour_jitter(torch.full((1, 3, 2, 2), 0.4), torch.tensor([1.25]), torch.tensor([1.0]),
                      torch.tensor([1.0]), torch.tensor([0.0]))
    assert torch.allclose(y, torch.full_like(y, 0.5))  # brightness scales
    z = colour_jitter(x, one, zero, one, zero)  # contrast 0: every pixel the image's mean luma
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    assert torch.allclose(z, (x * luma).sum(1, keepdim=True).mean((2, 3), keepdim=True).expand_as(z), atol=1e-5)
    z = colour_jitter(x, one, one, zero, zero)  # saturation 0: each pixel its luma
    assert torch.allclose(z, (x * luma).sum(1, keepdim=True).expand_as(z), atol=1e-5)


def test_gaussian_blur_matches_a_direct_convolution():
    from dalab.methods.dacs import _odd_kernel_size, gaussian_blur
    assert [_odd_kernel_size(n) for n in (2, 30, 48, 96, 512)] == [1, 3, 5, 9, 51]
    x = torch.rand(2, 3, 48, 96, generator=torch.Generator().manual_seed(1))
    out = gaussian_blur(x, torch.tensor([0.0, 0.8]))
    assert torch.equal(out[0], x[0])  # sigma 0 keeps the image
    ky, kx = 5, 9
    gy = torch.exp(-0.5 * (torch.arange(ky) - ky // 2) ** 2 / 0.64)
    gx = torch.exp(-0.5 * (torch.arange(kx) - kx // 2) ** 2 / 0.64)
    k2 = (gy[:, None] * gx[None, :]) / (gy.sum() * gx.sum())
    ref = F.conv2d(F.pad(x[1:], (kx // 2, kx // 2, ky // 2, ky // 2), mode="reflect"),
                   k2.expand(3, 1, ky, kx).contiguous(), groups=3)
    assert torch.allclose(out[1:], ref, atol=1e-5)
    c = torch.full((1, 3, 48, 96), 0.3)
    assert torch.allclose(gaussian_blur(c, torch.tensor([1.1])), c)


def test_strong_augment_is_seeded_in_range_and_off_when_probabilities_are_zero():
    from dalab.methods.dacs import strong_augment
    x = torch.rand(8, 3, 48, 96, generator=torch.Generator().manual_seed(2))
    a = strong_augment(x, torch.Generator().manual_seed(5))
    assert a.shape == x.shape and a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, strong_augment(x, torch.Generator().manual_seed(5)))
    assert not torch.allclose(a, x)
    assert torch.allclose(strong_augment(x, torch.Generator().manual_seed(5), jitter_p=0, blur_p=0), x, atol=1e-6)


def test_dacs_augment_flag_feeds_the_mixed_images_through_strong_augment(monkeypatch):
    import dalab.methods.dacs as dacs
    seen = []
    monkeypatch.setattr(dacs, "strong_augment", lambda x, g, **kw: seen.append(x.dtype) or x)
    for augment in (True, False):
        model = TinySegNet()
        m = make_method("dacs", augment=augment)
        m.setup(model, torch.device("cpu"))
        loss, _ = m.loss(model, Batch(_images(2, seed=0), _labels(2, seed=0), _images(2, seed=1), p=0.0))
        assert torch.isfinite(loss)
    assert seen == [torch.float32]  # once, for augment=True, on floats in [0, 1]


# ------------------------------------------------------------------ MIC
def test_block_mask_keeps_whole_blocks_at_the_asked_ratio():
    from dalab.methods.mic import block_mask
    keep = block_mask((64, 48, 96), 6, 0.7, torch.Generator().manual_seed(0))
    assert keep.shape == (64, 1, 48, 96) and keep.dtype == torch.bool
    blocks = keep[:, 0].reshape(64, 8, 6, 16, 6)
    assert (blocks == blocks[:, :, :1, :, :1]).all()  # constant over each 6x6 block
    assert abs(keep.float().mean().item() - 0.3) < 0.03
    edge = block_mask((2, 10, 10), 4, 0.5, torch.Generator().manual_seed(1))  # blocks cut at the border
    assert edge.shape == (2, 1, 10, 10)
    assert torch.equal(block_mask((2, 10, 10), 4, 0.5, torch.Generator().manual_seed(1)), edge)
    assert block_mask((2, 10, 10), 4, 0.0).all()


def test_mask_images_fill_with_each_images_mean_colour():
    from dalab.methods.mic import mask_images
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    keep = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    keep[:, :, :2] = True
    out = mask_images(x, keep)
    assert torch.equal(out[:, :, :2], x[:, :, :2])
    assert torch.allclose(out[:, :, 2:], x.mean((2, 3), keepdim=True).expand(2, 3, 2, 4))


def test_mic_adds_the_confidence_weighted_masked_loss_to_dacs():
    import dalab.methods.mic as mic
    torch.manual_seed(0)
    model = TinySegNet()
    b = Batch(_images(2, seed=0), _labels(2, seed=0), _images(2, seed=1), p=0.0)
    # nothing masked and every pixel confident: the term is the plain target CE on the teacher's labels
    m = make_method("mic", augment=False, mask_ratio=0.0, threshold=0.0)
    m.setup(model, torch.device("cpu"))
    loss, logs = m.loss(model, b)
    pseudo, conf = m.pseudo_labels(b.xt, True)
    expected = conf * task_loss(model(b.xt.float() / 255), pseudo, reduction="none").mean()
    assert conf == 1 and expected > 0 and logs["kept_frac"] == 1
    assert torch.isclose(logs["masked_loss"], expected.detach(), atol=1e-6)
    assert torch.isclose(loss.detach(), logs["task_loss"] + logs["mix_loss"] + logs["masked_loss"], atol=1e-5)
    with pytest.raises(ValueError, match="mask_ratio"):
        mic.MIC(mask_ratio=1.0)


# ------------------------------------------------------------------ pixel sizes follow the image
def test_pixel_rule_scales_lengths_with_the_shorter_side_and_counts_with_the_area():
    from dalab.data.pixel_scale import scale_count, scale_length, scale_length_int, shorter_side
    assert shorter_side((2, 3, 48, 96)) == 48 and shorter_side((96, 48)) == 48
    assert scale_length(32, 512, 512) == 32 and scale_length(32, 512, 48) == pytest.approx(3.0)
    assert scale_length(1.15, 512, 48) == pytest.approx(1.15 * 48 / 512)
    assert scale_count(3000, 512, 1024) == pytest.approx(12000) and scale_count(3000, 512, 48) == pytest.approx(26.3672)
    assert scale_length_int(15, 512, 48, minimum=0) == 1 and scale_length_int(120, 512, 48) == 11
    assert scale_length_int(0.5, 1, 1) == 1 and scale_length_int(1, 512, 48) == 1  # halves up; at least 1
    with pytest.raises(ValueError):
        scale_length(1, 0, 48)


@pytest.mark.parametrize("hw,expected", [((512, 512), (0.15, 1.15)), ((48, 96), (0.15 * 48 / 512, 1.15 * 48 / 512)),
                                         ((96, 48), (0.15 * 48 / 512, 1.15 * 48 / 512))])
def test_dacs_blur_sigma_is_the_published_one_at_512_px_and_scaled_below(monkeypatch, hw, expected):
    import dalab.methods.augment as aug
    import dalab.methods.dacs as dacs
    seen = []
    real = aug._strong_augment
    monkeypatch.setattr(aug, "_strong_augment", lambda x, g, s, jp, bp, sigma: seen.append(sigma) or real(
        x, g, s, jp, bp, sigma))
    x = torch.rand(2, 3, *hw)
    for name in ("dacs", "mic", "daformer"):
        dacs.strong_augment(x, torch.Generator().manual_seed(0), **make_method(name).augment_args())
    assert len(seen) == 3 and all(s == pytest.approx(expected) for s in seen)
    # through the loss: DACS's mixed images at 48x96
    seen.clear()
    m = make_method("dacs")
    m.setup(TinySegNet(), torch.device("cpu"))
    m.loss(TinySegNet(), Batch(_images(2, 48, 96), _labels(2, h=48, w=96), _images(2, 48, 96, seed=3)))
    assert seen == [pytest.approx((0.15 * 48 / 512, 1.15 * 48 / 512))]


def test_the_scaled_blur_of_a_48_px_image_is_as_weak_as_the_authors_at_512_px():
    from dalab.methods.dacs import gaussian_blur
    x = torch.rand(1, 3, 48, 96, generator=torch.Generator().manual_seed(0))
    big = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    # the largest sigma, 1.15 px at 512 px: a mild blur there; its scaled 0.108 px leaves 48-px images as they are
    assert (gaussian_blur(big, torch.tensor([1.15])) - big).abs().mean() > 0.05
    assert torch.allclose(gaussian_blur(x, torch.tensor([1.15 * 48 / 512])), x, atol=1e-6)
    assert (gaussian_blur(x, torch.tensor([1.15])) - x).abs().mean() > 0.05  # dalab 0.8's unscaled sigma


def test_strong_augment_takes_sigma_in_pixels_of_the_image_without_a_reference_side(monkeypatch):
    import dalab.methods.augment as aug
    import dalab.methods.dacs as dacs
    seen = []
    monkeypatch.setattr(aug, "_strong_augment", lambda x, g, s, jp, bp, sigma: seen.append(sigma) or x)
    dacs.strong_augment(torch.rand(1, 3, 48, 96), None, sigma=(0.15, 1.15), sigma_side=None)
    assert seen == [(0.15, 1.15)]


@pytest.mark.parametrize("hw,block", [((512, 512), 32), ((48, 96), 3), ((1024, 1024), 64), ((16, 32), 1)])
def test_mic_block_is_32_px_at_512_and_scaled_with_the_image(hw, block):
    """32 px on DAFormer's 512-px crops, 64 px on HRDA's 1024-px crops (lhoyer/MIC seg/experiments.py)."""
    m = make_method("mic")
    assert m.block_size((2, 3, *hw)) == block
    with pytest.raises(ValueError, match="pixels of 512-px crops"):
        make_method("mic", mask_block=0.125)


def test_mic_loss_masks_blocks_of_the_scaled_size(monkeypatch):
    import dalab.methods.mic as mic
    seen = []
    real = mic.block_mask
    monkeypatch.setattr(mic, "block_mask", lambda shape, block, *a: seen.append(block) or real(shape, block, *a))
    m = make_method("mic")
    model = TinySegNet()
    m.setup(model, torch.device("cpu"))
    m.loss(model, Batch(_images(2, 48, 96), _labels(2, h=48, w=96), _images(2, 48, 96, seed=3)))
    assert seen == [3]


@pytest.mark.parametrize("side", [48, 64, 512, 1024])
def test_fda_window_keeps_the_authors_share_of_the_spectrum(side):
    from dalab.methods.fda import window_half_side
    assert window_half_side(0.01, 512) == 5 == math.floor(0.01 * 512)  # the authors' 1024x512 crops
    assert window_half_side(0.01, side) == 5 and window_half_side(0.0, side) == 0
    assert window_half_side(0.05, side) == 25 and window_half_side(0.09, side) == 46


def test_fda_loss_swaps_the_scaled_window(monkeypatch):
    import dalab.methods.fda as fda
    seen = []
    real = fda.fda_source_to_target
    monkeypatch.setattr(fda, "fda_source_to_target", lambda xs, xt, beta, clip=True, half_side=None:
                        seen.append(half_side) or real(xs, xt, beta, clip, half_side))
    m = make_method("fda")
    _, logs = m.loss(TinySegNet(), Batch(_images(2, 48, 96), _labels(2, h=48, w=96), _images(2, 48, 96, seed=3)))
    assert seen == [5] and logs["fda_window"] == 5
    xs, xt = _images(1, 48, 96).double(), _images(1, 48, 96, seed=5).double()
    assert torch.equal(fda.fda_source_to_target(xs, xt, 0.3, half_side=5), fda.fda_source_to_target(xs, xt, 5 / 48))


def test_method_versions_say_which_changed():
    assert make_method("dacs").version == 3 and make_method("mic").version == 2 and make_method("fda").version == 2
    assert make_method("daformer").version == 1


# ------------------------------------------------------------------ DAFormer
def test_daformer_defaults_and_recipe():
    from dalab.methods.daformer import DAFormer
    m = make_method("daformer")
    assert isinstance(m, DAFormer) and m.ema == 0.999 and m.threshold == 0.968
    assert m.augment_args() == {"strength": 0.2, "jitter_p": 0.8, "blur_p": 0.5, "sigma": (0.15, 1.15),
                                "sigma_side": 512}
    assert DAFormer.recipe == {"rare_class_sampling": True, "warmup": 1500 / 40000, "warmup_ratio": 1e-6}
    d = m.describe()
    assert d["ignore_top"] == 15 and d["ignore_bottom"] == 120 and "warmup=0.0375" in d["recipe"]


def test_linear_warmup_multiplies_the_schedule_from_ratio_to_one():
    from dalab.methods.daformer import linear_warmup
    assert linear_warmup(0, 1500) == pytest.approx(1e-6)
    assert linear_warmup(750, 1500) == pytest.approx(0.5 + 0.5e-6)
    assert linear_warmup(1499, 1500) == pytest.approx(1 - (1 / 1500) * (1 - 1e-6))
    assert linear_warmup(1500, 1500) == 1.0 and linear_warmup(10, 0) == 1.0


def test_daformer_pseudo_label_weight_ignores_scaled_rows():
    from dalab.methods.daformer import ignored_rows
    assert ignored_rows(512, 512, 15, 120) == (15, 120)
    assert ignored_rows(48, 48, 15, 120) == (1, 11)
    assert ignored_rows(512, 1024, 15, 120) == (30, 240)  # HRDA's crop_pseudo_margins at twice the side
    assert ignored_rows(4, 4, 1000, 1000) == (4, 0)
    m = make_method("daformer")
    w = m.target_weight(torch.tensor(0.25), (2, 48, 96))
    assert w.shape == (2, 48, 96)
    assert (w[:, :1] == 0).all() and (w[:, -11:] == 0).all() and (w[:, 1:37] == 0.25).all()
    off = make_method("daformer", ignore_top=0, ignore_bottom=0).target_weight(torch.tensor(0.25), (1, 8, 8))
    assert (off == 0.25).all()


def test_daformer_mixed_loss_uses_the_row_weights():
    """The mixed loss equals a hand computation with the row-weighted target pixels."""
    from dalab.methods.dacs import mixed_loss
    h = w = 64  # rows ignored: round(15 / 8) = 2 at the top, 120 / 8 = 15 at the bottom
    logits = torch.zeros(1, 4, h, w)
    y = torch.zeros(1, h, w, dtype=torch.uint8)
    m = torch.zeros(1, h, w, dtype=torch.bool)
    m[0, 0, :8] = True  # 8 pasted source pixels in the ignored top rows keep weight 1
    weight = make_method("daformer").target_weight(torch.tensor(0.5), (1, h, w))
    n_target_weighted = (h - 2 - 15) * w  # target pixels at weight 0.5
    expected = (8 * 1.0 + n_target_weighted * 0.5) * math.log(4) / (h * w)
    assert torch.isclose(mixed_loss(logits, y, m, weight), torch.tensor(expected))


def test_downscaled_labels_and_thing_feature_distance():
    from dalab.methods.daformer import downscale_labels, thing_feature_distance
    y = torch.full((1, 4, 4), 2, dtype=torch.uint8)
    y[0, :2, :2] = 11              # a person in the top-left cell
    y[0, :2, 2:] = 13
    y[0, 0, 2] = IGNORE            # the top-right cell: 3 car pixels of 4 (>= 0.75) -> car
    y[0, 2:, :2] = 255             # bottom-left: all ignore -> ignore
    y[0, 3, 3] = 13                # bottom-right: 3 of 4 road(2) -> 2
    cells = downscale_labels(y, (2, 2), 19, 0.75)
    assert cells.tolist() == [[[11, 13], [IGNORE, 2]]]
    assert downscale_labels(y, (2, 2), 19, 0.8).tolist() == [[[11, IGNORE], [IGNORE, IGNORE]]]
    fs = torch.zeros(1, 3, 2, 2, requires_grad=True)
    fi = torch.zeros(1, 3, 2, 2)
    fi[0, :, 0, 0] = torch.tensor([3.0, 4.0, 0.0])   # distance 5 at the person cell
    fi[0, :, 0, 1] = torch.tensor([0.0, 0.0, 1.0])   # distance 1 at the car cell
    fi[0, :, 1, 1] = 100.0                           # road: not a thing class, left out
    d, mask = thing_feature_distance(fs, fi, y)
    assert mask.tolist() == [[[True, True], [False, False]]] and torch.isclose(d, torch.tensor(3.0))
    d.backward()
    assert fs.grad[0, :, 1, 1].abs().sum() == 0 and fs.grad[0, :, 0, 0].abs().sum() > 0
    none, m0 = thing_feature_distance(fs, fi, torch.full((1, 4, 4), 2, dtype=torch.uint8))
    assert none.item() == 0.0 and not m0.any() and none.requires_grad


class ImageNetTinySegNet(TinySegNet):
    """TinySegNet with a frozen copy of its encoder standing in for an ImageNet backbone."""

    def __init__(self):
        super().__init__(num_classes=19)
        import copy
        self.frozen = copy.deepcopy(self.enc).requires_grad_(False)

    def imagenet_features(self, x):
        with torch.no_grad():
            return self.frozen((to_unit_float(x) - 0.5) / 0.5)


def test_daformer_feature_distance_only_with_an_imagenet_backbone():
    from dalab.methods.daformer import ImageNetFeatures
    torch.manual_seed(0)
    ys = _labels(2, h=16, w=32)
    ys[:, 4:] = 13  # cars: a thing class
    b = Batch(_images(2), ys, _images(2, seed=3))
    plain, withnet = TinySegNet(num_classes=19), ImageNetTinySegNet()
    assert not isinstance(plain, ImageNetFeatures) and isinstance(withnet, ImageNetFeatures)
    m = make_method("daformer")
    m.setup(plain, torch.device("cpu"))
    _, logs = m.loss(plain, b)
    assert not m.fd_active and "fd_loss" not in logs and m.describe()["fd_active"] is False
    m = make_method("daformer")
    m.setup(withnet, torch.device("cpu"))
    with torch.no_grad():
        for p in withnet.enc.parameters():
            p.add_(0.1 * torch.randn_like(p))
    loss, logs = m.loss(withnet, b)
    assert m.fd_active and logs["fd_loss"] > 0 and 0 < logs["fd_cells"] <= 1
    loss.backward()
    assert all(p.grad is None for p in withnet.frozen.parameters())
    off = make_method("daformer", fd_lambda=0.0)
    off.setup(withnet, torch.device("cpu"))
    assert not off.fd_active
