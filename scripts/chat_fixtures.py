#!/usr/bin/env python3
"""Writes engine/tests/fixtures/chat/: a tokenizer folder as transformers 5
saves one (tokenizer.json, tokenizer_config.json without a template, the
template in chat_template.jinja — SmolLM2-135M-Instruct's, read from its
GGUF file's metadata — and generation_config.json with a list of EOS ids),
and expected.json: conversations with the token ids transformers'
`apply_chat_template(messages, add_generation_prompt=True)` gives for them,
and the ids `tokenizer(text)` gives for a plain prompt.

The tokenizer is a small byte-level BPE (GPT-2's byte alphabet, a few
merges, SmolLM2's special tokens and digit-splitting pre-tokenizer), so
the fixture stays small; what is checked is the templating, the special
tokens and BOS handling, which are transformers' own.

Needs transformers, tokenizers, jinja2 and gguf (no torch):
  python3 scripts/chat_fixtures.py PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf
"""

import json
import os
import sys

import gguf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "engine", "tests", "fixtures", "chat")

sys.path.insert(0, HERE)
from gguf_fixtures import byte_level_vocab  # noqa: E402

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Capital of Italy?"},
        {"role": "assistant", "content": "Rome."},
        {"role": "user", "content": "And of Spain, in 2024?"},
    ],
]


def main(gguf_path):
    r = gguf.GGUFReader(gguf_path)
    template = r.fields["tokenizer.chat_template"].contents()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = specials + byte_level_vocab()
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "s"), ("Ġ", "is"), ("o", "f"), ("Ġ", "of")]
    tokens += ["".join(m) for m in merges]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    os.makedirs(OUT, exist_ok=True)
    tok.save(os.path.join(OUT, "tokenizer.json"))
    with open(os.path.join(OUT, "tokenizer_config.json"), "w") as f:
        json.dump({
            "tokenizer_class": "GPT2Tokenizer", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
            "unk_token": "<|endoftext|>", "pad_token": "<|im_end|>", "add_prefix_space": False,
            "model_max_length": 8192,
        }, f, indent=1)
    with open(os.path.join(OUT, "chat_template.jinja"), "w") as f:
        f.write(template)
    with open(os.path.join(OUT, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": [2, 0]}, f, indent=1)
    with open(os.path.join(OUT, "config.json"), "w") as f:
        json.dump({"vocab_size": len(tokens), "max_position_embeddings": 8192}, f, indent=1)

    hf = AutoTokenizer.from_pretrained(OUT)
    assert hf.chat_template == template, "transformers did not read chat_template.jinja"
    cases = []
    for msgs in CONVERSATIONS:
        text = hf.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        ids = hf.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        cases.append({"messages": msgs, "text": text, "ids": list(ids)})
    plain = "The capital of France is Paris."
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump({"chats": cases, "plain": {"text": plain, "ids": hf(plain)["input_ids"]}}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
