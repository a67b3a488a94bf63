"""The module `celery -A hpod.workers.celery_app worker` loads: the app built from settings."""

from hpod.workers.app import make_celery

app = make_celery()
