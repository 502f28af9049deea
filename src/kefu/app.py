"""Application factory: settings, database, event bus, job worker, routers."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from kefu.channels import runtime as channels_runtime
from kefu.channels.chat import api as chat_api
from kefu.channels.chat import pages as chat_pages
from kefu.channels.cti import api as cti_api
from kefu.channels.cti import pages as cti_pages
from kefu.channels.email import api as email_api
from kefu.channels.email import pages as email_pages
from kefu.channels.ivr import api as ivr_api
from kefu.channels.ivr import engine as ivr_engine
from kefu.channels.ivr import pages as ivr_pages
from kefu.channels.webhooks import api as webhooks_api
from kefu.channels.webhooks import pages as webhooks_pages
from kefu.core import (
    idempotency,
    mail,  # noqa: F401 - registers the mail job handlers
)
from kefu.core.errors import install_error_handlers
from kefu.core.events import make_bus
from kefu.core.jobs import Worker
from kefu.core.ops import RequestLimitsMiddleware
from kefu.core.ops import router as ops_router
from kefu.core.policy import Principal, access_matrix, authorize
from kefu.core.realtime import router as realtime_router
from kefu.customers import api as customers_api
from kefu.customers import pages as customers_pages
from kefu.db.engine import make_engine, make_session_factory
from kefu.desk import pages as desk_pages
from kefu.identity.api import router as identity_router
from kefu.interactions import api as interactions_api
from kefu.knowledge.api import router as knowledge_router
from kefu.knowledge.board_api import router as kb_board_router
from kefu.knowledge.board_pages import router as kb_board_pages_router
from kefu.knowledge.feedback_api import router as kb_feedback_router
from kefu.knowledge.index import KnowledgeIndex
from kefu.knowledge.pages import router as knowledge_pages_router
from kefu.knowledge.search.embedding import load_embedder
from kefu.routing import admin_pages as routing_admin_pages
from kefu.routing import api as routing_api
from kefu.routing import pages as routing_pages
from kefu.routing import service as routing_service
from kefu.routing.sweeper import RoutingSweeper
from kefu.settings import Settings, get_settings
from kefu.tickets import api as tickets_api
from kefu.tickets import pages as tickets_pages
from kefu.tickets import sla_api
from kefu.web import STATIC_DIR
from kefu.web.pages import install_pages

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    access_matrix()  # a broken matrix must stop start-up, not fail the first request
    routing_service.configure(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await app.state.event_bus.start()
        await app.state.kb_index.start()
        worker = sweeper = None
        if settings.run_worker:
            worker = Worker(app.state.session_factory, settings)
            worker.start()
            sweeper = RoutingSweeper(app.state.session_factory)
            sweeper.start()
        app.state.worker = worker
        await channels_runtime.start(app)
        # What start-up made (modules, tables, caches) lives as long as the process: kept out of the
        # collector's sight, a full collection walks only what came after and no longer holds every
        # request in flight for tens of milliseconds (about 90 ms measured in the routing benchmark).
        gc.collect()  # start-up's own garbage first: frozen, it would never be collected
        gc.freeze()
        log.info("kefu started", extra={"base_url": settings.base_url, "sqlite": settings.is_sqlite})
        try:
            yield
        finally:
            gc.unfreeze()  # what dies with the app may be collected again (tests start many apps)
            await channels_runtime.stop(app)
            if sweeper is not None:
                await sweeper.stop()
            if worker is not None:
                await worker.stop()
            await app.state.kb_index.stop()
            await app.state.event_bus.stop()
            await app.state.engine.dispose()

    app = FastAPI(
        title="kefu",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    # A configured embedding model that cannot load stops the start here, with the reason, before
    # anything is opened.
    embedder = load_embedder(settings.kb_embedding_model)
    engine = make_engine(settings.resolved_database_url)
    app.state.settings = settings
    app.state.engine = engine
    app.state.event_bus = make_bus(
        settings.event_backend, database_url=settings.resolved_database_url, redis_url=settings.redis_url
    )
    # Every session publishes its events after commit: requests, the routing sweep, channel pollers.
    app.state.session_factory = make_session_factory(engine, app.state.event_bus)

    app.state.kb_index = KnowledgeIndex(
        app.state.session_factory,
        poll_seconds=settings.kb_index_poll_seconds,
        bus=app.state.event_bus,
        retrain_seconds=settings.kb_reranker_retrain_seconds,
        embedder=embedder,
        question_vectors=settings.kb_question_vectors,
    )

    ivr_engine.use_knowledge_index(app.state.kb_index)  # IVR answers found by search use the same index
    install_error_handlers(app)
    idempotency.install(app)
    app.add_middleware(
        RequestLimitsMiddleware,
        max_body_bytes=settings.max_body_bytes,
        # Multipart framing adds a little to the file itself.
        upload_max_bytes=settings.kb_attachment_max_bytes + 64 * 1024,
    )
    app.include_router(ops_router)
    app.include_router(identity_router)
    app.include_router(knowledge_router)
    app.include_router(kb_feedback_router)
    app.include_router(kb_board_router)
    app.include_router(realtime_router)
    for service_desk_router in (customers_api, interactions_api, tickets_api, sla_api, routing_api):
        app.include_router(service_desk_router.router)
    for channel_api in (email_api, chat_api, cti_api, ivr_api, webhooks_api):
        app.include_router(channel_api.router)

    @app.get("/api/docs", include_in_schema=False)
    async def api_docs(request: Request, principal: Principal = authorize("public", "read")) -> HTMLResponse:
        # Served from our own static files: the docs page must work on an intranet without internet.
        return get_swagger_ui_html(
            openapi_url="/api/openapi.json",
            title="kefu API",
            swagger_js_url="/static/vendor/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/vendor/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )

    install_pages(app)
    app.include_router(knowledge_pages_router)
    app.include_router(kb_board_pages_router)
    # customers_pages first: its /customers/new must win over the desk's /customers/{customer_id}.
    for service_desk_pages in (customers_pages, tickets_pages, desk_pages, routing_pages, routing_admin_pages):
        app.include_router(service_desk_pages.router)
    for channel_pages in (email_pages, chat_pages, cti_pages, ivr_pages, webhooks_pages):
        app.include_router(channel_pages.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
