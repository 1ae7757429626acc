#!/usr/bin/env python3
"""Writes the GGUF test fixtures under engine/tests/fixtures/gguf/ (run once;
the outputs are committed, so `cargo test` needs no Python).

- blocks.gguf: for each tensor type Cake reads (F32, F16, BF16, Q8_0, Q4_0,
  Q4_1, Q4_K, Q5_K, Q6_K), a tensor `<TYPE>` of random blocks (scales kept
  finite and small) and `<TYPE>.expected`, the F32 values the `gguf`
  package's NumPy code dequantizes it to.
- tiny-llama.gguf: a 2-layer Llama (hidden 256) with a byte-level BPE
  tokenizer (`smollm` pre-tokenizer), a chat template, and weights in a mix
  of the types above; its Q and K rows permuted as llama.cpp's converter
  does.
- tiny-llama.json: token ids and the logits scripts/llama_ref.py computes
  for them on tiny-llama.gguf (float64, weights dequantized by `gguf`).
- tiny-spm.gguf: only a SentencePiece-style (`llama`) vocabulary: pieces
  with `▁` for spaces, scores, byte tokens for the fallback.
- tiny-llama31.gguf (+ .gguf.json): a small Llama with Llama-3.1's
  `rope_freqs` tensor (RoPE frequencies divided by per-pair factors).
- tiny-qwen2/ and tiny-qwen3/ (Hugging Face folders: config.json and
  model.safetensors) and tiny-qwen2.gguf, tiny-qwen3.gguf (the same
  weights, matrices in Q8_0), each with a .json of ids and reference
  logits: Qwen2's q/k/v biases, Qwen3's per-head q/k RMSNorm and explicit
  head_dim.

Needs numpy and gguf (pip install numpy gguf). Deterministic (seeded).
"""

import json
import os
import subprocess
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama_ref import GGUF_NAMES  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "engine", "tests", "fixtures", "gguf")

TYPES = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q4_K, T.Q5_K, T.Q6_K]


def f16_bytes(rng, n, lo, hi):
    """n random finite f16 values in [lo, hi), as bytes (n, 2)."""
    v = rng.uniform(lo, hi, size=n).astype(np.float16)
    return v.view(np.uint8).reshape(n, 2)


def random_raw(rng, qtype, n_elems, scale):
    """Random raw bytes for n_elems values of qtype, shape (rows, bytes)."""
    if qtype == T.F32:
        return rng.normal(0, scale, n_elems).astype(np.float32)
    if qtype == T.F16:
        return rng.normal(0, scale, n_elems).astype(np.float16)
    if qtype == T.BF16:
        x = rng.normal(0, scale, n_elems).astype(np.float32)
        return gguf.quants.quantize(x, T.BF16)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    nb = n_elems // block
    raw = rng.integers(0, 256, size=(nb, size), dtype=np.uint8)
    # Put finite, small f16 scales where each layout keeps them.
    if qtype in (T.Q8_0, T.Q4_0):
        raw[:, 0:2] = f16_bytes(rng, nb, scale / 8, scale / 4)
    elif qtype == T.Q4_1:
        raw[:, 0:2] = f16_bytes(rng, nb, scale / 8, scale / 4)
        raw[:, 2:4] = f16_bytes(rng, nb, -scale, -scale / 2)
    elif qtype in (T.Q4_K, T.Q5_K):
        raw[:, 0:2] = f16_bytes(rng, nb, scale / 256, scale / 128)
        raw[:, 2:4] = f16_bytes(rng, nb, scale / 256, scale / 128)
    elif qtype == T.Q6_K:
        raw[:, 208:210] = f16_bytes(rng, nb, scale / 1024, scale / 512)
    return raw


def blocks(path):
    rng = np.random.default_rng(21)
    w = gguf.GGUFWriter(path, "none")
    for qt in TYPES:
        n = 512
        raw = random_raw(rng, qt, n, 1.0)
        expected = gguf.quants.dequantize(raw, qt).astype(np.float32).reshape(-1)
        assert expected.shape == (n,) and np.all(np.isfinite(expected))
        if qt in (T.F32, T.F16):
            w.add_tensor(qt.name, raw)
        else:
            w.add_tensor(qt.name, raw.view(np.uint8).reshape(1, -1), raw_dtype=qt)
        w.add_tensor(qt.name + ".expected", expected)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def byte_level_vocab():
    """GPT-2's bytes-to-unicode table: the 256 byte tokens."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, [chr(c) for c in cs]))
    return [table[b] for b in range(256)]


CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny(path):
    rng = np.random.default_rng(7)
    hidden, inter, layers, heads, kv_heads, vocab = 256, 512, 2, 4, 2, 320
    head_dim = hidden // heads
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bytes_ = byte_level_vocab()
    words = ["Ġt", "he", "Ġthe", "in", "Ġa", "er", "on", "Ġo", "at", "en", "is", "Ġis", "an", "Ġw"]
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ o", "a t", "e n", "i s", "Ġ is", "a n", "Ġ w"]
    tokens = specials + bytes_ + words
    types = [3] * len(specials) + [1] * (len(tokens) - len(specials))
    tokens += [f"[PAD{i}]" for i in range(vocab - len(tokens))]
    types += [5] * (vocab - len(types))
    assert len(tokens) == vocab

    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(layers)
    w.add_context_length(512)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_rope_dimension_count(head_dim)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    def add(name, shape, qt, scale):
        n = int(np.prod(shape))
        raw = random_raw(rng, qt, n, scale)
        if qt in (T.F32, T.F16):
            w.add_tensor(name, raw.reshape(shape))
        else:
            w.add_tensor(name, raw.view(np.uint8).reshape(shape[0], -1), raw_dtype=qt)

    def norm(name):
        w.add_tensor(name, (1.0 + rng.normal(0, 0.1, hidden)).astype(np.float32))

    add("token_embd.weight", (vocab, hidden), T.Q8_0, 1.0)
    mix = [
        dict(q=T.Q4_K, k=T.Q5_K, v=T.Q6_K, o=T.Q4_0, gate=T.Q4_1, up=T.F16, down=T.BF16),
        dict(q=T.Q8_0, k=T.Q4_1, v=T.Q4_0, o=T.Q6_K, gate=T.Q5_K, up=T.Q4_K, down=T.Q8_0),
    ]
    for i in range(layers):
        m = mix[i % len(mix)]
        s = 1.0 / np.sqrt(hidden)
        norm(f"blk.{i}.attn_norm.weight")
        add(f"blk.{i}.attn_q.weight", (hidden, hidden), m["q"], 4 * s)
        add(f"blk.{i}.attn_k.weight", (kv_heads * head_dim, hidden), m["k"], 4 * s)
        add(f"blk.{i}.attn_v.weight", (kv_heads * head_dim, hidden), m["v"], s)
        add(f"blk.{i}.attn_output.weight", (hidden, hidden), m["o"], s)
        norm(f"blk.{i}.ffn_norm.weight")
        add(f"blk.{i}.ffn_gate.weight", (inter, hidden), m["gate"], s)
        add(f"blk.{i}.ffn_up.weight", (inter, hidden), m["up"], s)
        add(f"blk.{i}.ffn_down.weight", (hidden, inter), m["down"], 1.0 / np.sqrt(inter))
    norm("output_norm.weight")
    add("output.weight", (vocab, hidden), T.Q6_K, 1.0 / np.sqrt(hidden))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tiny_spm(path):
    """A SentencePiece vocabulary as llama.cpp stores one (no model)."""
    w = gguf.GGUFWriter(path, "llama")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    pieces = ["▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "▁he", "ll", "▁hell", "▁hello",
              "▁w", "or", "▁wor", "ld", "▁world"]
    # Pieces by decreasing score, as SentencePiece orders them.
    tokens += pieces
    types += [1] * len(pieces)
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_scores(scores)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_safetensors(path, tensors):
    """name -> array (float16 or float32), written as safetensors by hand."""
    header, chunks, off = {}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        dtype = {np.dtype("float16"): "F16", np.dtype("float32"): "F32"}[a.dtype]
        b = a.tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        chunks.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in chunks:
            f.write(b)


def permute(w, n_head):
    """llama.cpp's converter's permute of Q/K rows (for its RoPE layout)."""
    d = w.shape[0] // n_head
    return w.reshape(n_head, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tiny_qwen(arch, seed):
    """A tiny Qwen2 or Qwen3, as an HF folder and as a GGUF file; or, as
    `llama31`, a Llama GGUF file with Llama-3.1's `rope_freqs` tensor."""
    llama31 = arch == "llama31"
    rng = np.random.default_rng(seed)
    hidden, inter, layers, heads, kv_heads, vocab = 64, 128, 2, 4, 2, 256
    head_dim = 32 if arch == "qwen3" else hidden // heads
    tie = arch == "qwen2"
    hf = {}

    def mat(name, rows, cols, scale):
        hf[name] = rng.normal(0, scale, (rows, cols)).astype(np.float16)

    def vec(name, n, mean, scale):
        hf[name] = (mean + rng.normal(0, scale, n)).astype(np.float32)

    mat("model.embed_tokens.weight", vocab, hidden, 1.0)
    for i in range(layers):
        p = f"model.layers.{i}."
        vec(p + "input_layernorm.weight", hidden, 1.0, 0.1)
        vec(p + "post_attention_layernorm.weight", hidden, 1.0, 0.1)
        s = 1.0 / np.sqrt(hidden)
        mat(p + "self_attn.q_proj.weight", heads * head_dim, hidden, 2 * s)
        mat(p + "self_attn.k_proj.weight", kv_heads * head_dim, hidden, 2 * s)
        mat(p + "self_attn.v_proj.weight", kv_heads * head_dim, hidden, s)
        mat(p + "self_attn.o_proj.weight", hidden, heads * head_dim, s)
        mat(p + "mlp.gate_proj.weight", inter, hidden, s)
        mat(p + "mlp.up_proj.weight", inter, hidden, s)
        mat(p + "mlp.down_proj.weight", hidden, inter, 1.0 / np.sqrt(inter))
        if llama31:
            pass
        elif arch == "qwen2":
            vec(p + "self_attn.q_proj.bias", heads * head_dim, 0.0, 0.5)
            vec(p + "self_attn.k_proj.bias", kv_heads * head_dim, 0.0, 0.5)
            vec(p + "self_attn.v_proj.bias", kv_heads * head_dim, 0.0, 0.5)
        else:
            vec(p + "self_attn.q_norm.weight", head_dim, 1.0, 0.2)
            vec(p + "self_attn.k_norm.weight", head_dim, 1.0, 0.2)
    vec("model.norm.weight", hidden, 1.0, 0.1)
    if not tie:
        mat("lm_head.weight", vocab, hidden, 1.0 / np.sqrt(hidden))

    folder = os.path.join(OUT, f"tiny-{arch}")
    if not llama31:
        write_folder(folder, arch, hf, hidden, inter, layers, heads, kv_heads, head_dim, vocab, tie)

    gpath = os.path.join(OUT, f"tiny-{arch}.gguf")
    w = gguf.GGUFWriter(gpath, "llama" if llama31 else arch)
    w.add_block_count(layers)
    w.add_context_length(512)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_freq_base(1000000.0)
    w.add_layer_norm_rms_eps(1e-6)
    if llama31:
        # Llama-3.1's frequency factors: 1 for high frequencies, up to 8.
        w.add_tensor("rope_freqs.weight", np.linspace(1.0, 8.0, head_dim // 2).astype(np.float32))
    names = {v: k for k, v in {
        "token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight"}.items()}
    inv = {v: k for k, v in GGUF_NAMES.items()}
    for name, a in hf.items():
        if name in names:
            g = names[name]
        else:
            _, _, layer, rest = name.split(".", 3)
            module, kind = rest.rsplit(".", 1)
            g = f"blk.{layer}.{inv[module]}.{kind}"
        if llama31 and name.endswith("q_proj.weight"):
            a = permute(a, heads)
        elif llama31 and name.endswith("k_proj.weight"):
            a = permute(a, kv_heads)
        if a.ndim == 2:
            q = gguf.quants.quantize(a.astype(np.float32), T.Q8_0)
            w.add_tensor(g, q, raw_dtype=T.Q8_0)
        else:
            w.add_tensor(g, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    ids = [3, 200, 17, 17, 255, 0, 64, 128, 5, 99, 42]
    reference(gpath, ids, os.path.join(OUT, f"tiny-{arch}.gguf.json"))
    if not llama31:
        reference(folder, ids, os.path.join(OUT, f"tiny-{arch}.json"))


def write_folder(folder, arch, hf, hidden, inter, layers, heads, kv_heads, head_dim, vocab, tie):
    os.makedirs(folder, exist_ok=True)
    cls = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[arch]
    cfg = {
        "architectures": [cls], "model_type": arch, "hidden_size": hidden,
        "intermediate_size": inter, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "head_dim": head_dim, "vocab_size": vocab, "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": tie,
        "hidden_act": "silu", "torch_dtype": "float16",
    }
    if arch == "qwen3":
        cfg["attention_bias"] = False
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    write_safetensors(os.path.join(folder, "model.safetensors"), hf)


def reference(model, ids, out):
    ref = subprocess.run(
        [sys.executable, os.path.join(HERE, "llama_ref.py"), model, ",".join(map(str, ids))],
        check=True, capture_output=True, text=True,
    )
    logits = json.loads(ref.stdout)["logits"]
    with open(out, "w") as f:
        json.dump({"ids": ids, "logits": [[round(x, 6) for x in row] for row in logits]}, f)
        f.write("\n")


def main():
    os.makedirs(OUT, exist_ok=True)
    blocks(os.path.join(OUT, "blocks.gguf"))
    model = os.path.join(OUT, "tiny-llama.gguf")
    tiny(model)
    ids = [1, 90, 3 + 256 + 2, 3 + 72, 2, 100, 300 - 40, 5, 17, 3 + 256 + 11]
    reference(model, ids, os.path.join(OUT, "tiny-llama.json"))
    tiny_spm(os.path.join(OUT, "tiny-spm.gguf"))
    tiny_qwen("qwen2", 2)
    tiny_qwen("qwen3", 3)
    tiny_qwen("llama31", 4)


if __name__ == "__main__":
    main()
