"""Stand-ins for the models, scripted so a test knows every output: a prompter, a frozen model and a reward model."""

import pyarrow as pa

from alignpro.generation import Completion
from alignpro.tables import PROMPTS, prompt_id_of


def prompts_table(prompts):
    return pa.Table.from_pylist(
        [{"prompt_id": prompt_id_of(p), "prompt": p, "source": "test", "reference": None} for p in prompts], schema=PROMPTS
    )


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
