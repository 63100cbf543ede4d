"""surgery: vocabulary trimming for safetensors checkpoints, without a model class."""

__version__ = "0.1.0"
