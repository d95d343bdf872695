"""KVzip scores (arXiv 2505.23416; kvpress ``KVzipPress``): how much the model needs each
context token to reconstruct the context, computed once, when the context is stored.

Over the context's own KV the model is teacher-forced through "repeat the previous context":
the input is a repeat instruction, the chat template's assistant header and the context's
tokens again. In every layer the queries of that input attend to the attention sinks, to
the span of the context being reconstructed and to the input itself (causally), one softmax
over those keys; a context key's score is the largest attention any reconstruction query
(of any head of its GQA group) pays it. Contexts longer than CHUNK_TOKENS are reconstructed
in chunks, each over the whole context's KV, a later chunk's instruction ending with the
previous chunk's last PREV_POSTFIX tokens. The sinks get the scores' max + 1. All as kvpress
computes it (``prepare``, ``score_kvzip``, ``compress_post``); kvpress's own eviction is
global across heads and layers, ours is per head (scorers.py), from the same scores.

Cost: one forward of about the context's length on top of its KV, plus this module's
attention, per context. The engine runs it only when configured (engine.py says why).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from evicctl.engine import hf
from evicctl.manager.kv import KV

CHUNK_TOKENS = 2048  # kvpress KVzipPress.chunk_size
PREV_POSTFIX = 8  # kvpress KVzipPress.prepare(prev_postfix_size)
N_SINK = 4  # kvpress KVzipPress.n_sink
FIRST_PROMPT = "\n\nRepeat the previous context exactly."
NEXT_PROMPT = "\n\nRepeat the part of the previous context exactly, starting with"


@dataclass(frozen=True)
class RepeatPrompt:
    """Token ids [1, n] of the reconstruction input around the context: the instruction for the
    first chunk and for later ones, and the chat template's end of the user turn + assistant
    header (kvpress derives it from the template the same way)."""

    first: torch.Tensor
    next: torch.Tensor
    suffix: torch.Tensor


def _encode(tokenizer, text: str) -> torch.Tensor:
    return tokenizer.encode(text, return_tensors="pt", add_special_tokens=False).to(torch.long)


@lru_cache(maxsize=8)
def repeat_prompt(tokenizer) -> RepeatPrompt:
    """The reconstruction prompt of `tokenizer` (kvpress KVzipPress.__call__ / prepare)."""
    if tokenizer.chat_template is None:
        suffix = "\n"
    else:
        dummy = "dummy context"
        separator = "\n" + "#" * len(dummy)
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": dummy + separator}],
            add_generation_prompt=True,
            tokenize=False,
            enable_thinking=False,
        )
        suffix = rendered.split(separator)[1]
    return RepeatPrompt(_encode(tokenizer, FIRST_PROMPT), _encode(tokenizer, NEXT_PROMPT), _encode(tokenizer, suffix))


def chat_prefix_tokens(tokenizer) -> int:
    """Tokens of the chat template before a user message's content, as kvpress counts them
    (its contexts start with that prefix, which it does not reconstruct)."""
    if tokenizer.chat_template is None:
        return 0
    dummy = "dummy context"
    separator = "\n" + "#" * len(dummy)
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": dummy + separator}], add_generation_prompt=True, tokenize=False, enable_thinking=False
    )
    return _encode(tokenizer, rendered.split(separator)[0].split(dummy)[0]).shape[1]


def chunks(context_ids: torch.Tensor, prompt: RepeatPrompt, chunk_tokens: int = CHUNK_TOKENS):
    """[(chunk ids [1, c], reconstruction input ids [1, r])] of the context (kvpress prepare)."""
    pieces = list(context_ids.split(chunk_tokens, dim=1))
    out = []
    for i, piece in enumerate(pieces):
        instruction = prompt.first if i == 0 else torch.cat([prompt.next, pieces[i - 1][:, -PREV_POSTFIX:]], dim=1)
        out.append((piece, torch.cat([instruction, prompt.suffix, piece], dim=1)))
    return out


@contextlib.contextmanager
def _capture_max_attention(model, kv: KV, out: torch.Tensor, span: list[int], n_sink: int):
    """While active, each layer's forward writes into out[layer, :, start:end] (span = [start,
    end], read at call time) the max attention its queries pay the context keys of that span."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    def hook_for(layer: int):
        def hook(module, args, kwargs):
            start, end = span
            h = kwargs["hidden_states"]  # [1, R, hidden]
            cos, sin = kwargs["position_embeddings"]
            n, dim = h.shape[1], module.head_dim
            q = module.q_proj(h).view(1, n, -1, dim).transpose(1, 2)
            k = module.k_proj(h).view(1, n, -1, dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)  # [1, Hq, R, D], [1, H, R, D]
            ctx = kv.keys[layer].to(k.device, k.dtype)
            sink = min(n_sink, start)
            keys = torch.cat([ctx[:, :, :sink], ctx[:, :, start:end], k], dim=2)[0].float()  # [H, S, D]
            heads = keys.shape[0]
            queries = q[0].float().view(heads, -1, n, dim)  # [H, G, R, D]: HF repeat_kv order
            logits = queries @ keys[:, None].transpose(-1, -2) / math.sqrt(dim)  # [H, G, R, S]
            future = torch.ones(n, n, dtype=torch.bool, device=logits.device).triu(1)
            logits[..., -n:].masked_fill_(future, float("-inf"))
            attn = logits.softmax(dim=-1)[..., sink : sink + end - start]
            out[layer, :, start:end] = attn.amax(dim=(1, 2)).to(out.device)

        return hook

    handles = [m.register_forward_pre_hook(hook_for(i), with_kwargs=True) for i, m in enumerate(hf.attention_modules(model))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def kvzip_scores(
    model,
    kv: KV,
    context_ids: torch.Tensor,
    prompt: RepeatPrompt,
    *,
    prefix_tokens: int = 0,
    chunk_tokens: int = CHUNK_TOKENS,
    n_sink: int = N_SINK,
) -> torch.Tensor:
    """[layers, kv_heads, tokens] float32 KVzip scores of an uncompressed KV of `context_ids` [1, T].

    prefix_tokens: leading tokens not reconstructed (kvpress leaves out the chat template's
    prefix; they score 0 but for the sinks). The engine reconstructs the whole context (0)."""
    if kv.kept_tokens != kv.tokens or context_ids.shape[1] != kv.tokens:
        raise ValueError(f"kvzip scores need the full KV of the {context_ids.shape[1]}-token context")
    out = torch.zeros(kv.layers, kv.kv_heads, kv.tokens, dtype=torch.float32, device=kv.device)
    span = [prefix_tokens, prefix_tokens]
    device = kv.keys[0].device
    with _capture_max_attention(model, kv, out, span, n_sink):
        for piece, ids in chunks(context_ids[:, prefix_tokens:].cpu(), prompt, chunk_tokens):  # prompt ids: CPU
            span[1] = span[0] + piece.shape[1]
            # a fresh cache over the KV each time: the forward appends to the cache, never to the KV
            hf.forward(model, ids.to(device), hf.cache_from_kv(kv, model.config), kv.tokens)
            span[0] = span[1]
    out[..., :n_sink] = out.max() + 1.0
    return out


def with_kvzip_scores(model, kv: KV, context_ids: torch.Tensor, tokenizer) -> KV:
    """`kv` (the full KV of `context_ids`) with token_scores["kvzip"], the whole context reconstructed."""
    scores = kvzip_scores(model, kv, context_ids.to(kv.device), repeat_prompt(tokenizer))
    return dataclasses.replace(kv, token_scores={**kv.token_scores, "kvzip": scores})
