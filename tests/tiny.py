"""Shared tiny test fixtures (no downloads): a byte-level BPE tokenizer trained in memory, a tiny random Llama,
a hand-made corpus of passages and a BM25 retriever over it.

Usage (pytest puts ``tests/`` on ``sys.path``; the folder has no ``__init__.py``)::

    from tiny import PASSAGES, QUESTIONS, tiny_model, tiny_retriever, tiny_tokenizer

The tokenizer is a ``transformers`` fast tokenizer with ChatML-like special tokens (``<|pad|>`` = 0,
``<|im_start|>`` = 1 (bos), ``<|im_end|>`` = 2 (eos), matching the ids a default ``LlamaConfig`` uses) and a jinja
``chat_template``, so :func:`searche1.protocol.build_prompt` takes the chat path. It is built once per session
(``lru_cache``; callers must not mutate it). The model is rebuilt on each call (cheap) so tests may mutate it; its
weights are scaled up (see :func:`tiny_model`) so that its next-token distributions are far from uniform.
"""

from __future__ import annotations

import functools

from searche1 import protocol
from searche1.data.types import Passage

PAD, BOS, EOS = "<|pad|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD, BOS, EOS]  # ids 0, 1, 2

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: (id, title, text): a tiny hand-made corpus; each passage answers one of :data:`QUESTIONS`.
_CORPUS = [
    ("p0", "Paris", "Paris is the capital and largest city of France, on the river Seine."),
    ("p1", "Berlin", "Berlin is the capital of Germany and its most populous city."),
    ("p2", "Mount Everest", "Mount Everest is the highest mountain on Earth, in the Himalayas."),
    ("p3", "Water", "Water boils at one hundred degrees Celsius at sea level."),
    ("p4", "Jupiter", "Jupiter is the largest planet in the Solar System, a gas giant."),
    ("p5", "Shakespeare", "William Shakespeare wrote the play Hamlet around the year 1600."),
    ("p6", "Nile", "The Nile is a major river in Africa that flows north into the Mediterranean Sea."),
    ("p7", "Tokyo", "Tokyo is the capital of Japan and one of the largest cities in the world."),
    ("p8", "Amazon", "The Amazon rainforest covers much of the Amazon basin of South America."),
    ("p9", "Moon", "The Moon is the only natural satellite of the Earth; Neil Armstrong walked on it in 1969."),
]
PASSAGES: list[Passage] = [Passage.from_title_text(i, t, x) for i, t, x in _CORPUS]

#: (question, gold answer) pairs over :data:`PASSAGES`.
QUESTIONS: list[tuple[str, str]] = [
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Germany?", "Berlin"),
    ("What is the highest mountain on Earth?", "Mount Everest"),
    ("Who wrote Hamlet?", "William Shakespeare"),
    ("What is the largest planet in the Solar System?", "Jupiter"),
    ("Which river flows north into the Mediterranean Sea?", "Nile"),
]

_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "I should look this up before I answer the question.",
    "Let me think about it step by step.",
    "The answer is in the first document.",
    "Search for the name of the city, then answer with a short phrase.",
    "Question: who, what, where, when, which, why and how?",
    "Doc 1 (Title: Paris) Doc 2 (Title: Berlin) Doc 3 (Title: Tokyo)",
    "No results found.",
]


def _training_text() -> list[str]:
    tags = " ".join(f"{o} {c}" for o, c in [
        (protocol.SEARCH_OPEN, protocol.SEARCH_CLOSE), (protocol.INFO_OPEN, protocol.INFO_CLOSE),
        (protocol.ANSWER_OPEN, protocol.ANSWER_CLOSE), (protocol.THINK_OPEN, protocol.THINK_CLOSE)])
    texts = [tags] * 20
    texts += [protocol.instruction(n) for n in (None, 0, 1, 2, 4)]
    texts += _SENTENCES * 3
    texts += [f"{title}\n{text}" for _, title, text in _CORPUS] * 3
    texts += [f"{q} {protocol.ANSWER_OPEN} {a} {protocol.ANSWER_CLOSE}" for q, a in QUESTIONS] * 2
    texts += [f"{protocol.SEARCH_OPEN} capital of France {protocol.SEARCH_CLOSE}"] * 3
    return texts


@functools.lru_cache(maxsize=None)
def tiny_tokenizer(vocab_size: int = 600):
    """A byte-level BPE fast tokenizer trained in memory (~0.1 s), with eos/pad/bos and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_training_text(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    fast.chat_template = CHAT_TEMPLATE
    assert (fast.pad_token_id, fast.bos_token_id, fast.eos_token_id) == (0, 1, 2)
    return fast


def tiny_model(tokenizer=None, seed: int = 0, init_scale: float = 4.0):
    """``searche1.models.tiny_random_model`` sized to ``tokenizer`` (default :func:`tiny_tokenizer`), fp32, eval,
    with the tokenizer's special ids in its config and generation config.

    Every weight matrix is multiplied by ``init_scale``: with the default init (std 0.02, hidden size 32) the logits
    are nearly uniform (all log-probs ~ -6.4 +- 0.1), so a wrong position id or an attended pad changes log-probs by
    < 1e-4 and slips through tolerance checks; at 4x such errors show up as 1e-2..1 while sampling stays diverse.
    ``init_scale=1`` gives the plain ``tiny_random_model``.
    """
    import torch

    from searche1.models import tiny_random_model

    tok = tokenizer if tokenizer is not None else tiny_tokenizer()
    model = tiny_random_model(vocab_size=len(tok), seed=seed).to(torch.float32).eval()
    if init_scale != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim == 2:
                    p.mul_(init_scale)
    for cfg in (model.config, model.generation_config):
        cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    return model


@functools.lru_cache(maxsize=None)
def tiny_retriever():
    """A BM25 retriever over :data:`PASSAGES` (built once per session; read-only)."""
    from searche1.retrieval.bm25 import BM25Retriever

    return BM25Retriever.build(PASSAGES, show_progress=False)


def spy_prefixes(monkeypatch, module, name: str = "masked_logprobs") -> list[int]:
    """Wrap ``module.<name>`` (``masked_logprobs``, or the OFSD ``response_logits``) so every call's ``prefix`` is
    appended to the returned list (tests check that a shared prefix really ran)."""
    prefixes: list[int] = []
    real = getattr(module, name)

    def spy(*args, prefix=0, **kw):
        prefixes.append(prefix)
        return real(*args, prefix=prefix, **kw)

    monkeypatch.setattr(module, name, spy)
    return prefixes


def spy_adamw_grads(monkeypatch) -> list[list]:
    """Record the gradients every ``torch.optim.AdamW.step`` applies: one list per step, a copy per parameter of its
    first param group in order (zeros where a parameter has no gradient)."""
    import torch

    steps: list[list] = []
    real = torch.optim.AdamW.step

    def step(self, *args, **kw):
        steps.append([p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
                      for p in self.param_groups[0]["params"]])
        return real(self, *args, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    return steps
