"""kubetune: a Kubernetes operator that fine-tunes large language models."""

__version__ = "0.1.0"
