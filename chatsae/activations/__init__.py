"""Activation sources: the interface the trainer consumes, synthetic data, tensors and on-disk caches."""

from .source import ActivationBatch, ActivationSource, TensorSource
from .synthetic import SyntheticSource, feature_recovery

__all__ = ["ActivationBatch", "ActivationSource", "SyntheticSource", "TensorSource", "feature_recovery"]
