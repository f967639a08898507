from cvcore import _threads_env  # noqa: F401  (before torch: see that module)
