"""Stand-ins for the models, scripted so a test knows every output: a prompter, a frozen model and a reward model;
and whole table rows with defaults, so a test states only the columns it is about."""

import pyarrow as pa

from alignpro.sampling import Completion
from alignpro.tables import PROMPTS, prompt_id_of

LLM_JUDGE = "gpt4"


def prompts_table(prompts):
    return pa.Table.from_pylist(
        [{"prompt_id": prompt_id_of(p), "prompt": p, "source": "test", "reference": None} for p in prompts], schema=PROMPTS
    )


def verdict_record(**columns) -> dict:
    """A VERDICTS row: by default an LLM judge's tie on a pair of 10-token answers, with no calls."""
    return dict(
        dataset="toy", prompt_id="p0", method="alignpro", prompter="qwen", beta=None, frozen="llama", sample_index=0,
        judge=LLM_JUDGE, judged_by="gpt-4 with prompt pairwise-v1", judge_kind="llm", judge_prompt="pairwise-v1", answer_tokens=10, base_answer_tokens=10,
        verdict="tie", verdict_method_first="TIE", verdict_base_first="TIE", inconsistent=False, reason_method_first=None,
        reason_base_first=None, not_judged_reason=None, p_method_wins=None, prompt_tokens=0, completion_tokens=0,
        cost_usd=None, calls=0, retries=0, cached_calls=0,
    ) | columns


class ScriptedPrompter:
    """Returns scripted raw outputs, one list of (text, finish_reason) per prompt, in prompt order."""

    def __init__(self, outputs):
        self.outputs = outputs
        self.calls = []

    def chat(self, conversations, sampling, keys=None):
        self.calls.append((conversations, sampling))
        return [
            [Completion(text, finish, 5) for text, finish in outputs[: sampling.n]]
            for outputs, _ in zip(self.outputs, conversations)
        ]


class EchoFrozen:
    """Answers the single user turn c with "c|0", "c|1", ... (sampling.n answers)."""

    def __init__(self):
        self.calls = []

    def chat(self, conversations, sampling, keys=None):
        self.calls.append((conversations, sampling))
        return [
            [Completion(f"{conversation[0]['content']}|{j}", "stop", 3) for j in range(sampling.n)]
            for conversation in conversations
        ]


class ScriptedScorer:
    """r(x, "c|j") = rewards[c][j]."""

    def __init__(self, rewards):
        self.rewards = rewards
        self.calls = []

    def score(self, prompts, responses):
        self.calls.append((prompts, responses))
        candidates = [response.rsplit("|", 1) for response in responses]
        return [self.rewards[candidate][int(j)] for candidate, j in candidates]
