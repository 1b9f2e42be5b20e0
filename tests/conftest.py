pytest_plugins = ["headscale_core.testing.pytest_plugin"]
