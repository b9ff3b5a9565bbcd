"""Security wired into the real server (``build_deps`` + ``build_server``): keys and roles on the
Recommender, Outreach and Admin services, audit of consent changes, erasure through the server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from bundle_factory import PlantedBundle
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import generate_latest
from serving_harness import serving_settings

from recsvc.errors import ConfigError
from recsvc.redis_keys import member_key
from recsvc.security.audit import verify
from recsvc.security.auth import caller_toml, new_key
from recsvc.security.privacy import Pseudonymizer
from recsvc.server.app import build_deps, build_server, shutdown
from recsvc.settings import Settings, load_settings
from recsvc.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    catalog_pb2,
    catalog_pb2_grpc,
    outreach_pb2,
    outreach_pb2_grpc,
    recommender_pb2,
    recommender_pb2_grpc,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PSEUDONYM_KEY = "server-test-pseudonym-key"
ROLES = {
    "shop": ["recommend"],
    "tracker": ["events"],
    "crm": ["outreach"],
    "planner": ["outreach", "members"],
    "ops": ["admin"],
    "stock": ["catalog"],
}


@dataclass
class Secured:
    channel: grpc.Channel
    keys: dict[str, str]
    settings: Settings
    redis: redis.Redis
    metrics: Any = None  # the server's ServingMetrics

    def md(self, who: str) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.keys[who]}")]


def secured_settings(
    bundle: Path, redis_url: str, tmp: Path, **security: Any
) -> tuple[Settings, dict[str, str]]:
    keys = {name: new_key() for name in ROLES}
    keys_file = tmp / "callers.toml"
    keys_file.write_text("\n".join(caller_toml(n, r, keys[n]) for n, r in ROLES.items()))
    base = serving_settings(str(bundle), redis_url, tmp)
    raw = base.model_dump(mode="json")
    raw["security"] = {
        "api_keys_file": str(keys_file),
        "audit_log": str(tmp / "audit.log"),
        "erasure_list": str(tmp / "erasures.txt"),
        "pseudonym_key": PSEUDONYM_KEY,
        **security,
    }
    raw["mlflow"] = {"tracking_uri": f"sqlite:///{tmp}/mlflow.db", "artifact_location": str(tmp / "art")}
    return load_settings(overrides=raw), keys


@contextmanager
def secured_server(settings: Settings, keys: dict[str, str]) -> Iterator[Secured]:
    deps = build_deps(settings, with_outreach=True)
    server = build_server(settings, deps)
    server.start()
    deps.models.reload()
    channel = grpc.insecure_channel(f"127.0.0.1:{deps.bound_port}")
    client = redis.Redis.from_url(settings.redis.url, decode_responses=True)
    try:
        yield Secured(channel, keys, settings, client, deps.metrics)
    finally:
        client.close()
        channel.close()
        shutdown(server, deps, grace_s=0)


@pytest.fixture
def srv(planted: PlantedBundle, redis_url: str, tmp_path: Path) -> Iterator[Secured]:
    settings, keys = secured_settings(planted.path, redis_url, tmp_path)
    with secured_server(settings, keys) as s:
        yield s


def _code(fn: Any, *args: Any, **kwargs: Any) -> grpc.StatusCode:
    try:
        result = fn(*args, timeout=5, **kwargs)
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            list(result)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_recommender_roles(srv: Secured, planted: PlantedBundle) -> None:
    stub = recommender_pb2_grpc.RecommenderStub(srv.channel)
    member = planted.warm_members()[0]
    req = recommender_pb2.RecommendProductsRequest(member_id=member, k=5)
    assert _code(stub.RecommendProducts, req, metadata=srv.md("shop")) == grpc.StatusCode.OK
    assert _code(stub.RecommendProducts, req) == grpc.StatusCode.UNAUTHENTICATED
    assert _code(stub.RecommendProducts, req, metadata=srv.md("tracker")) == grpc.StatusCode.PERMISSION_DENIED
    assert _code(stub.RecommendProducts, req, metadata=srv.md("ops")) == grpc.StatusCode.PERMISSION_DENIED
    event = recommender_pb2.RecordEventRequest(
        member_id=member, item_id=planted.products()[0], event_type="view"
    )
    assert _code(stub.RecordEvent, event, metadata=srv.md("tracker")) == grpc.StatusCode.OK
    assert _code(stub.RecordEvent, event, metadata=srv.md("shop")) == grpc.StatusCode.PERMISSION_DENIED
    reload = recommender_pb2.ReloadModelRequest()
    assert _code(stub.ReloadModel, reload, metadata=srv.md("shop")) == grpc.StatusCode.PERMISSION_DENIED
    assert _code(stub.ReloadModel, reload, metadata=srv.md("ops")) == grpc.StatusCode.OK
    batch = recommender_pb2.BatchRecommendRequest(member_ids=[member], k=3)
    assert _code(stub.BatchRecommend, batch, metadata=srv.md("crm")) == grpc.StatusCode.PERMISSION_DENIED
    assert _code(stub.BatchRecommend, batch, metadata=srv.md("shop")) == grpc.StatusCode.OK


def test_the_cli_client_commands_send_the_key_from_the_environment(
    srv: Secured, planted: PlantedBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from recsvc.cli import app

    target = srv.channel._channel.target().decode()  # type: ignore[attr-defined]
    member = planted.warm_members()[0]
    runner = CliRunner()
    ask = ["query", "products", member, "-k", "3", "--json", "--target", target]
    refused = runner.invoke(app, ask)
    assert refused.exit_code == 2 and "UNAUTHENTICATED" in refused.output, refused.output
    monkeypatch.setenv("RECSVC_API_KEY", srv.keys["shop"])
    done = runner.invoke(app, ask)
    assert done.exit_code == 0 and "item_id" in done.output, done.output
    monkeypatch.setenv("RECSVC_API_KEY", srv.keys["stock"])  # the catalog role, not recommend
    assert "PERMISSION_DENIED" in runner.invoke(app, ask).output
    got = runner.invoke(app, ["catalog", "get", planted.products()[0], "--target", target])
    assert got.exit_code == 0, got.output
    # without --target the settings are read (serving.port): the client's variables are not settings
    host, port = target.rsplit(":", 1)
    monkeypatch.setenv("RECSVC_SERVING__HOST", host)
    monkeypatch.setenv("RECSVC_SERVING__PORT", port)
    monkeypatch.setenv("RECSVC_API_KEY", srv.keys["shop"])
    default = runner.invoke(app, ["query", "products", member, "-k", "3", "--json"])
    assert default.exit_code == 0 and "item_id" in default.output, default.output
    monkeypatch.setenv("RECSVC_TLS_CA", str(Path("/nonexistent/ca.pem")))
    no_ca = runner.invoke(app, ["query", "products", member, "-k", "3", "--json"])
    assert no_ca.exit_code == 2 and "unknown setting" not in no_ca.output, no_ca.output


def test_a_stock_stream_needs_the_catalog_role_when_it_opens(srv: Secured, planted: PlantedBundle) -> None:
    stub = catalog_pb2_grpc.CatalogStub(srv.channel)
    item = planted.products()[0]

    def stream(who: str | None) -> Any:
        changes = iter([catalog_pb2.StockChange(item_id=item, in_stock=False)])
        return stub.StreamStock(changes, metadata=srv.md(who) if who else None)

    assert _code(lambda timeout: stream(None)) == grpc.StatusCode.UNAUTHENTICATED
    assert _code(lambda timeout: stream("shop")) == grpc.StatusCode.PERMISSION_DENIED
    answers = list(stub.StreamStock(
        iter([catalog_pb2.StockChange(item_id=item, in_stock=False)]), metadata=srv.md("stock"), timeout=5
    ))  # fmt: skip
    assert [(r.item_id, r.applied) for a in answers for r in a.results] == [(item, True)]


def test_catalog_changes_are_audited_with_who_and_which_items(srv: Secured, planted: PlantedBundle) -> None:
    """Who delisted which items (and relisted, upserted) is in the audit log; a stock change, an
    inventory feed's thousands a minute, is not; a call that changed nothing leaves no entry."""
    stub = catalog_pb2_grpc.CatalogStub(srv.channel)
    items = planted.products()[5:7]
    md = srv.md("stock")
    assert stub.DelistItems(catalog_pb2.ItemIdsRequest(item_ids=items), metadata=md, timeout=5).applied == 2
    assert stub.RelistItems(catalog_pb2.ItemIdsRequest(item_ids=items), metadata=md, timeout=5).applied == 2
    none = stub.DelistItems(catalog_pb2.ItemIdsRequest(item_ids=["NOT-THERE"]), metadata=md, timeout=5)
    assert none.applied == 0
    stub.SetStock(catalog_pb2.SetStockRequest(item_id=items[0], in_stock=True), metadata=md, timeout=5)
    entries = [json.loads(line) for line in srv.settings.security.audit_log.read_text().splitlines()]
    catalog = [e for e in entries if e["event"].startswith("catalog_")]
    got = [(e["event"], e["caller"], e["applied"], e["item_ids"]) for e in catalog]
    assert got == [("catalog_delist", "stock", 2, items), ("catalog_relist", "stock", 2, items)]
    assert verify(srv.settings.security.audit_log).ok


def test_an_audit_log_unwritable_after_start_is_counted_and_the_call_still_succeeds(
    srv: Secured, planted: PlantedBundle
) -> None:
    """The start-up check cannot see a log that breaks later (disk full, replaced): the audited
    change is made (failing the call would make the caller retry it), an ERROR is logged and
    ``recsvc_audit_write_failures_total`` counts the lost entry, by audit event."""
    from prometheus_client.parser import text_string_to_metric_families

    def lost() -> dict[str, float]:
        text = generate_latest(srv.metrics.registry).decode()
        family = next(
            f for f in text_string_to_metric_families(text) if f.name == "recsvc_audit_write_failures"
        )
        return {s.labels["event"]: s.value for s in family.samples if s.name.endswith("_total")}

    stub = catalog_pb2_grpc.CatalogStub(srv.channel)
    items, md = planted.products()[7:9], srv.md("stock")
    assert stub.DelistItems(catalog_pb2.ItemIdsRequest(item_ids=items), metadata=md, timeout=5).applied == 2
    assert lost() == {}
    log = srv.settings.security.audit_log
    log.unlink()
    log.mkdir()  # no longer a file anyone can append to, root included
    relisted = stub.RelistItems(catalog_pb2.ItemIdsRequest(item_ids=items), metadata=md, timeout=5)
    assert relisted.applied == 2  # the change was made and answered
    assert lost() == {"catalog_relist": 1.0}


def test_a_campaign_by_audience_query_needs_the_members_role_too(
    srv: Secured, planted: PlantedBundle
) -> None:
    from recsvc.v1 import members_pb2

    stub = outreach_pb2_grpc.OutreachStub(srv.channel)
    by_profile = outreach_pb2.PlanCampaignRequest(
        campaign_id="c-aud", channel="sms", audience=members_pb2.AudienceQuery(value_tiers=["high"])
    )
    assert _code(stub.PlanCampaign, by_profile, metadata=srv.md("crm")) == grpc.StatusCode.PERMISSION_DENIED
    denials = [
        json.loads(line)
        for line in srv.settings.security.audit_log.read_text().splitlines()
        if "audience queries" in line
    ]
    got = [(d["event"], d["caller"], d["role_needed"]) for d in denials]
    assert got == [("access_denied", "crm", "members")]
    assert (
        _code(stub.PlanCampaign, by_profile, metadata=srv.md("planner")) != grpc.StatusCode.PERMISSION_DENIED
    )
    by_ids = outreach_pb2.PlanCampaignRequest(
        campaign_id="c-ids", channel="sms", member_ids=planted.warm_members()[:3]
    )
    assert _code(stub.PlanCampaign, by_ids, metadata=srv.md("crm")) == grpc.StatusCode.OK


def test_outreach_roles_and_consent_audit(srv: Secured, planted: PlantedBundle) -> None:
    stub = outreach_pb2_grpc.OutreachStub(srv.channel)
    member = planted.warm_members()[1]
    ask = outreach_pb2.OutreachRequest(member_id=member, channel="sms", campaign_id="c1")
    assert _code(stub.CheckOutreach, ask, metadata=srv.md("crm")) == grpc.StatusCode.OK
    assert _code(stub.CheckOutreach, ask, metadata=srv.md("shop")) == grpc.StatusCode.PERMISSION_DENIED
    consent = outreach_pb2.UpdateConsentRequest(member_id=member, channel="sms", granted=False, source="app")
    assert _code(stub.UpdateConsent, consent, metadata=srv.md("crm")) == grpc.StatusCode.PERMISSION_DENIED
    assert _code(stub.UpdateConsent, consent, metadata=srv.md("ops")) == grpc.StatusCode.OK
    audit_path = srv.settings.security.audit_log
    text = audit_path.read_text()
    assert '"consent_change"' in text and '"caller": "ops"' in text
    assert Pseudonymizer(PSEUDONYM_KEY)(member) in text and f'"{member}"' not in text
    assert '"access_denied"' in text and '"crm"' in text
    assert verify(audit_path).ok


def test_health_and_reflection_need_no_key(srv: Secured) -> None:
    health = health_pb2_grpc.HealthStub(srv.channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service="recsvc.v1.Admin"), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_forget_member_through_the_server(srv: Secured, planted: PlantedBundle) -> None:
    member = planted.warm_members()[2]
    rec = recommender_pb2_grpc.RecommenderStub(srv.channel)
    for item in planted.products()[:3]:
        rec.RecordEvent(
            recommender_pb2.RecordEventRequest(member_id=member, item_id=item, event_type="purchase"),
            metadata=srv.md("tracker"),
            timeout=5,
        )
    assert srv.redis.exists(member_key(srv.settings.redis.key_prefix, member, "rt:events"))
    admin = admin_pb2_grpc.AdminStub(srv.channel)
    req = admin_pb2.ForgetMemberRequest(member_id=member, reason="PIPL-1")
    assert _code(admin.ForgetMember, req, metadata=srv.md("shop")) == grpc.StatusCode.PERMISSION_DENIED
    reply = admin.ForgetMember(req, metadata=srv.md("ops"), timeout=5)
    assert reply.deleted_keys["rt"] == 2 and reply.suppressed and reply.added_to_erasure_list
    assert reply.processes_notified >= 1  # this server process's erasure listener
    left = list(srv.redis.scan_iter(match=f"*{{m:{member}}}*"))
    assert left == [member_key(srv.settings.redis.key_prefix, member, "suppressed")]
    bad = admin_pb2.ForgetMemberRequest(member_id="x{y}")
    assert _code(admin.ForgetMember, bad, metadata=srv.md("ops")) == grpc.StatusCode.INVALID_ARGUMENT


def test_forgotten_member_gets_no_marketing(srv: Secured, planted: PlantedBundle) -> None:
    member = planted.warm_members()[3]
    outreach = outreach_pb2_grpc.OutreachStub(srv.channel)
    ask = outreach_pb2.OutreachRequest(member_id=member, channel="sms", campaign_id="c1")
    before = outreach.CheckOutreach(ask, metadata=srv.md("crm"), timeout=5)
    assert before.reason != outreach_pb2.SUPPRESSED
    admin_pb2_grpc.AdminStub(srv.channel).ForgetMember(
        admin_pb2.ForgetMemberRequest(member_id=member), metadata=srv.md("ops"), timeout=5
    )
    after = outreach.CheckOutreach(ask, metadata=srv.md("crm"), timeout=5)
    assert not after.allowed and after.reason == outreach_pb2.SUPPRESSED


def test_non_loopback_plaintext_refused_at_start(
    planted: PlantedBundle, redis_url: str, tmp_path: Path
) -> None:
    settings, _ = secured_settings(planted.path, redis_url, tmp_path)
    raw = settings.model_dump(mode="json")
    raw["serving"]["host"] = "0.0.0.0"
    with pytest.raises(ConfigError, match="plaintext on non-loopback"):
        build_deps(load_settings(overrides=raw), with_outreach=False)


def test_hostile_input_bounds(srv: Secured, planted: PlantedBundle) -> None:
    """The limits docs/security.md promises, each answered with a named status, not a crash."""
    stub = recommender_pb2_grpc.RecommenderStub(srv.channel)
    md = srv.md("shop")
    s = srv.settings
    member = planted.warm_members()[0]
    bad = [
        recommender_pb2.RecommendProductsRequest(member_id=member, k=s.serving.max_k + 1),
        recommender_pb2.RecommendProductsRequest(member_id=member, k=-1),
        recommender_pb2.RecommendProductsRequest(member_id="M" * (s.data.max_id_length + 1), k=5),
        recommender_pb2.RecommendProductsRequest(member_id="M 1; DROP", k=5),
    ]
    too_many = recommender_pb2.RecommendProductsRequest(member_id=member, k=5)
    too_many.filters.exclude_item_ids.extend(f"P{i}" for i in range(s.serving.max_filter_values + 1))
    bad.append(too_many)
    for req in bad:
        assert _code(stub.RecommendProducts, req, metadata=md) == grpc.StatusCode.INVALID_ARGUMENT, req
    batch = recommender_pb2.BatchRecommendRequest(
        member_ids=[member] * (s.serving.max_batch_members + 1), k=3
    )
    assert _code(stub.BatchRecommend, batch, metadata=md) == grpc.StatusCode.INVALID_ARGUMENT
    huge = recommender_pb2.BatchRecommendRequest(member_ids=["M" * 60] * 100_000, k=3)
    assert huge.ByteSize() > s.serving.max_message_bytes
    assert _code(stub.BatchRecommend, huge, metadata=md) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_unknown_method_is_refused_before_unimplemented(srv: Secured) -> None:
    """The server applies its interceptors once per method (no per-call pipeline); a method it
    does not have still goes through the key check, so unknown callers learn nothing."""
    call = srv.channel.unary_unary("/recsvc.v1.Secret/Do")
    assert _code(call, b"") == grpc.StatusCode.UNAUTHENTICATED
    assert _code(call, b"", metadata=srv.md("ops")) == grpc.StatusCode.PERMISSION_DENIED


def _handled(srv: Secured) -> dict[tuple[str, str, str], float]:
    """Every ``recsvc_grpc_server_handled_total`` series of the server: (service, method, code) -> count."""
    out: dict[tuple[str, str, str], float] = {}
    for family in srv.metrics.registry.collect():
        for s in family.samples:
            if s.name == "recsvc_grpc_server_handled_total":
                out[(s.labels["service"], s.labels["method"], s.labels["code"])] = s.value
    return out


def test_made_up_method_names_share_the_unknown_series_with_keys_configured(srv: Secured) -> None:
    """The names are the caller's to choose: with API keys configured (the refusal of a caller
    without a key comes before UNIMPLEMENTED), each must still not become series of its own."""
    names = [f"/x.Y/m{i}_{'a' * 40}" for i in range(25)]
    names += [f"/recsvc.v1.Outreach/Junk{i}" for i in range(25)]  # a real service, no such method
    for name in names:
        assert _code(srv.channel.unary_unary(name), b"") == grpc.StatusCode.UNAUTHENTICATED
    # A refusal reaches the caller a moment before the server thread that refused counts it.
    deadline = time.monotonic() + 5
    while _handled(srv).get(("unknown", "unknown", "UNAUTHENTICATED")) != 50 and time.monotonic() < deadline:
        time.sleep(0.02)
    text = generate_latest(srv.metrics.registry).decode()
    assert "_aaaa" not in text and "Junk" not in text and "x.Y" not in text
    handled = _handled(srv)
    assert handled[("unknown", "unknown", "UNAUTHENTICATED")] == 50
    assert sum(v for (svc, _, _), v in handled.items() if svc == "unknown") == 50


def test_refused_calls_are_counted_under_their_status_code(srv: Secured, planted: PlantedBundle) -> None:
    """Refusals at the door (no key, a key without the method's role) and a handler's own refusal
    are counted under the code the caller got, on sync and async, unary and streaming methods."""
    out = outreach_pb2_grpc.OutreachStub(srv.channel)
    admin = admin_pb2_grpc.AdminStub(srv.channel)
    rec = recommender_pb2_grpc.RecommenderStub(srv.channel)
    catalog = catalog_pb2_grpc.CatalogStub(srv.channel)
    member = planted.warm_members()[0]
    check = outreach_pb2.OutreachRequest(member_id=member, channel="sms", campaign_id="c1")
    forget = admin_pb2.ForgetMemberRequest(member_id=member, reason="t")
    plan = outreach_pb2.PlanCampaignRequest(member_ids=[member], channel="sms", campaign_id="c1")
    products = recommender_pb2.RecommendProductsRequest(member_id=member, k=3)
    export = catalog_pb2.ExportCatalogRequest()
    bad_id = admin_pb2.ForgetMemberRequest(member_id="x{y}")
    unauthenticated, denied = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    calls: list[tuple[str, str, Any, Any, str | None, grpc.StatusCode]] = [
        ("recsvc.v1.Outreach", "CheckOutreach", out.CheckOutreach, check, None, unauthenticated),
        ("recsvc.v1.Outreach", "CheckOutreach", out.CheckOutreach, check, "shop", denied),
        ("recsvc.v1.Admin", "ForgetMember", admin.ForgetMember, forget, None, unauthenticated),
        ("recsvc.v1.Admin", "ForgetMember", admin.ForgetMember, forget, "crm", denied),
        ("recsvc.v1.Outreach", "PlanCampaign", out.PlanCampaign, plan, None, unauthenticated),
        ("recsvc.v1.Outreach", "PlanCampaign", out.PlanCampaign, plan, "shop", denied),
        ("recsvc.v1.Recommender", "RecommendProducts", rec.RecommendProducts, products, "crm", denied),
        ("recsvc.v1.Catalog", "ExportCatalog", catalog.ExportCatalog, export, "shop", denied),
        # refused by the handler itself (a member id the id rule rejects), after the key check
        ("recsvc.v1.Admin", "ForgetMember", admin.ForgetMember, bad_id, "ops", invalid),
    ]
    expected: dict[tuple[str, str, str], float] = {}
    for service, method, fn, request, who, code in calls:
        assert _code(fn, request, metadata=srv.md(who) if who else None) == code, (method, who)
        expected[(service, method, code.name)] = expected.get((service, method, code.name), 0) + 1
    deadline = time.monotonic() + 5
    while {k: _handled(srv).get(k, 0.0) for k in expected} != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    handled = _handled(srv)
    assert {k: handled.get(k, 0.0) for k in expected} == expected
    assert not [k for k in handled if k[2] == "ABORTED_BY_HANDLER"], handled


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"RECSVC_SECURITY__PSEUDONYM_KEY": "short"}, "security.pseudonym_key must be at least 16"),
        ({"RECSVC_SECURITY__PREVIOUS_PSEUDONYM_KEYS": '["short"]'}, "previous_pseudonym_keys[0] must be"),
        ({"RECSVC_SERVING__HOST": "0.0.0.0"}, "refusing to serve plaintext on non-loopback"),
        ({"RECSVC_SECURITY__ERASURE_LIST": "/"}, "security.erasure_list '/' is not a file"),
        # os.access says root may write there; trying it says no
        (
            {"RECSVC_SECURITY__ERASURE_LIST": "/proc/recsvc-no-such/erasures.txt"},
            "security.erasure_list '/proc/recsvc-no-such/erasures.txt' cannot be created",
        ),
        # {tmp}/file is a file, so no folder can be made under it
        ({"RECSVC_SECURITY__AUDIT_LOG": "{tmp}/file/audit.log"}, "/file/audit.log' cannot be created"),
    ],
)
def test_serve_refuses_a_bad_security_configuration_before_any_worker_starts(
    planted: PlantedBundle, redis_url: str, tmp_path: Path, override: dict[str, str], reason: str
) -> None:
    """Two workers: the parent checks the security settings first, so the caller gets one named
    error and a non-zero exit, not workers dying with tracebacks and being restarted."""
    from serving_harness import serve_env, serve_subprocess

    (tmp_path / "file").write_text("")
    env = serve_env(planted.path, redis_url, 0, tmp_path, workers=2)
    env |= {k: v.replace("{tmp}", str(tmp_path)) for k, v in override.items()}
    proc = serve_subprocess(env)
    _, err = proc.communicate(timeout=60)
    text = err.decode()
    assert proc.returncode == 2, text
    assert "error INVALID_CONFIG: " in text and reason in text, text
    assert "Traceback" not in text and "worker_died" not in text, text


def test_a_worker_that_refuses_its_configuration_exits_with_one_line(tmp_path: Path) -> None:
    """What the parent's check cannot see, a worker reports in one line and exits with EX_CONFIG
    (78), which the parent takes as a reason to stop rather than restart it."""
    import subprocess
    import sys

    settings = load_settings(
        overrides={
            "security": {"pseudonym_key": "short", "audit_log": str(tmp_path / "a.log")},
            "redis": {"url": "redis://127.0.0.1:1/0"},
            "serving": {"model_uri": str(tmp_path / "none")},
        }
    )
    code = (
        "import sys; from recsvc.server.runner import _worker_main; _worker_main(sys.stdin.read(), 0, 'INFO')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        input=settings.model_dump_json(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 78, proc.stderr[-2000:]
    assert "event=worker_cannot_start" in proc.stderr and "pseudonym_key must be" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
