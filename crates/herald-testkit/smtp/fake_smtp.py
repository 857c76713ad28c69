"""A scripted SMTP server for Herald's tests, on aiosmtpd (a real SMTP implementation).

Started by herald_testkit::smtp (crates/herald-testkit/src/smtp.rs) with one argument, a JSON
object:

    {"mode": "starttls" | "implicit" | "plain", "cert": PEM path, "key": PEM path,
     "user": str | null, "password": str | null, "counts": path}

It listens on 127.0.0.1 (a free port), speaks SMTP with STARTTLS (required) or implicit TLS from
the test CA's certificate, requires AUTH when a user is given, and answers as scripted. It
writes one JSON object per line on stdout:

    {"event": "listening", "port": N}
    {"event": "auth", "ok": bool, "login": str}   an AUTH attempt
    {"event": "mail", "from": str, "options": [...], "tls": bool, "auth": str | null}
    {"event": "rcpt", "to": str, "answer": str}   a recipient, and what it was answered
    {"event": "message", ...}                     a message received (see `message_event`)
    {"ack": N}                                    command N on stdin is in force

and reads commands on stdin, one JSON object per line:

    {"id": N, "script": {"stage": "mail" | "rcpt" | "data", "rcpt": address or "*",
                         "answers": [answer, ...]}}

Connections, transactions (MAIL FROM) and AUTH attempts are also counted in the JSON file
`counts`, replaced before each reply goes out.

where an answer is a reply line ("550 5.1.1 No such user"), "hang" (never answer) or "reset"
(drop the connection without an answer). Each answer is used once, in order; when none is left
the stage answers normally. "data" answers come after the whole message was read. When stdin
closes, the server exits.
"""

import asyncio
import base64
import email
import email.policy
import json
import logging
import os
import ssl
import sys
import threading

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

logging.getLogger("mail.log").setLevel(logging.CRITICAL)

CONFIG = json.loads(sys.argv[1])
COUNTS = {"connections": 0, "transactions": 0, "auth_failures": 0, "auth_successes": 0}
USER = CONFIG.get("user")
PASSWORD = CONFIG.get("password")
SCRIPTS = {}  # (stage, recipient or "*") -> [answer, ...]
OUT_LOCK = threading.Lock()


def login_of(session):
    data = getattr(session, "auth_data", None)
    return data.login.decode() if isinstance(data, LoginPassword) else None


def emit(obj):
    with OUT_LOCK:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def count(name):
    """Counts an event in CONFIG["counts"], written before the client gets the reply, so a
    test that has the reply reads an exact count."""
    COUNTS[name] += 1
    tmp = CONFIG["counts"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(COUNTS, f)
    os.replace(tmp, CONFIG["counts"])


def next_answer(stage, rcpt):
    for key in ((stage, (rcpt or "").lower()), (stage, "*")):
        queue = SCRIPTS.get(key)
        if queue:
            return queue.pop(0)
    return None


async def act(server, answer):
    """Carries out a scripted answer: a reply line, a hang, or a reset."""
    if answer == "hang":
        await asyncio.sleep(3600)
        return "421 4.3.2 hung"
    if answer == "reset":
        server.transport.abort()
        # aiosmtpd writes this to a closed transport: nothing reaches the client.
        return "421 4.3.2 reset"
    return answer


def message_event(envelope, session):
    """The message as Python's email package reads it: decoded headers and parts."""
    raw = envelope.original_content or envelope.content or b""
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    parts = []
    for part in parsed.walk():
        if part.is_multipart():
            parts.append({"type": part.get_content_type(), "multipart": True})
            continue
        try:
            text = part.get_content()
        except Exception as e:  # noqa: BLE001 - report, do not crash the fake
            text = "<undecodable: %s>" % e
        parts.append({
            "type": part.get_content_type(),
            "charset": part.get_content_charset(),
            "encoding": part.get("Content-Transfer-Encoding"),
            # SMTP lines end in CRLF; the tests compare text with \n.
            "text": text.replace("\r\n", "\n") if isinstance(text, str)
            else base64.b64encode(text).decode(),
        })
    return {
        "event": "message",
        "from": envelope.mail_from,
        "to": list(envelope.rcpt_tos),
        "tls": session.ssl is not None or CONFIG["mode"] == "implicit",
        "auth": login_of(session),
        "headers": [[k, str(v)] for k, v in parsed.items()],
        "parts": parts,
        "raw": base64.b64encode(raw).decode(),
    }


class Handler:
    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        count("transactions")
        emit({
            "event": "mail",
            "from": address,
            "options": mail_options,
            "tls": session.ssl is not None or CONFIG["mode"] == "implicit",
            "auth": login_of(session),
        })
        answer = next_answer("mail", None)
        if answer is None or answer.startswith("2"):
            envelope.mail_from = address
            envelope.mail_options.extend(mail_options)
            return answer or "250 2.1.0 OK"
        return await act(server, answer)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        answer = next_answer("rcpt", address)
        emit({"event": "rcpt", "to": address, "answer": answer or "250"})
        if answer is None or answer.startswith("2"):
            envelope.rcpt_tos.append(address)
            return answer or "250 2.1.5 OK"
        return await act(server, answer)

    async def handle_DATA(self, server, session, envelope):
        rcpt = envelope.rcpt_tos[0] if envelope.rcpt_tos else None
        answer = next_answer("data", rcpt)
        if answer is None or answer.startswith("2"):
            emit(message_event(envelope, session))
            return answer or "250 2.0.0 OK: queued"
        return await act(server, answer)


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login.decode() == USER
        and auth_data.password.decode() == PASSWORD
    )
    count("auth_successes" if ok else "auth_failures")
    emit({"event": "auth", "ok": ok, "mechanism": mechanism,
          "login": auth_data.login.decode() if isinstance(auth_data, LoginPassword) else None})
    return AuthResult(success=ok, handled=False, auth_data=auth_data)


class Server(SMTP):
    def connection_made(self, transport):
        if self._original_transport is None and self.transport is None:
            count("connections")
        super().connection_made(transport)


def tls_context():
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(CONFIG["cert"], CONFIG["key"])
    return context


def read_commands(loop):
    for line in sys.stdin:
        line = line.strip()
        if line:
            loop.call_soon_threadsafe(command, json.loads(line))
    # The test dropped the fake: stop at once.
    os._exit(0)


def command(cmd):
    script = cmd.get("script")
    if script:
        key = (script["stage"], script["rcpt"].lower())
        SCRIPTS.setdefault(key, []).extend(script["answers"])
    emit({"ack": cmd.get("id")})


async def main():
    loop = asyncio.get_running_loop()
    mode = CONFIG["mode"]
    tls = tls_context() if mode in ("starttls", "implicit") else None

    def factory():
        return Server(
            Handler(),
            hostname="fake-smtp.test",
            ident="Herald test SMTP (aiosmtpd)",
            tls_context=tls if mode == "starttls" else None,
            require_starttls=mode == "starttls",
            authenticator=authenticator if USER else None,
            auth_required=bool(USER),
            # With implicit TLS aiosmtpd does not know the session is encrypted.
            auth_require_tls=mode == "starttls",
            enable_SMTPUTF8=True,
            decode_data=False,
            timeout=60,
        )

    server = await loop.create_server(
        factory, host="127.0.0.1", port=0, ssl=tls if mode == "implicit" else None
    )
    emit({"event": "listening", "port": server.sockets[0].getsockname()[1]})
    threading.Thread(target=read_commands, args=(loop,), daemon=True).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
