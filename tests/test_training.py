import pytest

from alignpro.sampling import Completion, Sampling
from alignpro.training import ResponseReward, RewriteReward


class EchoFrozen:
    """A frozen model that answers each prompt with 'answer to <prompt> #<i>' and records its calls."""

    def __init__(self):
        self.calls = []

    def chat(self, conversations, sampling, keys=None):
        self.calls.append(conversations)
        return [
            [Completion(f"answer to {c[-1]['content']} #{i}", "stop", 3) for i in range(sampling.n)] for c in conversations
        ]


class LengthScorer:
    """r(x, y) = len(y) / 100, remembering the x it was given."""

    def __init__(self):
        self.prompts = []

    def score(self, prompts, responses):
        self.prompts.extend(prompts)
        return [len(response) / 100 for response in responses]


def test_rewrite_reward_answers_the_rewrite_and_scores_the_original_prompt():
    frozen, scorer = EchoFrozen(), LengthScorer()
    reward = RewriteReward(frozen, scorer, Sampling(n=2), fallback_on_truncation=True, max_length_ratio=8.0)
    completions = [Completion("<prompt>Explain photosynthesis simply.</prompt>", "stop", 9), Completion("", "stop", 1)]
    rewards, timings = reward(["photosynthesis?", "tell me a joke"], completions)

    assert frozen.calls == [
        [[{"role": "user", "content": "Explain photosynthesis simply."}], [{"role": "user", "content": "tell me a joke"}]]
    ]
    assert scorer.prompts == ["photosynthesis?"] * 2 + ["tell me a joke"] * 2
    first = [len(f"answer to Explain photosynthesis simply. #{i}") / 100 for i in range(2)]
    second = [len(f"answer to tell me a joke #{i}") / 100 for i in range(2)]
    assert rewards == pytest.approx([sum(first) / 2, sum(second) / 2])
    assert set(timings) == {"time_frozen_generation", "time_scoring", "frozen_calls"}
    assert timings["frozen_calls"] == 4  # two rewrites, two answers each
    assert all(value >= 0 for value in timings.values())


def test_truncated_rewrite_falls_back_to_the_prompt_when_configured():
    frozen = EchoFrozen()
    reward = RewriteReward(frozen, LengthScorer(), Sampling(n=1), fallback_on_truncation=True, max_length_ratio=8.0)
    reward(["short question"], [Completion("<prompt>a rewrite that never clo", "length", 24)])
    assert frozen.calls[0] == [[{"role": "user", "content": "short question"}]]


def test_response_reward_scores_the_policy_answer_against_its_prompt():
    scorer = LengthScorer()
    rewards, timings = ResponseReward(scorer)(["x1", "x2"], [Completion("abc", "stop", 2), Completion("abcdef", "length", 4)])
    assert rewards == [0.03, 0.06]
    assert scorer.prompts == ["x1", "x2"]
    assert set(timings) == {"time_scoring"}
