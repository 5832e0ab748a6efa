"""The only code that imports Ray: tasks, the Ray Train loop, Ray Data jobs."""
