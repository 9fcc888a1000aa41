"""makima: a Kubernetes operator that turns a written goal into a merged pull request."""

__version__ = "0.1.0"
