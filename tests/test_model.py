import pytest
import torch

from nanogpt_edu.model import GPT, GPTConfig

TINY = dict(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=32)


def tiny_model(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**TINY, **overrides})).eval()


def test_logits_for_last_position_only_without_targets():
    model = tiny_model()
    idx = torch.randint(0, 64, (3, 10))
    logits, loss = model(idx)
    assert logits.shape == (3, 1, 64)
    assert loss is None


def test_logits_everywhere_and_loss_with_targets():
    model = tiny_model()
    idx = torch.randint(0, 64, (2, 16))
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 16, 64)
    expected = torch.nn.functional.cross_entropy(logits.view(-1, 64), idx.view(-1))
    assert torch.allclose(loss, expected)
    # the last-position logits agree with the full forward pass
    last, _ = model(idx)
    assert torch.allclose(last[:, 0], logits[:, -1], atol=1e-6)


def test_ignored_targets():
    model = tiny_model()
    idx = torch.randint(0, 64, (1, 8))
    targets = idx.clone()
    targets[0, :4] = -1
    logits, loss = model(idx, targets)
    expected = torch.nn.functional.cross_entropy(logits[0, 4:], idx[0, 4:])
    assert torch.allclose(loss, expected)


def test_sequence_longer_than_block_size_is_a_clear_error():
    model = tiny_model()
    with pytest.raises(ValueError, match="17 tokens: block_size is 16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_attention_is_causal():
    model = tiny_model()
    idx = torch.randint(0, 64, (1, 12))
    changed = idx.clone()
    changed[0, -1] = (idx[0, -1] + 1) % 64
    full, _ = model(idx, idx)
    full_changed, _ = model(changed, changed)
    assert torch.allclose(full[0, :-1], full_changed[0, :-1], atol=1e-6)  # the past does not see the future
    assert not torch.allclose(full[0, -1], full_changed[0, -1])


def test_weight_tying():
    model = tiny_model()
    assert model.lm_head.weight is model.transformer.wte.weight


def test_num_params_counts_the_tied_matrix_once():
    model = tiny_model()
    c = model.config
    per_block = (2 * 2 * c.n_embd  # two LayerNorms
                 + c.n_embd * 3 * c.n_embd + 3 * c.n_embd + c.n_embd * c.n_embd + c.n_embd  # attention
                 + c.n_embd * 4 * c.n_embd + 4 * c.n_embd + 4 * c.n_embd * c.n_embd + c.n_embd)  # MLP
    total = c.vocab_size * c.n_embd + c.block_size * c.n_embd + c.n_layer * per_block + 2 * c.n_embd
    assert model.get_num_params(non_embedding=False) == total
    assert model.get_num_params() == total - c.block_size * c.n_embd


def test_no_bias_model_has_no_biases():
    model = tiny_model(bias=False)
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]


def test_tanh_and_exact_gelu_differ_slightly():
    tanh, exact = tiny_model(gelu="tanh"), tiny_model(gelu="exact")
    exact.load_state_dict(tanh.state_dict())
    idx = torch.randint(0, 64, (2, 16))
    a, _ = tanh(idx)
    b, _ = exact(idx)
    diff = (a - b).abs().max().item()
    assert 0 < diff < 1e-2


@pytest.mark.parametrize("bad, message", [
    (dict(n_embd=30, n_head=4), "divisible by n_head"),
    (dict(gelu="relu"), "gelu must be one of"),
    (dict(n_layer=0), "n_layer must be at least 1"),
    (dict(dropout=1.0), "dropout must be in"),
])
def test_bad_config_is_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**TINY, **bad})


def test_dropout_only_in_training_mode():
    model = tiny_model(dropout=0.5)
    idx = torch.randint(0, 64, (1, 8))
    model.eval()
    assert torch.equal(model(idx)[0], model(idx)[0])
    model.train()
    torch.manual_seed(1)
    a = model(idx)[0]
    b = model(idx)[0]
    assert not torch.equal(a, b)
