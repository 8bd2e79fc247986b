"""Redis with TLS and an ACL user: the pipeline against a real redis-server that listens only on a TLS
port (certificates made here by openssl, a CA of the test's own) and knows no default user, only the
workers' user with the rule of `stream.keys.acl_rule()`, the one that docs/DEPLOY.md gives.

- `dmd run` as that user over `rediss://` gives every window one estimate, `dmd watch` shows them,
  nothing is refused (ACL LOG), and every command of the rule is one the workers issue;
- a wrong password, a wrong CA, no CA, a plain connection to the TLS port and a user without PING
  end `dmd run` with exit status 2 and one line saying what to fix, at once;
- the user is refused keys outside `dmd:*`, channels outside `dmd:est:*` and every other command;
- with `--tls-auth-clients yes` a client certificate from the URL (`ssl_certfile`, `ssl_keyfile`) is
  what gets a worker in.

Without redis-server or openssl the tests skip; a redis-server built without TLS skips too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from redis_fixtures import NO_RETRY, REDIS_SERVER, free_port
from tls_helpers import Certificates, make_certificates

from stream.connection import parse_redis_url
from stream.keys import ACL_COMMANDS, acl_rule

pytest.register_assert_rewrite("pipeline_helpers")
from pipeline_helpers import check_estimates, estimates, notices, pipeline_env  # noqa: E402

pytest_plugins = ("pipeline_helpers",)  # fixtures: checkpoint, bars_clip

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "workers" / "assets" / "demo.mp4"
USER = "dmd"
DB = 1  # not 0: the workers' SELECT is part of the rule


# -- certificates ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


# -- the server ------------------------------------------------------------------------------------------
class SecureRedis:
    """redis-server on a TLS port only (`--port 0`), with the default user off, an `admin` user for the
    test's own checks and the workers' user `dmd` with `acl_rule()`. A child process of the test."""

    def __init__(self, directory: Path, certs: Certificates, *, client_certificates: bool = False) -> None:
        if REDIS_SERVER is None:
            pytest.skip("redis-server is not installed: install Debian's package (apt-get install redis-server)")
        self.directory, self.certs = directory, certs
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = secrets.token_urlsafe(18)
        self.admin_password = secrets.token_urlsafe(18)
        self.log = directory / "redis.log"
        args = [REDIS_SERVER, "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
                "--tls-cert-file", str(certs.server_cert), "--tls-key-file", str(certs.server_key),
                "--tls-ca-cert-file", str(certs.ca), "--tls-auth-clients", "yes" if client_certificates else "no",
                "--save", "", "--appendonly", "no", "--dir", str(directory), "--logfile", str(self.log),
                "--user", "default", "off",
                "--user", "admin", "on", f">{self.admin_password}", "~*", "&*", "+@all",
                "--user", USER, "on", f">{self.password}", *acl_rule()]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        self._wait_until_up()

    def url(self, user: str = USER, password: str | None = None, ca: Path | str | None = None,
            scheme: str = "rediss", **options: str | Path) -> str:
        """The server's URL for `user` (the workers' password by default), with the test CA unless `ca`
        is given ("": none, so the system's CAs)."""
        password = self.password if password is None else password
        query = {"ssl_ca_certs": self.certs.ca if ca is None else ca, **options} if scheme == "rediss" else {}
        tail = "&".join(f"{k}={v}" for k, v in query.items() if v)
        return (f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{self.port}/{DB}"
                + (f"?{tail}" if tail else ""))

    def client(self, url: str) -> redis.Redis:
        return redis.Redis(**parse_redis_url(url).client_kwargs(), retry=NO_RETRY)

    def admin(self) -> redis.Redis:
        return self.client(self.url("admin", self.admin_password, **self.client_files()))

    def client_files(self) -> dict[str, Path]:
        return {"ssl_certfile": self.certs.client_cert, "ssl_keyfile": self.certs.client_key}

    def _wait_until_up(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                log = self.log.read_text(errors="replace") if self.log.exists() else ""
                if "TLS" in log and "not" in log.lower() and "support" in log.lower():
                    pytest.skip(f"this redis-server has no TLS: {log.splitlines()[-1]}")
                raise RuntimeError(f"redis-server exited with status {self.process.returncode}:\n{log[-2000:]}")
            admin = self.admin()
            try:
                if admin.ping():
                    return
            except (redis.ConnectionError, redis.TimeoutError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server on TLS port {self.port} did not answer within {timeout} s:\n"
                                       f"{self.log.read_text(errors='replace')[-2000:]}") from None
                time.sleep(0.02)
            finally:
                admin.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture(scope="module")
def secure_redis(tmp_path_factory: pytest.TempPathFactory, certificates: Certificates) -> Iterator[SecureRedis]:
    server = SecureRedis(tmp_path_factory.mktemp("secure-redis"), certificates)
    yield server
    server.stop()


def refused(admin: redis.Redis, user: str = USER) -> list[dict]:
    """The ACL LOG's entries for `user`. redis-py's CLIENT SETINFO at connect is left out of the rule
    on purpose (stream.keys): a server that knows it (7.2+) logs its refusal, which redis-py ignores."""
    return [e for e in admin.acl_log() if e.get("username") == user and e.get("object") != "client|setinfo"]


def use_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name, value in env.items():
        if name.startswith("DMD_") or name == "REDIS_URL":
            monkeypatch.setenv(name, value)


# -- the pipeline as the ACL user, over TLS --------------------------------------------------------------------
async def exercise_the_rest(url: str, session: str) -> None:
    """What a short `dmd run` without a recogniser does not reach, as the workers do it: an ASR worker's
    hold on a session (a script: EVALSHA, SCRIPT LOAD, XPENDING, XCLAIM), a dead letter, a window
    published a second time (UNWATCH), one published by a worker not told that the session ended (TTL),
    the group metrics (XINFO GROUPS), waiting for words (XREAD)."""
    from stream.consumer import GroupConsumer
    from stream.estimate import Estimate
    from stream.keys import ASR_GROUP, INFER_GROUP, SESSIONS, WINDOWS
    from stream.lifecycle import SessionLease
    from stream.messages import AsrWords
    from stream.publish import EstimatePublisher
    from stream.session import Session
    from workers.metrics import Metrics, sample_group
    from workers.wiring import open_redis

    async with open_redis(url) as r:
        asr = GroupConsumer(r, SESSIONS, ASR_GROUP, "asr-1", block_ms=0)
        [start, *rest] = await asr.read()  # the session's start and end events
        await SessionLease(r, start.id, asr.name).renew()
        again = GroupConsumer(r, SESSIONS, ASR_GROUP, "asr-1", block_ms=0)  # a restart: its pending entries
        reread = await again.read()
        assert [d.id for d in reread] == [start.id, *(d.id for d in rest)]
        await again.dead_letter(reread[0], "a test of the ACL")
        assert await again.pending() == len(rest), "the start went to the dead letters, the end is still pending"
        [entry] = await r.xrevrange(Session(r, session).keys.estimates, count=1)
        last = Estimate.from_json(entry[1][b"estimate"])
        publisher = EstimatePublisher(r)
        assert not (await publisher.publish(last)).published, "the window had its estimate already"
        later = dataclasses.replace(last, window=last.window + 1, t_start=last.t_start + 0.5, t_end=last.t_end + 0.5,
                                    smoothed=None)
        assert (await publisher.publish(later)).published
        await sample_group(r, Metrics("test"), WINDOWS, INFER_GROUP)
        assert await Session(r, session).wait_until(AsrWords, 1.0, timeout=0.05) is None  # no words: asr none


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_dmd_run_over_tls_as_the_acl_user_gives_every_window_one_estimate_and_needs_nothing_more(
        secure_redis: SecureRedis, checkpoint: Path, bars_clip: Path, monkeypatch, capsys) -> None:
    pytest.importorskip("av")
    pytest.importorskip("opensmile")
    from workers.cli import main
    from workers.wiring import describe_redis

    admin = secure_redis.admin()
    admin.flushall()
    admin.execute_command("ACL", "LOG", "RESET")
    admin.script_flush()
    admin.config_resetstat()
    url = secure_redis.url()
    use_env(monkeypatch, pipeline_env(checkpoint, url))
    capsys.readouterr()

    started = time.monotonic()
    code = main(["run", "--source", str(bars_clip), "--speed", "0", "--asr", "none", "--session", "tls", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    seconds = time.monotonic() - started
    report = [json.loads(line) for line in err.splitlines() if line.startswith('{"session"')][-1]
    assert report["missing"] == [] and report["windows"] == report["estimates"] >= 7, report
    assert secure_redis.password not in out + err
    assert describe_redis(url) == f"rediss://{USER}:***@127.0.0.1:{secure_redis.port}/{DB}"
    sent = notices(admin, "tls")
    assert len(sent) == report["windows"]
    found = estimates(admin, "tls")
    check_estimates(found, sent, session="tls")

    # dmd watch of every session (SCAN, PSUBSCRIBE dmd:est:*) shows the same estimates
    code = main(["watch", "--json", "--history", "100", "--timeout", "0.5"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    shown = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [(e["window"], e["sentiment"]) for e in shown] == [(e["window"], e["sentiment"]) for e in found]

    asyncio.run(exercise_the_rest(url, "tls"))
    assert refused(admin) == [], "the workers were refused something"
    used = {name.removeprefix("cmdstat_") for name in admin.info("commandstats")}
    assert set(ACL_COMMANDS) <= used, f"in the rule but never used: {sorted(set(ACL_COMMANDS) - used)}"
    admin.close()
    print(f"dmd run over TLS as {USER}: {report['windows']} windows in {seconds:.1f} s")


# -- refused at the start: one line, exit status 2 ------------------------------------------------------------
FAILURES = {
    # case: (URL options, words of the message)
    "wrong password": ({"password": "not-the-password"}, "refused the login"),
    "wrong CA": ({"ca": "other"}, "TLS failed"),
    "no CA (the system's)": ({"ca": "none"}, "TLS failed"),
    "plain redis:// to the TLS port": ({"scheme": "redis"}, "closed the connection"),
    "a user without PING": ({"user": "noping"}, "does not let user noping run PING"),
    "a CA file that is not there": ({"ca": "missing"}, "ssl_ca_certs="),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(FAILURES))
def test_a_refused_tls_or_acl_connection_ends_dmd_run_with_one_line_and_exit_status_2(
        case: str, secure_redis: SecureRedis, tmp_path: Path, monkeypatch, capsys) -> None:
    from workers.cli import main

    options, words = FAILURES[case]
    options = dict(options)
    if options.get("user") == "noping":
        admin = secure_redis.admin()
        admin.acl_setuser("noping", enabled=True, passwords=[f"+{secure_redis.password}"], keys=["dmd:*"],
                          commands=["-@all", "+xadd"], reset=True)
        admin.close()
    ca = {"other": secure_redis.certs.other_ca, "none": "", "missing": tmp_path / "missing-ca.crt"}
    if "ca" in options:
        options["ca"] = ca[options["ca"]]
    url = secure_redis.url(**options)
    use_env(monkeypatch, pipeline_env(None, url))
    capsys.readouterr()

    started = time.monotonic()
    code = main(["run", "--source", str(DEMO), "--speed", "0", "--asr", "none", "--quiet"])
    seconds = time.monotonic() - started
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("dmd run: ")]
    assert code == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert len(lines) == 1 and words in lines[0], err[-3000:]
    assert secure_redis.password not in out + err and "not-the-password" not in out + err
    assert seconds < 10, f"{seconds:.1f} s to say that Redis refused"


# -- the ACL bites ------------------------------------------------------------------------------------------------
def test_the_acl_user_is_refused_keys_channels_and_commands_outside_the_rule(secure_redis: SecureRedis) -> None:
    r = secure_redis.client(secure_redis.url())
    admin = secure_redis.admin()
    admin.execute_command("ACL", "LOG", "RESET")
    try:
        assert r.set("dmd:acl-probe", b"1", ex=60)
        assert r.publish("dmd:est:{acl-probe}", b"{}") == 0
        refusals = {
            "a key outside dmd:*": lambda: r.set("elsewhere:key", b"1"),
            "reading a key outside dmd:*": lambda: r.xrange("elsewhere:stream"),
            "a command outside the rule": lambda: r.get("dmd:acl-probe"),
            "deleting": lambda: r.delete("dmd:acl-probe"),
            "FLUSHALL": lambda: r.flushall(),
            "KEYS": lambda: r.keys("*"),
            "CONFIG": lambda: r.config_get("*"),
            "EVAL (only the workers' script, by EVALSHA)": lambda: r.eval("return 1", 0),
            "a channel outside dmd:est:*": lambda: r.publish("elsewhere", b"x"),
        }
        for what, attempt in refusals.items():
            with pytest.raises(redis.exceptions.NoPermissionError):
                attempt()
                pytest.fail(f"{what}: allowed")
        pubsub = r.pubsub()
        with pytest.raises(redis.exceptions.NoPermissionError):
            pubsub.psubscribe("*")  # the reply, a refusal, comes with the next message
            pubsub.get_message(timeout=5)
        pubsub.close()
        reasons = {(e["reason"], e["object"]) for e in refused(admin)}
        assert ("key", "elsewhere:key") in reasons and ("command", "get") in reasons, reasons
        assert ("channel", "elsewhere") in reasons and ("channel", "*") in reasons, reasons
        assert admin.exists("dmd:acl-probe")
    finally:
        admin.delete("dmd:acl-probe")
        admin.close()
        r.close()


# -- client certificates -------------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_a_client_certificate_from_the_url_gets_a_worker_in_where_the_server_asks_for_one(
        certificates: Certificates, tmp_path: Path, monkeypatch, capsys) -> None:
    from workers.cli import main

    server = SecureRedis(tmp_path / "mtls", certificates, client_certificates=True)
    try:
        with_cert = server.url(**server.client_files())
        use_env(monkeypatch, pipeline_env(None, with_cert))
        capsys.readouterr()
        code = main(["watch", "--json", "--history", "0", "--timeout", "0.2"])
        err = capsys.readouterr().err
        assert code == 0 and "Traceback" not in err, err[-3000:]

        monkeypatch.setenv("REDIS_URL", server.url())  # the CA, no client certificate
        code = main(["watch", "--json", "--timeout", "0.2"])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("dmd watch: ")]
        assert code == 2 and "Traceback" not in err, err[-3000:]
        # TLS 1.3: the server checks the certificate after the handshake; its alert may come first,
        # or its closing of the connection
        assert len(lines) == 1 and ("TLS failed" in lines[0] or "closed the connection" in lines[0]), err[-3000:]
        assert server.password not in err
    finally:
        server.stop()


# -- one rule --------------------------------------------------------------------------------------------------------
def test_docs_deploy_gives_the_rule_that_the_code_has() -> None:
    # the cluster's rule, in its section, is checked by tests/test_cluster_failover.py
    text = (ROOT / "docs" / "DEPLOY.md").read_text().split("### Redis Cluster")[0]
    rule = " ".join(acl_rule())
    given = [line for line in text.splitlines() if line.startswith(f"user {USER} on ")]
    assert given, "docs/DEPLOY.md gives no rule for the workers' user"
    assert all(line.endswith(f" {rule}") for line in given), f"docs/DEPLOY.md gives {given}, the code has {rule}"
