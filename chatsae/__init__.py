"""chatsae: train, evaluate, interpret and steer sparse autoencoders on chat-model activations."""

from .activations import ActivationBatch, ActivationSource, SyntheticSource, TensorSource
from .sae import SAE, SAEConfig, create_sae, load_sae, save_sae
from .train import TrainConfig, Trainer

__version__ = "0.1.0"

__all__ = [
    "SAE",
    "ActivationBatch",
    "ActivationSource",
    "SAEConfig",
    "SyntheticSource",
    "TensorSource",
    "TrainConfig",
    "Trainer",
    "create_sae",
    "load_sae",
    "save_sae",
]
