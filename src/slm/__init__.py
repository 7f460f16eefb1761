"""slm: raw text -> a small language model you can train, evaluate, sample and export."""

__version__ = "0.1.0"
