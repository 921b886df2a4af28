"""Tiny components of every supported family, built as diffusers' own tests build them: a word-level
CLIP tokenizer written from a word list, small CLIP/T5 text encoders, a small VAE, and tiny
UNet2DConditionModel, DiT and PixArt denoisers; saved in the layouts users bring. For tests,
benchmarks and the shipped text-conditional example model — never for a user's attribution."""
import json
import os
import re

from typing import Any

import torch

CLIP_SPECIAL = ("<|startoftext|>", "<|endoftext|>")


def words_of(captions) -> list:
    """The words CLIP's pre-tokenizer splits `captions` into (lower-cased; punctuation apart)."""
    return sorted({w for c in captions for w in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", c.lower())})


def write_clip_tokenizer(folder: str, words, max_length: int = 16):
    """A CLIPTokenizer whose BPE merges build each of `words` as one token (characters on their own
    for anything else), saved in `folder`; returns it."""
    from transformers import CLIPTokenizer
    os.makedirs(folder, exist_ok=True)
    vocab = {t: i for i, t in enumerate(CLIP_SPECIAL)}
    chars = sorted({c for w in words for c in w} | set("abcdefghijklmnopqrstuvwxyz0123456789-,.'"))
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    merges = []
    for w in words:
        cur = w[0]
        for i, c in enumerate(w[1:], 1):
            nxt = c + ("</w>" if i == len(w) - 1 else "")
            merges.append(f"{cur} {nxt}")
            cur += nxt
            vocab.setdefault(cur, len(vocab))
    raw = os.path.join(folder, ".raw")
    os.makedirs(raw, exist_ok=True)
    with open(os.path.join(raw, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(raw, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    tok = CLIPTokenizer(os.path.join(raw, "vocab.json"), os.path.join(raw, "merges.txt"), model_max_length=max_length)
    tok.save_pretrained(folder)
    for name in os.listdir(raw):
        os.remove(os.path.join(raw, name))
    os.rmdir(raw)
    return tok


def write_word_tokenizer(folder: str, words, max_length: int = 16):
    """A word-level fast tokenizer (T5-style: <pad> 0, </s> 1, <unk> 2), saved in `folder`; returns it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    wl = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    wl.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=wl, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                  model_max_length=max_length)
    tok.save_pretrained(folder)
    return tok


def clip_text_encoder(vocab_size: int, hidden: int = 32, layers: int = 2, max_length: int = 16, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                                        num_hidden_layers=layers, num_attention_heads=2, max_position_embeddings=max_length,
                                        bos_token_id=0, eos_token_id=1, pad_token_id=1)).eval()


def t5_text_encoder(vocab_size: int, hidden: int = 32, seed: int = 0):
    from transformers import T5Config, T5EncoderModel
    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=hidden, d_kv=8, d_ff=2 * hidden, num_layers=2,
                                   num_heads=4, pad_token_id=0, eos_token_id=1)).eval()


def vae(channels: int = 1, latent_channels: int = 4, blocks=(16, 32), seed: int = 0):
    """An AutoencoderKL downsampling by 2^(len(blocks) − 1)."""
    from diffusers import AutoencoderKL
    torch.manual_seed(seed)
    n = len(blocks)
    net: Any = AutoencoderKL(in_channels=channels, out_channels=channels, latent_channels=latent_channels,
                         block_out_channels=tuple(blocks), down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, layers_per_block=1, norm_num_groups=8,
                         sample_size=8 * 2 ** (n - 1), scaling_factor=1.0)
    return net.eval()


def unet_condition(size: int = 8, channels: int = 4, cross_dim: int = 32, blocks=(32, 64), seed: int = 0):
    """A UNet2DConditionModel (cross-attention on text embeddings) in SD's layout, tiny."""
    from diffusers import UNet2DConditionModel
    torch.manual_seed(seed)
    net: Any = UNet2DConditionModel(sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=1,
                                block_out_channels=tuple(blocks), norm_num_groups=8, cross_attention_dim=cross_dim,
                                attention_head_dim=4,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    return net.eval()


def dit(size: int = 8, channels: int = 1, num_classes: int = 4, learned_sigma: bool = True, seed: int = 0):
    from diffusers import DiTTransformer2DModel
    torch.manual_seed(seed)
    net: Any = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=channels,
                                 out_channels=2 * channels if learned_sigma else channels, num_layers=2, sample_size=size,
                                 patch_size=2, num_embeds_ada_norm=num_classes, norm_num_groups=1)
    return net.eval()


def pixart(size: int = 8, channels: int = 4, caption_channels: int = 32, learned_sigma: bool = True, seed: int = 0):
    from diffusers import PixArtTransformer2DModel
    torch.manual_seed(seed)
    net: Any = PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=channels,
                                    out_channels=2 * channels if learned_sigma else channels, num_layers=2,
                                    cross_attention_dim=16, sample_size=size, patch_size=2,
                                    caption_channels=caption_channels, norm_num_groups=1)
    return net.eval()
