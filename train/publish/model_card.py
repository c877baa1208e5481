"""The model card (README.md, with the Hub's YAML metadata) and LICENSE of a model directory, generated from the run.

Every number and name comes from the run directory through train/run_directory.py (summary.json, run_config.yaml,
data_info.json, sample.txt, loss_curve.png) and from the model's export.json (train/publish/export.py): the card is
never written by hand, so it cannot drift from the run, and it re-derives nothing the run recorded. It states what a
norm study must report: which norm, where it sits, its eps and where the float32 upcast happens. The fields of the
training table are those whose metadata gives them the role `card` or `optimization` (train/arguments.py).

A README.md that does not carry CARD_MARKER was written by someone else and is left alone, as is a LICENSE already
there.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path
from typing import Any

import yaml

from model import NormGPTConfig
from model.norms import NORMS, describe_norms, norm_eps
from train.arguments import CARD as CARD_ROLE
from train.arguments import OPTIMIZATION, fields_with
from train.atomic_io import atomic_write
from train.hardware import describe_hardware
from train.publish.export import read_export_info
from train.publish.license import SPDX_ID, license_text
from train.run_directory import (
    CARD,
    CARD_MARKER,
    DATA_INFO,
    LICENSE,
    LOSS_CURVE,
    MODEL_CONFIG,
    RUN_CONFIG,
    SAMPLE,
    Run,
    is_normgpt_card,
    load_run,
)

NOT_RECORDED = "not recorded"
PLACEMENTS = {
    "pre": "pre-norm, `h + f(norm(h))` (GPT-2, Llama), with a final norm",
    "post": "post-norm, `norm(h + f(h))` (the original Transformer), no final norm",
    "peri": "peri-norm, `h + norm(f(norm(h)))` (Gemma 2, Peri-LN), with a final norm",
}
CARD_FIELDS = fields_with(CARD_ROLE, OPTIMIZATION)


def norm_title(name: str | None) -> str:
    return NORMS[name].title if name in NORMS else str(name)


def fmt(value: Any) -> str:
    if value is None:
        return NOT_RECORDED
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def fmt_loss(value: float | None) -> str:
    return NOT_RECORDED if value is None else f"{value:.4f}"


def fmt_count(n: int | None) -> str:
    if n is None:
        return NOT_RECORDED
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit} ({n:,})"
    return f"{n:,}"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return NOT_RECORDED
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def table(rows: list[tuple[str, str]]) -> str:
    cell = lambda text: str(text).replace("|", "\\|")  # a bare | would end the cell
    return "\n".join(["| | |", "|---|---|", *(f"| {cell(k)} | {cell(v)} |" for k, v in rows)])


def model_fields(run: Run, export: Any, model_config: dict[str, Any]) -> dict[str, Any]:
    """The normgpt config the model was trained with: export.json's record of it, else the config.json of a
    normgpt model, else the summary's model section (runs written before exports existed)."""
    if export is not None and export.source:
        return export.source
    if model_config.get("model_type") == "normgpt":
        return model_config
    return run.summary.model if run.summary is not None else {}


def metadata(model: dict[str, Any], model_type: str | None, data_info: dict[str, Any], gguf: list) -> dict[str, Any]:
    """The card's YAML header, as the Hub reads it."""
    spec = NORMS.get(model.get("norm_type"))
    tags = ["normgpt", spec.tag if spec else "normalization"]
    tags.append(f"{model.get('norm_placement', 'pre')}-norm")
    if model.get("qk_norm"):
        tags.append("qk-norm")
    if model_type and model_type != "normgpt":
        tags.append(model_type)
    else:
        tags.append("custom_code")  # the Hub's tag for models that load with trust_remote_code
    if gguf:
        tags.append("gguf")
    meta: dict[str, Any] = {
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "license": SPDX_ID,
        "tags": list(dict.fromkeys(tags)),
    }
    if data_info.get("source") == "hub" and data_info.get("dataset"):
        meta["datasets"] = [data_info["dataset"]]
    return meta


def norm_record(model: dict[str, Any], run: Run) -> tuple[str, str]:
    """(eps, numerics) of the norms as the run recorded them in summary.json: its eps (none for a norm without one,
    as the registry says) and normgpt's one-line account of the norms (`describe_norms`). A run from before
    summaries held them (or a model that is not the run's) has them computed from the model config, through the same
    registry."""
    recorded = run.summary.model if run.summary is not None else {}
    if recorded.get("norm_type") != model.get("norm_type"):
        recorded = {}
    if {"norm_numerics", "norm_eps"} <= recorded.keys():
        eps, numerics = recorded["norm_eps"], recorded["norm_numerics"]
    else:
        try:
            config = NormGPTConfig(**{k: v for k, v in model.items() if k != "model_type"})
            eps, numerics = norm_eps(config), recorded.get("norm_numerics") or describe_norms(config)
        except (ValueError, TypeError):
            return NOT_RECORDED, recorded.get("norm_numerics") or NOT_RECORDED
    return ("none (this norm has no eps)" if eps is None else f"{eps:g}"), numerics


def architecture_section(model: dict[str, Any], run: Run, export: Any) -> str:
    norm = model.get("norm_type")
    eps = model.get("rms_norm_eps")
    norm_eps, numerics = norm_record(model, run)
    hidden, heads = model.get("hidden_size"), model.get("num_attention_heads")
    mlp = "SwiGLU (silu)" if model.get("hidden_act") == "silu" else "GELU (exact, erf), no gate"
    qk = f"RMSNorm per head on queries and keys, before RoPE, eps={fmt(eps)}" if model.get("qk_norm") else "no"
    rope = model.get("rope_parameters") or {}
    rows = [
        ("Norm", f"{norm_title(norm)} (`norm_type={norm}`)"),
        ("Placement", PLACEMENTS.get(model.get("norm_placement"), fmt(model.get("norm_placement")))),
        ("eps", norm_eps),
        ("Norm numerics (where float32 is used)", numerics),
        ("QK-norm", qk),
        ("MLP", f"{mlp}, intermediate size {fmt(model.get('intermediate_size'))}"),
        ("Layers", fmt(model.get("num_hidden_layers"))),
        ("Hidden size", fmt(hidden)),
        ("Attention heads (query / key-value)", f"{fmt(heads)} / {fmt(model.get('num_key_value_heads'))}"),
        ("Head dimension", fmt(hidden // heads if hidden and heads else None)),
        ("Vocabulary", fmt(model.get("vocab_size"))),
        ("Context length", fmt(model.get("max_position_embeddings"))),
        ("RoPE theta", fmt(rope.get("rope_theta", model.get("rope_theta")))),
        ("Tied input/output embeddings", fmt(model.get("tie_word_embeddings", True))),
        ("z-loss (training only)", fmt(model.get("z_loss") or 0.0)),
        ("Parameters", fmt_count(run.summary.num_parameters if run.summary else None)),
        ("Format", export.describe() if export is not None else NOT_RECORDED),
    ]
    rows += [("Note", note) for note in (export.notes if export is not None else [])]
    return (
        "## Architecture\n\nA decoder-only transformer with rotary position embeddings, trained from scratch.\n\n"
        + (table(rows))
    )


def training_section(run: Run) -> str:
    config, summary = run.config, run.summary
    hardware = summary.hardware if summary else None
    rows = [(f"`{name}`", fmt(config.get(name))) for name in CARD_FIELDS if name in config]
    rows += [
        ("Tokens per step", fmt_count(summary.tokens_per_step if summary else None)),
        ("Status", fmt(summary.status.value if summary else None)),
        ("Steps", f"{summary.steps} of {summary.max_steps}" if summary else NOT_RECORDED),
        ("Training tokens", fmt_count(summary.tokens if summary else None)),
        ("Validation loss at init", fmt_loss(summary.init_val_loss if summary else None)),
        ("Final validation loss", fmt_loss(summary.final_val_loss if summary else None)),
        ("Best validation loss", fmt_loss(summary.best_val_loss if summary else None)),
        ("Final training loss", fmt_loss(summary.final_train_loss if summary else None)),
        ("Loss spikes", fmt(summary.spike_count if summary else None)),
        ("Largest gradient norm", fmt_loss(summary.max_grad_norm if summary else None)),
        ("Hardware", describe_hardware(hardware) if hardware else fmt(summary and summary.device)),
        ("Processes", fmt(summary.num_processes if summary else None)),
        ("Wall time (training)", fmt_duration(summary.wall_time if summary else None)),
        (
            "Throughput",
            f"{summary.tokens_per_sec:,.0f} tokens/s" if summary and summary.tokens_per_sec else NOT_RECORDED,
        ),
    ]
    return "## Training\n\n" + table(rows)


def data_section(info: dict[str, Any]) -> str:
    if not info:
        return f"## Data\n\n{DATA_INFO} was {NOT_RECORDED}."
    tokenizer = info.get("tokenizer_source")
    if info.get("tokenizer_trained"):
        tokenizer = f"byte-level BPE trained on the training split ({tokenizer})"
    rows = [
        ("Dataset", f"`{info.get('dataset')}` ({info.get('source', NOT_RECORDED)})"),
        ("Fingerprint (sha256 of the content)", f"`{info.get('fingerprint', NOT_RECORDED)}`"),
        ("Documents (train / validation)", f"{fmt(info.get('train_documents'))} / {fmt(info.get('val_documents'))}"),
        ("Bytes (train / validation)", f"{fmt_count(info.get('train_bytes'))} / {fmt_count(info.get('val_bytes'))}"),
        ("Tokens (train / validation)", f"{fmt_count(info.get('train_tokens'))} / {fmt_count(info.get('val_tokens'))}"),
        ("Validation split", f"{fmt(info.get('validation_split_percentage'))}% of the documents"),
        ("Tokenizer", f"{tokenizer}, {fmt(info.get('vocab_size'))} tokens"),
    ]
    return "## Data\n\n" + table(rows)


def usage_section(model_id: str, remote_code: bool, prompt: str, gguf: list[dict[str, Any]]) -> str:
    trust = ", trust_remote_code=True" if remote_code else ""
    code = f"""```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{model_id}")  # pads on the left, as batched generation needs
model = AutoModelForCausalLM.from_pretrained("{model_id}"{trust})
inputs = tokenizer([{prompt!r}], return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=64, do_sample=False)
print(tokenizer.decode(output[0], skip_special_tokens=True))
```"""
    parts = ["## How to use", code]
    if remote_code:
        parts.append("No stock transformers class computes this variant (see Format above), so the model's code is")
        parts[-1] += " in this repository and loads with `trust_remote_code=True`; read it before you run it."
    else:
        parts.append(
            "The architecture is a stock transformers class: no `trust_remote_code`, and servers that know the "
            f"architecture take it as it is, for example `vllm serve {model_id}`."
        )
    for entry in gguf:
        parts.append(
            f"llama.cpp, Ollama, LM Studio: `{entry['file']}` ({entry['type']}, llama.cpp architecture "
            f"`{entry['architecture']}`), e.g. `llama-cli -m {entry['file']} -p {shlex.quote(prompt)} -n 64 --temp 0`."
        )
    model_args = f"pretrained={model_id}" + (",trust_remote_code=True" if remote_code else "")
    parts.append(
        f"Evaluate with lm-evaluation-harness: `lm_eval --model hf --model_args {model_args} --tasks lambada_openai`, "
        "or `normgpt evaluate MODEL_DIR --text FILE` for bits per byte on a local text file, offline."
    )
    return "\n\n".join(parts)


def sample_prompt(sample: str) -> str:
    """A prompt from the run's own greedy sample (text of the training domain): its first line, shortened."""
    first = next((line.strip() for line in sample.splitlines() if line.strip()), "")
    return first[:40] or "The"


def reproduce_section(run: Run, sample: str) -> str:
    parts = []
    if sample:
        parts += ["## Sample", f"Greedy continuation of a validation prompt by the final model (`{SAMPLE}`):"]
        parts.append("```text\n" + sample.strip()[:1500] + "\n```")
    parts += ["## Reproduce", "Trained with normgpt; the resolved config reproduces the run:"]
    parts.append(f"```bash\nnormgpt train --config {RUN_CONFIG}\n```")
    if text := run.text(RUN_CONFIG).strip():
        parts.append(f"<details><summary>{RUN_CONFIG}</summary>\n\n```yaml\n{text}\n```\n\n</details>")
    return "\n\n".join(parts)


def render_card(run_dir: Path, model_dir: Path, model_id: str) -> str:
    """The README.md text for `model_dir`, from the run in `run_dir`."""
    run = load_run(run_dir)
    export = read_export_info(model_dir) or read_export_info(run_dir)
    config_path = model_dir / MODEL_CONFIG
    model_config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    model = model_fields(run, export, model_config)
    data_info, sample = run.data_info(), run.text(SAMPLE)
    gguf = export.gguf if export is not None else []
    remote_code = model_config.get("model_type") == "normgpt"
    title = run.config.get("run_name") or Path(model_id).name
    norm = norm_title(model.get("norm_type"))
    header = yaml.safe_dump(metadata(model, model_config.get("model_type"), data_info, gguf), sort_keys=False)
    intro = (
        f"A {fmt_count(run.summary.num_parameters if run.summary else None).split(' ')[0]}-parameter language model "
        f"with {norm}, {model.get('norm_placement', 'pre')}-norm placement, trained from scratch with normgpt."
    )
    sections = [
        f"---\n{header}---",
        f"<!-- {CARD_MARKER} from the run directory; it is rewritten on the next export -->",
        f"# {title}",
        intro,
        architecture_section(model, run, export),
        training_section(run),
        data_section(data_info),
    ]
    if (run_dir / LOSS_CURVE).is_file():
        sections.append(f"## Loss curve\n\n![Training and validation loss]({LOSS_CURVE})")
    sections += [usage_section(model_id, remote_code, sample_prompt(sample), gguf), reproduce_section(run, sample)]
    sections.append(f"## License\n\n{SPDX_ID} (see [LICENSE]({LICENSE})).")
    return "\n\n".join(sections) + "\n"


def write_model_card(run_dir: Path, model_dir: Path | None = None, model_id: str | None = None) -> Path | None:
    """Write README.md (the model card) and LICENSE into `model_dir` (default: the run directory itself), from the
    run in `run_dir`; copy the loss curve the card shows when `model_dir` is another directory. `model_id` is what
    the card's code loads (a Hub repo id; default: the model directory's path). Returns the card's path, or None
    when `model_dir` already holds a README.md that normgpt did not write (it is kept). A LICENSE already there is
    kept too: the license of a model is its owner's choice."""
    run_dir = Path(run_dir)
    model_dir = Path(model_dir) if model_dir is not None else run_dir
    card, license_path = model_dir / CARD, model_dir / LICENSE
    if card.is_file() and not is_normgpt_card(card):
        return None
    if model_dir.resolve() != run_dir.resolve() and (run_dir / LOSS_CURVE).is_file():
        shutil.copyfile(run_dir / LOSS_CURVE, model_dir / LOSS_CURVE)
    atomic_write(card, render_card(run_dir, model_dir, model_id or str(model_dir)))
    if not license_path.is_file():
        atomic_write(license_path, license_text())
    return card
