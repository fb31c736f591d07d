"""conftest.shared_fixture_groups: which tests pytest-xdist must run in one worker."""

import re
from pathlib import Path

import pytest
from conftest import shared_fixture_groups

pytest_plugins = ["pytester"]

MODULE = """
import pytest

@pytest.fixture(scope="module")
def run():
    return 1

@pytest.fixture(scope="module")
def tables(run):
    return run

@pytest.fixture(scope="module")
def other_run():
    return 2

@pytest.fixture
def per_test():
    return 3

@pytest.fixture(scope="session")
def tiny_model():
    return 4

def test_reads_the_run(run): pass
def test_reads_the_tables(tables): pass
def test_reads_the_other_run(other_run): pass
def test_alone(per_test, tiny_model): pass

@pytest.fixture(scope="class")
def server():
    return 5

class TestServer:
    def test_one(self, server): pass
    def test_two(self, server, other_run): pass
"""


def test_tests_linked_through_module_or_class_fixtures_share_one_group(pytester):
    items = pytester.getitems(MODULE)
    groups = {item.name: group for item, group in shared_fixture_groups(items).items()}
    # the tables are made from the run; the class's server links its tests, one of them to the other run
    assert groups["test_reads_the_run"] == groups["test_reads_the_tables"]
    assert groups["test_reads_the_other_run"] == groups["test_one"] == groups["test_two"]
    assert groups["test_reads_the_run"] != groups["test_one"]
    assert "test_alone" not in groups  # function- and session-scoped fixtures are built in every worker anyway


@pytest.mark.parametrize("scope", ["function", "session"])
def test_tests_sharing_only_cheaper_fixtures_stay_free(pytester, scope):
    items = pytester.getitems(MODULE.replace('scope="module"', f'scope="{scope}"').replace('scope="class"', f'scope="{scope}"'))
    assert shared_fixture_groups(items) == {}


def test_pytest_xdist_runs_each_group_in_one_worker(pytester):
    """With the suite's hook and real workers: the tests linked through a fixture run in one worker and
    build it once (a pytest that drops the groups, pytest-dev/pytest-xdist#1386, fails this)."""
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    module = MODULE.replace("return 1", "open('builds', 'a').write('run '); return 1")
    pytester.makepyfile(test_linked=module + "\n\ndef test_a(run): pass\ndef test_b(run): pass\ndef test_c(tables): pass\n")
    result = pytester.runpytest_subprocess("-n", "2", "--dist", "loadgroup", "-v", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=9)
    workers = {}
    for line in result.outlines:
        if match := re.match(r"\[(gw\d)\] .*PASSED .*::(test_\w+)", line):
            workers[match[2]] = match[1]
    linked = {workers[name] for name in ("test_reads_the_run", "test_reads_the_tables", "test_a", "test_b", "test_c")}
    assert len(workers) == 9 and len(linked) == 1, workers
    assert (pytester.path / "builds").read_text() == "run "
