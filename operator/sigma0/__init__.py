"""sigma0: an eval-gated continual-training flywheel for coding models."""

__version__ = "0.1.0"
