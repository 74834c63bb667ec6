"""GLM Token Saver: a LiteLLM proxy plugin that routes chat requests between a local model and Cerebras."""

__version__ = "0.1.0"
