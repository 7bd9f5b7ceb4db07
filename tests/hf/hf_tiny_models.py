"""Tiny transformers models built from configs (no downloads) and an fp64 PolyCom reference for the HF tests."""

from __future__ import annotations

import pytest
import torch

VOCAB = 64


def tiny_models() -> dict:
    """name -> zero-argument factory of a tiny causal LM (2 layers, width 32)."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    gated = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return {
        "llama": lambda: LlamaForCausalLM(LlamaConfig(**gated)),
        "mistral": lambda: MistralForCausalLM(MistralConfig(**gated)),
        "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**gated)),
        "gpt2": lambda: GPT2LMHeadModel(
            GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0)
        ),
        "gpt_neox": lambda: GPTNeoXForCausalLM(
            GPTNeoXConfig(
                vocab_size=VOCAB,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=64,
                bos_token_id=0,
                eos_token_id=0,
            )
        ),
    }


GATED = {"llama", "mistral", "qwen2"}

NUM_EXPERTS, EXPERT_HIDDEN = 4, 16  # tiny MoE: experts per layer, expert MLP width


def tiny_moe_models() -> dict:
    """name -> zero-argument factory of a tiny causal LM with stacked MoE experts or a fused gate_up MLP.

    transformers 5 layouts: OLMoE, Mixtral, Qwen3-MoE, Qwen2-MoE keep each layer's experts as stacked
    ``gate_up_proj`` (E, 2h, d) / ``down_proj`` (E, d, h) tensors (Qwen2-MoE adds a gated shared
    expert, a dense MLP of width 48); Phi-3 fuses ``gate_up_proj`` (d -> 2h) in a dense MLP (h = 64).
    """
    from transformers import (
        MixtralConfig,
        MixtralForCausalLM,
        OlmoeConfig,
        OlmoeForCausalLM,
        Phi3Config,
        Phi3ForCausalLM,
        Qwen2MoeConfig,
        Qwen2MoeForCausalLM,
        Qwen3MoeConfig,
        Qwen3MoeForCausalLM,
    )

    base = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    moe = dict(num_experts_per_tok=2, **base)
    return {
        "olmoe": lambda: OlmoeForCausalLM(OlmoeConfig(num_experts=NUM_EXPERTS, intermediate_size=EXPERT_HIDDEN, **moe)),
        "mixtral": lambda: MixtralForCausalLM(
            MixtralConfig(num_local_experts=NUM_EXPERTS, intermediate_size=EXPERT_HIDDEN, **moe)
        ),
        "qwen3_moe": lambda: Qwen3MoeForCausalLM(
            Qwen3MoeConfig(num_experts=NUM_EXPERTS, moe_intermediate_size=EXPERT_HIDDEN, intermediate_size=48, **moe)
        ),
        "qwen2_moe": lambda: Qwen2MoeForCausalLM(
            Qwen2MoeConfig(
                num_experts=NUM_EXPERTS,
                moe_intermediate_size=EXPERT_HIDDEN,
                shared_expert_intermediate_size=48,
                intermediate_size=48,
                **moe,
            )
        ),
        "phi3": lambda: Phi3ForCausalLM(Phi3Config(intermediate_size=64, **base)),
    }


def polynorm_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """sum_{i=1..r} weight[r-i] * N(x**i) + bias, N(u) = u / sqrt(mean(u**2) + eps), in fp64."""
    x = x.double()
    r = weight.numel()
    out = torch.zeros_like(x) + bias.double()
    for i in range(1, r + 1):
        u = x**i
        out = out + weight[r - i].double() * u / torch.sqrt(u.square().mean(-1, keepdim=True) + eps)
    return out


def polyrelu_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """sum_{i=1..r} weight[r-i] * relu(x)**i + bias in fp64."""
    x = torch.relu(x.double())
    r = weight.numel()
    return sum(weight[r - i].double() * x**i for i in range(1, r + 1)) + bias.double()


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread_hf():
    """Tiny models run fastest on one thread, and on a shared 2-core box 2 threads can be 10-100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def one_trainer_step(model, output_dir) -> float:
    """One `transformers.Trainer` step on 4 random sequences of 16 tokens; returns the training loss."""
    from transformers import Trainer, TrainingArguments

    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": (ids := torch.randint(0, VOCAB, (16,), generator=g)), "labels": ids} for _ in range(4)]
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=1,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
    )
    result = Trainer(model=model, args=args, train_dataset=data).train()
    assert result.global_step == 1
    return result.training_loss
