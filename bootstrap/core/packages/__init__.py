"""Package plans: the driver, the container toolkit, apt sources, the package facts they read."""
