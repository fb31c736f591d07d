"""Stand-ins of the paper's five models (alignpro.standins): built by the workflow's standin_model rule
from their repositories on a stub of the hub (tests/paper_models.py: the real configs, tokenizers and
chat templates), then loaded as the workflow loads the real ones, by transformers and by vLLM.

vLLM runs in a subprocess per model (this file is also its entry point):
    python tests/test_standins.py MODEL OUT.json
"""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

import paper_models
from alignpro import standins
from hub_stub import HubStub
from paper_models import PAPER_MODELS
from test_hub import hub_env
from test_workflow import ROOT, copy_workflow, planned_jobs, run_snakemake

CAUSAL = [hub_id for hub_id, model in PAPER_MODELS.items() if model.causal]
HI = [{"role": "user", "content": "Hi"}]
SAMPLE = "Hello world,  how are you?\n\nnaïve café 1234 東京 🙂 <|im_start|> [INST]"
VLLM_NEW_TOKENS = 8
REHEARSAL = "config/rehearsal.yaml"


def rehearsal_models() -> dict[str, tuple[str, str, dict]]:
    """hub id -> (config section, name, entry) of every model in config/rehearsal.yaml."""
    config = yaml.safe_load((ROOT / REHEARSAL).read_text())
    return {entry["path"]: (kind, name, entry) for kind, models in config["models"].items() for name, entry in models.items()}


# --- the config dict, no model ---------------------------------------------------------------------


def test_shrunk_config_keeps_what_makes_the_model_and_drops_its_size():
    real = {**paper_models.QWEN.config, "layer_types": ["full_attention"] * 28}
    shrunk = standins.shrink_config(real)
    assert {key: shrunk[key] for key in standins.SIZE} == standins.SIZE
    assert shrunk["num_key_value_heads"] == 1  # 12 heads over 2 kv heads: grouped, as the real one
    assert "layer_types" not in shrunk and "torch_dtype" not in shrunk and shrunk["dtype"] == "float32"
    unchanged = ("vocab_size", "bos_token_id", "eos_token_id", "tie_word_embeddings", "rope_theta", "model_type", "architectures")
    assert {key: shrunk[key] for key in unchanged} == {key: real[key] for key in unchanged}
    assert standins.shrink_config(paper_models.PHI.config)["num_key_value_heads"] == 2  # 32 over 32: not grouped


def test_longrope_factors_are_resampled_to_the_new_head():
    real = paper_models.PHI.config["rope_scaling"]
    rope = standins.shrink_config(paper_models.PHI.config)["rope_scaling"]
    for name in ("short_factor", "long_factor"):
        assert len(real[name]) == 48 and len(rope[name]) == standins.SIZE["head_dim"] // 2
        assert rope[name][0] == real[name][0] and rope[name][-1] == real[name][-1]
        assert rope[name] == sorted(rope[name])
    assert rope["type"] == "longrope"
    llama = standins.shrink_config(paper_models.LLAMA.config)["rope_scaling"]
    assert llama == paper_models.LLAMA.config["rope_scaling"]


def test_rehearsal_has_paper_models_at_papers_commits():
    paper = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
    rehearsal = yaml.safe_load((ROOT / REHEARSAL).read_text())
    for kind, models in paper["models"].items():
        assert rehearsal["models"][kind] == {name: {**entry, "standin": True} for name, entry in models.items()}
    assert {hub_id: kind for hub_id, (kind, _, _) in rehearsal_models().items()} == {
        hub_id: {"prompter": "prompters", "frozen": "frozen", "reward": "reward"}[model.role] for hub_id, model in PAPER_MODELS.items()
    }


# --- built by the workflow from a stub of the hub -------------------------------------------------


@pytest.fixture(scope="module")
def paper_hub():
    """The five repositories at rehearsal.yaml's commits, with weights the stand-ins must not fetch."""
    with HubStub() as stub:
        for hub_id, (_, _, entry) in rehearsal_models().items():
            stub.add_repo(hub_id, PAPER_MODELS[hub_id].repo_files(), commit=entry["revision"])
        yield stub


@pytest.fixture(scope="module")
def built(paper_hub, tmp_path_factory):
    """hub id -> the stand-in directory that `snakemake --configfile config/rehearsal.yaml` built (its
    standin_model jobs only), and how long the five took."""
    workdir = copy_workflow(tmp_path_factory.mktemp("rehearsal"))
    models = rehearsal_models()
    targets = tuple(f"results/standins/{kind}/{name}" for kind, name, _ in models.values())
    env = hub_env(paper_hub, workdir / "home", HF_HUB_CACHE=str(workdir / "hub-cache"), HF_HUB_OFFLINE="0")
    start = time.perf_counter()
    run_snakemake(workdir, "--configfile", REHEARSAL, "--replace-workflow-config", targets=targets, env=env)
    print(f"five stand-ins built in {time.perf_counter() - start:.1f} s")
    return {hub_id: workdir / f"results/standins/{kind}/{name}" for hub_id, (kind, name, _) in models.items()}


def chat_ids(tokenizer, conversation=HI) -> list[int]:
    ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


@pytest.fixture(scope="module")
def loaded(built):
    """hub id -> (config, tokenizer, model), loaded with the Auto classes the workflow's loaders use."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    out = {}
    for hub_id, path in built.items():
        auto = AutoModelForCausalLM if PAPER_MODELS[hub_id].causal else AutoModelForSequenceClassification
        out[hub_id] = (AutoConfig.from_pretrained(path), AutoTokenizer.from_pretrained(path), auto.from_pretrained(path))
    return out


@pytest.mark.model
@pytest.mark.workflow
def test_only_small_files_are_fetched(built, paper_hub):
    downloaded = paper_hub.downloads()
    assert downloaded and not [path for path in downloaded if "safetensors" in path or "/cdn/" in path]
    for hub_id, path in built.items():
        record = json.loads((path / standins.RECORD).read_text())
        assert record["repo"] == hub_id and record["commit"] == rehearsal_models()[hub_id][2]["revision"]
        assert record["real_sizes"]["num_hidden_layers"] == PAPER_MODELS[hub_id].config["num_hidden_layers"]
        assert "tokenizer.json" in record["files"] and "model.safetensors.index.json" not in record["files"]


@pytest.mark.model
@pytest.mark.workflow
@pytest.mark.parametrize("hub_id", list(PAPER_MODELS))
def test_architecture_vocabulary_and_size(hub_id, loaded):
    real = PAPER_MODELS[hub_id]
    config, tokenizer, model = loaded[hub_id]
    assert config.model_type == real.config["model_type"]
    assert type(model).__name__ == real.config["architectures"][0]
    assert config.vocab_size == real.config["vocab_size"] == model.get_input_embeddings().num_embeddings
    assert len(tokenizer) == real.tokenizer_size <= real.config["vocab_size"]
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size, config.head_dim) == (2, 128, 256, 64)
    grouped = real.config["num_key_value_heads"] < real.config["num_attention_heads"]
    assert config.num_key_value_heads == (1 if grouped else 2)
    assert config.tie_word_embeddings is real.config.get("tie_word_embeddings", True)
    if real.causal and not config.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if name in real.config:
            assert getattr(config, name) == real.config[name], name


@pytest.mark.model
@pytest.mark.workflow
@pytest.mark.parametrize("hub_id", list(PAPER_MODELS))
def test_chat_template_and_token_ids_are_the_real_ones(hub_id, loaded, built):
    from tokenizers import Tokenizer

    real = PAPER_MODELS[hub_id]
    _, tokenizer, _ = loaded[hub_id]
    text = tokenizer.apply_chat_template(HI, add_generation_prompt=True, tokenize=False)
    at = 0
    for marker in real.chat_markers:
        assert marker in text[at:], f"{marker!r} not in {text!r} after {at}"
        at = text.index(marker, at) + len(marker)
    assert text.endswith(real.chat_markers[-1])
    for word, ids in real.known_ids:
        assert tokenizer(word, add_special_tokens=False).input_ids == list(ids), word
    # transformers keeps the pipeline of tokenizer.json (no class rebuilds it differently).
    raw = Tokenizer.from_file(str(built[hub_id] / "tokenizer.json"))
    assert tokenizer(SAMPLE).input_ids == raw.encode(SAMPLE).ids
    assert tokenizer.decode(tokenizer(SAMPLE, add_special_tokens=False).input_ids) == SAMPLE
    ids = chat_ids(tokenizer)
    assert ids == tokenizer(text, add_special_tokens=False).input_ids
    if tokenizer.bos_token_id is not None:
        assert ids.count(tokenizer.bos_token_id) == (real.chat_markers[0].startswith(tokenizer.bos_token))


TURN_ENDS = {
    "Qwen/Qwen2.5-1.5B-Instruct": "<|im_end|>",
    "microsoft/Phi-3.5-mini-instruct": "<|end|>",
    "meta-llama/Llama-3.1-8B-Instruct": "<|eot_id|>",
    "mistralai/Mistral-7B-Instruct-v0.3": "</s>",
}


@pytest.mark.model
@pytest.mark.workflow
@pytest.mark.parametrize("hub_id", CAUSAL)
def test_generation_config_has_the_real_eos_ids(hub_id, built, loaded):
    """The real generation_config.json, not one transformers derives: generation stops at the turn's end."""
    real = PAPER_MODELS[hub_id]
    _, tokenizer, model = loaded[hub_id]
    assert json.loads((built[hub_id] / "generation_config.json").read_text()) == real.generation
    eos = real.generation["eos_token_id"]
    assert model.generation_config.eos_token_id == eos
    assert tokenizer.convert_tokens_to_ids(TURN_ENDS[hub_id]) in (eos if isinstance(eos, list) else [eos])


@pytest.mark.model
@pytest.mark.workflow
def test_llama_keeps_llama3_rope_scaling_and_eot(loaded):
    config, tokenizer, _ = loaded["meta-llama/Llama-3.1-8B-Instruct"]
    rope = config.rope_parameters
    assert rope["rope_type"] == "llama3" and rope["factor"] == 8.0
    assert rope["original_max_position_embeddings"] == 8192 and rope["rope_theta"] == 500000.0
    assert tokenizer.convert_tokens_to_ids("<|eot_id|>") == 128009 == tokenizer.eos_token_id
    assert tokenizer.pad_token is None  # like the real one; the workflow pads with eos


@pytest.mark.model
@pytest.mark.workflow
def test_phi_has_fused_projections(loaded):
    config, tokenizer, model = loaded["microsoft/Phi-3.5-mini-instruct"]
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    assert {"qkv_proj", "gate_up_proj", "o_proj", "down_proj"} <= names
    assert not names & {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"}
    assert model.model.layers[0].self_attn.qkv_proj.out_features == (2 + 2 * 2) * 64  # heads + 2 kv heads, no GQA
    assert config.rope_parameters["rope_type"] == "longrope"
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>")}
    assert ids == {"<|endoftext|>": 32000, "<|assistant|>": 32001, "<|end|>": 32007, "<|user|>": 32010}
    assert chat_ids(tokenizer) == [32010, 6324, 32007, 32001]  # <|user|> ▁Hi <|end|> <|assistant|>


LINEAR_LAYERS = {
    "llama": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},  # Llama, Qwen2, Mistral
    "microsoft/Phi-3.5-mini-instruct": {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"},
}


@pytest.mark.model
@pytest.mark.workflow
@pytest.mark.parametrize("hub_id", CAUSAL)
def test_lora_adapts_every_linear_layer_of_each_standin(hub_id, built, caplog):
    """rehearsal.yaml's LoRA (sft.lora as configured, the defaults otherwise) on each prompter and frozen
    stand-in: every kind of linear layer but the output head carries adapters, and the log says so."""
    import logging

    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from alignpro.lora import LoraSettings, log_adapters

    settings = LoraSettings.from_config(yaml.safe_load((ROOT / REHEARSAL).read_text())["sft"]["lora"], "sft.lora")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(built[hub_id]), settings.peft_config())
    with caplog.at_level(logging.INFO, logger="alignpro.lora"):
        log_adapters(model, hub_id)
    [line] = [record.getMessage() for record in caplog.records if record.name == "alignpro.lora"]
    print(line)
    kinds = set(line.split("'s ", 1)[1].split(":", 1)[0].split(", "))
    assert kinds == LINEAR_LAYERS.get(hub_id, LINEAR_LAYERS["llama"]), line
    trainable, _ = model.get_nb_trainable_parameters()
    assert f"{trainable:,} of" in line and trainable > 0


@pytest.mark.model
@pytest.mark.workflow
def test_mistral_tokenizes_like_mistral_common(loaded):
    """The converted tokenizer gives the ids of Mistral's own tokenizer, chat included."""
    sentencepiece = pytest.importorskip("sentencepiece")
    mistral = pytest.importorskip("mistral_common.tokens.tokenizers.mistral")
    from mistral_common.protocol.instruct.messages import AssistantMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    _, tokenizer, _ = loaded["mistralai/Mistral-7B-Instruct-v0.3"]
    processor = sentencepiece.SentencePieceProcessor(model_file=str(paper_models.mistral_v3_model_path()))
    for text in ["Hello world", "Hello  world,\n\nhow are you?", "naïve café 1234567 東京 🙂", "tab\there"]:
        assert tokenizer(text, add_special_tokens=False).input_ids == processor.encode(text), text
    reference = mistral.MistralTokenizer.v3()
    for conversation in [
        HI,
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Name a fruit."}],
    ]:
        messages = [UserMessage(content=m["content"]) if m["role"] == "user" else AssistantMessage(content=m["content"]) for m in conversation]
        expected = reference.encode_chat_completion(ChatCompletionRequest(messages=messages)).tokens
        assert chat_ids(tokenizer, conversation) == expected


@pytest.mark.model
@pytest.mark.workflow
def test_gemma_reward_model_scores_one_number_per_sequence(loaded):
    import torch

    config, tokenizer, model = loaded["weqweasdas/RM-Gemma-2B"]
    assert config.num_labels == 1 and tokenizer.pad_token == "<pad>" and tokenizer.pad_token_id == config.pad_token_id == 0
    texts = [tokenizer.apply_chat_template(HI + [{"role": "assistant", "content": a}], tokenize=False) for a in ["Hello!", "Hey there, how can I help?"]]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        scores = model(**batch).logits
    assert scores.shape == (2, 1) and torch.isfinite(scores).all()
    with torch.no_grad():
        alone = model(**tokenizer(texts[:1], return_tensors="pt", add_special_tokens=False)).logits
    assert torch.allclose(alone[0], scores[0], atol=1e-5)  # padding does not change the score


# --- built in this process from a directory --------------------------------------------------------


@pytest.fixture(scope="module")
def mistral_repo(tmp_path_factory) -> Path:
    """Mistral's repository files (the smallest) in a local directory."""
    folder = tmp_path_factory.mktemp("mistral-repo")
    for name, data in paper_models.MISTRAL.repo_files().items():
        (folder / name).write_bytes(data)
    return folder


@pytest.mark.model
def test_a_build_is_the_same_for_a_seed_and_differs_between_seeds(mistral_repo, tmp_path):
    first = standins.build_standin(str(mistral_repo), tmp_path / "first", role="frozen", seed=0)
    again = standins.build_standin(str(mistral_repo), tmp_path / "again", role="frozen", seed=0)
    other = standins.build_standin(str(mistral_repo), tmp_path / "other", role="frozen", seed=1)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (again / name).read_bytes() == (first / name).read_bytes(), name
    assert (other / "model.safetensors").read_bytes() != (first / "model.safetensors").read_bytes()
    assert json.loads((first / standins.RECORD).read_text())["path"] == str(mistral_repo.resolve())


@pytest.mark.model
def test_a_directory_without_config_is_named(mistral_repo, tmp_path):
    folder = tmp_path / "no-config"
    folder.mkdir()
    (folder / "tokenizer.json").write_bytes((mistral_repo / "tokenizer.json").read_bytes())
    with pytest.raises(FileNotFoundError, match=r"models\.frozen\.broken: .*no-config has no config\.json"):
        standins.build_standin(str(folder), tmp_path / "out", role="frozen", seed=0, label="models.frozen.broken")


# --- served by vLLM ----------------------------------------------------------------------------------


def greedy_continuation(model, prompt_ids: list[int], n: int) -> list[int]:
    """n argmax tokens after prompt_ids, not stopping at eos (as vLLM's ignore_eos)."""
    import torch

    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        for _ in range(n):
            ids = torch.cat([ids, model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0, len(prompt_ids):].tolist()


@pytest.fixture(scope="module")
def vllm_runs(built, tmp_path_factory):
    """hub id -> what vllm_chat wrote for that stand-in, each run in its own interpreter."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed")
    runs = {}
    for hub_id in CAUSAL:
        out = tmp_path_factory.mktemp("vllm") / "out.json"
        process = subprocess.run(
            [sys.executable, __file__, str(built[hub_id]), str(out)],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"},
        )
        runs[hub_id] = json.loads(out.read_text()) if process.returncode == 0 else {"error": process.stderr[-6000:]}
    return runs


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.model
@pytest.mark.workflow
@pytest.mark.parametrize("hub_id", CAUSAL)
def test_vllm_serves_the_standin_like_transformers(hub_id, vllm_runs, loaded):
    """vLLM renders and tokenizes the chat as transformers does, and its greedy answer is transformers'."""
    run = vllm_runs[hub_id]
    assert "error" not in run, run.get("error")
    _, tokenizer, model = loaded[hub_id]
    print(f"{hub_id}: vLLM loaded in {run['load_s']:.1f} s")
    assert run["prompt_token_ids"] == chat_ids(tokenizer), "vLLM rendered or tokenized the chat differently"
    assert len(run["token_ids"]) == VLLM_NEW_TOKENS
    assert run["token_ids"] == greedy_continuation(model, run["prompt_token_ids"], VLLM_NEW_TOKENS)


# --- the rehearsal run, one cell ----------------------------------------------------------------------

CELL = {"prompters": "phi-3.5-mini", "frozen": "llama-3.1-8b"}


def job_log_lines(workdir: Path, rule: str, needle: str) -> dict[str, list[str]]:
    """Each log of `rule` (relative path) -> its lines that contain `needle`."""
    return {
        str(path.relative_to(workdir / "logs" / rule)): [line for line in path.read_text().splitlines() if needle.lower() in line.lower()]
        for path in sorted((workdir / "logs" / rule).glob("**/*.log"))
    }


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.model
@pytest.mark.workflow
def test_a_rehearsal_cell_runs_end_to_end_with_vllm_for_both_models(built, paper_hub):
    """config/rehearsal.yaml as it is (both backends vLLM, LoRA on, every method, the memory plan of jobs
    with two engines), narrowed to one prompter, one frozen model and one beta of the sweep to bound the
    time: Phi-3.5, whose fused projections the default LoRA targets missed, prompting Llama-3.1. The
    whole grid is the README's rehearsal command (176 jobs)."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed")
    hub_ids = {name: hub_id for hub_id, (_, name, _) in rehearsal_models().items()}
    workdir = built[hub_ids[CELL["prompters"]]].parents[3]
    config = yaml.safe_load((workdir / REHEARSAL).read_text())
    assert config["generation"]["backend"] == config["rewrite"]["backend"] == "vllm"
    for kind, name in CELL.items():
        config["models"][kind] = {name: config["models"][kind][name]}
    config["beta_sweep"] = config["beta_sweep"][:1]  # one beta of the sweep: its jobs are the others' again
    (workdir / "config/rehearsal-cell.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = hub_env(paper_hub, workdir / "home", HF_HUB_CACHE=str(workdir / "hub-cache"), HF_HUB_OFFLINE="0")
    args = ("--configfile", "config/rehearsal-cell.yaml", "--replace-workflow-config")
    planned = planned_jobs(workdir, *args, env=env)
    start = time.perf_counter()
    run_snakemake(workdir, *args, env=env)
    print(f"one cell of the rehearsal, {sum(planned.values())} jobs {planned}, in {time.perf_counter() - start:.0f} s")

    summary = pq.read_table(workdir / "results/report/summary.parquet").to_pylist()
    print({(row["method"], row["beta"]): round(row["mean_reward"], 3) for row in summary})
    assert {row["method"] for row in summary} == set(config["methods"])
    assert {row["beta"] for row in summary if row["method"] == "alignpro"} >= set(config["beta_sweep"])
    assert {(row["prompter"], row["frozen"]) for row in summary} == {(CELL["prompters"], CELL["frozen"])}
    for rule, needle in (("rewrite", "vLLM"), ("generate", "vLLM"), ("sft_pairs", "vLLM"), ("ppo", "vLLM")):
        logs = job_log_lines(workdir, rule, needle)
        assert logs and all(logs.values()), (rule, logs)
    trained = {"sft": CELL["prompters"], "ppo": CELL["prompters"], "rlhf": CELL["frozen"]}
    for rule, name in trained.items():
        hub_id = hub_ids[name]
        for log, lines in job_log_lines(workdir, rule, "LoRA adapters on").items():
            print(rule, log, lines)
            [line] = lines
            kinds = set(line.split("'s ", 1)[1].split(":", 1)[0].split(", "))
            assert kinds == LINEAR_LAYERS.get(hub_id, LINEAR_LAYERS["llama"]), line
            assert " of " in line and "parameters train" in line
            assert not job_log_lines(workdir, rule, "without adapters")[log], log


def vllm_chat(model: str, out_path: str) -> None:
    """Load `model` in vLLM (eager: no torch.compile), answer "Hi" greedily, write the ids and the load time."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    start = time.perf_counter()
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, dtype="float32", seed=0, gpu_memory_utilization=0.2, max_model_len=512, enforce_eager=True)
    loaded_at = time.perf_counter()
    sampling = SamplingParams(temperature=0, max_tokens=VLLM_NEW_TOKENS, ignore_eos=True)
    [output] = llm.chat([HI], sampling, use_tqdm=False)
    result = {
        "prompt_token_ids": list(output.prompt_token_ids),
        "token_ids": list(output.outputs[0].token_ids),
        "load_s": loaded_at - start,
    }
    Path(out_path).write_text(json.dumps(result))


if __name__ == "__main__":
    vllm_chat(*sys.argv[1:])
