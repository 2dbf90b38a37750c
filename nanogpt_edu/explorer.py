"""A sampling explorer that needs no kernel: the model's next-token distribution with live sampling controls.

``sampling_explorer(model, prompts)`` runs the model once per prompt and keeps the logits of the last position.
The page it returns has a bar chart of the likeliest next tokens and sliders for temperature, top-k, top-p and
min-p. Moving a slider recomputes the distribution in the browser, with the few lines of ``DISTRIBUTION_JS``
that repeat ``nanogpt_edu.sampling``'s arithmetic (the tests hold them to it on the same logits). No Python runs
after the page is built and BokehJS is bundled into it, so the controls work the same in JupyterLab, in the static
HTML edition and in a saved file, offline.

The page carries every logit of every prompt, not only the bars': the masks cut deep into the tail (after
"Hello, my name is" at temperature 1, top-p 0.9 keeps 1,738 of the pocket model's 50,257 tokens), so a truncated
list could not say how many tokens are kept, nor renormalise exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from bokeh.document import Document
from bokeh.embed import file_html
from bokeh.layouts import column, row
from bokeh.models import ColumnDataSource, CustomJS, Div, FactorRange, PlainText, Select, Slider
from bokeh.plotting import figure
from bokeh.resources import INLINE
from jinja2 import Template
from torch.nn import functional as F

from .plots import token_label
from .errors import NanogptEduError
from .errors import shown as shown_value
from .sampling import apply_masks, apply_temperature, check_logits, check_sampling_args
from .tokenizer import encode as gpt2_encode

DEFAULT_PROMPTS = ("Hello, my name is", "ROMEO:", "The king")
DEFAULT_SETTINGS = {"temperature": 0.8, "top_k": 200, "top_p": 1.0, "min_p": 0.0}  # nanoGPT's, top_p/min_p off
SHOWN = 40  # bars per prompt: enough to see a mask's edge, few enough to read each token
BEFORE, MASKED, KEPT = "#c9c9c9", "#f2a93b", "#2b7bb9"  # the colours of the notebooks' mask figures

# The arithmetic of nanogpt_edu.sampling in JavaScript, on logits sorted from most to least likely. Every mask
# keeps the likeliest tokens, so what survives is always the first `kept` of the sorted list. Off: top_k 0,
# top_p 1, min_p 0. Returns the probabilities before the masks (temperature only) and after them (renormalised).
DISTRIBUTION_JS = """
function softmax_first(z, n) {  // softmax over the first n scaled logits; the rest are masked (probability 0)
  const probs = new Float64Array(z.length);
  let total = 0;
  for (let i = 0; i < n; i++) { probs[i] = Math.exp(z[i] - z[0]); total += probs[i]; }
  for (let i = 0; i < n; i++) probs[i] /= total;
  return probs;
}
function filtered_distribution(sorted_logits, temperature, top_k, top_p, min_p) {
  const z = Float64Array.from(sorted_logits, (l) => l / temperature);  // apply_temperature
  let kept = z.length;
  if (top_k > 0) {  // top_k_mask: keep what is at least the k-th largest (ties with it too)
    const kth = z[Math.min(top_k, kept) - 1];
    while (z[kept - 1] < kth) kept--;
  }
  if (top_p < 1) {  // top_p_mask: keep a token while the probability ranked above it is below top_p
    const probs = softmax_first(z, kept);
    let n = 1, above = probs[0];
    while (n < kept && above < top_p) above += probs[n++];
    kept = n;
  }
  if (min_p > 0) {  // min_p_mask: keep tokens at least min_p times as likely as the likeliest
    const probs = softmax_first(z, kept);
    let n = 1;
    while (n < kept && probs[n] >= min_p * probs[0]) n++;
    kept = n;
  }
  return {kept: kept, before: softmax_first(z, z.length), after: softmax_first(z, kept)};
}
"""

# Glue: read the controls, recompute, redraw. `logits`, `labels` and `prompts` hold one entry per prompt.
_UPDATE_JS = """
const i = Number(prompt.value);
const r = filtered_distribution(logits[i], temperature.value, top_k.value, top_p.value, min_p.value);
const n = labels[i].length;
let mass = 0;
for (let j = 0; j < r.kept; j++) mass += r.before[j];
// a new PlainText, never a string: Bokeh reads a string with $$ or \\( in it as TeX, and prompts may hold them
fig.title.text = new fig.title.text.constructor({text: "Next-token probabilities after " + JSON.stringify(prompts[i])});
fig.x_range.factors = labels[i];
const before = Array.from(r.before.subarray(0, n));
bars.data = {token: labels[i], before: before, after: Array.from(r.after.subarray(0, n)),
             masked: before.map((p, j) => (j < r.kept ? 0 : p))};
kept.text = `<b>tokens kept: <span class="kept-count">${r.kept.toLocaleString("en-US")}</span></b> of ` +
  `${logits[i].length.toLocaleString("en-US")}, holding ${(100 * mass).toFixed(1)}% of the probability before ` +
  `the masks; renormalised, they share 100%.`;
"""


# each slider's title and range: the settings the page can show (temperature 0, greedy, is not a distribution)
SLIDERS = {"temperature": ("temperature", 0.05, 2.0, 0.05), "top_k": ("top_k (0 = off)", 0, 500, 1),
           "top_p": ("top_p (1 = off)", 0.01, 1.0, 0.01), "min_p": ("min_p (0 = off)", 0.0, 1.0, 0.01)}
_OFF = {"top_k": 0, "top_p": 1.0, "min_p": 0.0}  # what None (a filter turned off) is on the sliders


def check_settings(**settings) -> dict:
    """Return the sliders' starting values for ``settings``; raise ``NanogptEduError`` for one they cannot show.

    Checked as ``nanogpt_edu.sampling`` checks them, and then against each slider's range (a temperature must be
    above 0: the page draws a distribution, and temperature 0 is greedy decoding, which has none).
    """
    unknown = set(settings) - set(SLIDERS)
    if unknown:
        raise NanogptEduError(f"sampling_explorer has no setting {shown_value(sorted(unknown)[0])}; it has "
                              f"{', '.join(SLIDERS)}")
    values = {name: settings.get(name, default) for name, default in DEFAULT_SETTINGS.items()}
    values.update({name: _OFF[name] for name in _OFF if values[name] is None})
    try:
        check_sampling_args(values["temperature"], values["top_k"] or None, values["top_p"], values["min_p"])
    except ValueError as e:
        raise NanogptEduError(str(e)) from None
    for name, (_, start, end, _) in SLIDERS.items():
        if not start <= values[name] <= end:
            raise NanogptEduError(f"the explorer's {name} must be from {start} to {end} (its slider's range), "
                                  f"got {shown_value(values[name])}")
    return values


@dataclass
class NextTokenLogits:
    """The next-token logits of one prompt, sorted from most to least likely, and labels for the likeliest."""

    prompt: str
    logits: np.ndarray  # (vocab_size,) float32, descending
    token_ids: list[int]  # the ids of the first len(labels) logits
    labels: list[str]  # their text, as the bars' axis shows it (unique)


@dataclass
class Distribution:
    """What sampling draws from under some settings: see ``filtered_distribution``."""

    before: torch.Tensor  # probabilities with temperature only
    after: torch.Tensor  # probabilities after the masks, renormalised over the kept tokens
    kept: int  # how many tokens the masks keep


@torch.no_grad()
def next_token_logits(model: torch.nn.Module, prompt: str, shown: int = SHOWN,
                      encode: Callable[[str], list[int]] = gpt2_encode,
                      decode_bytes: Callable[[int], bytes] | None = None) -> NextTokenLogits:
    """Run ``model`` on ``prompt`` and return the last position's logits, sorted, with labels for ``shown`` tokens."""
    if not isinstance(model, torch.nn.Module) or type(getattr(getattr(model, "config", None), "block_size", None)) \
            is not int:
        raise NanogptEduError(f"model must be a GPT (a module with config.block_size), got {shown_value(model)}")
    idx = torch.tensor(encode(prompt), dtype=torch.long)[None, -model.config.block_size:]
    logits, _ = model(idx)
    values, ids = torch.sort(logits[0, -1].float(), descending=True)
    labels: list[str] = []
    for token_id in ids[:shown].tolist():
        label = token_label(token_id, decode_bytes)
        # the axis needs distinct labels; bytes that are not valid UTF-8 on their own all print as '\ufffd'
        labels.append(label if label not in labels else f"{label} #{token_id}")
    return NextTokenLogits(prompt, values.numpy(), ids[:shown].tolist(), labels)


def filtered_distribution(logits: torch.Tensor, temperature: float, top_k: int | None = None,
                          top_p: float | None = None, min_p: float | None = None) -> Distribution:
    """Return the distribution ``sample_next_token`` draws from, computed with ``nanogpt_edu.sampling``'s steps.

    Temperature, then each mask that is set, then softmax, in float64: the same arithmetic the explorer's
    ``DISTRIBUTION_JS`` does in the browser. ``logits`` is one row (vocab_size,).
    """
    check_logits(logits)
    scaled = apply_temperature(logits.double()[None, :], temperature)
    masked = apply_masks(scaled, top_k, top_p, min_p)
    return Distribution(F.softmax(scaled, dim=-1)[0], F.softmax(masked, dim=-1)[0], int(torch.isfinite(masked).sum()))


def explorer_document(rows: Sequence[NextTokenLogits], temperature: float = 0.8, top_k: int = 200,
                      top_p: float = 1.0, min_p: float = 0.0) -> Document:
    """Return the Bokeh document of the explorer: prompt choice, four sliders, the tokens-kept line, the bars."""
    values = check_settings(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    if isinstance(rows, (str, bytes)) or not rows or not all(isinstance(r, NextTokenLogits) for r in rows):
        raise NanogptEduError(f"explorer_document takes a list of NextTokenLogits, got {shown_value(rows)}")
    first = rows[0]
    zeros = [0.0] * len(first.labels)
    bars = ColumnDataSource(dict(token=first.labels, before=zeros, masked=zeros, after=zeros))
    fig = figure(x_range=FactorRange(*first.labels), width=900, height=380, toolbar_location=None, tools="hover",
                 tooltips=[("token", "@token"), ("before the masks", "@before{0.0000}"),
                           ("after the masks", "@after{0.0000}")], name="bars")
    # as the page's code writes it, as plain text: a string holding $$ or \( would be drawn as TeX
    fig.title.text = PlainText(text=f"Next-token probabilities after {json.dumps(first.prompt)}")
    # each token's probability before the masks in grey (outlined in orange if a mask drops it), after them in blue
    fig.vbar(x="token", top="before", source=bars, width=0.8, color=BEFORE, legend_label="before the masks")
    fig.vbar(x="token", top="masked", source=bars, width=0.45, fill_alpha=0, line_color=MASKED, hatch_pattern="/",
             hatch_color=MASKED, legend_label="masked: had this, now 0")  # as the notebooks' mask figures draw it
    fig.vbar(x="token", top="after", source=bars, width=0.45, color=KEPT, legend_label="kept, renormalised")
    fig.xaxis.axis_label = f"next token (the {len(first.labels)} likeliest, most likely first)"
    fig.yaxis.axis_label = "probability"
    fig.xaxis.major_label_orientation = 1.1
    fig.y_range.start = 0
    fig.legend.location = "top_right"

    controls = dict(prompt=Select(title="prompt", value="0", width=300,
                                  options=[(str(i), repr(r.prompt)) for i, r in enumerate(rows)]))
    for name, (title, start, end, step) in SLIDERS.items():
        controls[name] = Slider(title=title, start=start, end=end, step=step, value=values[name], width=210)
    for name, widget in controls.items():
        widget.name = name
    kept = Div(text="", name="kept", width=900)
    update = CustomJS(args=dict(bars=bars, fig=fig, kept=kept, logits=[r.logits for r in rows],
                                labels=[r.labels for r in rows], prompts=[r.prompt for r in rows], **controls),
                      code=DISTRIBUTION_JS + _UPDATE_JS)
    for widget in controls.values():
        widget.js_on_change("value", update)

    doc = Document()
    doc.add_root(column(controls["prompt"], row(*(controls[k] for k in ("temperature", "top_k", "top_p", "min_p"))),
                        kept, fig))
    doc.js_on_event("document_ready", update)  # draw the first prompt's bars once the page is ready
    doc.js_on_event("document_ready", CustomJS(code=_LABEL_JS))  # sliders named for screen readers
    return doc


# BokehJS draws a slider's handle (role="slider", moved with the arrow keys) without an accessible name; give each
# the slider's own title ("temperature", "top_k (0 = off)"), read from its visible label, once the views are drawn
_LABEL_JS = """
const name_sliders = () => {
  let named = 0;
  const walk = (root) => {
    for (const el of root.querySelectorAll("*")) {
      if (!el.shadowRoot) continue;
      const title = el.shadowRoot.querySelector(".bk-slider-title");
      for (const handle of el.shadowRoot.querySelectorAll("[role=slider]")) {
        if (title) { handle.setAttribute("aria-label", title.textContent.replace(/:[^:]*$/, "").trim()); named++; }
      }
      walk(el.shadowRoot);
    }
  };
  walk(document);
  return named;
};
for (const wait of [0, 100, 500, 2000]) setTimeout(name_sliders, wait);
"""


class ExplorerPage:
    """The explorer as HTML: shows itself in a notebook (BokehJS inline, no kernel needed) and saves as a page."""

    def __init__(self, doc: Document, prompts: Sequence[str], title: str = "nanogpt-edu: sampling explorer") -> None:
        self.doc, self.prompts, self.title = doc, list(prompts), title

    def _repr_html_(self) -> str:
        # the BokehJS bundle, the placeholder div and the script that fills it, without <html>/<body>
        return file_html(self.doc, INLINE, self.title,
                         template=Template("{{ bokeh_js }}\n{{ plot_div }}\n{{ plot_script }}"))

    def save(self, path: str | Path) -> Path:
        """Write a standalone HTML page (works offline, opened as a file); return its path."""
        path = Path(path)
        path.write_text(file_html(self.doc, INLINE, self.title), encoding="utf-8")
        return path

    def __repr__(self) -> str:
        return f"<sampling explorer: {len(self.prompts)} prompts>"


def sampling_explorer(model: torch.nn.Module, prompts: Sequence[str] = DEFAULT_PROMPTS, shown: int = SHOWN,
                      **settings) -> ExplorerPage:
    """Return the sampling explorer for ``model``'s next token after each of ``prompts``.

    ``model`` should be in eval mode, as ``load_model`` returns it (dropout would make the logits random). Shows
    the ``shown`` likeliest tokens as bars. ``settings`` are the sliders' starting values (temperature=0.8,
    top_k=200, top_p=1.0, min_p=0.0: nanoGPT's defaults, with top_p and min_p off). In a notebook, make it the
    cell's last expression. Settings the sliders cannot show (a temperature of 0 or below, say) raise
    ``NanogptEduError`` before the model runs.
    """
    check_settings(**settings)
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise NanogptEduError(f"prompts must be a list of strings, got {shown_value(prompts)}")
    return ExplorerPage(explorer_document([next_token_logits(model, p, shown) for p in prompts], **settings), prompts)
