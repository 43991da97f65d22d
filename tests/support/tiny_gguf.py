"""A tiny random-weight `llama` GGUF that a real llama-server loads: no download, deterministic.

Vocabulary: GPT-2 style byte-level BPE. Ids 0..255 are the 256 bytes (id == byte value, in
GPT-2's byte-to-unicode spelling), 256 is the one merge (byte 0 twice, so ordinary text is
exactly one token per UTF-8 byte), then <|endoftext|> (BOS, never prepended), <|im_start|> and
<|im_end|> (EOS/EOT). A ChatML chat template makes /v1/chat/completions work.

The weights are seeded random numbers, shaped so that output is readable gibberish: every
embedding carries a constant in dimension 0 and the output matrix's dimension 0 favours
lowercase letters, space, '.' and ',' and strongly disfavours everything else, the special
tokens included. So replies are ASCII and generation runs to max_tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
N_LAYER = 4
N_EMBD = 128
N_HEAD = 4
N_FF = 512
N_CTX_TRAIN = 16384
SEED = 1234


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def write_tiny_gguf(out: Path, seed: int = SEED) -> None:
    """Write the model to out; the same seed gives the same bytes."""
    import gguf
    import numpy as np

    spelled = byte_to_unicode()
    tokens = [spelled[b] for b in range(256)] + [spelled[0] * 2, *SPECIALS]
    types = [gguf.TokenType.NORMAL] * 257 + [gguf.TokenType.CONTROL] * len(SPECIALS)
    ids = {s: tokens.index(s) for s in SPECIALS}
    n_vocab = len(tokens)
    head_dim = N_EMBD // N_HEAD
    rng = np.random.default_rng(seed)

    def mat(rows: int, cols: int, std: float) -> Any:
        # numpy (rows, cols) is ggml's ne = [cols, rows]: (out_features, in_features).
        return rng.standard_normal((rows, cols), dtype=np.float32) * std

    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("tiny-llama")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_vocab_size(n_vocab)
    w.add_context_length(N_CTX_TRAIN)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([f"{spelled[0]} {spelled[0]}"])
    w.add_bos_token_id(ids["<|endoftext|>"])
    w.add_eos_token_id(ids["<|im_end|>"])
    w.add_eot_token_id(ids["<|im_end|>"])
    w.add_pad_token_id(ids["<|endoftext|>"])
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    w.add_chat_template(CHATML)

    embeddings = rng.standard_normal((n_vocab, N_EMBD), dtype=np.float32)
    embeddings[:, 0] = 4.0  # the constant channel the output bias reads
    w.add_tensor("token_embd.weight", embeddings)
    for i in range(N_LAYER):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(p + "attn_q.weight", mat(N_EMBD, N_EMBD, 0.05))
        w.add_tensor(p + "attn_k.weight", mat(N_EMBD, N_EMBD, 0.05))
        w.add_tensor(p + "attn_v.weight", mat(N_EMBD, N_EMBD, 0.05))
        w.add_tensor(p + "attn_output.weight", mat(N_EMBD, N_EMBD, 0.02))
        w.add_tensor(p + "ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(p + "ffn_gate.weight", mat(N_FF, N_EMBD, 0.05))
        w.add_tensor(p + "ffn_up.weight", mat(N_FF, N_EMBD, 0.05))
        w.add_tensor(p + "ffn_down.weight", mat(N_EMBD, N_FF, 0.02))
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    output = rng.standard_normal((n_vocab, N_EMBD), dtype=np.float32) * 0.1
    liked = set(b"abcdefghijklmnopqrstuvwxyz .,")
    output[:, 0] = [1.0 if t in liked else -2.0 for t in range(n_vocab)]
    w.add_tensor("output.weight", output)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
