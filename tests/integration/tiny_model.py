"""Build a tiny random-weight Qwen3 model with its own byte-level BPE tokenizer and chat template.

Run with the vLLM venv's python (it has torch, transformers and tokenizers):
``python tiny_model.py OUT_DIR [TEXT_FILE ...]``. Nothing is downloaded; about 0.6 MB.
"""

from __future__ import annotations

import sys
from pathlib import Path

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)


def build(out: Path, texts: list[Path]) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(t) for t in texts], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None, additional_special_tokens=SPECIAL[1:])
    fast.chat_template = CHAT_TEMPLATE
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    eos = fast.convert_tokens_to_ids("<|im_end|>")
    config = Qwen3Config(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=32, tie_word_embeddings=True,
                         max_position_embeddings=2048, eos_token_id=eos, bos_token_id=None,
                         pad_token_id=fast.pad_token_id, torch_dtype="float32")
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config)
    model.generation_config.eos_token_id = eos
    model.save_pretrained(out)
    return out


if __name__ == "__main__":
    here = Path(__file__).resolve()
    texts = [Path(p) for p in sys.argv[2:]] or sorted((here.parents[2]).glob("*/*.py"))[:40]
    print(build(Path(sys.argv[1]), texts))
