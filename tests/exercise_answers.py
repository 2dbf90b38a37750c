"""Answers to every notebook exercise, for tests/test_exercises.py: one wrong, one right under other names.

Keyed by (notebook, exercise number). Each source runs in the student edition's kernel just before the check cell
(so it sees what the notebook defined above the exercise, never the solution's variables). "wrong" defines every
name the exercise asks for, with at least one wrong value; "other_names" gets the right values by its own route
and its own intermediate names, as a learner might.
"""

ANSWERS = {
    ("04_forward_pass", 1): {
        "wrong": """
best_text = decode([int(F.softmax(model(torch.tensor([encode("ROMEO:")]))[0][0, -1], dim=-1).argsort()[-2])])
best_prob = 0.5
""",
        "other_names": """
my_ids = torch.tensor([encode("ROMEO:")])
my_scores = model(my_ids)[0][0, -1]
my_p = torch.softmax(my_scores, dim=-1)
best_prob, winner = my_p.max(dim=-1)
best_text = decode([winner.item()])
""",
    },
    ("04_forward_pass", 2): {
        "wrong": """
helper = attention_weights  # the notebook's own function under another name: right for stream1 only
def head_attention(stream, layer, head):
    return helper(x)[layer, head]
""",
        "other_names": """
import numpy as np

def head_attention(s, which_block, which_head):
    blk = model.transformer.h[which_block]
    normed = blk.ln_1(s)[0].double().numpy()                     # (T, C), in NumPy from here on
    w = blk.attn.c_attn.weight.double().numpy()                  # (3C, C)
    b = blk.attn.c_attn.bias.double().numpy()
    dims = slice(which_head * head_size, (which_head + 1) * head_size)
    qh = normed @ w[:config.n_embd][dims].T + b[:config.n_embd][dims]
    kh = normed @ w[config.n_embd:2 * config.n_embd][dims].T + b[config.n_embd:2 * config.n_embd][dims]
    raw = qh @ kh.T / np.sqrt(head_size)
    raw[np.triu_indices(len(raw), k=1)] = -np.inf
    e = np.exp(raw - raw.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).tolist()          # nested lists of float64
""",
    },
    ("05_sampling_loop", 1): {
        "wrong": """
def my_top_k(scores, k):  # off by one: the (k+1)-th score as the threshold
    return scores.masked_fill(scores < torch.sort(scores, descending=True).values[:, [k]], -float("inf"))
""",
        "other_names": """
import numpy as np

def my_top_k(s, how_many):
    cut = np.sort(s.numpy(), axis=-1)[:, ::-1][:, how_many - 1 : how_many]
    return torch.where(s >= torch.from_numpy(cut.copy()), s, torch.tensor(float("-inf")))
""",
        "delegates": ["""
from nanogpt_edu.sampling import top_k_mask as tk
my_top_k = lambda s, k: tk(s, k)
""", """
def my_top_k(scores, k):
    cut = scores.topk(k).values[:, [-1]]
    return scores.masked_fill(scores < cut, -float("inf"))
"""],
    },
    ("05_sampling_loop", 2): {
        "wrong": """
def my_top_p(logits, p):
    return top_k_mask(logits, 10)
""",
        "other_names": """
def my_top_p(logits, p):
    chances = logits.softmax(-1)
    ranked, where = chances.sort(-1, descending=True)
    before = ranked.cumsum(-1) - ranked
    keep = torch.zeros_like(before, dtype=torch.bool).scatter(-1, where, before < p)
    return logits.where(keep, torch.tensor(-torch.inf))
""",
        "delegates": ["""
from nanogpt_edu.sampling import top_p_mask as tp
my_top_p = lambda logits, p: tp(logits, p)
"""],
    },
    ("06_kv_cache", 1): {
        "wrong": """
gpt2_naive = 200 * 205
gpt2_cached = 205
""",
        "other_names": """
per_step = [5 + t for t in range(200)]
gpt2_naive = sum(per_step)
gpt2_cached = 5 + (200 - 1)
""",
    },
    ("06_kv_cache", 2): {
        "wrong": """
def cached_greedy(model, idx, n):  # right tokens, but the whole context every step: no cache at all
    for _ in range(n):
        logits, _ = model(idx)
        idx = torch.cat((idx, logits[:, -1, :].argmax(-1, keepdim=True)), dim=1)
    return idx
""",
        "other_names": """
def cached_greedy(net, tokens, count):
    kv = net.new_cache(tokens.size(0), capacity=tokens.size(1) + count)
    scores, _ = net(tokens, cache=kv)
    pieces = [tokens]
    for _ in range(count):
        pick = scores[:, -1].argmax(-1)[:, None]
        pieces.append(pick)
        scores, _ = net(pick, cache=kv)
    return torch.cat(pieces, dim=1)
""",
        "delegates": ["""
from nanogpt_edu.sampling import generate as g
cached_greedy = lambda model, idx, n: g(model, idx, n, temperature=0)
""", """
import nanogpt_edu.sampling
cached_greedy = lambda model, idx, n: getattr(nanogpt_edu.sampling, "gen" + "erate")(model, idx, n, temperature=0)
"""],
    },
    ("03_tokenization", 1): {
        "wrong": """
n_tokens = len(line.split())  # words, not tokens
longest = "through"
""",
        "other_names": """
ids_of_line = enc.encode(line)
n_tokens = len(ids_of_line)
sizes = {i: len(enc.decode_single_token_bytes(i)) for i in ids_of_line}
longest = enc.decode_single_token_bytes(max(sizes, key=sizes.get)).decode("utf-8")
""",
    },
    ("03_tokenization", 2): {
        "wrong": """
def bpe(word):  # merges the pair learned *last* first
    parts = [bytes([b]) for b in word.encode("utf-8")]
    while True:
        found = []
        for a, b in zip(parts, parts[1:]):
            try:
                found.append((enc.encode_single_token(a + b), a + b))
            except KeyError:
                pass
        if not found:
            return parts
        glued = max(found)[1]
        out, i = [], 0
        while i < len(parts):
            if i + 1 < len(parts) and parts[i] + parts[i + 1] == glued:
                out.append(glued)
                i += 2
            else:
                out.append(parts[i])
                i += 1
        parts = out
""",
        "other_names": """
def bpe(text_word):
    def rank(piece):
        try:
            return enc.encode_single_token(piece)
        except KeyError:
            return None

    seq = [bytes([c]) for c in text_word.encode("utf-8")]
    while len(seq) > 1:
        scored = [(rank(seq[k] + seq[k + 1]), k) for k in range(len(seq) - 1)]
        scored = [(r, k) for r, k in scored if r is not None]
        if not scored:
            break
        lowest = min(r for r, _ in scored)
        k = 0
        rebuilt = []
        while k < len(seq):
            if k + 1 < len(seq) and rank(seq[k] + seq[k + 1]) == lowest:
                rebuilt.append(seq[k] + seq[k + 1])
                k += 2
            else:
                rebuilt.append(seq[k])
                k += 1
        seq = rebuilt
    return seq
""",
    },
    ("02_weight_porting", 1): {
        "wrong": """
L, C, V, T = 24, 1024, 50257, 1024
per_block = 2 * 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C)
medium = V * C + T * C + L * per_block + 2 * C + V * C  # the tied head counted again
""",
        "other_names": """
n_layers, width = 24, 1024
embeddings = 50257 * width + 1024 * width
attention = width * 3 * width + 3 * width + width * width + width
feed_forward = width * 4 * width + 4 * width + 4 * width * width + width
norms = 2 * (2 * width)
medium = embeddings + n_layers * (attention + feed_forward + norms) + 2 * width
""",
    },
    ("02_weight_porting", 2): {
        "wrong": """
bad_block = 5  # where the difference is still visible, not where it starts
bad_weight = "attn.c_proj.weight"
""",
        "other_names": """
with torch.no_grad():
    states = hf_model(x, output_hidden_states=True).hidden_states
    running = buggy.transformer.wte(x) + buggy.transformer.wpe(torch.arange(x.size(1)))
    gaps = []
    for n, blk in enumerate(buggy.transformer.h):
        running = blk(running)
        compared = buggy.transformer.ln_f(running) if n == len(buggy.transformer.h) - 1 else running
        gaps.append((compared - states[n + 1]).abs().max().item())
bad_block = next(n for n, gap in enumerate(gaps) if gap > 1e-4)
bad_weight = f"transformer.h.{bad_block}.attn.c_proj.weight"
""",
    },
    ("01_config", 1): {
        "wrong": """
(folder / "classroom.py").write_text("num_samples = 3\\nmax_new_tokens = 100\\ntemperature = 0.8\\ntop_k = None\\n")
classroom = apply_overrides(SampleConfig(), [str(folder / "classroom.py")], log=lambda line: None)
""",
        "other_names": """
cfg_path = folder / "classroom.py"
cfg_path.write_text("\\n".join(["num_samples = 3", "max_new_tokens = 100", "temperature = 0.5", "top_k = None"]))
classroom = apply_overrides(SampleConfig(), [str(cfg_path)], log=lambda line: None)
""",
    },
    ("01_config", 2): {
        "wrong": """
my_configurator = toy_configurator
""",
        "other_names": """
def my_configurator(d, args):
    for a in args:
        name, _, raw = a.removeprefix("--").partition("=")
        if name not in d:
            raise KeyError(f"{name}? the settings are {sorted(d)}")
        try:
            parsed = literal_eval(raw)
        except (SyntaxError, ValueError):
            parsed = raw
        old = d[name]
        if isinstance(old, float) and isinstance(parsed, int) and not isinstance(parsed, bool):
            parsed = float(parsed)
        if type(parsed) is not type(old):
            raise ValueError(f"{name}: wrong type")
        d[name] = parsed
""",
    },
    ("00_overview", 1): {
        "wrong": """
n_prompt = len("ROMEO:")  # characters, not tokens
n_new = 60
""",
        "other_names": """
n_prompt = len(encode("ROMEO:"))
n_new = y.numel() - n_prompt
""",
    },
    ("00_overview", 2): {
        "wrong": """
def continue_text(prompt, n, seed):  # ignores the seed: a different text every call
    out = generate(model, torch.tensor([encode(prompt)]), n, temperature=0.8, top_k=200)
    return decode(out[0].tolist())
""",
        "other_names": """
def continue_text(text, how_many, seed_value):
    rng = torch.Generator()
    rng.manual_seed(seed_value)
    tokens = torch.tensor(encode(text)).unsqueeze(0)
    grown = generate(model, tokens, how_many, temperature=0.8, top_k=200, generator=rng)
    return decode(grown[0].tolist())
""",
    },
    ("07_output_quality", 1): {
        "wrong": """
whole3 = torch.cat([prompts[3], human[3]])[None]
my_perplexity = model(whole3[:, :-1], whole3[:, 1:])[1].exp().item()  # the prompt's tokens counted too
""",
        "other_names": """
import numpy as np
seq = torch.cat([prompts[3], human[3]]).unsqueeze(0)
out_logits, _ = model(seq[:, :-1], seq[:, 1:])
nll = F.cross_entropy(out_logits[0, -32:], human[3], reduction="none")
my_perplexity = np.exp(nll.mean().item())
""",
    },
    ("07_output_quality", 2): {
        "wrong": """
def my_ends_in_loop(tokens):  # twice is enough here: the paper asks for three times
    for size in range(2, len(tokens) // 2 + 1):
        if tokens[-size:] == tokens[-2 * size:-size]:
            return True
    return False
""",
        "other_names": """
def my_ends_in_loop(ids):
    n = len(ids)
    for width in range(2, n // 3 + 1):
        tail = ids[n - width:]
        copies = 1
        while (copies + 1) * width <= n and ids[n - (copies + 1) * width: n - copies * width] == tail:
            copies += 1
        if copies >= 3:
            return True
    return False
""",
    },
}
ANSWERS |= {
    ("08_after_nanogpt", 1): {
        "wrong": """
def gather_top_k(logits, k, temperature, generator):  # nanoGPT's mask: a tie keeps more than k
    masked = top_k_mask(logits / temperature, k)
    return torch.multinomial(F.softmax(masked, dim=-1), 1, generator=generator)
""",
        "other_names": """
def gather_top_k(scores, how_many, temp, rng):
    best, where = scores.topk(how_many, dim=1)
    weights = (best / temp).softmax(dim=1)
    pick = weights.multinomial(num_samples=1, generator=rng)
    return torch.take_along_dim(where, pick, dim=1)
""",
    },
    ("08_after_nanogpt", 2): {
        "wrong": """
def accept_drafts(p, q, drafts, generator):  # after a rejection, draws from p instead of the leftover
    for i, d in enumerate(drafts.tolist()):
        if torch.rand(1, generator=generator).item() >= (p[i, d] / q[i, d]).item():
            return i, int(torch.multinomial(p[i], 1, generator=generator))
    return len(drafts), int(torch.multinomial(p[len(drafts)], 1, generator=generator))
""",
        "other_names": """
def accept_drafts(target, draft, proposed, rng):
    k = proposed.numel()
    idx = torch.arange(k)
    keep = torch.rand(k, generator=rng) < (target[idx, proposed] / draft[idx, proposed]).clamp(max=1)
    n = k if bool(keep.all()) else int((~keep).int().argmax())
    rest = target[n] if n == k else torch.relu(target[n] - draft[n])
    return torch.tensor(n), rest.multinomial(1, generator=rng)[0]
""",
    },
}
