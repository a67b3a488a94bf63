"""The application key under which the HTTP app holds the study manager.

Defined here, below both the API (`hpod.daemon.http`) and the page's handlers, so that the
handlers reach the manager through the app without importing the API module that mounts
them (which would be an import cycle).
"""

from __future__ import annotations

from aiohttp import web

from hpod.daemon.manager import StudyManager

MANAGER = web.AppKey("manager", StudyManager)
