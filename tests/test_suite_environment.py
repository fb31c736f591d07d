"""conftest.environment_of_the_session: what one test does to os.environ does not reach the next."""

from pathlib import Path

pytest_plugins = ["pytester"]

TESTS = """
import os
import subprocess
import sys

SEEN_BY_A_SUBPROCESS = "import os; print(os.environ.get('ALIGNPRO_LEAKED'), os.environ.get('HF_HUB_OFFLINE'))"


def test_changes_the_environment_as_an_import_does():
    os.environ["ALIGNPRO_LEAKED"] = "1"  # as importing TRL sets VLLM_LOGGING_LEVEL
    del os.environ["HF_HUB_OFFLINE"]


def test_a_later_subprocess_gets_the_sessions_environment():
    seen = subprocess.run([sys.executable, "-c", SEEN_BY_A_SUBPROCESS], capture_output=True, text=True, check=True)
    assert seen.stdout.split() == ["None", "1"]
"""


def test_a_tests_changes_to_the_environment_are_undone_before_the_next(pytester):
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makepyfile(test_order=TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
