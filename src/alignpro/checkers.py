"""Checkers of an answer against its prompt's reference answer, for the report's task accuracy.

The reward model's score is what the prompters optimise; a dataset with reference answers also says
whether an answer is right, so the report can show whether reward and true quality move together.
Each checker is a plain function (response, reference) -> bool, looked up by its config name; the
first line of its docstring is what the report says it accepts.
"""

from __future__ import annotations

import math
import re

# A number as people write it: an optional minus sign, digits in comma-separated groups of three or
# without commas, an optional decimal part. A minus sign right after a digit is a range dash ("3-4").
NUMBER = re.compile(r"(?<![\d.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
# Numbers within this relative tolerance are equal, so 0.1 + 0.2 and "0.3" agree.
NUMERIC_RELATIVE_TOLERANCE = 1e-6
NUMERIC_ABSOLUTE_TOLERANCE = 1e-9


def collapse_whitespace(text: str) -> str:
    """Whitespace runs collapsed to one space and the ends stripped: layout is not what makes an
    answer right."""
    return " ".join(text.split())


def normalise(text: str) -> str:
    """Whitespace collapsed and case folded, for the lenient `contains`."""
    return collapse_whitespace(text).casefold()


def exact(response: str, reference: str) -> bool:
    """The answer equals the reference after collapsing whitespace (case matters).

    For short answers (a name, a word, a label) where anything more, or a change of case, is a
    different answer ("OWL FOX" is not "owl fox" when capitals were asked for).
    """
    return collapse_whitespace(response) == collapse_whitespace(reference)


def contains(response: str, reference: str) -> bool:
    """The reference occurs in the answer, both with whitespace collapsed and case folded.

    For answers that explain themselves around the fact that makes them right.
    """
    return normalise(reference) in normalise(response)


def last_number(text: str) -> float | None:
    """The last number written in `text` (commas between digit groups ignored), None without any."""
    numbers = NUMBER.findall(text)
    return float(numbers[-1].replace(",", "")) if numbers else None


def numeric(response: str, reference: str) -> bool:
    """The answer's last number equals the reference's number (commas ignored, relative tolerance 1e-6).

    A worked answer ends with its result, so the last number is the one it commits to; the reference's
    last number is its value too, so a worked reference ("... #### 72") works as well.
    """
    expected = last_number(reference)
    if expected is None:
        raise ValueError(f"the numeric checker needs a number in the reference, got {reference!r}")
    answer = last_number(response)
    return answer is not None and math.isclose(
        answer, expected, rel_tol=NUMERIC_RELATIVE_TOLERANCE, abs_tol=NUMERIC_ABSOLUTE_TOLERANCE
    )


CHECKERS = {"exact": exact, "contains": contains, "numeric": numeric}
"""The checkers by the name a dataset's `checker` key gives (the config schema's enum lists these)."""
