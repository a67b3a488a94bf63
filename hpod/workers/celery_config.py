"""How the Celery app of hpod's workers is built and configured (`make_celery`): JSON only,
late acks, retried (a bounded number of times) when a worker dies. The app instance that
``celery -A`` loads in a worker is `hpod.workers.celery_app`; the daemon builds its own with
`make_celery` to send tasks.

`task_acks_late` with `task_retry_on_worker_lost` means a trial whose worker process dies is
sent again (to any worker) rather than lost; the daemon tells Optuna only once, however many
times a trial is evaluated. The retries are counted in the message, and a task that killed its
worker ``HPOD_MAX_ATTEMPTS`` times is given up and its trials are failed with the reason (see
`hpod.workers.tasks.register`): a poison task (an objective that exhausts memory or crashes
its process) is never redelivered forever, as `task_reject_on_worker_lost` alone would (it
requeues without counting). Messages are JSON; a pickled message is refused by
`accept_content` before any code runs.
"""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from hpod.config import Settings, load_settings
from hpod.messaging import TRIALS


def make_celery(settings: Settings | None = None) -> Celery:
    """A Celery app wired to the broker in force, configured for at-least-once trials."""
    import hpod.fs_transport  # noqa: F401  (registers the embedded transport)

    settings = settings or load_settings()
    app = Celery("hpod", broker=settings.broker, set_as_current=False)
    trials = Queue(TRIALS, exchange=Exchange(""), routing_key=TRIALS, durable=True)
    app.conf.update(
        broker_transport_options=settings.broker_transport_options(),
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        task_acks_late=True,
        task_reject_on_worker_lost=True,  # only if sending the retry below fails
        task_retry_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_queues=[trials],
        task_default_queue=TRIALS,
        task_default_exchange="",
        task_default_routing_key=TRIALS,
        task_create_missing_queues=False,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        # The embedded broker has no broadcast channel for remote control; RabbitMQ has.
        worker_enable_remote_control=not settings.embedded,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    app.conf.hpod_settings = settings
    _log_like_the_daemon(settings)
    from hpod.workers.tasks import register

    register(app)
    return app


def _log_like_the_daemon(settings: Settings) -> None:
    """Workers log through hpod's structlog setup (JSON lines to journald, no secrets)."""
    from celery import signals

    from hpod.logs import configure_logging

    def setup(**_kwargs: object) -> None:
        configure_logging(settings.log_format, settings.log_level)

    # Connecting this signal stops Celery from installing its own log handlers.
    signals.setup_logging.connect(setup, weak=False)
