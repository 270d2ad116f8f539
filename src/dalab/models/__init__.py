"""Models: the GRL and Ganin's three-part network."""

from .grl import GradientReversal, GradReverseFn, LambdaSchedule, ganin_lambda, grad_reverse
from .nets import DANNNet, DomainHead, FeatureExtractor, LabelHead, build_model

__all__ = ["GradientReversal", "GradReverseFn", "LambdaSchedule", "ganin_lambda", "grad_reverse",
           "DANNNet", "DomainHead", "FeatureExtractor", "LabelHead", "build_model"]
