#!/usr/bin/env python3
"""An independent reference Llama forward pass, NumPy only.

Reads a Hugging Face checkpoint folder (config.json, model.safetensors or
shards with model.safetensors.index.json; F32, F16 or BF16 weights), runs
the token ids through the model in float64, and prints the logits as JSON:
{"logits": [[...vocab...], ...one row per token...]}.

Written from the transformers Llama code's formulas, sharing nothing with
the Rust engine, so the engine's test can compare against it:
RMSNorm, rotary embeddings in the "rotate half" layout (plain, linear and
llama3 frequency scaling), grouped-query causal attention, SwiGLU MLP,
tied or separate output embeddings; and the Qwen2 (bias on the q/k/v
projections, when the checkpoint has them) and Qwen3 (RMSNorm of each q and
k head before the rotation, `self_attn.q_norm` / `k_norm`) variants.

A GGUF file (llama.cpp's format) is read with the `gguf` package (NumPy
code, no torch): its metadata gives the config, `gguf.quants.dequantize`
the weights, renamed to Hugging Face's names, with the Q and K rows that
llama.cpp's converter permutes put back in Hugging Face's order (as
transformers' GGUF loader does).

Usage: llama_ref.py MODEL_DIR|FILE.gguf 1,2,3          (ids as a comma list)
"""

import json
import math
import os
import struct
import sys

import numpy as np


def read_safetensors(path):
    """name -> float64 array, parsed by hand: u64 header length, JSON, data."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    data = raw[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        buf = data[begin:end]
        dtype = info["dtype"]
        if dtype == "F32":
            arr = np.frombuffer(buf, dtype="<f4")
        elif dtype == "F16":
            arr = np.frombuffer(buf, dtype="<f2")
        elif dtype == "BF16":
            # bfloat16 is the top half of a float32.
            arr = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view("<f4")
        else:
            raise SystemExit(f"{path}: tensor {name} has unsupported dtype {dtype}")
        out[name] = arr.astype(np.float64).reshape(info["shape"])
    return out


def load_weights(model_dir):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    weights = {}
    for name in files:
        weights.update(read_safetensors(os.path.join(model_dir, name)))
    return weights


GGUF_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def hf_name(name):
    top = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
    if name in top:
        return top[name]
    blk, layer, module, kind = name.split(".")
    assert blk == "blk", name
    return f"model.layers.{layer}.{GGUF_NAMES[module]}.{kind}"


def reverse_permute(w, n_head):
    """Inverse of llama.cpp's permute: rows (head, d/2, 2) -> (head, 2, d/2)."""
    d = w.shape[0] // n_head
    return w.reshape(n_head, d // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def load_gguf(path):
    import gguf

    r = gguf.GGUFReader(path)

    def meta(key, default=None):
        f = r.fields.get(key)
        return f.contents() if f is not None else default

    arch = meta("general.architecture")
    if arch not in ("llama", "mistral", "qwen2", "qwen3"):
        raise SystemExit(f"{path}: architecture {arch} is not supported here")
    heads = meta(f"{arch}.attention.head_count")
    cfg = {
        "hidden_size": meta(f"{arch}.embedding_length"),
        "num_attention_heads": heads,
        "num_key_value_heads": meta(f"{arch}.attention.head_count_kv", heads),
        "num_hidden_layers": meta(f"{arch}.block_count"),
        "rms_norm_eps": meta(f"{arch}.attention.layer_norm_rms_epsilon"),
        "rope_theta": meta(f"{arch}.rope.freq_base", 10000.0),
        "head_dim": meta(f"{arch}.attention.key_length"),
    }
    w = {}
    for t in r.tensors:
        if t.name == "rope_freqs.weight":
            # Llama 3.1: each rotary frequency divided by its factor.
            cfg["rope_freq_factors"] = np.asarray(t.data, dtype=np.float64).reshape(-1)
            continue
        # gguf's shape is ggml's (fastest first); dequantize gives PyTorch's.
        x = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64)
        x = x.reshape([int(d) for d in reversed(t.shape)])
        name = hf_name(t.name)
        if arch not in ("llama", "mistral"):
            pass  # Qwen GGUF files keep Hugging Face's row order.
        elif name.endswith("q_proj.weight"):
            x = reverse_permute(x, cfg["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            x = reverse_permute(x, cfg["num_key_value_heads"])
        w[name] = x
    cfg["tie_word_embeddings"] = "lm_head.weight" not in w
    return cfg, w


def inv_freq(cfg, head_dim):
    """Rotary inverse frequencies, with transformers' scaling rules."""
    params = cfg.get("rope_parameters") or {}
    theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
    scaling = params if params.get("rope_type") else (cfg.get("rope_scaling") or {})
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    if kind == "linear":
        # transformers divides positions by the factor: the same as this.
        freq = freq / scaling["factor"]
    elif kind == "llama3":
        factor = scaling["factor"]
        low = scaling["low_freq_factor"]
        high = scaling["high_freq_factor"]
        old_ctx = scaling["original_max_position_embeddings"]
        low_wavelen = old_ctx / low
        high_wavelen = old_ctx / high
        wavelen = 2 * math.pi / freq
        scaled = np.where(wavelen > low_wavelen, freq / factor, freq)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        freq = np.where(medium, smoothed, scaled)
    elif kind != "default":
        raise SystemExit(f"unsupported rope scaling {kind}")
    return freq


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def forward(model_dir, ids):
    if model_dir.endswith(".gguf"):
        cfg, w = load_gguf(model_dir)
    else:
        with open(os.path.join(model_dir, "config.json")) as f:
            cfg = json.load(f)
        w = load_weights(model_dir)
    hidden = cfg["hidden_size"]
    n_heads = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads", n_heads)
    head_dim = cfg.get("head_dim") or hidden // n_heads
    eps = cfg.get("rms_norm_eps", 1e-6)
    n = len(ids)

    freq = inv_freq(cfg, head_dim)
    if "rope_freq_factors" in cfg:
        freq = freq / cfg["rope_freq_factors"]
    angles = np.outer(np.arange(n, dtype=np.float64), freq)
    emb = np.concatenate([angles, angles], axis=-1)
    cos, sin = np.cos(emb)[None], np.sin(emb)[None]  # [1, n, head_dim]

    x = w["model.embed_tokens.weight"][np.array(ids)]
    mask = np.triu(np.full((n, n), -np.inf), k=1)
    group = n_heads // n_kv
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        def proj(name, heads):
            y = h @ w[p + f"self_attn.{name}_proj.weight"].T
            if p + f"self_attn.{name}_proj.bias" in w:
                y = y + w[p + f"self_attn.{name}_proj.bias"]
            y = y.reshape(n, heads, head_dim)
            if p + f"self_attn.{name}_norm.weight" in w:
                y = rms_norm(y, w[p + f"self_attn.{name}_norm.weight"], eps)
            return y.transpose(1, 0, 2)

        q = proj("q", n_heads)
        k = proj("k", n_kv)
        v = proj("v", n_kv)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = np.repeat(k, group, axis=0)
        v = np.repeat(v, group, axis=0)
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(head_dim) + mask
        scores = scores - scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs = probs / probs.sum(axis=-1, keepdims=True)
        attn = (probs @ v).transpose(1, 0, 2).reshape(n, n_heads * head_dim)
        x = x + attn @ w[p + "self_attn.o_proj.weight"].T

        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        gate = h @ w[p + "mlp.gate_proj.weight"].T
        up = h @ w[p + "mlp.up_proj.weight"].T
        silu = gate / (1.0 + np.exp(-gate))
        x = x + (silu * up) @ w[p + "mlp.down_proj.weight"].T

    x = rms_norm(x, w["model.norm.weight"], eps)
    if cfg.get("tie_word_embeddings", False) or "lm_head.weight" not in w:
        head = w["model.embed_tokens.weight"]
    else:
        head = w["lm_head.weight"]
    return x @ head.T


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    ids = [int(t) for t in argv[2].split(",") if t.strip()]
    logits = forward(argv[1], ids)
    json.dump({"logits": logits.tolist()}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
