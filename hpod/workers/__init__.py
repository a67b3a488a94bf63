"""Celery workers: the app, the evaluate task, the objective registry and the trial context."""
