"""surgery: checkpoint surgery on raw tensors (vocabulary trimming, depth pruning) for safetensors and GGUF.

    import surgery
    surgery.trim("ckpt/", "ids.txt", "ckpt-small/")
    surgery.verify("ckpt/", "ckpt-small/").ok

The functions live in surgery.api and are imported on first use, so `import surgery` stays cheap.
"""

__version__ = "0.1.0"
__all__ = ["trim", "prepare_trim", "drop_layers", "prepare_drop_layers", "keep", "inspect", "verify",
           "SurgeryError", "CheckpointError", "InputError", "VerifyError"]


def __getattr__(name: str):
    if name in ("SurgeryError", "CheckpointError", "InputError", "VerifyError"):
        from surgery import errors

        return getattr(errors, name)
    if name in __all__:
        from surgery import api

        return getattr(api, name)
    raise AttributeError(f"module 'surgery' has no attribute {name!r}")
