"""Label-free validators for dense prediction (dalab.evaluation.validators), on hand-made logits."""

from __future__ import annotations

import math

import pytest
import torch

from dalab.evaluation import validators as v


def _logits(pred, k=3, sure=10.0):
    """(1, K, H, W) logits whose argmax is ``pred`` (H, W), confident by ``sure``."""
    pred = torch.as_tensor(pred)
    return (torch.nn.functional.one_hot(pred, k).permute(2, 0, 1)[None].float() * sure)


def test_class_entropy_averages_per_predicted_class_so_small_classes_count():
    # class 0: 8 confident pixels (entropy ~0); class 1: 1 uniform pixel (entropy log 3)
    logits = torch.zeros(9, 3)
    logits[:8, 0] = 50.0
    logits[8] = torch.tensor([0.0, 1e-4, 0.0])  # nearly uniform, argmax class 1
    per_class = v.class_entropy(logits)
    assert per_class == pytest.approx(-(0.0 + math.log(3)) / 2, abs=1e-4)
    # the pixel mean hides the small class: -log 3 / 9
    assert v.target_entropy(logits) == pytest.approx(-math.log(3) / 9, abs=1e-4)
    assert v.class_entropy(logits, min_pixels=2) == pytest.approx(0.0, abs=1e-4)  # class 1 left out
    maps = logits.T.reshape(1, 3, 3, 3)  # the same pixels as a (B, K, H, W) map
    assert v.class_entropy(maps) == pytest.approx(per_class)
    with pytest.raises(ValueError):
        v.class_entropy(logits, min_pixels=100)


def test_prediction_miou_is_symmetric_and_counts_classes_in_either_map():
    a = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 2]])
    assert v.prediction_miou(a, a, 4) == 1.0
    b = torch.tensor([[0, 1, 1, 1], [2, 2, 2, 3]])
    # class 0: 1/2, class 1: 2/3, class 2: 3/4, class 3: 0/1
    expected = (1 / 2 + 2 / 3 + 3 / 4 + 0) / 4
    assert v.prediction_miou(a, b, 4) == pytest.approx(expected)
    assert v.prediction_miou(b, a, 4) == pytest.approx(expected)
    with pytest.raises(ValueError):
        v.prediction_miou(a, a[:1], 4)


def test_teacher_and_augmentation_agreement_on_hand_made_maps():
    pa = torch.tensor([[0, 0, 1], [1, 2, 2]])
    pb = torch.tensor([[0, 1, 1], [1, 2, 2]])
    la, lb = _logits(pa), _logits(pb)
    # class 0: 1/2, class 1: 2/3, class 2: 2/2
    assert v.teacher_agreement(la, lb) == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert v.teacher_agreement(la, la * 0.5) == 1.0  # only the argmax counts
    # a flip-consistent model: its prediction of the flipped image, flipped back, is the same map
    model = lambda x: _logits((x[0, 0] > 0.5).long(), k=2)  # noqa: E731
    x = torch.rand(1, 3, 4, 6, generator=torch.Generator().manual_seed(0))
    back = model(x.flip(-1)).flip(-1)
    assert v.augmentation_agreement(model(x), back) == 1.0
    rows_a, rows_b = la.movedim(1, -1).reshape(-1, 3), lb.movedim(1, -1).reshape(-1, 3)
    assert v.teacher_agreement(rows_a, rows_b) == pytest.approx(v.teacher_agreement(la, lb))


def test_dense_validators_are_selection_validators_of_segmentation_only():
    from dalab.tasks import get_task

    assert set(v.SEG_VALIDATORS) == {"class-entropy", "teacher-agreement", "augmentation-agreement"}
    assert set(v.SEG_VALIDATORS) <= set(v.VALIDATORS) and set(v.SEG_VALIDATORS) <= set(get_task("segmentation").validators)
    assert not set(v.SEG_VALIDATORS) & set(get_task("classification").validators)
