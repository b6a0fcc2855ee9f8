"""Registration over the bus: a joining agent's request on ``fleetd.register``, answered (architecture.md §3).

With a join token: the token is spent, the node registered ``pending`` (``healthy`` once approved: by the
manifest's ``approved: true`` through the planner's approve action, by ``fleetd node approve``, or by an earlier
approval), and the reply gives the node its own credential, which it keeps and presents from then on; the
registry keeps only its hash. With a credential: a returning node, checked against that hash. Anything else is
refused with a reason the agent logs; the refusal is counted by reason and nothing is stored. A request is
answered by one controller of the queue group, whichever; spending a token is one atomic statement, so two
controllers cannot admit one token twice.

TLS bootstrap: a request may carry a certificate signing request. With the fleet's CA (``fleetd serve``
without ``--insecure`` or ``--tls-*`` files), the controller checks that it names the registering node alone
BEFORE anything is spent or stored (another name: refused, ``bad_csr``), and once the token or credential is
accepted, signs it and sends the certificate with the CA's. The certificate is issued at admission, not at
approval: the controller needs it to reach the node's gRPC server at all (health, list), while what an
unapproved node must never get, an instance's environment, only travels in a load or restart, and the
planner places nothing on a node that is not approved.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections import Counter
from collections.abc import Callable

from fleetd.core.observed import NodeStatus
from fleetd.registry.admission import Refusal, admit_with_token, check_credential
from fleetd.registry.facade import Registry
from fleetd.transport.bus_api import Bus, BusMessage, Subscription
from fleetd.transport.bus_messages import (
    REGISTER,
    BadMessage,
    RegisterReply,
    RegisterRequest,
    credential_hash,
    decode_register,
    encode_reply,
)
from fleetd.transport.certificates import Authority, CertificateError, check_request, sign_request

log = logging.getLogger("fleetd.controller")
QUEUE = "fleetd-controllers"
REASONS = {
    Refusal.UNKNOWN_TOKEN: "the join token is not one this fleet issued (`fleetd node token create` makes one)",
    Refusal.EXPIRED_TOKEN: "the join token has expired: create a new one with `fleetd node token create`",
    Refusal.USED_UP_TOKEN: "the join token was already used as often as it allows: create a new one",
    Refusal.NAME_TAKEN: "a node of this name joined before: its agent must present its credential "
    "(or `fleetd node remove` the old node to admit it again)",
    Refusal.BAD_CREDENTIAL: "the credential does not match the one this node was given",
    Refusal.UNKNOWN_NODE: "the controller does not know this node: join again with a token",
}


class Admission:
    """Answers registrations; ``refused`` counts refusals by reason (for ``/metrics``)."""

    def __init__(
        self,
        registry: Registry,
        *,
        authority: Authority | None = None,
        on_admitted: Callable[[str], None] | None = None,
    ) -> None:
        """``authority``: the fleet's CA, which signs the nodes' requests (none: no certificates issued)."""
        self._registry = registry
        self._authority = authority
        self._on_admitted = on_admitted
        self._lock = threading.Lock()
        self.refused: Counter[str] = Counter()

    def listen(self, bus: Bus) -> Subscription:
        return bus.subscribe(REGISTER, lambda message: self._answer(bus, message), queue=QUEUE)

    def handle(self, data: bytes) -> RegisterReply:
        """The reply to one request (what ``listen`` sends back)."""
        try:
            request = decode_register(data)
        except BadMessage as exc:
            return self._refuse("?", "malformed", f"bad registration request: {exc}")
        if request.csr and self._authority is not None:
            try:
                check_request(request.csr.encode(), request.node)
            except CertificateError as exc:
                return self._refuse(request.node, "bad_csr", str(exc))
        if request.credential:
            outcome = check_credential(
                self._registry, request.node, credential_hash(request.credential), address=request.address
            )
            return self._reply(request, outcome, credential=None)
        if request.token:
            credential = secrets.token_urlsafe(32)
            outcome = admit_with_token(
                self._registry, request.node, request.token, credential_hash(credential), address=request.address
            )
            return self._reply(request, outcome, credential=credential)
        return self._refuse(request.node, "no_proof", "a registration needs a join token or the node's credential")

    def _answer(self, bus: Bus, message: BusMessage) -> None:
        if message.reply is None:
            return
        bus.respond(message, encode_reply(self.handle(message.data)))

    def _reply(
        self, request: RegisterRequest, outcome: NodeStatus | Refusal, *, credential: str | None
    ) -> RegisterReply:
        node = request.node
        if isinstance(outcome, Refusal):
            return self._refuse(node, outcome.value, REASONS[outcome])
        how = "joined with a token" if credential else "rejoined"
        certificate = ca = None
        if request.csr and self._authority is not None:
            certificate = sign_request(self._authority, request.csr.encode(), node).decode()
            ca = self._authority.cert_pem.decode()
            how += ", certificate issued"
        log.info("node %s %s: %s", node, how, outcome.value)
        if self._on_admitted is not None:
            self._on_admitted(node)
        return RegisterReply(True, outcome.value, credential, certificate=certificate, ca=ca)

    def _refuse(self, node: str, label: str, reason: str) -> RegisterReply:
        with self._lock:
            self.refused[label] += 1
        log.warning("refused the registration of node %s: %s", node, reason)
        return RegisterReply(False, reason=reason)
