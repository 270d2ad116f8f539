"""dalab: unsupervised domain adaptation in PyTorch, offline and with an honest protocol."""

__version__ = "0.1.0"
