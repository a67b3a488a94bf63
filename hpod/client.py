"""The Python client other applications use to hand optimisation work to hpod.

Over AMQP (``amqp://…``) it publishes requests on ``hpod.requests`` with pika and receives the
reply on RabbitMQ's direct reply-to; `run_study` subscribes to ``study.completed`` *before*
creating the study, so the result arrives as an event, without polling. Over HTTP
(``http://…``) it calls the daemon's API and `wait` polls the study's status.

    from hpod.client import Client
    with Client("amqp://guest:guest@127.0.0.1//") as hpod:
        best = hpod.run_study(spec)

A client app needs none of the daemon's code or settings: this module imports the standard
library, pika (AMQP only, on first use) and `hpod.errors` (standard library only), never
pydantic, kombu, Celery, Optuna or torch, and with a URL given it reads no settings file, so
a broken ``/etc/hpod/hpod.toml`` on the client's machine cannot break it. The token for the
HTTP API's mutating routes is the ``token`` argument, else ``HPOD_API_TOKEN``; only a client
made without a URL (the daemon's own machine: `hpod` commands, the demo) falls back to the
daemon's settings for its address and generated token.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any

from hpod.errors import HpodError

REPLY_TO = "amq.rabbitmq.reply-to"


class ClientError(HpodError):
    """The daemon refused a request; `error` holds its code, field and message."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('field') or 'request'}: {error.get('message')}")
        self.error = error


class StudyFailed(HpodError):
    """The study failed in the daemon (`study.failed`); `reason` says why."""

    def __init__(self, study: str, reason: str | None) -> None:
        super().__init__(f"study {study!r} failed: {reason}")
        self.study = study
        self.reason = reason


class Client:
    """Talks to an hpod daemon over AMQP or HTTP.

    `url` is ``amqp://…`` or ``http://…``; without one the client reads the daemon's settings
    (on the daemon's machine) for its HTTP address. `token` authorises the HTTP API's
    mutating routes; without one, ``HPOD_API_TOKEN`` from the environment, and, only when no
    `url` was given, the token the local daemon configured or generated.
    """

    def __init__(
        self, url: str | None = None, token: str | None = None, timeout: float = 30
    ) -> None:
        self._settings: Any = None
        if url is None:  # the daemon's own machine: its settings say where it listens
            url = self._daemon_settings().http_url()
        self.url: str = url
        self.timeout = timeout
        self._amqp = self.url.startswith(("amqp://", "amqps://"))
        self._token = token or os.environ.get("HPOD_API_TOKEN") or None
        self._local = self._settings is not None
        self._channel: Any = None
        self._connection: Any = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the AMQP connection, if any."""
        if self._connection is not None and self._connection.is_open:
            self._connection.close()

    # --- requests ----------------------------------------------------------------------

    def create_study(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Create (or idempotently re-create) a study; returns its status."""
        if self._amqp:
            return self._request({"type": "study.create", "study": spec})
        return self._http("POST", "/studies", spec)

    def stop_study(self, name: str) -> dict[str, Any]:
        """Stop asking trials for study `name`."""
        if self._amqp:
            return self._request({"type": "study.stop", "name": name})
        return self._http("POST", f"/studies/{name}/stop", {})

    def pause_study(self, name: str) -> dict[str, Any]:
        """Dispatch nothing new for study `name` until it is resumed."""
        if self._amqp:
            return self._request({"type": "study.pause", "name": name})
        return self._http("POST", f"/studies/{name}/pause", {})

    def resume_study(self, name: str) -> dict[str, Any]:
        """Resume a paused study."""
        if self._amqp:
            return self._request({"type": "study.resume", "name": name})
        return self._http("POST", f"/studies/{name}/resume", {})

    def set_budget(
        self,
        name: str,
        trials: int | None = None,
        seconds: float | None = None,
        cpu_seconds: float | None = None,
        full_evaluations: float | None = None,
    ) -> dict[str, Any]:
        """Replace study `name`'s budget live (a limit left out is no limit); the study ends
        when any limit given is spent. `cpu_seconds` and `full_evaluations` are compute:
        pruned, partial and cached trials spend only what they cost."""
        limits = {
            "trials": trials,
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "full_evaluations": full_evaluations,
        }
        budget = {k: v for k, v in limits.items() if v is not None}
        if self._amqp:
            return self._request({"type": "study.budget", "name": name, "budget": budget})
        return self._http("POST", f"/studies/{name}/budget", {"budget": budget})

    def ask(self, study: str, request_id: str | None = None) -> dict[str, Any]:
        """A trial to evaluate yourself: ``{"trial": n, "params": {...}}``."""
        rid = request_id or uuid.uuid4().hex
        if self._amqp:
            return self._request({"type": "trial.ask", "study": study, "id": rid})
        return self._http("POST", f"/studies/{study}/ask", {}, idempotency_key=rid)

    def tell(
        self, study: str, trial: int, values: float | list[float] | None, state: str = "complete"
    ) -> dict[str, Any]:
        """Tell the outcome of a trial you asked for; repeating it is harmless."""
        body = {"trial": trial, "values": values, "state": state}
        if self._amqp:
            return self._request({"type": "trial.tell", "study": study, **body})
        return self._http("POST", f"/studies/{study}/tell", body)

    def enqueue(self, study: str, params: dict[str, Any]) -> dict[str, Any]:
        """Propose a configuration for the study to evaluate next."""
        if self._amqp:
            return self._request({"type": "trial.enqueue", "study": study, "params": params})
        return self._http("POST", f"/studies/{study}/enqueue", {"params": params})

    def set_mode(self, mode: str, study: str | None = None) -> dict[str, Any]:
        """Switch `study`'s mode live, or the default mode for studies created from now on."""
        body: dict[str, Any] = {"mode": mode} if study is None else {"mode": mode, "study": study}
        if self._amqp:
            return self._request({"type": "mode.set", **body})
        return self._http("POST", "/mode", body)

    def set_strategy(self, name: str, strategy: str) -> dict[str, Any]:
        """Switch study `name`'s strategy live: "auto", "mode" or a strategy's name."""
        if self._amqp:
            return self._request({"type": "study.strategy", "name": name, "strategy": strategy})
        return self._http("POST", f"/studies/{name}/strategy", {"strategy": strategy})

    # --- the strategy policy (HTTP only) -----------------------------------------------

    def policy_status(self) -> dict[str, Any]:
        """The strategy policy: weights in force, fallback, experiences, recent decisions."""
        return self._http("GET", "/policy")

    def policy_reset(self) -> dict[str, Any]:
        """Forget the locally learnt policy and its replay buffer; returns the new status."""
        return self._http("POST", "/policy/reset", {})

    def policy_export(self) -> dict[str, Any]:
        """The policy's weights and replay buffer as one JSON bundle."""
        return self._http("GET", "/policy/export")

    def policy_import(self, bundle: dict[str, Any]) -> dict[str, Any]:
        """Load a bundle from `policy_export`; a bad one raises `ClientError` naming the field."""
        return self._http("POST", "/policy/import", bundle)

    def status(self, name: str) -> dict[str, Any]:
        """Counts, best and state of study `name` (HTTP only)."""
        return self._http("GET", f"/studies/{name}")

    def studies(self) -> list[dict[str, Any]]:
        """A summary per study (HTTP only)."""
        result: list[dict[str, Any]] = self._http("GET", "/studies")["studies"]
        return result

    def run_study(self, spec: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Create a study and block until it completes; returns the `study.completed` event.

        Raises `StudyFailed` if the daemon marks the study failed (event `study.failed`).
        """
        if not self._amqp:
            self.create_study(spec)
            return self.wait(spec["name"], timeout=timeout)
        channel = self._get_channel()
        events = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
        channel.exchange_declare("hpod.events", exchange_type="topic", durable=True)
        channel.queue_bind(events, "hpod.events", routing_key="study.completed")
        channel.queue_bind(events, "hpod.events", routing_key="study.failed")
        status = self.create_study(spec)
        if status.get("state") in {"completed", "stopped"}:
            return {"event": "study.completed", "study": spec["name"], **status}
        if status.get("state") == "failed":
            raise StudyFailed(spec["name"], status.get("failure"))
        deadline = None if timeout is None else time.monotonic() + timeout
        for _method, _props, body in channel.consume(events, auto_ack=True, inactivity_timeout=1):
            if body is not None:
                event = json.loads(body)
                if event.get("study") == spec["name"]:
                    channel.cancel()
                    if event.get("event") == "study.failed":
                        raise StudyFailed(spec["name"], event.get("reason"))
                    result: dict[str, Any] = event
                    return result
            if deadline is not None and time.monotonic() > deadline:
                channel.cancel()
                raise TimeoutError(f"study {spec['name']!r} did not complete in {timeout} s")
        raise HpodError("event stream closed")

    def wait(
        self,
        name: str,
        timeout: float | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        interval: float = 0.5,
    ) -> dict[str, Any]:
        """Poll study `name` over HTTP until it is completed or stopped; returns its status.

        Raises `StudyFailed` if the daemon marked the study failed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status(name)
            if on_progress is not None:
                on_progress(status)
            if status["state"] in {"completed", "stopped"} and not status.get("running"):
                return status
            if status["state"] == "failed" and not status.get("running"):
                raise StudyFailed(name, status.get("failure"))
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"study {name!r} did not complete in {timeout} s")
            time.sleep(interval)

    # --- transports --------------------------------------------------------------------

    def _daemon_settings(self) -> Any:
        """The daemon's settings, read once; only for a client made without a URL."""
        if self._settings is None:
            from hpod.config import load_settings  # pydantic-settings: the daemon's side

            self._settings = load_settings()
        return self._settings

    def _get_channel(self) -> Any:
        if self._channel is None:
            import pika

            # kombu and Celery spell the default vhost "//"; pika needs it quoted.
            url = self.url[:-2] + "/%2F" if self.url.endswith("//") else self.url
            params = pika.URLParameters(url)
            self._connection = pika.BlockingConnection(params)
            self._channel = self._connection.channel()
            self._channel.confirm_delivery()
        return self._channel

    def _request(self, message: dict[str, Any]) -> dict[str, Any]:
        import pika

        channel = self._get_channel()
        replies: list[bytes] = []
        correlation_id = uuid.uuid4().hex
        tag = channel.basic_consume(
            REPLY_TO, lambda _c, _m, _p, body: replies.append(body), auto_ack=True
        )
        props = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=2,
            reply_to=REPLY_TO,
            correlation_id=correlation_id,
        )
        body = json.dumps({"v": 1, "id": message.pop("id", correlation_id), **message})
        channel.basic_publish("", "hpod.requests", body.encode(), props)
        deadline = time.monotonic() + self.timeout
        while not replies and time.monotonic() < deadline:
            self._connection.process_data_events(time_limit=0.2)
        channel.basic_cancel(tag)
        if not replies:
            raise TimeoutError(f"no reply from hpod within {self.timeout} s")
        return _unwrap(json.loads(replies[0]))

    def _http(
        self, method: str, path: str, body: Any = None, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url.rstrip("/") + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self._token is None and self._local:
            # Read lazily: the local daemon writes its generated token when it first starts.
            self._token = self._daemon_settings().existing_token()
        if self._token:
            request.add_header("Authorization", f"Bearer {self._token}")
        if idempotency_key:
            request.add_header("Idempotency-Key", idempotency_key)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            reply = json.loads(exc.read() or b"{}")
            if "error" not in reply:
                raise
        return _unwrap(reply)


def _unwrap(reply: dict[str, Any]) -> dict[str, Any]:
    if reply.get("ok") is False:
        raise ClientError(reply["error"])
    result: dict[str, Any] = reply.get("result", reply)
    return result
