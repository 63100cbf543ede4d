"""The optional torch side, shared by the verbs that run a model (importance, compare, distill): one message when
torch is missing, one way to load a causal LM (on a device, or spread by a device map), and this process's place
under `accelerate launch` / torchrun.

A folder's remote code is trusted only when it is byte-identical to the modeling file `surgery factor` writes
(model/factored_modeling.py); any other `auto_map` is never executed.
"""

from __future__ import annotations

import os
from pathlib import Path

from surgery.errors import CheckpointError, InputError
from surgery.model.factored_modeling import trusted_code

EXTRA_HINT = "pip install 'surgery[torch]' (and torch==2.13.0 for the CPU build)"
DEVICE_MAP = "auto"  # --device auto: accelerate's device map over every GPU (and CPU, and disk) for big models


def import_torch(verb: str):
    try:
        import torch
        import transformers
    except ImportError as e:
        raise InputError(f"surgery {verb} needs torch and transformers: {EXTRA_HINT}") from e
    transformers.utils.logging.disable_progress_bar()  # stderr is ours
    return torch, transformers


def load_causal_lm(path: Path, verb: str, *, device: str = "cpu", dtype="auto", what: str = "model"):
    """The model of a folder, in eval mode, on `device` or spread by a device map (`device="auto"`)."""
    torch, transformers = import_torch(verb)
    options = {"dtype": dtype, "trust_remote_code": trusted_code(path)}
    if device == DEVICE_MAP:
        options["device_map"] = DEVICE_MAP
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(path, **options)
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: transformers cannot load the {what}: {str(e).splitlines()[0]}") from e
    if device != DEVICE_MAP:
        try:
            model = model.to(device)
        except (RuntimeError, AssertionError) as e:
            raise InputError(f"--device {device}: {str(e).splitlines()[0]}") from e
    return model.eval()


def input_device(model, device: str):
    """Where a batch goes: the given device, or under a device map the first layer's (the embedding's)."""
    return model.get_input_embeddings().weight.device if device == DEVICE_MAP else device


def load_tokenizer(path: Path, verb: str):
    _, transformers = import_torch(verb)
    try:
        return transformers.AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: transformers cannot load its tokenizer: {str(e).splitlines()[0]}") from e


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


class _Single:
    index, count = 0, 1

    @staticmethod
    def gather(obj) -> list:
        return [obj]

    @staticmethod
    def finish() -> None:
        pass


def finish_distributed() -> None:
    """Every process reaches this point, then the process group is torn down: no process exits while a peer
    still talks to it (gloo aborts a process whose peer vanished)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def cpu_processes(torch) -> bool:
    """Whether accelerate must be told to join its processes on the CPU: launched, and no GPU (otherwise accelerate
    runs each launched process alone)."""
    return world_size() > 1 and not torch.cuda.is_available()


def check_joined(count: int) -> None:
    if count != world_size():
        raise InputError(f"the launcher started {world_size()} processes but accelerate joined {count}")


def processes():
    """One process, or this process's place under `accelerate launch` / torchrun: `index`, `count`, and
    `gather(obj)`, the list of every process's obj in rank order."""
    if world_size() <= 1:
        return _Single()
    import torch
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = PartialState(cpu=cpu_processes(torch))
    check_joined(state.num_processes)

    class _Distributed:
        index, count = state.process_index, state.num_processes

        @staticmethod
        def gather(obj) -> list:
            return gather_object([obj])

        @staticmethod
        def finish() -> None:
            finish_distributed()

    return _Distributed()
