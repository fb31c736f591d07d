"""The answer checkers behind the report's task accuracy, and the config schema's list of them."""

from pathlib import Path

import pytest
import yaml

from alignpro.checkers import CHECKERS, contains, exact, last_number, numeric

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


def test_schema_offers_exactly_the_checkers():
    datasets = yaml.safe_load(SCHEMA.read_text())["properties"]["datasets"]["additionalProperties"]["properties"]
    assert datasets["checker"]["enum"] == list(CHECKERS)
    assert datasets["checker"]["default"] in CHECKERS


def test_exact_ignores_whitespace_only():
    assert exact("  the   eiffel\ntower ", "the eiffel tower")
    assert not exact("The Eiffel Tower", "the eiffel tower")  # case matters
    assert not exact("OWL FOX", "owl fox")
    assert not exact("the eiffel tower.", "the eiffel tower")
    assert not exact("It is the eiffel tower", "the eiffel tower")


def test_contains_finds_the_normalised_reference_inside():
    assert contains("I think it is  the Eiffel\tTower, in Paris.", "the eiffel tower")
    assert not contains("The Eiffel.", "the eiffel tower")
    assert not contains("", "paris")


@pytest.mark.parametrize(
    ("response", "reference", "accepted"),
    [
        ("The answer is 1,234.", "1234", True),
        ("The answer is 1234.", "1,234", True),
        ("3 apples plus 4 apples make 7", "7", True),
        ("It is 7, not 3.", "7", False),  # the last number counts
        ("The total is 12.50 dollars", "12.5", True),
        ("The result is -3.", "-3", True),
        ("pages 3-4", "4", True),  # a range dash is no minus sign
        ("0.1 + 0.2 = 0.30000000001", "0.3", True),  # within the relative tolerance
        ("about 1235", "1234", False),
        ("I do not know.", "4", False),  # no number in the answer
        ("", "0", False),
        ("#### 72", "Natalia sold 48 + 24 = 72 clips. #### 72", True),  # a worked reference: its last number
    ],
)
def test_numeric_compares_the_last_numbers(response, reference, accepted):
    assert numeric(response, reference) is accepted


def test_numeric_needs_a_number_in_the_reference():
    with pytest.raises(ValueError, match="'Paris'"):
        numeric("42", "Paris")


def test_last_number():
    assert last_number("1,234,567.5 and then 12,34") == 34.0  # "12,34" is not one number
    assert last_number("no digits") is None
