"""Load the test support of headscale_core for every test in the repository, plugins/*/tests
too: a `pytest_plugins` line in a nested conftest or test module is an error in pytest 8+."""

pytest_plugins = ["headscale_core.testing.pytest_plugin"]
