from cvcore import _threads_env  # noqa: F401  OpenMP wait policy, before torch loads (see that module)
