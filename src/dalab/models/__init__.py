"""Models: the GRL and Ganin's three-part network."""

from .batchnorm import DomainBatchNorm2d, bn_domain, bn_split, calibrate_bn, set_bn_domain
from .grl import GradientReversal, GradReverseFn, LambdaSchedule, ganin_lambda, grad_reverse
from .nets import DANNNet, DomainHead, FeatureExtractor, LabelHead
from .registry import build_model, build_network

__all__ = ["DomainBatchNorm2d", "bn_domain", "bn_split", "calibrate_bn", "set_bn_domain", "GradientReversal", "GradReverseFn", "LambdaSchedule", "ganin_lambda", "grad_reverse",
           "DANNNet", "DomainHead", "FeatureExtractor", "LabelHead", "build_model",
           "build_network"]
