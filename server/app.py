"""Flask application factory of ``city-server`` (docs/server.md)."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from datetime import datetime

from flask import Flask, jsonify
from flask.json.provider import DefaultJSONProvider
from flask.typing import ResponseReturnValue
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from cityid.chain.view import ChainView, StatusRef
from server.auth import RequestAuthenticator
from server.chain.gateway import ChainGateway, open_chain
from server.config import ServerConfig
from server.db import Database
from server.keys import IssuerSigner, load_signer
from server.management_keys import CardKeys, load_card_keys
from server.service import IssuerService, ServiceError
from server.service.terminals import TerminalAuthorizations

logger = logging.getLogger(__name__)


def create_app(
    config: ServerConfig,
    *,
    chain: ChainGateway | None = None,
    signer: IssuerSigner | None = None,
    card_keys: CardKeys | None = None,
    db: Database | None = None,
    clock: Callable[[], datetime] | None = None,
    auth_clock: Callable[[], float] | None = None,
    start_writer: bool = True,
    authorization_signer: IssuerSigner | None = None,
    status_view: ChainView | None = None,
) -> Flask:
    """Build the app: open the database (its schema made by ``city-server db init``), the issuer key, the
    management master key (``card_keys``, else from ``config.management_key``) and the chain, and read the
    issuer's state on chain (no transaction: docs/chain.md §Roles). Components can be injected (tests).

    ``start_writer``: run the chain writer thread (docs/server.md §Chain outbox; it writes only while this
    instance holds the writer lock). Without it, requests that wait for the chain run the windows
    themselves (tests)."""
    db = db or Database.from_url(config.database_url)
    db.check_schema(config.status_list_id)  # created by `city-server db init`, never here
    signer = signer or load_signer(config.issuer_key)
    chain = chain or open_chain(config, signer.public_point)
    kwargs = {"clock": clock} if clock else {}
    service = IssuerService(db, chain, signer, config, **kwargs)
    service.start()
    from server.service.card_keys import CardKeyService

    card_key_service = CardKeyService(
        service.ctx, card_keys if card_keys is not None else load_card_keys(config.management_key)
    )
    terminals = _terminal_authorizations(config, db, chain, service, authorization_signer, status_view)
    auth = RequestAuthenticator(
        db, config.auth_window_seconds, **({"clock": auth_clock} if auth_clock else {})
    )

    app = Flask("server")
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    if isinstance(app.json, DefaultJSONProvider):  # Flask's default provider, always used here
        app.json.sort_keys = False
    app.extensions["cityid.service"] = service
    app.extensions["cityid.auth"] = auth
    app.extensions["cityid.card_keys"] = card_key_service
    app.extensions["cityid.db"] = db
    app.extensions["cityid.terminals"] = terminals

    from server.api.v1 import bp

    app.register_blueprint(bp)

    from server.api.citizen import RateLimit
    from server.api.citizen import bp as citizen_bp

    app.extensions["cityid.lost_card_limit"] = RateLimit(config.lost_card_rate_per_minute)
    app.register_blueprint(citizen_bp)

    from server.api.certificates import install as install_certificates

    certs = install_certificates(app, db, chain, start=False)  # printed certificates: anchors (13)
    from server.outbox import OutboxWriter

    writer = OutboxWriter(
        db,
        chain,
        window_s=config.chain_window_ms / 1000,
        confirmations=config.chain_confirmations,
        anchor_queue=certs.queue if certs.queue.anchorer is not None else None,
    )
    app.extensions["cityid.outbox"] = writer
    if start_writer:
        writer.start()

    @app.get("/health")
    def health() -> ResponseReturnValue:
        try:
            current = service.check_issuer()
        except ServiceError:
            logger.warning("health: issuer state unavailable (chain)")
            return jsonify(ok=False, issuer_did=service.issuer_did, vct=service.vct, issuer_ready=None), 503
        return jsonify(ok=True, issuer_did=current.did, vct=service.vct, issuer_ready=current.ready,
                       outbox=_outbox_health())  # fmt: skip

    def _outbox_health() -> dict[str, object]:
        from server.outbox import stats

        try:
            out = stats(db)
        except SQLAlchemyError:
            return {"ok": False}
        out["writer"] = {"leader": writer.leader.held, "running": writer.running,
                         "last_error": writer.last_error, "reapplied": writer.reapplied}  # fmt: skip
        return out

    @app.errorhandler(ServiceError)
    def _service_error(exc: ServiceError) -> ResponseReturnValue:
        return jsonify(error=exc.code, message=str(exc)), exc.status

    @app.errorhandler(SQLAlchemyError)
    def _storage_error(exc: SQLAlchemyError) -> ResponseReturnValue:
        logger.error("database error: %s", type(exc).__name__)
        return jsonify(error="storage_unavailable", message="database unavailable; retry later"), 503

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> ResponseReturnValue:
        code = (exc.name or "error").lower().replace(" ", "_")
        return jsonify(error=code, message=exc.description or exc.name), exc.code or 500

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> ResponseReturnValue:
        # Type and place only: an exception message could echo request data (claims are never logged).
        where = traceback.extract_tb(exc.__traceback__)[-1:]
        loc = f"{where[0].filename}:{where[0].lineno}" if where else "?"
        logger.error("unexpected %s at %s", type(exc).__name__, loc)
        return jsonify(error="internal", message="internal error; the request was not completed"), 500

    return app


def _terminal_authorizations(
    config: ServerConfig,
    db: Database,
    chain: ChainGateway,
    service: IssuerService,
    signer: IssuerSigner | None,
    status_view: ChainView | None,
) -> TerminalAuthorizations:
    """Terminal certificates (docs/card-profile.md §Terminal authentication): the authorization key and a
    chain view to read terminals' on-chain bits (the registrar's own chain unless one is injected)."""
    if signer is None and config.authorization_key is not None:
        signer = load_signer(config.authorization_key)
    if status_view is None:
        registrar = getattr(chain, "registrar", None)
        if registrar is not None:
            from cityid.chain.live import LiveChainView

            status_view = LiveChainView(registrar.client, registrar.network)
    return TerminalAuthorizations(
        db,
        chain,
        status_view,
        signer,
        status_ref=lambda list_id, index: StatusRef(chain.chain_id, chain.status_registry, list_id, index),
        issuer_did=lambda: service.issuer_did,
        vct=service.vct,
        citizen_list_id=config.status_list_id,
        lifetime_seconds=config.terminal_certificate_seconds,
    )
