"""Engine configuration: one validated dataclass, and the model presets."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from enum import Enum


class LoopMode(str, Enum):
    """The engine's scheduling loop: ``sync`` waits for each step's tokens before scheduling the next;
    ``async`` schedules step N+1 while step N runs on the GPU."""

    SYNC = "sync"
    ASYNC = "async"

    def __str__(self) -> str:  # the value, as a plain str would print (f-strings, labels, file names)
        return self.value


MODES = tuple(m.value for m in LoopMode)
DTYPES = ("float32", "float16", "bfloat16")

# Model shapes by name. Random weights from the engine's seed; bf16 on CUDA, fp32 on the CPU.
PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=512, max_position_embeddings=2048),
    "llama-1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                     intermediate_size=8192, vocab_size=32000, max_position_embeddings=4096),
    # Llama-3-8B's shape (random weights): where tensor parallelism matters; fits one H200 in bf16
    "llama-8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                     intermediate_size=14336, vocab_size=128256, max_position_embeddings=8192),
}


def preset_config(name: str):
    """A transformers ``LlamaConfig`` for a preset name."""
    from transformers import LlamaConfig

    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)} or a checkpoint folder")
    return LlamaConfig(rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, **PRESETS[name])


@dataclass(slots=True)
class EngineConfig:
    """Everything that shapes an engine. ``None`` fields are resolved by the engine (see ``LLMEngine``)."""

    model: str = "tiny"  # preset name or a checkpoint folder (config.json + *.safetensors)
    mode: LoopMode = LoopMode.SYNC  # a LoopMode or its value ("sync" | "async")
    device: str | None = None  # None: "cuda" if available else "cpu"
    dtype: str | None = None  # None: bfloat16 on CUDA, float32 on CPU
    max_batch_tokens: int = 2048
    max_seqs: int = 256
    block_size: int = 16
    num_blocks: int | None = None  # None: from kv_cache_memory_gb (or a default budget)
    kv_cache_memory_gb: float | None = None
    cuda_graphs: bool | None = None  # None: on for CUDA, off on CPU
    # each decode graph in a few pieces over growing runs of layers (cuda_graphs.piece_bounds), so that the
    # GPU starts on the first while the host launches the rest; False: one graph per batch size
    piecewise_graphs: bool = True
    # a decode step whose device is idle (the sync loop) has its input copy captured in its first piece (the
    # embedding, rotary lookups and layer 0: cuda_graphs.DecodeGraph); False: a copy_, then the graphs.
    # With more than one piece only
    graph_copy: bool = True
    # decode steps on the CPU through one traced call (reference_engine.cpu_graphs) instead of ~100 torch calls
    # from Python. None: on for a CPU engine without tensor parallelism, off on CUDA
    cpu_graphs: bool | None = None
    # on the CPU, each step's device work in a forked child process that plays the GPU (reference_engine.cpu_process),
    # in both loops; it has its own interpreter lock, where the async loop's worker thread shares the host's.
    # None: on for a CPU engine without tensor parallelism and without cpu_threads > 1 (the child computes on one
    # thread: GNU OpenMP cannot start threads in a forked process); False: sync inline, async on a worker thread
    cpu_worker_process: bool | None = None
    seed: int = 0
    enable_eos: bool = False
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    # Steps mixing decodes and prefill chunks run as two forward batches, on two CUDA streams (decode
    # through a CUDA graph where one fits), so their kernels can overlap. Same tokens; CPU: in turn.
    split_prefill_decode: bool = False
    # Tensor parallelism: ranks (processes; see reference_engine.distributed), Megatron-style shards.
    tp_size: int = 1
    # torch's compute threads on the CPU. None: 1 with the device process (cpu_worker_process, the default);
    # in-process, one fewer than the usable cores (at least 1), so the compute threads never take the core of
    # the async loop's worker or engine thread; the same in both modes.
    cpu_threads: int | None = None
    # TP > 1: a step of two or more sequences runs as two micro-batches whose layers are interleaved, so
    # that one's all-reduce runs under the other's GEMMs (reference_engine.tp_overlap). Same tokens.
    tp_overlap: bool = False

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.model, str) or not self.model:
            problems.append("model must be a preset name or a checkpoint folder")
        elif self.model not in PRESETS and not os.path.isfile(os.path.join(self.model, "config.json")):
            problems.append(f"model {self.model!r} is neither a preset ({', '.join(sorted(PRESETS))}) "
                            "nor a folder with a config.json")
        try:
            self.mode = LoopMode(self.mode)
        except ValueError:
            problems.append(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.device is not None and not (isinstance(self.device, str) and
                                            self.device.split(":")[0] in ("cpu", "cuda")):
            problems.append(f"device must be None, 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.dtype is not None:
            name = str(self.dtype).removeprefix("torch.")
            if name not in DTYPES:
                problems.append(f"dtype must be None or one of {DTYPES}, got {self.dtype!r}")
            else:
                self.dtype = name
        for field in ("max_batch_tokens", "max_seqs", "block_size"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{field} must be a positive integer, got {value!r}")
        if self.num_blocks is not None and (not isinstance(self.num_blocks, int) or self.num_blocks < 1):
            problems.append(f"num_blocks must be None or a positive integer, got {self.num_blocks!r}")
        if self.kv_cache_memory_gb is not None and not (isinstance(self.kv_cache_memory_gb, (int, float))
                                                        and self.kv_cache_memory_gb > 0):
            problems.append(f"kv_cache_memory_gb must be None or > 0, got {self.kv_cache_memory_gb!r}")
        if self.max_model_len is not None and (not isinstance(self.max_model_len, int) or self.max_model_len < 2):
            problems.append(f"max_model_len must be None or an integer >= 2, got {self.max_model_len!r}")
        if not isinstance(self.piecewise_graphs, bool):
            problems.append(f"piecewise_graphs must be a bool, got {self.piecewise_graphs!r}")
        if not isinstance(self.graph_copy, bool):
            problems.append(f"graph_copy must be a bool, got {self.graph_copy!r}")
        if self.cpu_graphs is not None and not isinstance(self.cpu_graphs, bool):
            problems.append(f"cpu_graphs must be None or a bool, got {self.cpu_graphs!r}")
        elif self.cpu_graphs and self.tp_size > 1:
            problems.append("cpu_graphs traces a single-rank forward; it needs tp_size 1")
        if self.cpu_worker_process is not None and not isinstance(self.cpu_worker_process, bool):
            problems.append(f"cpu_worker_process must be None or a bool, got {self.cpu_worker_process!r}")
        elif self.cpu_worker_process and self.tp_size > 1:
            problems.append("cpu_worker_process forks a single-rank engine; it needs tp_size 1")
        elif self.cpu_worker_process and (self.cpu_threads or 1) > 1:
            problems.append("cpu_worker_process computes on one thread (GNU OpenMP cannot start threads in a forked "
                            "process); leave cpu_threads unset or 1")
        if not isinstance(self.split_prefill_decode, bool):
            problems.append(f"split_prefill_decode must be a bool, got {self.split_prefill_decode!r}")
        if not isinstance(self.tp_size, int) or isinstance(self.tp_size, bool) or self.tp_size < 1:
            problems.append(f"tp_size must be a positive integer, got {self.tp_size!r}")
        if self.cpu_threads is not None and (not isinstance(self.cpu_threads, int) or isinstance(self.cpu_threads, bool)
                                             or self.cpu_threads < 1):
            problems.append(f"cpu_threads must be None or a positive integer, got {self.cpu_threads!r}")
        if not isinstance(self.tp_overlap, bool):
            problems.append(f"tp_overlap must be a bool, got {self.tp_overlap!r}")
        elif self.tp_overlap and self.tp_size == 1:
            problems.append("tp_overlap needs tp_size > 1 (it hides the tensor-parallel all-reduces)")
        elif self.tp_overlap and self.split_prefill_decode:
            problems.append("tp_overlap and split_prefill_decode both cut a step in two; choose one")
        elif self.tp_overlap and self.cuda_graphs:
            problems.append("tp_overlap runs eager micro-batches; cuda_graphs must not be True")
        if not isinstance(self.seed, int):
            problems.append(f"seed must be an integer, got {self.seed!r}")
        if problems:
            raise ValueError("invalid EngineConfig: " + "; ".join(problems))

    def to_dict(self) -> dict:
        """The fields as plain values (``mode`` as its string), for JSON."""
        return {**asdict(self), "mode": str(self.mode)}
