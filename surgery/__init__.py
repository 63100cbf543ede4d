"""surgery: checkpoint surgery on raw tensors (vocabulary trimming, depth pruning) for safetensors and GGUF.

    import surgery
    surgery.trim("ckpt/", "ids.txt", "ckpt-small/")
    surgery.verify("ckpt/", "ckpt-small/").ok

The functions live in surgery.api and are imported on first use, so `import surgery` stays cheap.
"""

__version__ = "0.1.0"
API_FUNCTIONS = ("open_source", "trim", "prepare_trim", "drop_layers", "prepare_drop_layers", "prune", "prepare_prune",
                 "factor", "prepare_factor", "unfactor", "prepare_unfactor", "distill", "importance", "compare", "keep", "inspect",
                 "verify")
ERRORS = ("SurgeryError", "CheckpointError", "InputError", "VerifyError")
__all__ = [*API_FUNCTIONS, *ERRORS]


def __getattr__(name: str):
    if name in ERRORS:
        from surgery import errors

        return getattr(errors, name)
    if name in API_FUNCTIONS:
        from surgery import api

        return getattr(api, name)
    raise AttributeError(f"module 'surgery' has no attribute {name!r}")
